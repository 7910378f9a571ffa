/* SPDX-License-Identifier: GPL-2.0 */
/* Steered flows and the node's connection tracking. A headend encapsulates on the pod's
 * interface, before netfilter: the node's conntrack never sees a steered packet plain, and
 * takes its flow's other direction (the replies, or a symmetric chain's decapsulated packets)
 * for a connection it does not know: INVALID, which kube-proxy (KUBE-FORWARD) and most host
 * firewalls drop. So the headend records each flow it steers, and a packet of the flow's other
 * direction, or an ICMP error about one of the flow's packets, is forwarded here, past
 * netfilter, as the steered direction went: the routing table's next hop, one hop less of TTL.
 * Anything else goes on to the stack as before. */
#pragma once
#include "end_ad.h"

/* The headend: the packet on pod interface `ifindex` is about to be steered. */
static __always_inline void steered_flow_record(struct __sk_buff *skb, __u32 ifindex)
{
	struct flow_key k;
	if (flow_of(skb, 0, &k))
		return;
	flow_swap(&k);
	__u32 *known = bpf_map_lookup_elem(&sp_steered_flows, &k);
	if (!known || *known != ifindex)
		bpf_map_update_elem(&sp_steered_flows, &k, &ifindex, BPF_ANY);
}

/* Whether the packet, of flow `k`, is an ICMP error about a steered flow's packet, addressed
 * to that packet's source: it travels the flow's other direction (port unreachable, Packet Too
 * Big, Time Exceeded on the way). Only there: the quote alone would let anyone who knows a
 * steered flow send past netfilter to any address. */
static __always_inline int steered_error(struct __sk_buff *skb, const struct flow_key *k)
{
	int v4 = k->family == 4;
	if (!is_icmp_error(skb, !v4, k->proto))
		return 0;
	/* The quoted flow's key in the quote buffer (free here): the uplink's stack is nearly full. */
	__u32 zero = 0;
	struct quote *m = bpf_map_lookup_elem(&sp_quote, &zero);
	struct flow_key *q = m ? (struct flow_key *)m->b : NULL;
	if (!q || quoted_flow(skb, v4, q) || !same_addr(k->daddr, q->saddr))
		return 0;
	flow_swap(q);
	return bpf_map_lookup_elem(&sp_steered_flows, q) != NULL;
}

/* The sp_fib_cache key of a steered flow's other direction, in from `ifindex`: its addresses
 * as the FIB sees them, IPv4 as v4-mapped IPv6 (never an address on the wire, so never one of
 * an IPv6 flow or of encap_forward's outer headers). */
static __always_inline void return_key(struct fib_key *fk, const struct flow_key *k, __u32 ifindex)
{
	__builtin_memset(fk, 0, sizeof(*fk));
	fk->ifindex = ifindex;
	if (k->family == 4) {
		fk->src[10] = fk->src[11] = fk->dst[10] = fk->dst[11] = 0xff;
		__builtin_memcpy(&fk->src[12], k->saddr, 4);
		__builtin_memcpy(&fk->dst[12], k->daddr, 4);
	} else {
		__builtin_memcpy(fk->src, k->saddr, 16);
		__builtin_memcpy(fk->dst, k->daddr, 16);
	}
}

/* A plain packet (right after the Ethernet header) of a steered flow's other direction:
 * forwarded to its next hop, the verdict returned; any other packet, or one the stack must
 * answer (no route, too big, its last hop), gets `otherwise`. The FIB's next hop is reused
 * from sp_fib_cache as encap_forward does (SP_FIB_CACHE_NS, never for a longer packet than
 * it was checked for): with a lookup per packet through the node's policy rules, TCP through
 * a chain spent 514 ns a run in sp_uplink, 362 with the cache. */
static __always_inline int steered_flow_return(struct __sk_buff *skb, int otherwise)
{
	struct flow_key k;
	if (flow_of(skb, 0, &k) || (!bpf_map_lookup_elem(&sp_steered_flows, &k) && !steered_error(skb, &k)))
		return otherwise;
	int v4 = k.family == 4, err;
	/* The skb's own length is what the FIB checks against the route's MTU (tot_len 0). */
	__u32 tot_len = skb->gso_size ? 0 : skb->len - ETH_HLEN;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct fib_key fk;
	return_key(&fk, &k, sp_ingress_ifindex(skb));
	struct fib_hop *h = bpf_map_lookup_elem(&sp_fib_cache, &fk);
	if (fib_fresh(h, tot_len, now)) {
		struct next_hop n;
		next_hop_of(&n, h);
		err = decrement_inner_ttl(skb, v4);
		if (err == SP_DROP_INNER_TTL)
			return otherwise; /* the stack answers Time Exceeded */
		return err ? drop(err) : send_to(skb, n.ifindex, n.dmac, n.smac);
	}
	struct bpf_fib_lookup p;
	__builtin_memset(&p, 0, sizeof(p));
	p.ifindex = sp_ingress_ifindex(skb);
	if (v4) {
		p.family = AF_INET;
		__builtin_memcpy(&p.ipv4_src, k.saddr, 4);
		__builtin_memcpy(&p.ipv4_dst, k.daddr, 4);
	} else {
		p.family = AF_INET6;
		__builtin_memcpy(p.ipv6_src, k.saddr, 16);
		__builtin_memcpy(p.ipv6_dst, k.daddr, 16);
	}
	long rc = fib_onward(skb, &p, sp_ingress_ifindex(skb));
	if (rc < 0)
		return otherwise;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		fib_remember(&fk, h, &p, tot_len, now);
	err = decrement_inner_ttl(skb, v4);
	if (err == SP_DROP_INNER_TTL)
		return otherwise; /* the stack answers Time Exceeded */
	return err ? drop(err) : fib_send(skb, &p, rc);
}
