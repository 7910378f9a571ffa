/* SPDX-License-Identifier: GPL-2.0 */
/* The headend (H.Encaps, H.Insert): the closed-domain guard for every pod, the two-stage
 * classifier, MTU and MSS checks, replica choice, and a policy's application. */
#pragma once
#include "steer.h"

/* Whether an IPv6 packet carries a routing header: right after the IPv6 header or behind
 * Hop-by-Hop and Destination Options headers (RFC 8200 §4.1 puts them first). A chain of more
 * of those than SP_MAX_EXT, or a truncated one, counts as carrying one: it is refused rather
 * than passed unchecked. */
static __always_inline int has_routing_header(struct __sk_buff *skb, __u8 nexthdr)
{
	__u32 off = ETH_HLEN + SP_IP6_LEN;
	if (skip_ipv6_options(skb, &nexthdr, &off))
		return 1;
	return nexthdr == SP_NH_ROUTING || nexthdr == SP_NH_HOP_BY_HOP || nexthdr == SP_NH_DEST_OPTS;
}

/* RFC 8754 §5.1: the SR domain is closed. Nothing from a pod may address the cluster's locator
 * block (a SID: that would skip functions) or carry a routing header, wherever it sits among
 * the extension headers; only srv6pipes' own headend builds SRv6. `own_srh`: an End.AM VNF
 * returns the chain's SRH right after the IPv6 header (end_am_return checks it). */
static __always_inline int closed_domain_violation(struct __sk_buff *skb, const __u8 daddr[16], __u8 nexthdr, int own_srh)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	if (!(own_srh && nexthdr == SP_NH_ROUTING) && has_routing_header(skb, nexthdr))
		return 1;
	return cfg && prefix_match(daddr, cfg->block, cfg->block_len);
}

/* The hash that picks a packet's replicas: its flow's (flow_hash), or for an ICMP error the
 * flow of the packet it quotes, so that it reaches the replicas that carry that flow (a stateful
 * function's conntrack takes it as RELATED there, as INVALID on another replica). */
static __always_inline __u32 replica_hash(struct __sk_buff *skb, int v4, const struct l4 *l)
{
	if (l->frag || !is_icmp_error(skb, !v4, l->proto))
		return flow_hash(skb, v4, l);
	/* The quoted flow's key in the quote buffer (free here): the stack has no room. */
	__u32 zero = 0;
	struct quote *m = bpf_map_lookup_elem(&sp_quote, &zero);
	struct flow_key *q = m ? (struct flow_key *)m->b : NULL;
	if (!q || quoted_flow(skb, v4, q))
		return flow_hash(skb, v4, l);
	return flow_key_replica_hash(q);
}

/* Per hop with several replicas, the flow's direction-independent hash picks a slot of the
 * hop's table (the same slot for every hop and for both directions: each function's table is
 * rendezvous-hashed from its own SIDs alone, so the forward and the reverse rules of a
 * symmetric chain map the slot to the same replica, and a replica that leaves only moves the
 * flows it had). */
static __always_inline int pick_replicas(struct __sk_buff *skb, const struct l4 *l, __u32 policy, struct outer_hdr *o)
{
	__u32 mask = o->pad & SP_POLICY_HOPS_MASK;
	if (!mask)
		return 0; /* no hop with replicas: no hash to compute */
	__u8 last = o->bytes[OFF_LAST];
	if (last >= SP_MAX_SEGS)
		return -1;
	__u32 slot = replica_hash(skb, skb->protocol == bpf_htons(ETH_P_IP), l) & (SP_REPLICA_SLOTS - 1);
#pragma unroll
	for (__u32 i = 0; i < SP_MAX_SEGS; i++) {
		if (!(mask & (1u << i)) || i > last)
			continue;
		struct hop_key k = {.policy = policy, .hop = i};
		struct hop_slots *t = bpf_map_lookup_elem(&sp_hop_slots, &k);
		if (!t)
			return -1;
		/* Segment List is in reverse order: hop i is entry last - i. */
		__u32 off = OFF_SEGS + 16 * ((__u32)last - i);
		if (off + 16 > SP_MAX_HDR)
			return -1;
		__builtin_memcpy(&o->bytes[off], t->sids[slot], 16);
		if (i == 0)
			__builtin_memcpy(&o->bytes[OFF_DST], t->sids[slot], 16);
	}
	return 0;
}

/* The length of the IP packets a packet stands for: itself, or for a GSO packet each of the
 * segments the kernel will cut it into (network and transport headers + gso_size). */
static __always_inline __u32 segment_len(struct __sk_buff *skb, const struct l4 *l)
{
	if (skb->gso_size == 0)
		return skb->len - ETH_HLEN;
	__u32 thl = 8; /* UDP (UDP_SEGMENT) */
	if (l->proto == 6) {
		__u8 doff;
		if (bpf_skb_load_bytes(skb, l->off + 12, &doff, 1))
			return 0;
		thl = (doff >> 4) * 4;
	}
	return l->off - ETH_HLEN + thl + skb->gso_size;
}

