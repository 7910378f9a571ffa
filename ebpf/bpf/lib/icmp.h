/* SPDX-License-Identifier: GPL-2.0 */
/* ICMP and ICMPv6 errors built from the offending packet itself (Packet Too Big, Time
 * Exceeded, Parameter Problem), rate limited, and TCP MSS clamping. */
#pragma once
#include "maps.h"

/* Quote as much of the offending packet as fits in the minimum MTU (RFC 4443 §2.4 (c)) or in
 * 576 bytes (RFC 1812 §4.3.2.3). */
#define SP_ICMP6_QUOTE (1280 - 48)
#define SP_ICMP4_QUOTE (576 - 28)
/* Errors each CPU may send per second (RFC 4443 §2.4 (f)). */
#define SP_ICMP_RATE 1000

struct quote {
	__u8 b[SP_ICMP6_QUOTE];
};

struct icmp_rate {
	__u64 window;
	__u64 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct quote);
	__uint(max_entries, 1);
} sp_quote SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct icmp_rate);
	__uint(max_entries, 1);
} sp_icmp_rate SEC(".maps");

static __always_inline int icmp_allowed(void)
{
	__u32 zero = 0;
	struct icmp_rate *r = bpf_map_lookup_elem(&sp_icmp_rate, &zero);
	if (!r)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - r->window > 1000000000ULL) {
		r->window = now;
		r->sent = 0;
	}
	if (r->sent >= SP_ICMP_RATE) {
		event(SP_EV_ICMP_LIMITED);
		return 0;
	}
	r->sent++;
	return 1;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

/* The Internet checksum's running sum over the first n bytes of the quote (n <= its size):
 * whole words by bpf_csum_diff in chunks of at most 512 bytes, the tail zero-padded. */
static __always_inline __s64 quote_sum(struct quote *q, __u64 n, __s64 sum)
{
	__u64 words = n & ~3ull;
	__u64 c0 = words > 512 ? 512 : words;
	__u64 c1 = words - c0 > 512 ? 512 : words - c0;
	__u64 c2 = words - c0 - c1;
	sp_barrier_var(c0);
	sp_barrier_var(c1);
	sp_barrier_var(c2);
	if (c0 > 512 || c1 > 512 || c2 > SP_ICMP6_QUOTE - 1024)
		return sum;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)q->b, c0, sum);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&q->b[512], c1, sum);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&q->b[1024], c2, sum);
	__u8 tail[4] = {};
#pragma unroll
	for (__u64 i = 0; i < 3; i++) {
		__u64 at = words + i;
		if (at < n && at < SP_ICMP6_QUOTE)
			tail[i] = q->b[at];
	}
	return bpf_csum_diff(NULL, 0, (__be32 *)tail, 4, sum);
}

/* Whether the quoted packet is itself an ICMP error (RFC 4443 §2.4 (e), RFC 1812 §4.3.2.7): no
 * error is sent about one. ICMPv6 types below 128; ICMP unreachable, source quench, redirect,
 * time exceeded, parameter problem. */
