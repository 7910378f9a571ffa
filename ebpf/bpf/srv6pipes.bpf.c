/* SPDX-License-Identifier: GPL-2.0 */
/* srv6pipes datapath entry points (tcx ingress): parsing and dispatch; the behaviours live in
 * lib/ (end_ad.h, end_as.h, end_am.h, headend.h, steer.h, srv6.h). */
#include "lib/stream.h"
#include <linux/ip.h>
#include <stddef.h>

/* The Ethernet type of the frame, or 0 if it has no complete Ethernet header. */
static __always_inline __u16 eth_proto(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	return bpf_ntohs(eth->h_proto);
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __be32 *saddr, __be32 *daddr, __u8 *proto)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end || ip->version != 4)
		return -1;
	*saddr = ip->saddr;
	*daddr = ip->daddr;
	*proto = (ip->frag_off & bpf_htons(0x1fff)) ? 0 : ip->protocol; /* 0: a non-first fragment */
	return 0;
}

/* 0.0.0.0 (DHCP/ARP probes), 169.254/16, multicast and broadcast stay on the link. */
static __always_inline int is_link_scope4(__be32 saddr, __be32 daddr)
{
	__u32 s = bpf_ntohl(saddr), d = bpf_ntohl(daddr);
	return s == 0 || (s >> 16) == 0xa9fe || (d >> 16) == 0xa9fe || (d >> 28) == 0xe || d == 0xffffffff;
}

/* Parse Ethernet + IPv6; copies of the addresses survive helper calls that move packet data. */
static __always_inline int parse_ipv6(struct __sk_buff *skb, __u8 saddr[16], __u8 daddr[16], __u8 *nexthdr)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return -1;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return -1;
	__builtin_memcpy(saddr, &ip6->saddr, 16);
	__builtin_memcpy(daddr, &ip6->daddr, 16);
	*nexthdr = ip6->nexthdr;
	return 0;
}

static __always_inline int insert_source(const __u8 saddr[16])
{
	struct src_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, saddr, 16);
	return bpf_map_lookup_elem(&sp_insert_sources, &k) != NULL;
}

/* Node uplink: SRv6 packets to this node's SIDs (End.AD inbound, decapsulation); the plain
 * packets of steered flows' other direction (steered.h). */
__noinline int uplink(struct __sk_buff *skb)
{
	__u8 saddr[16], daddr[16], nexthdr;
	if (parse_ipv6(skb, saddr, daddr, &nexthdr))
		return steered_flow_return(skb, SP_NEXT);
	__u32 zero = 0, len = skb->len;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	if (!cfg)
		return SP_NEXT;
	struct sid_entry *sid = bpf_map_lookup_elem(&sp_sids, daddr);
	if (!sid) {
		/* An address of our locator that is no SID: never let it reach the routing table.
		 * FUNCT 0 (the node's own addresses, e.g. its SRv6 source) is the exception. */
		if (prefix_match(daddr, cfg->locator, cfg->locator_len) && !prefix_match(daddr, cfg->locator, cfg->locator_len + 16))
			return drop(SP_DROP_UNKNOWN_SID);
		return steered_flow_return(skb, SP_NEXT);
	}
	/* RFC 8754 §5.1: the SR domain is closed; only its own nodes may use our SIDs. SRH
	 * insertion (End.AM) keeps the original source: the chains' own pods. */
	if (!prefix_match(saddr, cfg->block, cfg->block_len) && !(sid->behavior == SP_END_AM && insert_source(saddr)))
		return drop_sid(daddr, sid->stats, len, SP_DROP_FOREIGN_SOURCE);
	if (nexthdr == SP_NH_FRAGMENT)
		return drop_sid(daddr, sid->stats, len, SP_DROP_FRAGMENT);
	if (nexthdr != SP_NH_ROUTING)
		return sid_error(skb, daddr, sid->stats, len, SP_DROP_NO_SRH, SP_IP6_LEN);

	/* RFC 8754 §4.3.1 / RFC 8986 §4.1 checks before anything is changed. */
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	int err = load_srh(skb, o);
	if (err)
		return sid_error(skb, daddr, sid->stats, len, err, 0);
	if (sid->behavior == SP_END_AM)
		return steer_inserted(skb, o);
	if (!inner_supported(o->bytes[OFF_SRH]))
		return drop_sid(daddr, sid->stats, len, SP_DROP_INNER_PROTO);
	return steer_to(skb, o, SP_ORIGIN_TRANSIT, sid); /* o's DA is daddr: sid is its entry */
}

