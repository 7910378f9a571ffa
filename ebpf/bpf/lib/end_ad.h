/* SPDX-License-Identifier: GPL-2.0 */
/* End.AD, the dynamic proxy (draft-ietf-spring-sr-service-programming §6.2): inbound it learns
 * the headers per VNF interface and per flow; outbound it restores them on what the VNF
 * returns. */
#pragma once
#include "srv6.h"
#include "flow.h"

/* Whether cached headers `c` are the very headers `o` (both normalized, both made by End: the
 * DA, which End copied from the segment list, is not compared). With age 0 this runs on every
 * packet: a global function verified once on its own (unrolled and inlined wherever End.AD
 * learns, it overflowed sp_vnf's 16-bit jump offsets), its words XORed together (the DA's two
 * left out), unrolled with a constant trip count (a loop that breaks at `len` is not unrolled:
 * its trip count is not a constant). */
__noinline int hdr_same(const struct outer_hdr *c, const struct outer_hdr *o)
{
	if (!c || !o || c->len != o->len || o->len < OFF_DST + 16)
		return 0;
	__u32 len = o->len;
	const __u64 *cw = hdr_words(c), *ow = hdr_words(o);
	__u64 diff = 0;
#pragma unroll
	for (int i = 0; i < OFF_DST / 8; i++)
		diff |= cw[i] ^ ow[i];
#pragma unroll
	for (int i = (OFF_DST + 16) / 8; i < SP_MAX_HDR / 8; i++) {
		if (i * 8 < len)
			diff |= cw[i] ^ ow[i];
	}
	return diff == 0;
}

/* Store an End.AD cache entry (`map` is the per-interface or the per-flow cache; `now`: the tick
 * clock, 0 with age 0, which reads it only to stamp what it writes). Like SRNK's
 * `age`, an entry learnt less than ad_age_ns ago is left alone without even comparing; older,
 * it is compared and written only when it changed (with age 0: compared on every packet), so
 * the steady state keeps the cache line shared. Payload length, traffic class and flow label
 * are per packet: the caller zeroes them (normalize_cached). */
