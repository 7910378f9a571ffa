/* SPDX-License-Identifier: GPL-2.0 */
/* SRv6 header work shared by every behaviour, on an outer_hdr buffer or the packet: End,
 * validation, the per-packet outer fields, ECN at decapsulation, push and pop (the one place
 * that owns the GSO cases), forwarding through the FIB, and the inner packet's hop at a proxy. */
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

/* Copies an outer header of `len` bytes (a multiple of 8, at most SP_MAX_HDR) between `buf` and
 * the frame right after its Ethernet header, 8 bytes at a time: into the packet when `to_pkt`.
 * -1 when the linear part does not hold it all (the caller then uses the helpers). */
static __always_inline int hdr_copy(struct __sk_buff *skb, __u8 *buf, __u64 len, int to_pkt)
{
	void *data = sp_data(skb), *end = sp_data_end(skb);
	__u8 *p = data + ETH_HLEN;
	if (len > SP_MAX_HDR || (len & 7) || (void *)(p + len) > end)
		return -1;
#pragma unroll
	for (int i = 0; i < SP_MAX_HDR / 8; i++) {
		if (i * 8 >= len)
			break;
		if ((void *)(p + i * 8 + 8) > end)
			return -1;
		if (to_pkt)
			*(__u64 *)(p + i * 8) = *(__u64 *)(buf + i * 8);
		else
			*(__u64 *)(buf + i * 8) = *(__u64 *)(p + i * 8);
	}
	return 0;
}

static __always_inline struct outer_hdr *scratch(void)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&sp_scratch, &zero);
	return s ? &s->h : NULL;
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
	/* By words (hdr_words): a memcpy from a variable offset copies byte by byte. */
	__u64 *w = (__u64 *)o->bytes;
	w[OFF_DST / 8] = w[off / 8];
	w[OFF_DST / 8 + 1] = w[off / 8 + 1];
	return 0;
}

/* Loads the packet's IPv6 header and SRH (right after Ethernet) into `o` and validates them
 * (RFC 8754 §4.3.1): 0 or a drop reason. Segments Left may be Last Entry + 1 (a reduced SRH
 * without the first segment). */
static __always_inline int load_srh(struct __sk_buff *skb, struct outer_hdr *o)
{
	__u8 fixed[SP_SRH_FIXED];
	const __u8 *srh = pkt_read(skb, ETH_HLEN + SP_IP6_LEN, SP_SRH_FIXED, fixed);
	if (!srh)
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
	if (hdr_copy(skb, o->bytes, outer_len, 0) && bpf_skb_load_bytes(skb, ETH_HLEN, o->bytes, outer_len))
		return SP_DROP_MALFORMED;
	o->len = outer_len;
	return 0;
}

/* The per-packet fields of an outer header about to be pushed: payload length; traffic class
 * copied from the inner packet (ECN as RFC 6040's normal mode asks, and the DSCP, the uniform
 * model of RFC 2983: the inner DSCP itself is never changed); flow label from the inner flow
 * (RFC 6437 §3, RFC 6438; RFC 8986 §5.1): `hash`, the flow's, with an IPv6 inner packet's own
 * label mixed in, so that a sender that repaths a flow by changing its label (Linux, on a
 * retransmission timeout) repaths the outer one too. */
