/* SPDX-License-Identifier: GPL-2.0 */
/* SRv6 header work on an outer_hdr buffer: End processing, encap, decap, forwarding. */
#pragma once
#include "icmp.h"

#define OFF_PLEN 4
#define OFF_HLIM 7
#define OFF_SRC 8
#define OFF_DST 24
#define OFF_SRH SP_IP6_LEN
#define OFF_SL (OFF_SRH + 3)
#define OFF_LAST (OFF_SRH + 4)
#define OFF_SEGS (OFF_SRH + SP_SRH_FIXED)

static __always_inline int prefix_match(const __u8 *addr, const __u8 *prefix, __u32 len)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 bits = len > (__u32)i * 8 ? len - i * 8 : 0;
		if (bits == 0)
			return 1;
		__u8 mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ prefix[i]) & mask)
			return 0;
	}
	return 1;
}

static __always_inline int is_link_scope(const __u8 *a)
{
	/* ff00::/8 multicast, fe80::/10 link-local, :: unspecified (DAD). */
	if (a[0] == 0xff || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80))
		return 1;
	__u64 hi = *(const __u64 *)a, lo = *(const __u64 *)(a + 8);
	return hi == 0 && lo == 0;
}

static __always_inline struct outer_hdr *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sp_scratch, &zero);
}

/* RFC 8986 §4.1 End on a header buffer: Segments Left -1, hop limit -1, DA <- Segment List[SL].
 * `masquerade` (End.AM, draft-ietf-spring-sr-service-programming §6.4): DA <- Segment List[0]
 * instead, the final destination, so the VNF sees the original one; the SRH stays.
 * Returns 0 or a drop reason. The buffer is already validated (SL <= Last Entry + 1). */
static __always_inline int apply_end(struct outer_hdr *o, int masquerade)
{
	__u8 sl = o->bytes[OFF_SL];
	if (sl == 0)
		return SP_DROP_SL_ZERO;
	if (o->bytes[OFF_HLIM] <= 1)
		return SP_DROP_HOP_LIMIT;
	sl--;
	if (sl >= SP_MAX_SEGS || sl > o->bytes[OFF_LAST])
		return SP_DROP_MALFORMED;
	o->bytes[OFF_SL] = sl;
	o->bytes[OFF_HLIM]--;
	__u32 off = OFF_SEGS + 16 * (__u32)(masquerade ? 0 : sl);
	if (off + 16 > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	__builtin_memcpy(&o->bytes[OFF_DST], &o->bytes[off], 16);
	return 0;
}

/* Loads the packet's IPv6 header and SRH (right after Ethernet) into `o` and validates them
 * (RFC 8754 §4.3.1): 0 or a drop reason. Segments Left may be Last Entry + 1 (a reduced SRH
 * without the first segment). */
static __always_inline int load_srh(struct __sk_buff *skb, struct outer_hdr *o)
{
	__u8 srh[SP_SRH_FIXED];
	if (bpf_skb_load_bytes(skb, ETH_HLEN + SP_IP6_LEN, srh, sizeof(srh)))
		return SP_DROP_MALFORMED;
	__u32 hdr_len = SP_SRH_FIXED + 8 * (__u32)srh[1];
	__u8 sl = srh[3], last = srh[4];
	if (srh[2] != SP_RT_SRH)
		return SP_DROP_MALFORMED;
	if (SP_SRH_FIXED + 16 * ((__u32)last + 1) > hdr_len)
		return SP_DROP_LAST_ENTRY;
	if ((__u32)sl > (__u32)last + 1)
		return SP_DROP_SL_RANGE;
	if (last >= SP_MAX_SEGS)
		return SP_DROP_TOO_MANY_SEGS;
	__u64 outer_len = SP_IP6_LEN + hdr_len;
	if (outer_len > SP_MAX_HDR)
		return SP_DROP_TOO_MANY_SEGS;
	sp_barrier_var(outer_len);
	if (outer_len > SP_MAX_HDR || outer_len < SP_IP6_LEN + SP_SRH_FIXED + 16)
		return SP_DROP_MALFORMED;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, o->bytes, outer_len))
		return SP_DROP_MALFORMED;
	o->len = outer_len;
	return 0;
}

