/* SPDX-License-Identifier: GPL-2.0 */
/* Delivery of a packet toward its DA: a local SID is served here (End.AD/End.AS inbound,
 * decapsulation), anything else is pushed (if not yet) and forwarded. */
#pragma once
#include "end_am.h"
#include "steered.h"

/* Deliver a packet whose (possibly not yet pushed) outer header is `o`. `origin`
 * SP_ORIGIN_TRANSIT: the packet carries `o` already (uplink) and it must be popped for local
 * SIDs; else it is pushed here. A DA that is a local SID is served here, so a next segment on
 * this node never leaves it. `sid`: the DA's entry in sp_sids (NULL: not a local SID). */
static __always_inline int steer_to(struct __sk_buff *skb, struct outer_hdr *o, int origin, struct sid_entry *sid)
{
	int in_packet = origin == SP_ORIGIN_TRANSIT;
	__u32 skb_len = skb->len;
	if (!sid) {
		return encap_forward(skb, o, origin);
	}
	__u8 da[16];
	__builtin_memcpy(da, &o->bytes[OFF_DST], 16);
	__u32 stats = sid->stats;
	int err;
	switch (sid->behavior) {
	case SP_END_AD:
	case SP_END_AS:
	case SP_END_STREAM: {
		/* draft-ietf-spring-sr-service-programming §6.1-6.2: End, then (End.AD only) cache the
		 * outer headers keyed by the VNF's return interface, and hand the inner packet to the
		 * VNF. End.AS restores configured headers instead. A stream proxy (SRv6 pipes) learns
		 * like End.AD (the SYN's remaining segments, per flow: what its onward connection
		 * carries) and its packets are marked for the SID's listener. */
		err = apply_end(o, 0);
		if (err)
			return in_packet ? sid_error(skb, da, stats, skb_len, err, o->len) : drop_sid(da, stats, skb_len, err);
		if (in_packet && (err = pop_outer(skb, o->len, o->bytes[OFF_SRH])))
			return drop_sid(da, stats, skb_len, err);
		/* End.AD marks what it delivers for the replies the VNF's stack makes to it (common.h),
		 * unless the function rewrites flows: sp_vnf could not tell its resets. */
		int learns = sid->behavior != SP_END_AS && ad_cache_store(skb, sid->cache_ifindex, o);
		if (sid->behavior == SP_END_STREAM)
			skb->mark = SP_STREAM_MARK | (sid->stream_port & 0xffff);
		else if (sid->behavior == SP_END_AD && learns)
			skb->mark = SP_REPLY_MARK | (sid->ifindex & 0xffff);
		if ((err = set_macs(skb, sid->vnf_mac, sid->host_mac)))
			return drop_sid(da, stats, skb_len, err);
		count_sid(stats, skb_len, 0);
		return bpf_redirect_peer(sid->ifindex, 0);
	}
	case SP_END_DT46:
		/* RFC 8986 §4.8-4.10 with the main table: only with no segment left. */
		if (o->bytes[OFF_SL] != 0)
			return in_packet ? sid_error(skb, da, stats, skb_len, SP_DROP_SL_NONZERO, 0)
					 : drop_sid(da, stats, skb_len, SP_DROP_SL_NONZERO);
		if (!inner_supported(o->bytes[OFF_SRH]))
			return drop_sid(da, stats, skb_len, SP_DROP_INNER_PROTO);
		if (in_packet && (err = pop_outer(skb, o->len, o->bytes[OFF_SRH])))
			return drop_sid(da, stats, skb_len, err);
		count_sid(stats, skb_len, 0);
		return steered_flow_return(skb, TC_ACT_OK);
	default:
		return drop_sid(da, stats, skb_len, SP_DROP_UNKNOWN_SID);
	}
}

/* steer_to() with the DA looked up here; the uplink, which looked it up already, calls
 * steer_to() itself (one lookup per packet, not two). */
static __always_inline int steer(struct __sk_buff *skb, struct outer_hdr *o, int origin)
{
	return steer_to(skb, o, origin, bpf_map_lookup_elem(&sp_sids, &o->bytes[OFF_DST]));
}