static __always_inline void ad_learn(void *map, const void *key, struct outer_hdr *c, struct outer_hdr *o, __u64 age, __u64 now)
{
	if (c && age && now - c->stamp < age)
		return;
	if (c && hdr_same(c, o)) {
		if (age)
			c->stamp = now;
		return;
	}
	o->stamp = age ? now : bpf_ktime_get_coarse_ns(); /* age 0: no clock read but here */
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

/* The plain packet's flow (right after the Ethernet header): addresses, protocol (behind IPv6
 * options headers) and, for TCP and UDP (not on non-first fragments), ports. */
static __always_inline int flow_of(struct __sk_buff *skb, __u32 ifindex, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	__u8 vhl_buf;
	const __u8 *vhl = pkt_read(skb, ETH_HLEN, 1, &vhl_buf);
	if (!vhl)
		return -1;
	__u32 l4;
	if ((*vhl >> 4) == 4) {
		struct iphdr buf;
		const struct iphdr *ip = pkt_read(skb, ETH_HLEN, sizeof(buf), &buf);
		if (!ip)
			return -1;
		k->family = 4;
		k->proto = ip->protocol;
		__builtin_memcpy(k->saddr, &ip->saddr, 4);
		__builtin_memcpy(k->daddr, &ip->daddr, 4);
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		l4 = ETH_HLEN + ip->ihl * 4;
	} else if ((*vhl >> 4) == 6) {
		struct ipv6hdr buf;
		const struct ipv6hdr *ip6 = pkt_read(skb, ETH_HLEN, sizeof(buf), &buf);
		if (!ip6)
			return -1;
		k->family = 6;
		k->proto = ip6->nexthdr;
		__builtin_memcpy(k->saddr, &ip6->saddr, 16);
		__builtin_memcpy(k->daddr, &ip6->daddr, 16);
		l4 = ETH_HLEN + sizeof(*ip6);
		/* Options headers hide no flow (the classifier looks behind them too). */
		if ((k->proto == SP_NH_HOP_BY_HOP || k->proto == SP_NH_DEST_OPTS) && skip_ipv6_options(skb, &k->proto, &l4))
			return -1;
	} else {
		return -1;
	}
	if (k->proto == 6 || k->proto == 17) {
		__be16 buf[2];
		const __be16 *ports = pkt_read(skb, l4, sizeof(buf), buf);
		if (ports) {
			k->sport = ports[0];
			k->dport = ports[1];
		}
	}
	return 0;
}

/* A hash of `k`'s flow for its outer flow label (RFC 6437 §3: the same for every packet of a
 * flow, spread over flows), from the key End.AD parsed anyway: the flow dissector behind
 * bpf_get_hash_recalc costs more. The interface (the first word) is left out: a flow's label
 * does not change from one proxy to the next. */
static __always_inline __u32 flow_key_hash(const struct flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0x5eed5eedu;
#pragma unroll
	for (int i = 1; i < (int)(sizeof(*k) / 4); i++)
		h = mix32(h, w[i]);
	return fmix32(h);
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
 * function rewrites flows (its replies could never be matched, or worse, match another flow).
 * Returns 0 for a function that rewrites flows (known from its interface's flags, which are
 * read only when no flow entry was found: such a function never has one), else 1. */
static __always_inline int ad_cache_store(struct __sk_buff *skb, __u32 ifindex, struct outer_hdr *o)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	__u64 age = cfg ? cfg->ad_age_ns : 0;
	/* The tick's clock (the last tick's time, no clock read) is fine for ages of a millisecond
	 * and up; age 0 (compare every packet) needs no clock. */
	__u64 now = age ? bpf_ktime_get_coarse_ns() : 0;
	struct flow_key k;
	int parsed = !flow_of(skb, ifindex, &k);
	struct outer_hdr *c = parsed ? bpf_map_lookup_elem(&sp_ad_flows, &k) : NULL;
	/* The flow's entry was learnt less than `age` ago, and the interface's with it (or since,
	 * by another flow): the steady state of a flow looks at nothing else. */
	if (c && age && now - c->stamp < age)
		return 1;
	normalize_cached(o);
	/* Age 0: a flow whose entry holds these very headers changes nothing, the interface's
	 * included (they are the last learnt that changed). */
	if (c && !age && hdr_same(c, o))
		return 1;
	ad_learn(&sp_ad_cache, &ifindex, bpf_map_lookup_elem(&sp_ad_cache, &ifindex), o, age, now);
	if (!parsed)
		return 1;
	/* Known flows are refreshed; the interface's flags and the quota are looked at only when
	 * a flow is new. */
	if (!c) {
		__u32 *vf = bpf_map_lookup_elem(&sp_vnf_flags, &ifindex);
		if (vf && (*vf & SP_VNF_NO_FLOWS))
			return 0;
		if (!flow_quota_take(cfg, o))
			return 1;
	}
	ad_learn(&sp_ad_flows, &k, c, o, age, now);
	return 1;
}

/* End.AD outbound with the headers `c` learnt for this packet: the inner packet's hop, then on
 * to the next segment. `fk`: the packet's flow, parsed (its hash makes the flow label), or NULL. */
static __always_inline int ad_restore(struct __sk_buff *skb, const struct outer_hdr *c, int ipv4, const struct flow_key *fk)
{
	/* Copied before any helper runs: another CPU relearning the entry may free it meanwhile,
	 * and the map hand the element to another flow's headers at once. */
	struct outer_hdr *o = scratch();
	if (!o)
		return TC_ACT_SHOT;
	__builtin_memcpy(o, c, sizeof(*o));
	int verdict;
	if (inner_hop(skb, ipv4, &verdict))
		return verdict;
	/* The cache was learnt from traffic of one family; the VNF must return the same. */
	if (ipv4 != (o->bytes[OFF_SRH] == SP_NH_IPV4))
		return drop(SP_DROP_INNER_PROTO);
	set_outer_fields(skb, o, fk ? flow_key_hash(fk) : bpf_get_hash_recalc(skb));
	return steer(skb, o, SP_ORIGIN_VNF);
}

/* The per-flow End.AD entry of what a VNF returns on `ifindex` (its flow parsed into `fk`), or
 * NULL. */
static __always_inline struct outer_hdr *ad_flow(struct __sk_buff *skb, __u32 ifindex, struct flow_key *fk)
{
	return flow_of(skb, ifindex, fk) ? NULL : bpf_map_lookup_elem(&sp_ad_flows, fk);
}

/* Whether a TCP packet a VNF returns on `fk->ifindex`, of a flow not learnt there, is a reset it
 * made in answer to a chain's packet (a REJECT's, routed back here by its SP_REPLY_MARK rule):
 * the flow reversed came in on this interface. It goes to its destination, the chain's source,
 * by the FIB (error_to_source), as the VNF's ICMP errors do: down the chain it would cross the
 * functions toward the chain's destination. A bare reset only (RST or RST|ACK, no data), so
 * that nothing but the end of a connection can ever pass the functions this way (a reset the
 * VNF forwards, of a flow the quota or the LRU left unlearnt in a symmetric chain, would too).
 * A frame of its own, the reversed key in the quote buffer: sp_vnf's stack has no room. */
static __noinline int vnf_made_reset(struct __sk_buff *skb, const struct flow_key *fk)
{
	int v4 = fk->family == 4;
	struct l4 l;
	__u8 tcp[2]; /* data offset, flags */
	__be16 len;
	if (parse_l4(skb, v4, &l) || l.proto != 6 || l.frag || bpf_skb_load_bytes(skb, l.off + 12, tcp, 2) || (tcp[1] & ~0x10) != 0x04 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + (v4 ? 2 : 4), &len, 2))
		return 0;
	/* Where the IP packet ends (IPv4's total length, IPv6's payload length after its header):
	 * right after the TCP header. */
	if (ETH_HLEN + bpf_ntohs(len) + (v4 ? 0 : 40) != l.off + (tcp[0] >> 4) * 4)
		return 0;
	__u32 zero = 0;
	struct quote *m = bpf_map_lookup_elem(&sp_quote, &zero);
	if (!m)
		return 0;
	struct flow_key *r = (struct flow_key *)m->b;
	__builtin_memcpy(r, fk, sizeof(*r));
	flow_swap(r);
	return bpf_map_lookup_elem(&sp_ad_flows, r) != NULL;
}