/* Store an End.AD cache entry (`map` is the per-interface or the per-flow cache). Like SRNK's
 * `age`, an entry learnt less than ad_age_ns ago is left alone without even comparing; older,
 * it is compared and written only when it changed (with age 0: compared on every packet), so
 * the steady state keeps the cache line shared. Payload length, traffic class and flow label
 * are per packet: the caller zeroes them (normalize_cached). */
static __always_inline void ad_learn(void *map, const void *key, struct outer_hdr *c, struct outer_hdr *o, __u64 age, __u64 now)
{
	if (c && age && now - c->stamp < age)
		return;
	if (c && c->len == o->len) {
		int same = 1;
#pragma unroll
		for (int i = 0; i < SP_MAX_HDR / 8; i++) {
			if (i * 8 >= o->len)
				break;
			if (*(__u64 *)&c->bytes[i * 8] != *(__u64 *)&o->bytes[i * 8]) {
				same = 0;
				break;
			}
		}
		if (same) {
			if (age)
				c->stamp = now;
			return;
		}
	}
	o->stamp = now;
	bpf_map_update_elem(map, key, o, BPF_ANY);
}

static __always_inline void normalize_cached(struct outer_hdr *o)
{
	/* Traffic class and flow label come from each packet (set_outer_fields). */
	o->bytes[0] = 0x60;
	o->bytes[1] = 0;
	o->bytes[2] = 0;
	o->bytes[3] = 0;
	o->bytes[OFF_PLEN] = 0;
	o->bytes[OFF_PLEN + 1] = 0;
}

/* The plain packet's flow (right after the Ethernet header): addresses, protocol and, for TCP
 * and UDP (not on non-first fragments), ports. */
static __always_inline int flow_of(struct __sk_buff *skb, __u32 ifindex, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	__u8 vhl;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vhl, 1))
		return -1;
	__u32 l4;
	if ((vhl >> 4) == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		k->family = 4;
		k->proto = ip.protocol;
		__builtin_memcpy(k->saddr, &ip.saddr, 4);
		__builtin_memcpy(k->daddr, &ip.daddr, 4);
		if (ip.frag_off & bpf_htons(0x1fff))
			return 0;
		l4 = ETH_HLEN + ip.ihl * 4;
	} else if ((vhl >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		k->family = 6;
		k->proto = ip6.nexthdr;
		__builtin_memcpy(k->saddr, &ip6.saddr, 16);
		__builtin_memcpy(k->daddr, &ip6.daddr, 16);
		l4 = ETH_HLEN + sizeof(ip6);
	} else {
		return -1;
	}
	if (k->proto == 6 || k->proto == 17) {
		__be16 ports[2];
		if (!bpf_skb_load_bytes(skb, l4, ports, sizeof(ports))) {
			k->sport = ports[0];
			k->dport = ports[1];
		}
	}
	return 0;
}

/* A new per-flow entry for the chain whose SRH tag `o` carries, if the chain is under its
 * quota: one chain cannot flush the others' flows out of the shared LRU. */
static __always_inline int flow_quota_take(const struct node_config *cfg, const struct outer_hdr *o)
{
	if (!cfg || !cfg->flow_quota)
		return 1;
	__u32 tag = (__u32)o->bytes[OFF_SRH + 6] << 8 | o->bytes[OFF_SRH + 7];
	__u32 *n = bpf_map_lookup_elem(&sp_flow_counts, &tag);
	if (!n)
		return 1;
	if (*n >= cfg->flow_quota) {
		event(SP_EV_FLOW_QUOTA);
		return 0;
	}
	__sync_fetch_and_add(n, 1);
	return 1;
}

/* End.AD learning: the per-interface cache (what the VNF's own new flows use) and the per-flow
 * cache (what lets one interface serve several chains and both directions), unless the
 * function rewrites flows (its replies could never be matched, or worse, match another flow). */
static __always_inline void ad_cache_store(struct __sk_buff *skb, __u32 ifindex, struct outer_hdr *o)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	__u64 age = cfg ? cfg->ad_age_ns : 0;
	__u64 now = bpf_ktime_get_ns();
	normalize_cached(o);
	ad_learn(&sp_ad_cache, &ifindex, bpf_map_lookup_elem(&sp_ad_cache, &ifindex), o, age, now);
	struct flow_key k;
	if (flow_of(skb, ifindex, &k))
		return;
	/* Known flows are refreshed; the interface's flags and the quota are looked at only when
	 * a flow is new, so the steady state costs no extra lookup. */
	struct outer_hdr *c = bpf_map_lookup_elem(&sp_ad_flows, &k);
	if (!c) {
		__u32 *vf = bpf_map_lookup_elem(&sp_vnf_flags, &ifindex);
		if ((vf && (*vf & SP_VNF_NO_FLOWS)) || !flow_quota_take(cfg, o))
			return;
	}
	ad_learn(&sp_ad_flows, &k, c, o, age, now);
}