static __always_inline void set_outer_fields(struct __sk_buff *skb, struct outer_hdr *o, __u32 hash)
{
	__u32 plen = skb->len - ETH_HLEN + o->len - SP_IP6_LEN;
	__u8 buf[4] = {};
	const __u8 *ip = pkt_read(skb, ETH_HLEN, sizeof(buf), buf);
	if (!ip)
		ip = buf;
	int ipv4 = (ip[0] >> 4) == 4;
	__u8 tc = ipv4 ? ip[1] : (__u8)(ip[0] << 4 | ip[1] >> 4);
	__u32 inner_label = ipv4 ? 0 : ((__u32)(ip[1] & 0xf) << 16 | (__u32)ip[2] << 8 | ip[3]);
	__u32 label = (hash ^ inner_label) & 0xfffff;
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
	__u8 ob_buf[2], ib_buf[2];
	const __u8 *ob = pkt_read(skb, ETH_HLEN, sizeof(ob_buf), ob_buf);
	if (!ob)
		return SP_DROP_MALFORMED;
	__u8 outer_ecn = (ob[1] >> 4) & 3;
	if (outer_ecn != SP_ECN_CE && outer_ecn != SP_ECN_ECT1)
		return 0;
	__u32 off = ETH_HLEN + outer_len;
	if (bpf_skb_load_bytes(skb, off, ib_buf, sizeof(ib_buf)))
		return SP_DROP_MALFORMED;
	const __u8 *ib = ib_buf;
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
	/* IPv6: the byte changes the packet's sum, which skb->csum (CHECKSUM_COMPLETE) follows.
	 * IPv4: the header checksum changed the other way, the header's sum stays: nothing to
	 * follow. */
	if (bpf_skb_store_bytes(skb, off + 1, &nb, 1, v4 ? 0 : BPF_F_RECOMPUTE_CSUM))
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
	if (hdr_copy(skb, o->bytes, len, 1) && bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, len, 0))
		return SP_DROP_ADJUST;
	__be16 proto = bpf_htons(ETH_P_IPV6);
	__be16 *type = pkt_linear(skb, 12, sizeof(proto));
	if (type)
		*type = proto;
	else if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
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
	__u8 *eth = pkt_linear(skb, 0, 2 * ETH_ALEN);
	if (eth) {
		__builtin_memcpy(eth, dst, ETH_ALEN);
		__builtin_memcpy(eth + ETH_ALEN, src, ETH_ALEN);
		return 0;
	}
	if (bpf_skb_store_bytes(skb, 0, dst, ETH_ALEN, 0) || bpf_skb_store_bytes(skb, ETH_ALEN, src, ETH_ALEN, 0))
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
	p->ifindex = sp_ingress_ifindex(skb);
	p->tot_len = tot_len;
	__builtin_memcpy(p->ipv6_src, &o->bytes[OFF_SRC], 16);
	__builtin_memcpy(p->ipv6_dst, &o->bytes[OFF_DST], 16);
	return bpf_fib_lookup(skb, p, sizeof(*p), 0);
}

/* Out of `ifindex` to a next hop whose MACs are known. */
static __always_inline int send_to(struct __sk_buff *skb, __u32 ifindex, const __u8 *dmac, const __u8 *smac)
{
	if (set_macs(skb, dmac, smac))
		return drop(SP_DROP_ADJUST);
	return bpf_redirect(ifindex, 0);
}

/* Sends the packet to the next hop a FIB lookup found (`rc`, IPv6 or IPv4), resolving the
 * neighbour in the kernel when it is not known yet. */
static __always_inline int fib_send(struct __sk_buff *skb, struct bpf_fib_lookup *p, long rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		return send_to(skb, p->ifindex, p->dmac, p->smac);
	case BPF_FIB_LKUP_RET_NO_NEIGH: {
		struct bpf_redir_neigh nh = {};
		nh.nh_family = p->family;
		if (p->family == AF_INET)
			nh.ipv4_nh = p->ipv4_dst;
		else
			__builtin_memcpy(nh.ipv6_nh, p->ipv6_dst, 16);
		return bpf_redirect_neigh(p->ifindex, &nh, sizeof(nh), 0);
	}
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return drop(SP_DROP_MTU);
	default:
		return drop(SP_DROP_NO_ROUTE);
	}
}

/* The FIB's answer for a plain packet that came in on `in`, its addresses in `p` (which gets
 * the next hop), or -1 where it has none to send it by or would send it back out the way it
 * came: the node's routing is left to say what then. */
static __always_inline long fib_onward(struct __sk_buff *skb, struct bpf_fib_lookup *p, __u32 in)
{
	long rc = bpf_fib_lookup(skb, p, sizeof(*p), 0);
	return (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && p->ifindex != in ? rc : -1;
}

/* A packet on its way to its destination, a chain's source, past netfilter: an ICMP error this
 * node or a VNF made in place of a chain's packet (`v6`: ICMPv6), or a VNF's reset (the node's
 * conntrack never saw the flow plain and would take it for INVALID, which kube-proxy drops; an
 * IPv4 error's source, the flow's destination, would fail a strict rp_filter too). To the
 * node's routing when the FIB has no other way for it. */
static __always_inline int error_to_source(struct __sk_buff *skb, int v6)
{
	/* The error is made: the quote buffer is free, and the stack of the paths that call this
	 * has no room for the lookup's parameters. */
	__u32 zero = 0;
	struct bpf_fib_lookup *p = bpf_map_lookup_elem(&sp_quote, &zero);
	if (!p)
		return TC_ACT_OK;
	__u32 in = sp_ingress_ifindex(skb);
	__builtin_memset(p, 0, sizeof(*p));
	p->ifindex = in;
	int bad;
	if (v6) {
		p->family = AF_INET6;
		bad = bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), p->ipv6_src, 16) ||
			bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, daddr), p->ipv6_dst, 16);
	} else {
		p->family = AF_INET;
		bad = bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &p->ipv4_src, 4) ||
			bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &p->ipv4_dst, 4);
	}
	if (bad)
		return TC_ACT_OK;
	long rc = fib_onward(skb, p, in);
	return rc < 0 ? TC_ACT_OK : fib_send(skb, p, rc);
}