/* Whether the ICMP error (`v6`: ICMPv6) a VNF returns on `ifindex` is one it made about a
 * chain's packet: it is addressed to the quoted packet's source, from another address than that
 * packet's destination (an error the VNF forwards comes from its sender, the chain's source,
 * toward the chain's destination), and, where End.AD learns flows (`flows`), the quoted packet's
 * flow came in on this interface. Any other error is the flow's like any of its packets: down
 * the chain. A frame of its own, its keys in the quote buffer: sp_vnf's stack has no room. */
static __noinline int vnf_made_error(struct __sk_buff *skb, __u32 ifindex, int flows, int v6)
{
	__u32 zero = 0;
	struct quote *m = bpf_map_lookup_elem(&sp_quote, &zero);
	if (!m)
		return 0;
	struct flow_key *q = (struct flow_key *)m->b;
	__u8 *src = m->b + sizeof(*q), *dst = src + 16; /* the error's, as a flow key holds them */
	__builtin_memset(src, 0, 32);
	int bad = v6 ? bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), src, 32)
		     : bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), src, 4) ||
			bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), dst, 4);
	if (bad || quoted_flow(skb, !v6, q))
		return 0;
	if (!same_addr(dst, q->saddr) || same_addr(src, q->daddr))
		return 0;
	q->ifindex = ifindex;
	return !flows || bpf_map_lookup_elem(&sp_ad_flows, q);
}

/* What a VNF sends on its return interface `ifindex` (`vflags`: its SP_VNF_* flags) that is not
 * the chain's to proxy: `*verdict` set and 1 returned — its link-scope traffic and ARP (on to
 * the next program), a packet breaking the closed domain (dropped), an ICMP error it makes about
 * a chain's packet (to the source by the FIB, not down the chain). `*nexthdr`: the IP protocol /
 * next header. */
static __always_inline int vnf_not_proxied(struct __sk_buff *skb, __u32 ifindex, __u32 vflags, __u16 proto, __u8 *nexthdr, int *verdict)
{
	int am = vflags & SP_VNF_AM;
	*verdict = SP_NEXT;
	if (proto == ETH_P_IPV6) {
		__u8 saddr[16], daddr[16];
		if (parse_ipv6(skb, saddr, daddr, nexthdr))
			return 1;
		/* The VNF's own neighbour discovery and router solicitations stay on the link. */
		if (is_link_scope(saddr) || is_link_scope(daddr))
			return 1;
		if (closed_domain_violation(skb, daddr, *nexthdr, am)) {
			*verdict = drop(SP_DROP_CLOSED_DOMAIN);
			return 1;
		}
	} else if (proto == ETH_P_IP) {
		__be32 saddr, daddr;
		if (parse_ipv4(skb, &saddr, &daddr, nexthdr) || is_link_scope4(saddr, daddr))
			return 1;
	} else {
		return 1; /* ARP and the like */
	}
	int flows = !(vflags & (SP_VNF_AM | SP_VNF_AS | SP_VNF_STREAM | SP_VNF_NO_FLOWS));
	if (is_icmp_error(skb, proto == ETH_P_IPV6, *nexthdr) && vnf_made_error(skb, ifindex, flows, proto == ETH_P_IPV6)) {
		*verdict = error_to_source(skb, proto == ETH_P_IPV6);
		return 1;
	}
	return 0;
}