/* End.AM's flow: the packet as its VNF sees it — source, final destination (the DA after
 * masquerading), and the protocol and ports behind the SRH that `o` (its IPv6 header and SRH)
 * describes — on the interface the VNF returns it on. */
static __always_inline void am_flow_of(struct __sk_buff *skb, __u32 ifindex, const struct outer_hdr *o, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	k->family = 6;
	k->proto = o->bytes[OFF_SRH];
	__builtin_memcpy(k->saddr, &o->bytes[OFF_SRC], 16);
	__builtin_memcpy(k->daddr, &o->bytes[OFF_DST], 16);
	__u64 off = ETH_HLEN + (__u64)o->len;
	__be16 ports[2];
	if ((k->proto == 6 || k->proto == 17) && off <= ETH_HLEN + SP_MAX_HDR && !bpf_skb_load_bytes(skb, off, ports, sizeof(ports))) {
		k->sport = ports[0];
		k->dport = ports[1];
	}
}

/* End.AM inbound remembers, per flow, the SRH it hands the VNF (`o`, after End; the caller is
 * done with it): the VNF may return that flow with that SRH and nothing else. Under the chain's
 * per-flow quota, like End.AD. */
static __always_inline void am_learn(struct __sk_buff *skb, __u32 ifindex, struct outer_hdr *o)
{
	struct flow_key k;
	am_flow_of(skb, ifindex, o, &k);
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	normalize_cached(o);
	o->bytes[OFF_HLIM] = 0;
	struct outer_hdr *c = bpf_map_lookup_elem(&sp_ad_flows, &k);
	if (!c && !flow_quota_take(cfg, o))
		return;
	ad_learn(&sp_ad_flows, &k, c, o, cfg ? cfg->ad_age_ns : 0, bpf_ktime_get_ns());
}

/* Whether what an End.AM VNF returns (`o`: its IPv6 header and SRH) is a flow End.AM handed it,
 * with the very SRH it had: no forged source, no segment list of the VNF's own making. */
static __always_inline int am_returned_as_given(struct __sk_buff *skb, const struct outer_hdr *o)
{
	struct flow_key k;
	am_flow_of(skb, skb->ingress_ifindex, o, &k);
	struct outer_hdr *c = bpf_map_lookup_elem(&sp_ad_flows, &k);
	if (!c || c->len != o->len)
		return 0;
#pragma unroll
	for (int i = OFF_SRH / 8; i < SP_MAX_HDR / 8; i++) {
		if (i * 8 >= o->len)
			break;
		if (*(__u64 *)&c->bytes[i * 8] != *(__u64 *)&o->bytes[i * 8])
			return 0;
	}
	return 1;
}

/* The per-packet fields of an outer header about to be pushed: payload length; traffic class
 * copied from the inner packet (ECN as RFC 6040's normal mode asks, and the DSCP, the uniform
 * model of RFC 2983: the inner DSCP itself is never changed); flow label from the inner flow
 * (RFC 6437 §3; RFC 8986 §5.1). */
static __always_inline void set_outer_fields(struct __sk_buff *skb, struct outer_hdr *o)
{
	__u32 plen = skb->len - ETH_HLEN + o->len - SP_IP6_LEN;
	__u32 label = bpf_get_hash_recalc(skb) & 0xfffff;
	__u8 ip[2] = {};
	bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(ip));
	__u8 tc = (ip[0] >> 4) == 4 ? ip[1] : (__u8)(ip[0] << 4 | ip[1] >> 4);
	o->bytes[0] = 0x60 | tc >> 4;
	o->bytes[1] = (__u8)(tc << 4) | (label >> 16);
	o->bytes[2] = label >> 8;
	o->bytes[3] = label;
	o->bytes[OFF_PLEN] = plen >> 8;
	o->bytes[OFF_PLEN + 1] = plen;
}

#define SP_ECN_NOT_ECT 0
#define SP_ECN_ECT1 1
#define SP_ECN_ECT0 2
#define SP_ECN_CE 3

