/* SPDX-License-Identifier: GPL-2.0 */
/* The plain (inner) packet's transport header and its direction-independent flow hash. */
#pragma once
#include "common.h"
#include <linux/ip.h>
#include <stddef.h>

/* What the headend found of the transport header. */
struct l4 {
	__u32 off; /* its offset in the frame */
	__u8 proto;
	__u8 frag; /* a fragment, first or not: no transport header to trust */
};

/* Skips the IPv6 Hop-by-Hop and Destination Options headers at offset `*off`, the first of
 * kind `*nexthdr` (at most SP_MAX_EXT: after more, `*nexthdr` is still one of them). -1 if one
 * is truncated. */
static __always_inline int skip_ipv6_options(struct __sk_buff *skb, __u8 *nexthdr, __u32 *off)
{
#pragma unroll
	for (int i = 0; i < SP_MAX_EXT; i++) {
		if (*nexthdr != SP_NH_HOP_BY_HOP && *nexthdr != SP_NH_DEST_OPTS)
			return 0;
		__u8 h[2]; /* next header, length in 8-octet units beyond the first */
		if (bpf_skb_load_bytes(skb, *off, h, sizeof(h)))
			return -1;
		*nexthdr = h[0];
		*off += 8 * ((__u32)h[1] + 1);
	}
	return 0;
}

/* Whether 16-byte addresses `a` and `b` are the same (BPF has no memcmp). */
static __always_inline int same_addr(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return !diff;
}

/* The flow of the other direction: addresses and ports swapped. */
static __always_inline void flow_swap(struct flow_key *k)
{
	__u8 a[16];
	__builtin_memcpy(a, k->saddr, 16);
	__builtin_memcpy(k->saddr, k->daddr, 16);
	__builtin_memcpy(k->daddr, a, 16);
	__be16 p = k->sport;
	k->sport = k->dport;
	k->dport = p;
}

/* The transport header of the IPv4 or IPv6 packet right after the Ethernet header. IPv6's
 * Hop-by-Hop and Destination Options headers are skipped (a receiver skips them too: a TCP
 * segment behind them is still that TCP flow's). An IPv4 packet with MF or an offset, or an
 * IPv6 packet with a Fragment header after those, is a fragment (the protocol is then the
 * fragment header's). 0, or -1 if truncated or if more than SP_MAX_EXT options headers hide
 * the transport header: the caller refuses such a packet rather than let it past a rule. */
static __always_inline int parse_l4(struct __sk_buff *skb, int ipv4, struct l4 *l)
{
	__u8 proto;
	__u32 off;
	int frag = 0;
	if (ipv4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		proto = ip.protocol;
		frag = (ip.frag_off & bpf_htons(0x3fff)) != 0; /* MF or an offset */
		off = ETH_HLEN + ip.ihl * 4;
	} else {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, nexthdr), &proto, 1))
			return -1;
		off = ETH_HLEN + sizeof(struct ipv6hdr);
		if (skip_ipv6_options(skb, &proto, &off) || proto == SP_NH_HOP_BY_HOP || proto == SP_NH_DEST_OPTS)
			return -1;
		if (proto == SP_NH_FRAGMENT) {
			if (bpf_skb_load_bytes(skb, off, &proto, 1))
				return -1;
			frag = 1;
		}
	}
	l->off = off;
	l->proto = proto;
	l->frag = frag;
	return 0;
}

/* Whether the IPv4 or IPv6 packet right after the Ethernet header is an ICMP error (ICMPv6
 * unreachable, too big, time exceeded, parameter problem; ICMP unreachable, time exceeded,
 * parameter problem). `proto`: the IP header's protocol / next header (0 for a non-first IPv4
 * fragment). */
static __always_inline int is_icmp_error(struct __sk_buff *skb, int v6, __u8 proto)
{
	__u8 type, ihl;
	if (proto != (v6 ? 58 : 1))
		return 0;
	if (v6) /* RFC 4443 §2.1's errors, not the experimental and reserved types 100, 101, 127 */
		return !bpf_skb_load_bytes(skb, ETH_HLEN + SP_IP6_LEN, &type, 1) && type >= 1 && type <= 4;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ihl, 1) || bpf_skb_load_bytes(skb, ETH_HLEN + (ihl & 0xf) * 4, &type, 1))
		return 0;
	return type == 3 || type == 11 || type == 12; /* unreachable, time exceeded, parameter problem */
}