/* Forwards a packet that already carries its SRv6 header toward its DA. */
static __always_inline int fib_forward(struct __sk_buff *skb, const struct outer_hdr *o)
{
	struct bpf_fib_lookup p;
	return fib_send(skb, &p, fib_next_hop(skb, o, 0, &p));
}

/* How long encap_forward reuses a next hop the FIB gave (sp_fib_cache): a route or neighbour
 * change reaches a chain's packets at most this late (the tick clock: plus one tick). A full
 * route and neighbour lookup per packet was the largest part of End.AD's outbound cost. */
#define SP_FIB_CACHE_NS 10000000ULL

/* `o`'s entry in sp_fib_cache (`k` filled for fib_remember), fresh or not, or NULL. What VNFs
 * return shares one entry per next segment (ingress 0 in the key): srv6pipes makes every VNF
 * interface alike (no VRF, no `iif` rule, forwarding on), so the FIB answers them all the same,
 * and a packet spread over 1,000 VNFs finds its next hop warm and fresh instead of refreshing
 * one entry per VNF. A pod's interface (the headend) is the primary CNI's: keyed by itself. */
static __always_inline struct fib_hop *fib_entry(struct __sk_buff *skb, const struct outer_hdr *o, int origin, struct fib_key *k)
{
	k->ifindex = origin == SP_ORIGIN_VNF ? 0 : sp_ingress_ifindex(skb);
	__builtin_memcpy(k->src, &o->bytes[OFF_SRC], 16);
	__builtin_memcpy(k->dst, &o->bytes[OFF_DST], 16);
	return bpf_map_lookup_elem(&sp_fib_cache, k);
}

/* Whether entry `h` is fresh and was checked for packets of `tot_len` (0: GSO) or longer.
 * A fresh entry's next hop is copied to the stack before anything else runs: sp_fib_cache is
 * an LRU hash, whose elements are preallocated, so an element another CPU replaces goes back
 * to the free list at once and may be reused for another key while this program still holds
 * it; sending from the entry after the skb helpers (push_outer, ~100 ns) would widen that
 * window from the copy's few loads to the helpers' whole run. */
static __always_inline int fib_fresh(const struct fib_hop *h, __u32 tot_len, __u64 now)
{
	return h && now - h->stamp < SP_FIB_CACHE_NS && tot_len <= h->max_len;
}

/* A fresh entry's next hop, as copied to the stack (see fib_fresh). */
struct next_hop {
	__u32 ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

static __always_inline void next_hop_of(struct next_hop *n, const struct fib_hop *h)
{
	n->ifindex = h->ifindex;
	__builtin_memcpy(n->dmac, h->dmac, ETH_ALEN);
	__builtin_memcpy(n->smac, h->smac, ETH_ALEN);
}

/* Whether MAC addresses `a` and `b` are the same (BPF has no memcmp). */
static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		diff |= a[i] ^ b[i];
	return !diff;
}

/* Keeps the FIB's complete answer `p` for packets up to `tot_len` (a miss on a fresh entry
 * means a longer packet than it was checked for: this one now bounds it). When the entry `h`
 * already names that next hop (the usual refresh), it is renewed in place: no LRU update. */
static __always_inline void fib_remember(const struct fib_key *k, struct fib_hop *h, const struct bpf_fib_lookup *p, __u32 tot_len,
					 __u64 now)
{
	if (h && h->ifindex == p->ifindex && same_mac(h->dmac, p->dmac) && same_mac(h->smac, p->smac)) {
		h->max_len = tot_len;
		h->stamp = now;
		return;
	}
	struct fib_hop n = {.stamp = now, .ifindex = p->ifindex, .max_len = tot_len};
	__builtin_memcpy(n.dmac, p->dmac, ETH_ALEN);
	__builtin_memcpy(n.smac, p->smac, ETH_ALEN);
	bpf_map_update_elem(&sp_fib_cache, k, &n, BPF_ANY);
}