/* RFC 6040 §4.2 decapsulation of the packet's outer header (`outer_len` bytes; `inner`: 4 or
 * 41): a CE outer marks an ECT inner packet CE and drops a Not-ECT one (SP_DROP_ECN); an ECT(1)
 * outer turns an ECT(0) inner packet ECT(1); else the inner packet is left as it is. The
 * inner DSCP is kept. Returns 0 or a drop reason. */
static __always_inline int ecn_decap(struct __sk_buff *skb, __u32 outer_len, __u8 inner)
{
	__u8 ob[2], ib[2];
	if (bpf_skb_load_bytes(skb, ETH_HLEN, ob, sizeof(ob)))
		return SP_DROP_MALFORMED;
	__u8 outer_ecn = (ob[1] >> 4) & 3;
	if (outer_ecn != SP_ECN_CE && outer_ecn != SP_ECN_ECT1)
		return 0;
	__u32 off = ETH_HLEN + outer_len;
	if (bpf_skb_load_bytes(skb, off, ib, sizeof(ib)))
		return SP_DROP_MALFORMED;
	int v4 = inner == SP_NH_IPV4;
	__u8 inner_ecn = v4 ? ib[1] & 3 : (ib[1] >> 4) & 3;
	if (inner_ecn == SP_ECN_NOT_ECT)
		return outer_ecn == SP_ECN_CE ? SP_DROP_ECN : 0;
	__u8 want = outer_ecn == SP_ECN_CE ? SP_ECN_CE : (inner_ecn == SP_ECN_ECT0 ? SP_ECN_ECT1 : inner_ecn);
	if (want == inner_ecn)
		return 0;
	__u8 nb = v4 ? (ib[1] & 0xfc) | want : (ib[1] & 0xcf) | want << 4;
	if (v4) {
		/* Version/IHL and TOS are one 16-bit word of the header checksum. */
		__be16 old = bpf_htons((__u16)ib[0] << 8 | ib[1]), new = bpf_htons((__u16)ib[0] << 8 | nb);
		if (bpf_l3_csum_replace(skb, off + offsetof(struct iphdr, check), old, new, 2))
			return SP_DROP_ADJUST;
	}
	if (bpf_skb_store_bytes(skb, off + 1, &nb, 1, BPF_F_RECOMPUTE_CSUM))
		return SP_DROP_ADJUST;
	return 0;
}

/* H.Encaps' push, the one place that owns the GSO cases. `o` is written after the Ethernet
 * header. Segment sizes are kept (FIXED_GSO): the headend checked them against the inner MTU,
 * which leaves room for the largest outer header, and UDP GSO (UDP_SEGMENT) may not be resized
 * at all (its gso_size delimits datagrams). ENCAP_L3_IPV6 makes a GSO packet's segments carry
 * the outer header (tunnel GSO type, inner offsets); the kernel refuses it (-EALREADY) for a
 * packet that still has skb->encapsulation from a decapsulation earlier on this machine (End.AD
 * or End.AS inbound popped it; the VNF returned it whole, GSO or not). Such a packet's GSO type
 * and inner offsets already describe this very inner packet under an IPv6 outer header, so it
 * is pushed plainly; for an IPv4 inner packet skb->protocol must still become IPv6, which only
 * a decapsulating shrink sets: push 8 bytes more, then pop them with DECAP_L3_IPV6. */
static __always_inline int push_outer(struct __sk_buff *skb, struct outer_hdr *o)
{
	__u64 len = o->len;
	if (len < SP_IP6_LEN + SP_SRH_FIXED + 16 || len > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	const __u64 fixed = BPF_F_ADJ_ROOM_FIXED_GSO;
	long err = bpf_skb_adjust_room(skb, (__s32)len, BPF_ADJ_ROOM_MAC, fixed | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6);
	if (err == -SP_EALREADY) {
		int v4 = skb->protocol == bpf_htons(ETH_P_IP);
		err = bpf_skb_adjust_room(skb, (__s32)len + (v4 ? 8 : 0), BPF_ADJ_ROOM_MAC, fixed);
		if (!err && v4)
			err = bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_MAC, fixed | SP_ADJ_ROOM_DECAP_L3_IPV6);
	}
	if (err)
		return SP_DROP_ADJUST;
	sp_barrier_var(len);
	if (len < SP_IP6_LEN + SP_SRH_FIXED + 16 || len > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, len, 0))
		return SP_DROP_ADJUST;
	__be16 proto = bpf_htons(ETH_P_IPV6);
	if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
		return SP_DROP_ADJUST;
	return 0;
}