/* End.AD outbound on a VNF's return interface (`vflags`: its SP_VNF_* flags): the flow's own
 * headers first (several chains, both directions), else the interface's when it serves one
 * chain in one direction; a reset the VNF made, to the source. */
static __always_inline int end_ad_return(struct __sk_buff *skb, __u32 ifindex, __u32 vflags, int ipv4)
{
	struct flow_key fk;
	int parsed = !flow_of(skb, ifindex, &fk);
	struct outer_hdr *c = parsed && !(vflags & SP_VNF_NO_FLOWS) ? bpf_map_lookup_elem(&sp_ad_flows, &fk) : NULL;
	if (!c && parsed && fk.proto == 6 && !(vflags & SP_VNF_NO_FLOWS) && vnf_made_reset(skb, &fk))
		return error_to_source(skb, !ipv4);
	/* The interface's headers are whichever flow was learnt last: on an interface that serves
	 * several chains (or both directions of one) they may belong to another chain. */
	if (!c && (vflags & SP_VNF_SHARED))
		return drop(SP_DROP_FLOW_MISS);
	if (!c)
		c = bpf_map_lookup_elem(&sp_ad_cache, &ifindex);
	if (!c)
		return drop(SP_DROP_NO_CACHE);
	return ad_restore(skb, c, ipv4, parsed ? &fk : NULL);
}
