/* SPDX-License-Identifier: GPL-2.0 */
/* End.AM, the masquerading proxy (draft §6.4) with SRH insertion (H.Insert): the VNF gets the
 * original packet with its SRH inside, and must return exactly what it was given. */
#pragma once
#include "end_ad.h"

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
	__u64 age = cfg ? cfg->ad_age_ns : 0;
	ad_learn(&sp_ad_flows, &k, c, o, age, age ? bpf_ktime_get_coarse_ns() : 0);
}

/* Whether what an End.AM VNF returns (`o`: its IPv6 header and SRH) is a flow End.AM handed it,
 * with the very SRH it had: no forged source, no segment list of the VNF's own making. */
static __always_inline int am_returned_as_given(struct __sk_buff *skb, const struct outer_hdr *o)
{
	struct flow_key k;
	am_flow_of(skb, sp_ingress_ifindex(skb), o, &k);
	struct outer_hdr *c = bpf_map_lookup_elem(&sp_ad_flows, &k);
	if (!c || c->len != o->len)
		return 0;
	__u32 len = o->len;
	const __u64 *cw = hdr_words(c), *ow = hdr_words(o);
	__u64 diff = 0;
#pragma unroll
	for (int i = OFF_SRH / 8; i < SP_MAX_HDR / 8; i++) {
		if (i * 8 < len)
			diff |= cw[i] ^ ow[i];
	}
	return diff == 0;
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
	__u32 stats = sid->stats;
	/* Only End.AM keeps the original packet: the others expect an encapsulated one. */
	if (sid->behavior != SP_END_AM)
		return drop_sid(da, stats, skb_len, SP_DROP_INNER_PROTO);
	int err = apply_end(o, 1);
	if (err)
		return sid_error(skb, da, stats, skb_len, err, o->len);
	/* In place: keep skb->csum valid for CHECKSUM_COMPLETE packets from a NIC. */
	if (bpf_skb_store_bytes(skb, ETH_HLEN, o->bytes, SP_IP6_LEN + SP_SRH_FIXED, BPF_F_RECOMPUTE_CSUM))
		return drop_sid(da, stats, skb_len, SP_DROP_ADJUST);
	if ((err = set_macs(skb, sid->vnf_mac, sid->host_mac)))
		return drop_sid(da, stats, skb_len, err);
	am_learn(skb, sid->cache_ifindex, o);
	count_sid(stats, skb_len, 0);
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

/* End.AM outbound on a VNF's return interface: the packet must be IPv6 with its SRH. */
static __always_inline int end_am_outbound(struct __sk_buff *skb, int ipv6, __u8 nexthdr)
{
	if (!ipv6)
		return drop(SP_DROP_INNER_PROTO);
	if (nexthdr != SP_NH_ROUTING)
		return drop(SP_DROP_NO_SRH);
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	int err = load_srh(skb, o);
	return err ? drop(err) : end_am_return(skb, o);
}