static __always_inline int quote_is_icmp_error(const struct quote *q, __u64 n, int v6)
{
	if (v6)
		return q->b[6] == 58 && (n <= 40 || q->b[40] < 128);
	__u32 ihl = (q->b[0] & 0xf) * 4;
	if (q->b[9] != 1)
		return 0;
	if (ihl < 20 || ihl > 60 || ihl >= n)
		return 1; /* ICMP without a type to read: no error about it */
	__u8 type = q->b[ihl];
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* Turns the packet (from its Ethernet header on) into an ICMP (v6: ICMPv6) error about itself,
 * addressed to its source. `src`: the error's source address (16 bytes for IPv6, 4 for IPv4).
 * `info`: the 32-bit field after the checksum (MTU, pointer). Sent back out of the interface
 * it came in on (MACs swapped), or with `to_stack` handed back (TC_ACT_OK, MACs kept) for a
 * source that is not behind that interface (a VNF returned the packet): the caller sends it by
 * error_to_source (srv6.h; called from here, inlined this deep, it took sp_vnf past the
 * 512-byte stack). Returns the verdict, or -1 when no error may or can be sent (rate limit, an
 * ICMP error about an ICMP error, a packet too short to quote). */
static __always_inline int icmp_reply(struct __sk_buff *skb, int v6, __u8 type, __u8 code, __u32 info, const __u8 *src, int to_stack)
{
	__u32 zero = 0;
	struct quote *q = bpf_map_lookup_elem(&sp_quote, &zero);
	if (!q || skb->len < ETH_HLEN + 20)
		return -1;
	__u64 n = skb->len - ETH_HLEN;
	__u64 max = v6 ? SP_ICMP6_QUOTE : SP_ICMP4_QUOTE;
	if (n > max)
		n = max;
	sp_barrier_var(n);
	if (n < 20 || n > SP_ICMP6_QUOTE)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, q->b, n))
		return -1;
	if (quote_is_icmp_error(q, n, v6) || !icmp_allowed())
		return -1;
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return -1;

	__u8 h[48] = {};
	__s64 sum;
	__u32 hdr_len, icmp_off;
	__be32 info_be = bpf_htonl(info);
	if (v6) {
		if (n < 40)
			return -1;
		hdr_len = 48;
		icmp_off = 40;
		h[0] = 0x60;
		__u16 plen = 8 + n;
		h[4] = plen >> 8;
		h[5] = plen;
		h[6] = 58;
		h[7] = 64;
		__builtin_memcpy(&h[8], src, 16);
		__builtin_memcpy(&h[24], &q->b[8], 16); /* to the offending packet's source */
		h[40] = type;
		h[41] = code;
		__builtin_memcpy(&h[44], &info_be, 4);
		/* Pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header. */
		__be32 pl[2] = {bpf_htonl(8 + n), bpf_htonl(58)};
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&h[8], 32, 0);
		sum = bpf_csum_diff(NULL, 0, pl, sizeof(pl), sum);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&h[40], 8, sum);
	} else {
		hdr_len = 28;
		icmp_off = 20;
		__u16 tot = 28 + n;
		h[0] = 0x45;
		h[2] = tot >> 8;
		h[3] = tot;
		h[8] = 64;
		h[9] = 1;
		__builtin_memcpy(&h[12], src, 4);
		__builtin_memcpy(&h[16], &q->b[12], 4);
		__u16 ipsum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)h, 20, 0));
		__builtin_memcpy(&h[10], &ipsum, 2);
		h[20] = type;
		h[21] = code;
		__builtin_memcpy(&h[24], &info_be, 4);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&h[20], 8, 0);
	}
	__u16 csum = csum_fold(quote_sum(q, n, sum));
	if (icmp_off == 40)
		__builtin_memcpy(&h[42], &csum, 2);
	else
		__builtin_memcpy(&h[22], &csum, 2);

	/* Keep the quote, put the new headers in front of it, swap the MACs. The tail is cut only
	 * when there is more than the quote: the kernel refuses to (bpf_skb_change_tail) for a packet
	 * that still has skb->encapsulation from a decapsulation on this machine, which is what a
	 * VNF returns (a Time Exceeded about a traceroute probe it returned would be lost). */
	if (skb->len != ETH_HLEN + n && bpf_skb_change_tail(skb, ETH_HLEN + n, 0))
		return -1;
	if (bpf_skb_adjust_room(skb, hdr_len, BPF_ADJ_ROOM_MAC, 0))
		return -1;
	struct ethhdr back;
	__builtin_memcpy(back.h_dest, to_stack ? eth.h_dest : eth.h_source, ETH_ALEN);
	__builtin_memcpy(back.h_source, to_stack ? eth.h_source : eth.h_dest, ETH_ALEN);
	back.h_proto = bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &back, sizeof(back), 0))
		return -1;
	if (v6 ? bpf_skb_store_bytes(skb, ETH_HLEN, h, 48, 0) : bpf_skb_store_bytes(skb, ETH_HLEN, h, 28, 0))
		return -1;
	event(SP_EV_ICMP_SENT);
	return to_stack ? TC_ACT_OK : bpf_redirect(sp_ingress_ifindex(skb), 0);
}

#define SP_ICMP_TOO_BIG 1
#define SP_ICMP_TIME_EXCEEDED 2

/* An ICMP error about the plain IPv4 or IPv6 packet in `skb` to its source: ICMPv6 from the
 * node's SRv6 source, or ICMP from the packet's destination (the node has no IPv4 address of its
 * own in the SR domain). `kind`: Packet Too Big / Fragmentation Needed (`info` the MTU; sent
 * whatever the DF bit, so a sender that may fragment does) or Time Exceeded in transit. Returns
 * the verdict, or -1 when none could be sent. */
static __always_inline int icmp_to_source(struct __sk_buff *skb, const struct node_config *cfg, int v6, int kind, __u32 info, int to_stack)
{
	__u8 src[16];
	int big = kind == SP_ICMP_TOO_BIG;
	if (v6) {
		__builtin_memcpy(src, cfg->src, 16);
		return icmp_reply(skb, 1, big ? 2 : 3, 0, info, src, to_stack);
	}
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), src, 4))
		return -1;
	return icmp_reply(skb, 0, big ? 3 : 11, big ? 4 : 0, info & 0xffff, src, to_stack);
}