/* Pops the outer IPv6 + SRH of `len` bytes (ECN per RFC 6040 first); `inner` is the SRH's next
 * header (4 or 41). */
static __always_inline int pop_outer(struct __sk_buff *skb, __u32 len, __u8 inner)
{
	__u64 l = len;
	if (l > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	int err = ecn_decap(skb, len, inner);
	if (err)
		return err;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	flags |= inner == SP_NH_IPV4 ? SP_ADJ_ROOM_DECAP_L3_IPV4 : SP_ADJ_ROOM_DECAP_L3_IPV6;
	if (bpf_skb_adjust_room(skb, -(__s32)l, BPF_ADJ_ROOM_MAC, flags))
		return SP_DROP_ADJUST;
	if (inner == SP_NH_IPV4) {
		__be16 proto = bpf_htons(ETH_P_IP);
		if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
			return SP_DROP_ADJUST;
	}
	return 0;
}

static __always_inline int inner_supported(__u8 nh)
{
	return nh == SP_NH_IPV6 || nh == SP_NH_IPV4;
}

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	if (bpf_skb_store_bytes(skb, 0, dst, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, src, ETH_ALEN, 0))
		return SP_DROP_ADJUST;
	return 0;
}

/* Where a packet being steered comes from: whom to tell when it cannot go on. */
enum sp_origin {
	SP_ORIGIN_TRANSIT = 0, /* it carries its SRv6 header already (uplink): drop, count */
	SP_ORIGIN_POD = 1,     /* headend: its source is behind the interface it came in on */
	SP_ORIGIN_VNF = 2,     /* a VNF returned it: its source is reached through the node's routing */
};

/* The FIB's next hop toward `o`'s DA (the underlay route to the next node's locator) in `p`.
 * `tot_len`: the IPv6 packet's length once `o` is pushed, checked against the route's MTU
 * (BPF_FIB_LKUP_RET_FRAG_NEEDED, with the MTU in mtu_result); 0 checks the packet as it is
 * against the egress device instead (a GSO packet always passes: its segments were checked at
 * the headend). */
static __always_inline long fib_next_hop(struct __sk_buff *skb, const struct outer_hdr *o, __u32 tot_len, struct bpf_fib_lookup *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->family = AF_INET6;
	p->ifindex = skb->ingress_ifindex;
	p->tot_len = tot_len;
	__builtin_memcpy(p->ipv6_src, &o->bytes[OFF_SRC], 16);
	__builtin_memcpy(p->ipv6_dst, &o->bytes[OFF_DST], 16);
	return bpf_fib_lookup(skb, p, sizeof(*p), 0);
}

/* Sends the packet to the next hop `fib_next_hop` found (`rc`), resolving the neighbour in the
 * kernel when it is not known yet. */
static __always_inline int fib_send(struct __sk_buff *skb, struct bpf_fib_lookup *p, long rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		if (set_macs(skb, p->dmac, p->smac))
			return drop(SP_DROP_ADJUST);
		return bpf_redirect(p->ifindex, 0);
	case BPF_FIB_LKUP_RET_NO_NEIGH: {
		struct bpf_redir_neigh nh = {};
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, p->ipv6_dst, 16);
		return bpf_redirect_neigh(p->ifindex, &nh, sizeof(nh), 0);
	}
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return drop(SP_DROP_MTU);
	default:
		return drop(SP_DROP_NO_ROUTE);
	}
}

/* Forwards a packet that already carries its SRv6 header toward its DA. */
static __always_inline int fib_forward(struct __sk_buff *skb, const struct outer_hdr *o)
{
	struct bpf_fib_lookup p;
	return fib_send(skb, &p, fib_next_hop(skb, o, 0, &p));
}

/* H.Encaps and forward: the route is looked up first with the encapsulated length, so that a
 * packet too big for it (an uplink smaller than the one the inner MTU was computed from) is
 * answered before anything changed: its source hears the MTU left for the inner packet, back
 * out of the interface at the headend, through the node's routing from a VNF. */
