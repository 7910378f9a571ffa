/* SPDX-License-Identifier: GPL-2.0 */
/* srv6pipes datapath entry points (tcx ingress). The logic lives in lib/. */
#include "lib/srv6.h"
#include "lib/flow.h"
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

/* Node uplink: SRv6 packets to this node's SIDs (End.AD inbound, decapsulation). */
SEC("classifier")
int sp_uplink(struct __sk_buff *skb)
{
	__u8 saddr[16], daddr[16], nexthdr;
	if (parse_ipv6(skb, saddr, daddr, &nexthdr))
		return SP_NEXT;
	__u32 zero = 0, len = skb->len;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	if (!cfg)
		return SP_NEXT;
	struct sid_entry *sid = bpf_map_lookup_elem(&sp_sids, daddr);
	if (!sid) {
		/* An address of our locator that is no SID: never let it reach the routing table.
		 * FUNCT 0 (the node's own addresses, e.g. its SRv6 source) is the exception. */
		if (prefix_match(daddr, cfg->locator, cfg->locator_len) &&
		    !prefix_match(daddr, cfg->locator, cfg->locator_len + 16))
			return drop(SP_DROP_UNKNOWN_SID);
		return SP_NEXT;
	}
	/* RFC 8754 §5.1: the SR domain is closed; only its own nodes may use our SIDs. SRH
	 * insertion (End.AM) keeps the original source: the chains' own pods. */
	if (!prefix_match(saddr, cfg->block, cfg->block_len) &&
	    !(sid->behavior == SP_END_AM && insert_source(saddr)))
		return drop_sid(daddr, len, SP_DROP_FOREIGN_SOURCE);
	if (nexthdr == SP_NH_FRAGMENT)
		return drop_sid(daddr, len, SP_DROP_FRAGMENT);
	if (nexthdr != SP_NH_ROUTING)
		return sid_error(skb, daddr, len, SP_DROP_NO_SRH, SP_IP6_LEN);

	/* RFC 8754 §4.3.1 / RFC 8986 §4.1 checks before anything is changed. */
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	int err = load_srh(skb, o);
	if (err)
		return sid_error(skb, daddr, len, err, 0);
	if (sid->behavior == SP_END_AM)
		return steer_inserted(skb, o);
	if (!inner_supported(o->bytes[OFF_SRH]))
		return drop_sid(daddr, len, SP_DROP_INNER_PROTO);
	return steer(skb, o, SP_ORIGIN_TRANSIT);
}

/* Whether an IPv6 packet carries a routing header: right after the IPv6 header or behind
 * Hop-by-Hop and Destination Options headers (RFC 8200 §4.1 puts them first). A chain of more
 * of those than SP_MAX_EXT, or a truncated one, counts as carrying one: it is refused rather
 * than passed unchecked. */
static __always_inline int has_routing_header(struct __sk_buff *skb, __u8 nexthdr)
{
	__u32 off = ETH_HLEN + SP_IP6_LEN;
#pragma unroll
	for (int i = 0; i < SP_MAX_EXT; i++) {
		if (nexthdr == SP_NH_ROUTING)
			return 1;
		if (nexthdr != SP_NH_HOP_BY_HOP && nexthdr != SP_NH_DEST_OPTS)
			return 0;
		__u8 h[2]; /* next header, length in 8-octet units beyond the first */
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return 1;
		nexthdr = h[0];
		off += 8 * ((__u32)h[1] + 1);
	}
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

static __always_inline int decrement_inner_ttl(struct __sk_buff *skb, int ipv4)
{
	__u8 ttl;
	__u32 off = ETH_HLEN + (ipv4 ? offsetof(struct iphdr, ttl) : offsetof(struct ipv6hdr, hop_limit));
	if (bpf_skb_load_bytes(skb, off, &ttl, 1))
		return SP_DROP_MALFORMED;
	if (ttl <= 1)
		return SP_DROP_INNER_TTL;
	__u8 next = ttl - 1;
	if (ipv4) {
		/* TTL and protocol share a 16-bit word of the header checksum. */
		__u8 proto;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &proto, 1))
			return SP_DROP_MALFORMED;
		__be16 old = bpf_htons((__u16)ttl << 8 | proto), new = bpf_htons((__u16)next << 8 | proto);
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2))
			return SP_DROP_ADJUST;
	}
	if (bpf_skb_store_bytes(skb, off, &next, 1, 0))
		return SP_DROP_ADJUST;
	return 0;
}

/* Per hop with several replicas, the flow's direction-independent hash picks a slot of the
 * hop's table (the same slot for every hop and for both directions: each function's table is
 * rendezvous-hashed from its own SIDs alone, so the forward and the reverse rules of a
 * symmetric chain map the slot to the same replica, and a replica that leaves only moves the
 * flows it had). */