/* Never a silent loss: an oversize packet is dropped (counted as `mtu`) and its source told the
 * MTU it may send. */
static __always_inline int packet_too_big(struct __sk_buff *skb, const struct node_config *cfg, int v6, __u32 mtu, int to_stack)
{
	int verdict = drop(SP_DROP_MTU);
	int r = icmp_to_source(skb, cfg, v6, SP_ICMP_TOO_BIG, mtu, to_stack);
	return r < 0 ? verdict : r;
}

/* The ICMPv6 error RFC 8754 §4.3.1.1 and RFC 8986 §4.1 ask for when a packet to a local SID is
 * dropped for `reason` (`upper`: offset of the upper-layer header, for Code 4); sent from the
 * node's SRv6 source. Counts the drop either way. */
static __always_inline int sid_error(struct __sk_buff *skb, const __u8 *sid, __u32 stats, __u32 len, __u32 reason, __u32 upper)
{
	int verdict = drop_sid(sid, stats, len, reason);
	__u8 type = 4, code = 0; /* Parameter Problem, erroneous header field */
	__u32 info = 0;
	switch (reason) {
	case SP_DROP_HOP_LIMIT:
		type = 3; /* Time Exceeded, hop limit exceeded in transit */
		break;
	case SP_DROP_SL_RANGE:
	case SP_DROP_SL_NONZERO:
		info = SP_IP6_LEN + 3; /* the Segments Left field */
		break;
	case SP_DROP_LAST_ENTRY:
		info = SP_IP6_LEN + 4; /* the Last Entry field */
		break;
	case SP_DROP_SL_ZERO:
	case SP_DROP_NO_SRH:
		code = 4; /* SR Upper-layer Header Error */
		info = upper;
		break;
	default:
		return verdict;
	}
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&sp_config, &zero);
	if (!cfg)
		return verdict;
	__u8 src[16];
	__builtin_memcpy(src, cfg->src, 16);
	int r = icmp_reply(skb, 1, type, code, info, src, 0);
	return r < 0 ? verdict : r;
}

/* RFC 879 / RFC 6691: a TCP SYN entering a chain announces at most what fits the chain's inner
 * MTU. `l4`: the TCP header's offset in the frame. */
static __always_inline void clamp_mss(struct __sk_buff *skb, __u32 l4, int v6, __u32 mtu)
{
	__u8 th[2]; /* data offset, flags */
	if (bpf_skb_load_bytes(skb, l4 + 12, th, sizeof(th)) || !(th[1] & 0x02))
		return;
	__u32 optlen = (th[0] >> 4) * 4;
	if (optlen <= 20)
		return;
	optlen -= 20;
	/* Variable offsets need map memory (the stack takes constant ones only): the quote buffer. */
	__u32 zero = 0;
	struct quote *q = bpf_map_lookup_elem(&sp_quote, &zero);
	if (!q)
		return;
	__u8 *opts = q->b;
	sp_barrier_var(optlen);
	if (optlen > 40 || bpf_skb_load_bytes(skb, l4 + 20, opts, optlen))
		return;
	__u16 max = mtu - (v6 ? SP_IP6_LEN + 20 : 40);
	__u64 i = 0;
	for (int k = 0; k < 20; k++) {
		sp_barrier_var(i);
		if (i > 36 || i + 4 > optlen)
			return;
		__u8 kind = opts[i];
		if (kind == 0)
			return;
		if (kind == 1) {
			i++;
			continue;
		}
		__u8 len = opts[i + 1];
		if (len < 2)
			return;
		if (kind == 2 && len == 4) {
			__u16 mss = (__u16)opts[i + 2] << 8 | opts[i + 3];
			if (mss <= max)
				return;
			/* The checksum sums 16-bit words from the header's start: a value at an odd
			 * offset (after one NOP) counts with its bytes swapped. */
			__u16 o = mss, n = max;
			if (i & 1) {
				o = __builtin_bswap16(o);
				n = __builtin_bswap16(n);
			}
			__be16 value = bpf_htons(max);
			if (bpf_l4_csum_replace(skb, l4 + 16, bpf_htons(o), bpf_htons(n), 2) ||
			    bpf_skb_store_bytes(skb, l4 + 20 + i + 2, &value, 2, 0))
				return;
			event(SP_EV_MSS_CLAMPED);
			return;
		}
		i += len;
	}
}