static __always_inline int encap_forward(struct __sk_buff *skb, struct outer_hdr *o, int origin)
{
	struct bpf_fib_lookup p;
	__u32 tot_len = skb->gso_size ? 0 : skb->len - ETH_HLEN + o->len;
	long rc = fib_next_hop(skb, o, tot_len, &p);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && p.mtu_result > o->len) {
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
		if (cfg)
			return packet_too_big(skb, cfg, o->bytes[OFF_SRH] != SP_NH_IPV4, p.mtu_result - o->len, origin == SP_ORIGIN_VNF);
	}
	int err = push_outer(skb, o);
	if (err)
		return drop(err);
	return fib_send(skb, &p, rc);
}

/* Deliver a packet whose (possibly not yet pushed) outer header is `o`. `origin`
 * SP_ORIGIN_TRANSIT: the packet carries `o` already (uplink) and it must be popped for local
 * SIDs; else it is pushed here. A DA that is a local SID is served here, so a next segment on
 * this node never leaves it. */
static __always_inline int steer(struct __sk_buff *skb, struct outer_hdr *o, int origin)
{
	int in_packet = origin == SP_ORIGIN_TRANSIT;
	__u32 skb_len = skb->len;
	struct sid_entry *sid = bpf_map_lookup_elem(&sp_sids, &o->bytes[OFF_DST]);
	if (!sid) {
		return encap_forward(skb, o, origin);
	}
	__u8 da[16];
	__builtin_memcpy(da, &o->bytes[OFF_DST], 16);
	int err;
	switch (sid->behavior) {
	case SP_END_AD:
	case SP_END_AS: {
		/* draft-ietf-spring-sr-service-programming §6.1-6.2: End, then (End.AD only) cache the
		 * outer headers keyed by the VNF's return interface, and hand the inner packet to the
		 * VNF. End.AS restores configured headers instead. */
		err = apply_end(o, 0);
		if (err)
			return in_packet ? sid_error(skb, da, skb_len, err, o->len) : drop_sid(da, skb_len, err);
		if (in_packet && (err = pop_outer(skb, o->len, o->bytes[OFF_SRH])))
			return drop_sid(da, skb_len, err);
		if (sid->behavior == SP_END_AD)
			ad_cache_store(skb, sid->cache_ifindex, o);
		if ((err = set_macs(skb, sid->vnf_mac, sid->host_mac)))
			return drop_sid(da, skb_len, err);
		count_sid(da, skb_len, 0);
		return bpf_redirect_peer(sid->ifindex, 0);
	}
	case SP_END_DT46:
		/* RFC 8986 §4.8-4.10 with the main table: only with no segment left. */
		if (o->bytes[OFF_SL] != 0)
			return in_packet ? sid_error(skb, da, skb_len, SP_DROP_SL_NONZERO, 0) : drop_sid(da, skb_len, SP_DROP_SL_NONZERO);
		if (!inner_supported(o->bytes[OFF_SRH]))
			return drop_sid(da, skb_len, SP_DROP_INNER_PROTO);
		if (in_packet && (err = pop_outer(skb, o->len, o->bytes[OFF_SRH])))
			return drop_sid(da, skb_len, err);
		count_sid(da, skb_len, 0);
		return TC_ACT_OK;
	default:
		return drop_sid(da, skb_len, SP_DROP_UNKNOWN_SID);
	}
}

/* A packet that carries its SRH by insertion (`o` holds its IPv6 header and SRH): a local
 * End.AM SID hands it to the VNF with the DA masqueraded; anything else goes to the FIB. */
static __always_inline int steer_inserted(struct __sk_buff *skb, struct outer_hdr *o)
{
	__u32 skb_len = skb->len;
	struct sid_entry *sid = bpf_map_lookup_elem(&sp_sids, &o->bytes[OFF_DST]);
	if (!sid)
		return fib_forward(skb, o);
	__u8 da[16];
	__builtin_memcpy(da, &o->bytes[OFF_DST], 16);
	/* Only End.AM keeps the original packet: the others expect an encapsulated one. */
	if (sid->behavior != SP_END_AM)
		return drop_sid(da, skb_len, SP_DROP_INNER_PROTO);
	int err = apply_end(o, 1);
	if (err)
		return sid_error(skb, da, skb_len, err, o->len);
	/* In place: keep skb->csum valid for CHECKSUM_COMPLETE packets from a NIC. */
	if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, SP_IP6_LEN + SP_SRH_FIXED, BPF_F_RECOMPUTE_CSUM))
		return drop_sid(da, skb_len, SP_DROP_ADJUST);
	if ((err = set_macs(skb, sid->vnf_mac, sid->host_mac)))
		return drop_sid(da, skb_len, err);
	am_learn(skb, sid->cache_ifindex, o);
	count_sid(da, skb_len, 0);
	return bpf_redirect_peer(sid->ifindex, 0);
}