static __always_inline int pick_replicas(__u32 policy, struct outer_hdr *o, __u32 hash)
{
	__u32 mask = o->pad & SP_POLICY_HOPS_MASK;
	if (!mask)
		return 0;
	__u8 last = o->bytes[OFF_LAST];
	if (last >= SP_MAX_SEGS)
		return -1;
	__u32 slot = hash & (SP_REPLICA_SLOTS - 1);
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

/* The proxy is a hop of the inner packet on the way back (draft §6, as VPP does): its TTL or
 * hop limit goes down by one. Returns 1 with the verdict in `verdict` for a packet that ends
 * here: one whose TTL ran out is dropped (`inner_ttl`) and its source told through this node's
 * routing (the source is not behind the VNF's interface): ICMPv6 Time Exceeded from the node's
 * SRv6 source, or ICMP Time Exceeded from the packet's destination (the node has no IPv4
 * address of its own in the domain). */
static __always_inline int inner_hop(struct __sk_buff *skb, int ipv4, int *verdict)
{
	int err = decrement_inner_ttl(skb, ipv4);
	if (!err)
		return 0;
	*verdict = drop(err);
	if (err != SP_DROP_INNER_TTL)
		return 1;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	int r = cfg ? icmp_to_source(skb, cfg, !ipv4, SP_ICMP_TIME_EXCEEDED, 0, 1) : -1;
	if (r >= 0)
		*verdict = r;
	return 1;
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

/* ICMP errors a VNF generates (about a chain's packet it could not forward) go to the source
 * the plain way, through the node's routing, not down the chain toward the destination.
 * `proto`: the IP header's protocol / next header (0 for a non-first IPv4 fragment). */
static __always_inline int is_icmp_error(struct __sk_buff *skb, int v6, __u8 proto)
{
	__u8 type, ihl;
	if (proto != (v6 ? 58 : 1))
		return 0;
	if (v6)
		return !bpf_skb_load_bytes(skb, ETH_HLEN + SP_IP6_LEN, &type, 1) && type < 128; /* RFC 4443 §2.1 */
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ihl, 1) || bpf_skb_load_bytes(skb, ETH_HLEN + (ihl & 0xf) * 4, &type, 1))
		return 0;
	return type == 3 || type == 11 || type == 12; /* unreachable, time exceeded, parameter problem */
}

/* Pods' node-side interfaces: the closed-domain guard for every pod, and H.Encaps for traffic
 * a chain classifies. Runs beside the primary CNI's programs: other traffic goes on to the
 * next program untouched. */
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
	else if (pick_replicas(id, o, flow_hash(skb, skb->protocol == bpf_htons(ETH_P_IP), l)))
		verdict = drop(SP_DROP_MALFORMED);
	else if (o->pad & SP_POLICY_INSERT) {
		int err = insert_srh(skb, o);
		verdict = err ? drop(err) : steer_inserted(skb, o);
	} else {
		set_outer_fields(skb, o);
		verdict = steer(skb, o, headend ? SP_ORIGIN_POD : SP_ORIGIN_VNF);
	}
	count(bpf_map_lookup_elem(&sp_policy_stats, &id), len, dropped || verdict == TC_ACT_SHOT);
	return verdict;
}