/* A chain carries packets up to the node's inner MTU (what the VNF interfaces take, so that the
 * encapsulation of the most segments still fits the uplink): a TCP SYN gets its MSS clamped, a
 * bigger packet, or a GSO packet whose segments are bigger, is answered (packet_too_big;
 * returns 1, with the verdict in `verdict`). */
static __always_inline int check_mtu(struct __sk_buff *skb, const struct l4 *l, int *verdict)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	if (!cfg || !cfg->inner_mtu)
		return 0;
	if (segment_len(skb, l) > cfg->inner_mtu) {
		*verdict = packet_too_big(skb, cfg, skb->protocol == bpf_htons(ETH_P_IPV6), cfg->inner_mtu, 0);
		return 1;
	}
	if (l->proto == 6 && !l->frag)
		clamp_mss(skb, l->off, skb->protocol == bpf_htons(ETH_P_IPV6), cfg->inner_mtu);
	return 0;
}

/* Encapsulates with a policy (headend rule, or an End.AS interface's configured return): its
 * header template, per-hop replica choice, drop flag; counted per policy. `l`: the transport
 * header found; `headend`: check the MTU (a VNF's End.AS return has passed those checks). */
static __always_inline int apply_policy(struct __sk_buff *skb, __u32 id, const struct l4 *l, int headend)
{
	struct outer_hdr *pol = bpf_map_lookup_elem(&sp_policies, &id);
	if (!pol)
		return SP_NEXT;
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	__builtin_memcpy(o, pol, sizeof(*o));
	__u32 len = skb->len;
	int verdict, dropped = 0;
	if (o->pad & SP_POLICY_DROP)
		verdict = drop(SP_DROP_NO_REPLICA);
	else if (headend && check_mtu(skb, l, &verdict))
		dropped = 1;
	else if (pick_replicas(skb, l, id, o))
		verdict = drop(SP_DROP_MALFORMED);
	else if (o->pad & SP_POLICY_INSERT) {
		int err = insert_srh(skb, o);
		verdict = err ? drop(err) : steer_inserted(skb, o);
	} else {
		set_outer_fields(skb, o, bpf_get_hash_recalc(skb));
		verdict = steer(skb, o, headend ? SP_ORIGIN_POD : SP_ORIGIN_VNF);
	}
	count(bpf_map_lookup_elem(&sp_policy_stats, &id), len, dropped || verdict == TC_ACT_SHOT);
	monitor_policy(id);
	return verdict;
}

/* Stage 2 of the classifier: protocol and destination port within the class (and source port
 * for a class with reverse rules) of the packet whose transport header parse_l4 found in `l`;
 * fragments (first or not) by protocol alone, so that all of a datagram takes one chain. */
static __always_inline __u32 *classify_l4(struct __sk_buff *skb, __u32 class, const struct l4 *l)
{
	__u32 base = class & ~SP_CLASS_SRC_PORTS;
	if (l->frag) {
		struct frag_key f = {.class = base, .proto = l->proto};
		__u32 *id = bpf_map_lookup_elem(&sp_frag_rules, &f);
		if (id)
			return id;
		f.proto = SP_ANY_PROTO;
		return bpf_map_lookup_elem(&sp_frag_rules, &f);
	}
	__u8 ports[4] = {}; /* source, destination */
	if (l->proto == 6 || l->proto == 17)
		bpf_skb_load_bytes(skb, l->off, ports, sizeof(ports));
	struct l4_key k = {.prefixlen = 32 + 8 + 16, .class = base, .proto = l->proto};
	k.port[0] = ports[2];
	k.port[1] = ports[3];
	struct l4_target *t = bpf_map_lookup_elem(&sp_l4_rules, &k);
	/* A symmetric chain's reverse rules: by source port; the rule ranked first wins. */
	if (class & SP_CLASS_SRC_PORTS) {
		k.class = base | SP_CLASS_SRC_PORTS;
		k.port[0] = ports[0];
		k.port[1] = ports[1];
		struct l4_target *r = bpf_map_lookup_elem(&sp_l4_rules, &k);
		if (r && (!t || r->rank < t->rank))
			t = r;
	}
	return t ? &t->policy : NULL;
}

/* Classifier stage 1: the class of destination `daddr` (4 or 16 bytes) for a packet arriving on
 * `ifindex`, or NULL. */
static __always_inline __u32 *rule_class(int ipv4, __u32 ifindex, const void *daddr)
{
	if (ipv4) {
		struct headend_key4 k = {.prefixlen = 32 + 32, .ifindex = ifindex};
		__builtin_memcpy(k.daddr, daddr, 4);
		return bpf_map_lookup_elem(&sp_headend_rules4, &k);
	}
	struct headend_key k = {.prefixlen = 32 + 128, .ifindex = ifindex};
	__builtin_memcpy(k.daddr, daddr, 16);
	return bpf_map_lookup_elem(&sp_headend_rules, &k);
}
