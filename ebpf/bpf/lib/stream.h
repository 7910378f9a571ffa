/* SPDX-License-Identifier: GPL-2.0 */
/* SRv6 pipes: a stream proxy is an SR-aware transparent TCP proxy behind a stream SID. Inbound
 * the node serves the SID like End.AD (steer.h: End, learn the flow's remaining segments, pop)
 * and marks the packet for the SID's listener; the pod side (sp_stream_pod, in the proxy's
 * netns) hands a SYN to that listener. Outbound the proxy's onward connection has the client's
 * 4-tuple, so its packets carry the segments learnt from the client's SYN; what it sends back
 * to the client before the server's reply taught anything (its SYN-ACK) takes the chain's
 * compiled rules for this interface: the remaining functions in reverse, to the client's node. */
#pragma once
#include "end_as.h"

#define SP_TCP_SYN 0x02
#define SP_TCP_ACK 0x10
#define SP_TCP_LISTEN 10 /* BPF_TCP_LISTEN */

/* A stream proxy's output on its node-side interface `ifindex`. */
static __always_inline int stream_return(struct __sk_buff *skb, __u32 ifindex, int ipv4)
{
	struct flow_key fk;
	struct outer_hdr *c = ad_flow(skb, ifindex, &fk);
	if (c)
		return ad_restore(skb, c, ipv4, &fk);
	__u8 daddr[16];
	__u32 off = ETH_HLEN + (ipv4 ? offsetof(struct iphdr, daddr) : offsetof(struct ipv6hdr, daddr));
	if (bpf_skb_load_bytes(skb, off, daddr, ipv4 ? 4 : 16))
		return drop(SP_DROP_MALFORMED);
	__u32 *class = rule_class(ipv4, ifindex, daddr);
	struct l4 l;
	if (parse_l4(skb, ipv4, &l))
		return drop(SP_DROP_MALFORMED);
	__u32 *id = class ? classify_l4(skb, *class, &l) : NULL;
	if (!id)
		return drop(SP_DROP_FLOW_MISS);
	int verdict;
	return inner_hop(skb, ipv4, &verdict) ? verdict : apply_policy(skb, *id, &l, 0);
}

/* In the proxy's netns (tc ingress of its chain interface): a SYN the node marked for a stream
 * SID goes to that SID's listener (bpf_sk_assign: any destination address and port, no
 * TPROXY). Everything else, and a SYN whose listener is not there (the stack then resets it),
 * goes on unchanged. */
static __always_inline int stream_assign(struct __sk_buff *skb)
{
	if ((skb->mark & SP_STREAM_MARK_MASK) != SP_STREAM_MARK)
		return SP_NEXT;
	int ipv4 = skb->protocol == bpf_htons(ETH_P_IP);
	if (!ipv4 && skb->protocol != bpf_htons(ETH_P_IPV6))
		return SP_NEXT;
	struct l4 l;
	__u8 flags;
	if (parse_l4(skb, ipv4, &l) || l.proto != 6 || l.frag || bpf_skb_load_bytes(skb, l.off + 13, &flags, 1))
		return SP_NEXT;
	if ((flags & (SP_TCP_SYN | SP_TCP_ACK)) != SP_TCP_SYN)
		return SP_NEXT;
	struct bpf_sock_tuple t = {};
	__u32 len;
	if (ipv4) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &t.ipv4.saddr, 8) ||
		    bpf_skb_load_bytes(skb, l.off, &t.ipv4.sport, 2))
			return SP_NEXT;
		t.ipv4.dport = bpf_htons(skb->mark & 0xffff);
		len = sizeof(t.ipv4);
	} else {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), t.ipv6.saddr, 32) ||
		    bpf_skb_load_bytes(skb, l.off, &t.ipv6.sport, 2))
			return SP_NEXT;
		t.ipv6.dport = bpf_htons(skb->mark & 0xffff);
		len = sizeof(t.ipv6);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return SP_NEXT;
	if (sk->state == SP_TCP_LISTEN)
		bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return SP_NEXT;
}