/* H.Insert (draft-filsfils-spring-srv6-net-pgm-insertion): the policy's SRH (`o`, a template of
 * IPv6 header + SRH) goes between the packet's IPv6 header and its payload. Segment List[0]
 * becomes the packet's destination, the DA the first segment; `o` ends up holding the packet's
 * new IPv6 header and SRH. Returns 0 or a drop reason. */
static __always_inline int insert_srh(struct __sk_buff *skb, struct outer_hdr *o)
{
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
		return SP_DROP_MALFORMED;
	__u64 len = o->len;
	if (len < SP_IP6_LEN + SP_SRH_FIXED + 32 || len > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	__u32 srh_len = len - SP_IP6_LEN;
	__u32 plen = bpf_ntohs(ip6.payload_len) + srh_len;
	if (plen > 0xffff)
		return SP_DROP_MTU;
	__builtin_memcpy(&o->bytes[OFF_SEGS], &ip6.daddr, 16);
	o->bytes[OFF_SRH] = ip6.nexthdr;
	ip6.nexthdr = SP_NH_ROUTING;
	ip6.payload_len = bpf_htons(plen);
	__builtin_memcpy(&ip6.daddr, &o->bytes[OFF_DST], 16);
	__builtin_memcpy(o->bytes, &ip6, SP_IP6_LEN);
	if (bpf_skb_adjust_room(skb, (__s32)srh_len, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_FIXED_GSO))
		return SP_DROP_ADJUST;
	sp_barrier_var(len);
	if (len < SP_IP6_LEN + SP_SRH_FIXED + 32 || len > SP_MAX_HDR)
		return SP_DROP_MALFORMED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, len, 0))
		return SP_DROP_ADJUST;
	return 0;
}

/* End.AM de-masquerading (draft §6.4) on what a VNF returns (`o`: its IPv6 header and SRH, as
 * loaded by load_srh): the DA becomes Segment List[Segments Left] again. When that is the final
 * destination (SL 0) the SRH has no use left and is popped (as PSP would), so the destination
 * gets the packet exactly as the source sent it. */
static __always_inline int end_am_return(struct __sk_buff *skb, struct outer_hdr *o)
{
	if (!am_returned_as_given(skb, o))
		return drop(SP_DROP_FORGED);
	__u8 sl = o->bytes[OFF_SL];
	if (sl > o->bytes[OFF_LAST] || sl >= SP_MAX_SEGS)
		return drop(SP_DROP_MALFORMED);
	__u64 off = OFF_SEGS + 16 * (__u64)sl;
	sp_barrier_var(off);
	if (off + 16 > SP_MAX_HDR)
		return drop(SP_DROP_MALFORMED);
	__builtin_memcpy(&o->bytes[OFF_DST], &o->bytes[off], 16);
	if (sl > 0) {
		/* The next segment must be a SID of the domain: a VNF cannot use the SRH to route. */
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
		if (!cfg || !prefix_match(&o->bytes[OFF_DST], cfg->block, cfg->block_len))
			return drop(SP_DROP_CLOSED_DOMAIN);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, SP_IP6_LEN, 0))
			return drop(SP_DROP_ADJUST);
		return steer_inserted(skb, o);
	}
	__u64 srh_len = o->len - SP_IP6_LEN;
	__u32 plen = (__u32)o->bytes[OFF_PLEN] << 8 | o->bytes[OFF_PLEN + 1];
	if (srh_len > SP_MAX_HDR - SP_IP6_LEN || plen < srh_len)
		return drop(SP_DROP_MALFORMED);
	plen -= srh_len;
	o->bytes[OFF_PLEN] = plen >> 8;
	o->bytes[OFF_PLEN + 1] = plen;
	o->bytes[6] = o->bytes[OFF_SRH]; /* next header */
	if (bpf_skb_adjust_room(skb, -(__s32)srh_len, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_FIXED_GSO))
		return drop(SP_DROP_ADJUST);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, SP_IP6_LEN, 0))
		return drop(SP_DROP_ADJUST);
	return fib_forward(skb, o);
}