/* A VNF's node-side veth: what the VNF sends back, by its proxy's behaviour. */
__noinline int vnf(struct __sk_buff *skb)
{
	__u16 proto = eth_proto(skb);
	__u32 ifindex = skb->ingress_ifindex;
	__u32 *vf = bpf_map_lookup_elem(&sp_vnf_flags, &ifindex);
	__u32 vflags = vf ? *vf : 0;
	__u8 nexthdr = 0;
	int verdict;
	if (vnf_not_proxied(skb, ifindex, vflags, proto, &nexthdr, &verdict))
		return verdict;
	if (vflags & SP_VNF_AM)
		return end_am_outbound(skb, proto == ETH_P_IPV6, nexthdr);
	if (vflags & SP_VNF_AS)
		return end_as_return(skb, ifindex, proto == ETH_P_IP);
	if (vflags & SP_VNF_STREAM)
		return stream_return(skb, ifindex, proto == ETH_P_IP);
	return end_ad_return(skb, ifindex, vflags, proto == ETH_P_IP);
}

/* Pods' node-side interfaces: the closed-domain guard for every pod, and H.Encaps for traffic
 * a chain classifies. Runs first in the tcx chain, beside the primary CNI's programs: other
 * traffic goes on to the next program untouched. */
__noinline int headend(struct __sk_buff *skb)
{
	/* Read once, up front: clang would otherwise keep &skb->ingress_ifindex (a modified ctx
	 * pointer, which the verifier refuses) across the helper calls below. */
	__u32 ifindex = skb->ingress_ifindex;
	sp_barrier_var(ifindex);
	__u16 proto = eth_proto(skb);
	__u8 daddr[16]; /* IPv4: the first 4 bytes */
	if (proto == ETH_P_IPV6) {
		__u8 saddr[16], nexthdr;
		if (parse_ipv6(skb, saddr, daddr, &nexthdr))
			return SP_NEXT;
		if (is_link_scope(daddr))
			return SP_NEXT;
		if (closed_domain_violation(skb, daddr, nexthdr, 0))
			return drop(SP_DROP_CLOSED_DOMAIN);
	} else if (proto == ETH_P_IP) {
		__be32 saddr;
		__u8 ip_proto;
		if (parse_ipv4(skb, &saddr, (__be32 *)daddr, &ip_proto) || is_link_scope4(saddr, *(__be32 *)daddr))
			return SP_NEXT;
	} else {
		return SP_NEXT;
	}
	__u32 *class = rule_class(proto == ETH_P_IP, ifindex, daddr);
	if (!class)
		return SP_NEXT;
	/* Toward a chain's destinations, a packet whose transport header cannot be found is
	 * refused: passed on, it would skip the functions its protocol and ports choose. */
	struct l4 l;
	if (parse_l4(skb, proto == ETH_P_IP, &l))
		return drop(SP_DROP_MALFORMED);
	__u32 *id = classify_l4(skb, *class, &l);
	if (!id)
		return SP_NEXT;
	steered_flow_record(skb, ifindex);
	return apply_policy(skb, *id, &l, 1);
}

/* A stream proxy's chain interface, inside its netns (stream.h). */
__noinline int stream_pod(struct __sk_buff *skb)
{
	return stream_assign(skb);
}

/* The entry points: each behaviour between the monitor's enter and leave (monitor.h). The
 * behaviours and the monitor's two calls are global functions, verified once each on their own:
 * as static functions or inlined, every exit path of a behaviour would be verified again
 * through the monitor's code after it (sp_headend then passes the verifier's 1M-instruction
 * budget), and sp_vnf's early returns would jump further than 32k instructions. */
#define SP_ENTRY(name, behaviour, hook)                                                                                                    \
	SEC("classifier")                                                                                                                  \
	int name(struct __sk_buff *skb)                                                                                                    \
	{                                                                                                                                  \
		__u32 ifindex = skb->ingress_ifindex;                                                                                      \
		sp_barrier_var(ifindex);                                                                                                   \
		__u32 mon = monitor_enter(skb, ifindex);                                                                                   \
		int verdict = behaviour(skb);                                                                                              \
		return monitor_leave(skb, ifindex, hook, mon, verdict);                                                                    \
	}

SP_ENTRY(sp_uplink, uplink, SP_HOOK_UPLINK)
SP_ENTRY(sp_vnf, vnf, SP_HOOK_VNF)
SP_ENTRY(sp_headend, headend, SP_HOOK_HEADEND)
SP_ENTRY(sp_stream_pod, stream_pod, SP_HOOK_STREAM)

char LICENSE[] SEC("license") = "GPL";