/* The flow of the packet an ICMP error quotes (right after the ICMP header of the packet after
 * the Ethernet header; `v4`: ICMP over IPv4), read as flow_of reads a packet, loaded straight
 * into `k` (which may be map memory: no header copy on the stack). 0, or -1. */
static __always_inline int quoted_flow(struct __sk_buff *skb, int v4, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	__u32 off = ETH_HLEN + SP_IP6_LEN + 8;
	if (v4) {
		__u8 ihl;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ihl, 1))
			return -1;
		off = ETH_HLEN + (ihl & 0xf) * 4 + 8;
		__u8 h[10]; /* version and IHL, TOS, total length, id, flags and offset, TTL, protocol */
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, saddr), k->saddr, 4) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, daddr), k->daddr, 4))
			return -1;
		k->family = 4;
		k->proto = h[9];
		if ((h[6] << 8 | h[7]) & 0x1fff)
			return 0;
		off += (h[0] & 0xf) * 4;
	} else {
		/* Source and destination are adjacent in both. */
		if (bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, nexthdr), &k->proto, 1) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, saddr), k->saddr, 32))
			return -1;
		k->family = 6;
		off += SP_IP6_LEN;
		if (skip_ipv6_options(skb, &k->proto, &off))
			return -1;
	}
	__be16 ports[2];
	if ((k->proto == 6 || k->proto == 17) && !bpf_skb_load_bytes(skb, off, ports, sizeof(ports))) {
		k->sport = ports[0];
		k->dport = ports[1];
	}
	return 0;
}

/* Transport protocols whose first four bytes are the source and destination ports. */
static __always_inline int has_ports(__u8 proto)
{
	return proto == 6 || proto == 17 || proto == 132; /* TCP, UDP, SCTP */
}

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* MurmurHash3's block mix and finalizer. */
static __always_inline __u32 mix32(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

static __always_inline __u32 fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	return h ^ (h >> 16);
}

/* One endpoint of a flow: its address (4 words; IPv4 in the first) and port. */
static __always_inline __u32 endpoint_hash(const __u32 a[4], __u16 port)
{
	__u32 h = 0x5eed5eedu;
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = mix32(h, a[i]);
	return fmix32(mix32(h, port));
}

/* The replica hash of the packet's flow, the same for both of its directions (srv6::flow, the
 * Rust twin that the tests compare against): each endpoint (address, port) is hashed alone and
 * the two are combined with XOR, which does not care which one is the source. Ports count for
 * TCP, UDP and SCTP packets that are not fragments; fragments (the first one included, so that
 * all of a datagram takes one replica) and other protocols (ICMP) hash addresses and protocol:
 * the 3-tuple. Unlike skb->hash (the socket's random txhash, or the IPv6 flow label), it does
 * not change with the direction, a retransmission timeout or the sender's kernel. */
static __always_inline __u32 flow_hash(struct __sk_buff *skb, int ipv4, const struct l4 *l)
{
	__u32 s[4] = {}, d[4] = {};
	__u16 ports[2] = {};
	if (ipv4) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), s, 4) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), d, 4))
			return 0;
	} else {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr), s, 16) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, daddr), d, 16))
			return 0;
	}
	if (!l->frag && has_ports(l->proto) && bpf_skb_load_bytes(skb, l->off, ports, sizeof(ports)))
		ports[0] = ports[1] = 0;
	return fmix32(endpoint_hash(s, bpf_ntohs(ports[0])) ^ endpoint_hash(d, bpf_ntohs(ports[1])) ^ l->proto);
}

/* flow_hash of the flow `k` holds (as flow_of or quoted_flow read it). */
static __always_inline __u32 flow_key_replica_hash(const struct flow_key *k)
{
	const __u32 *s = (const __u32 *)k->saddr, *d = (const __u32 *)k->daddr;
	return fmix32(endpoint_hash(s, bpf_ntohs(k->sport)) ^ endpoint_hash(d, bpf_ntohs(k->dport)) ^ k->proto);
}