/* H.Encaps and forward: the route is looked up first (or taken from sp_fib_cache) with the
 * encapsulated length, so that a packet too big for it (an uplink smaller than the one the
 * inner MTU was computed from) is answered before anything changed: its source hears the MTU
 * left for the inner packet, back out of the interface at the headend, by the FIB from a VNF
 * (error_to_source). */
static __always_inline int encap_forward(struct __sk_buff *skb, struct outer_hdr *o, int origin)
{
	__u32 tot_len = skb->gso_size ? 0 : skb->len - ETH_HLEN + o->len;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct fib_key k;
	struct fib_hop *h = fib_entry(skb, o, origin, &k);
	if (fib_fresh(h, tot_len, now)) {
		struct next_hop n;
		next_hop_of(&n, h);
		int err = push_outer(skb, o);
		if (err)
			return drop(err);
		return send_to(skb, n.ifindex, n.dmac, n.smac);
	}
	struct bpf_fib_lookup p;
	long rc = fib_next_hop(skb, o, tot_len, &p);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && p.mtu_result > o->len) {
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
		if (cfg) {
			int v6 = o->bytes[OFF_SRH] != SP_NH_IPV4, vnf = origin == SP_ORIGIN_VNF;
			int verdict = packet_too_big(skb, cfg, v6, p.mtu_result - o->len, vnf);
			return vnf && verdict == TC_ACT_OK ? error_to_source(skb, v6) : verdict;
		}
	}
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		fib_remember(&k, h, &p, tot_len, now);
	int err = push_outer(skb, o);
	if (err)
		return drop(err);
	return fib_send(skb, &p, rc);
}

/* The plain packet's TTL / hop limit, one less. */
static __always_inline int decrement_inner_ttl(struct __sk_buff *skb, int ipv4)
{
	/* The 16-bit word of the header that holds the TTL (IPv4: TTL, protocol) or hop limit
	 * (IPv6: next header, hop limit), read once: its change is what the checksums follow. */
	__u32 wo = ETH_HLEN + (ipv4 ? offsetof(struct iphdr, ttl) : offsetof(struct ipv6hdr, nexthdr));
	__u8 buf[2], *w = pkt_linear(skb, wo, 2), *p = w;
	if (!w) {
		if (bpf_skb_load_bytes(skb, wo, buf, 2))
			return SP_DROP_MALFORMED;
		w = buf;
	}
	__u8 nw[2] = {w[0], w[1]};
	__u8 ttl = ipv4 ? nw[0] : nw[1];
	if (ttl <= 1)
		return SP_DROP_INNER_TTL;
	if (ipv4)
		nw[0] = ttl - 1;
	else
		nw[1] = ttl - 1;
	__u16 old, new;
	__builtin_memcpy(&old, w, 2);
	__builtin_memcpy(&new, nw, 2);
	if (ipv4) {
		/* The header checksum moves the other way: the header's sum, and skb->csum, stay. */
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2) ||
		    bpf_skb_store_bytes(skb, wo, nw, 1, 0))
			return SP_DROP_ADJUST;
		return 0;
	}
	if (p)
		p[1] = nw[1];
	else if (bpf_skb_store_bytes(skb, wo + 1, &nw[1], 1, 0))
		return SP_DROP_ADJUST;
	/* A packet that came with a checksum of it all (CHECKSUM_COMPLETE: from a NIC, or a VNF that
	 * bridges it back) keeps skb->csum true by the word's difference (at an even offset); for
	 * any other packet the helper refuses: nothing to follow. */
	bpf_csum_update(skb, (__u32)(__u16)~old + new);
	return 0;
}

/* The proxy is a hop of the inner packet on the way back (draft §6, as VPP does): its TTL or
 * hop limit goes down by one. Returns 1 with the verdict in `verdict` for a packet that ends
 * here: one whose TTL ran out is dropped (`inner_ttl`) and its source told by the FIB's way to
 * it (error_to_source; the source is not behind the VNF's interface): ICMPv6 Time Exceeded from the node's
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
		*verdict = r == TC_ACT_OK ? error_to_source(skb, !ipv4) : r;
	return 1;
}

/* Delivers a packet toward its DA, serving local SIDs (steer.h). */
static __always_inline int steer(struct __sk_buff *skb, struct outer_hdr *o, int origin);