/* A VNF's node-side veth: what the VNF sends back gets the headers End.AD learnt (outbound). */
SEC("classifier")
int sp_vnf(struct __sk_buff *skb)
{
	__u16 proto = eth_proto(skb);
	__u32 ifindex = skb->ingress_ifindex;
	/* End.AM: the VNF returns the packet with its SRH (and nothing else). */
	__u32 *vf = bpf_map_lookup_elem(&sp_vnf_flags, &ifindex);
	__u32 vflags = vf ? *vf : 0;
	int am = vflags & SP_VNF_AM;
	__u8 nexthdr = 0;
	if (proto == ETH_P_IPV6) {
		__u8 saddr[16], daddr[16];
		if (parse_ipv6(skb, saddr, daddr, &nexthdr))
			return SP_NEXT;
		/* The VNF's own neighbour discovery and router solicitations stay on the link. */
		if (is_link_scope(saddr) || is_link_scope(daddr))
			return SP_NEXT;
		if (closed_domain_violation(skb, daddr, nexthdr, am))
			return drop(SP_DROP_CLOSED_DOMAIN);
	} else if (proto == ETH_P_IP) {
		__be32 saddr, daddr;
		if (parse_ipv4(skb, &saddr, &daddr, &nexthdr) || is_link_scope4(saddr, daddr))
			return SP_NEXT;
	} else {
		return SP_NEXT; /* ARP and the like */
	}
	if (is_icmp_error(skb, proto == ETH_P_IPV6, nexthdr))
		return TC_ACT_OK;
	if (am) {
		if (proto != ETH_P_IPV6)
			return drop(SP_DROP_INNER_PROTO);
		if (nexthdr != SP_NH_ROUTING)
			return drop(SP_DROP_NO_SRH);
		struct outer_hdr *o = scratch();
		if (!o)
			return TC_ACT_SHOT;
		int err = load_srh(skb, o);
		return err ? drop(err) : end_am_return(skb, o);
	}
	/* End.AS: the interface's configured headers, or a drop: never End.AD's caches (a stale
	 * entry of another chain) nor the host's routing (that would skip the remaining functions). */
	if (vflags & SP_VNF_AS) {
		struct as_key ak = {.ifindex = ifindex, .family = proto == ETH_P_IP ? 4 : 6};
		__u32 *ret = bpf_map_lookup_elem(&sp_as_return, &ak);
		if (!ret)
			return drop(SP_DROP_NO_RETURN);
		struct l4 l;
		if (parse_l4(skb, proto == ETH_P_IP, &l))
			return drop(SP_DROP_MALFORMED);
		int verdict;
		return inner_hop(skb, proto == ETH_P_IP, &verdict) ? verdict : apply_policy(skb, *ret, &l, 0);
	}
	/* End.AD: the flow's own headers first (several chains, both directions), else the
	 * interface's when it serves one chain in one direction. */
	struct flow_key fk;
	struct outer_hdr *c = NULL;
	if (!(vflags & SP_VNF_NO_FLOWS) && !flow_of(skb, ifindex, &fk))
		c = bpf_map_lookup_elem(&sp_ad_flows, &fk);
	/* The interface's headers are whichever flow was learnt last: on an interface that serves
	 * several chains (or both directions of one) they may belong to another chain. */
	if (!c && (vflags & SP_VNF_SHARED))
		return drop(SP_DROP_FLOW_MISS);
	if (!c)
		c = bpf_map_lookup_elem(&sp_ad_cache, &ifindex);
	if (!c)
		return drop(SP_DROP_NO_CACHE);
	int verdict;
	if (inner_hop(skb, proto == ETH_P_IP, &verdict))
		return verdict;

	/* The cache was learnt from traffic of one family; the VNF must return the same. */
	if ((proto == ETH_P_IP) != (c->bytes[OFF_SRH] == SP_NH_IPV4))
		return drop(SP_DROP_INNER_PROTO);
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	__builtin_memcpy(o, c, sizeof(*o));
	set_outer_fields(skb, o);
	return steer(skb, o, SP_ORIGIN_VNF);
}

/* Stage 2 of the classifier: protocol and destination port within the class (and source port
 * for a class with reverse rules); fragments (first or not) by protocol alone, so that all of a
 * datagram takes one chain. */
static __always_inline __u32 *classify_l4(struct __sk_buff *skb, __u32 class, int ipv4, struct l4 *l)
{
	if (parse_l4(skb, ipv4, l))
		return NULL;
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

SEC("classifier")
int sp_headend(struct __sk_buff *skb)
{
	__u32 *class;
	__u16 proto = eth_proto(skb);
	if (proto == ETH_P_IPV6) {
		__u8 saddr[16], nexthdr;
		struct headend_key k = {};
		if (parse_ipv6(skb, saddr, k.daddr, &nexthdr))
			return SP_NEXT;
		if (is_link_scope(k.daddr))
			return SP_NEXT;
		if (closed_domain_violation(skb, k.daddr, nexthdr, 0))
			return drop(SP_DROP_CLOSED_DOMAIN);
		k.prefixlen = 32 + 128;
		k.ifindex = skb->ingress_ifindex;
		class = bpf_map_lookup_elem(&sp_headend_rules, &k);
	} else if (proto == ETH_P_IP) {
		__be32 saddr;
		__u8 ip_proto;
		struct headend_key4 k = {};
		if (parse_ipv4(skb, &saddr, (__be32 *)k.daddr, &ip_proto) || is_link_scope4(saddr, *(__be32 *)k.daddr))
			return SP_NEXT;
		k.prefixlen = 32 + 32;
		k.ifindex = skb->ingress_ifindex;
		class = bpf_map_lookup_elem(&sp_headend_rules4, &k);
	} else {
		return SP_NEXT;
	}
	if (!class)
		return SP_NEXT;
	struct l4 l;
	__u32 *id = classify_l4(skb, *class, proto == ETH_P_IP, &l);
	if (!id)
		return SP_NEXT;
	return apply_policy(skb, *id, &l, 1);
}

char LICENSE[] SEC("license") = "GPL";
