/* SPDX-License-Identifier: GPL-2.0 */
/* Shared definitions of the srv6pipes datapath. Layouts here are mirrored by
 * ebpf/src/maps.rs (#[repr(C)]); change both together. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stddef.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* tcx: let the next program in the chain decide (the primary CNI's, or the stack). */
#define SP_NEXT TC_ACT_UNSPEC

/* Debian 12's uapi headers predate these (kernel 6.3); the running kernel has them. */
#define SP_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define SP_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
/* bpf_skb_adjust_room's answer to an encapsulation on top of skb->encapsulation. */
#define SP_EALREADY 114

/* skb->data and skb->data_end, loaded from the context itself: clang would otherwise keep
 * &skb->data (a modified context pointer, which the verifier refuses) across helper calls. */
static __always_inline void *sp_data(struct __sk_buff *skb)
{
	void *v;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(offsetof(struct __sk_buff, data)));
	return v;
}

static __always_inline void *sp_data_end(struct __sk_buff *skb)
{
	void *v;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(offsetof(struct __sk_buff, data_end)));
	return v;
}

/* skb->ingress_ifindex, the same way (several plain reads in one program let clang keep
 * &skb->ingress_ifindex spilled across calls). */
static __always_inline __u32 sp_ingress_ifindex(struct __sk_buff *skb)
{
	__u32 v;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(offsetof(struct __sk_buff, ingress_ifindex)));
	return v;
}

/* Direct packet access, the fast way to the headers (bpf_skb_load_bytes and store_bytes are a
 * helper call and a copy each): `len` bytes at `off` of the frame where the linear part holds
 * them, else copied into `buf` (a GSO/GRO packet whose headers sit in a fragment); NULL when
 * the packet is shorter. A helper that moves packet data (adjust_room, store_bytes, csum
 * replacements) invalidates the pointer returned. */
static __always_inline const void *pkt_read(struct __sk_buff *skb, __u32 off, __u32 len, void *buf)
{
	void *data = sp_data(skb), *end = sp_data_end(skb);
	if (data + off + len <= end)
		return data + off;
	return bpf_skb_load_bytes(skb, off, buf, len) ? NULL : buf;
}

/* A writable pointer to `len` bytes at `off` of the frame's linear part, or NULL (then
 * bpf_skb_store_bytes writes them). */
static __always_inline void *pkt_linear(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = sp_data(skb), *end = sp_data_end(skb);
	return data + off + len <= end ? data + off : NULL;
}

/* Most segments in a segment list we build or accept (srv6::MAX_SEGMENTS). */
#define SP_MAX_SEGS 8
#define SP_IP6_LEN 40
#define SP_SRH_FIXED 8
/* Outer IPv6 header + SRH with SP_MAX_SEGS segments and no TLVs. */
#define SP_MAX_HDR (SP_IP6_LEN + SP_SRH_FIXED + 16 * SP_MAX_SEGS)

/* clang 14 may hoist a bound check away from the helper call that needs it (the verifier then
 * sees an unbounded size): force the value through a register and check it right there. */
#define sp_barrier_var(v) asm volatile("" : "+r"(v))

#define SP_NH_IPV4 4
#define SP_NH_IPV6 41
#define SP_NH_ROUTING 43
#define SP_NH_FRAGMENT 44
#define SP_NH_HOP_BY_HOP 0
#define SP_NH_DEST_OPTS 60
/* Hop-by-Hop / Destination Options headers walked to find a routing header behind them. */
#define SP_MAX_EXT 4
#define SP_RT_SRH 4

enum sp_behavior {
	SP_END_AD = 1,	   /* dynamic proxy in front of a VNF interface */
	SP_END_DT46 = 2,   /* decapsulate and route the inner IPv4 or IPv6 packet (main table) */
	SP_END_AS = 3,	   /* static proxy: like End.AD inbound, configured headers outbound */
	SP_END_AM = 4,	   /* masquerading proxy: SRH kept, DA <-> Segment List[0] (SRH insertion) */
	SP_END_STREAM = 5, /* SRv6 pipes: End.AD inbound into a stream proxy, marked for its listener */
};

/* Drop reasons: each drop lands in drop_reasons[reason] (and in the SID's drops). */
enum sp_drop {
	SP_DROP_MALFORMED = 1,	/* truncated or inconsistent IPv6/SRH */
	SP_DROP_NO_SRH,		/* a SID reached without an SRH */
	SP_DROP_SL_ZERO,	/* End.AD SID as the last segment */
	SP_DROP_SL_NONZERO,	/* decap SID with segments left */
	SP_DROP_HOP_LIMIT,	/* outer hop limit exhausted */
	SP_DROP_UNKNOWN_SID,	/* address in our locator that is no SID */
	SP_DROP_FOREIGN_SOURCE, /* SRv6 to our SIDs from outside the cluster block */
	SP_DROP_INNER_PROTO,	/* inner packet of a kind we do not proxy */
	SP_DROP_NO_CACHE,	/* VNF sent a packet before End.AD learnt headers */
	SP_DROP_NO_ROUTE,	/* FIB has no route to the next segment */
	SP_DROP_MTU,		/* encapsulated packet exceeds the egress MTU */
	SP_DROP_ADJUST,		/* the kernel refused to grow/shrink the packet */
	SP_DROP_TOO_MANY_SEGS,	/* SRH longer than SP_MAX_SEGS */
	SP_DROP_CLOSED_DOMAIN,	/* a pod sent to the locator block or with a routing header */
	SP_DROP_NO_REPLICA,	/* a function of the chain has no replica (failurePolicy Closed) */
	SP_DROP_FRAGMENT,	/* a fragment addressed to a SID (proxies cannot reassemble) */
	SP_DROP_SL_RANGE,	/* Segments Left beyond Last Entry + 1 */
	SP_DROP_FLOW_MISS,	/* a shared End.AD interface returned a flow it has no entry for */
	SP_DROP_INNER_TTL,	/* the inner packet's TTL / hop limit expired at a proxy */
	SP_DROP_LAST_ENTRY,	/* the SRH's Last Entry points beyond its Hdr Ext Len */
	SP_DROP_ECN,		/* decapsulation: CE outer over a Not-ECT inner packet (RFC 6040) */
	SP_DROP_NO_RETURN,	/* End.AS: no return policy for the family the VNF sent */
	SP_DROP_FORGED,		/* End.AM: a flow or an SRH its VNF was not given */
	SP_DROP_MAX,
};

struct sid_entry {
	__u32 behavior;
	__u32 ifindex;	     /* End.AD: the node-side veth inner packets are delivered into */
	__u32 cache_ifindex; /* End.AD: the node-side veth the VNF returns on (cache key) */
	__u8 vnf_mac[6];     /* End.AD: the pod-side MAC, destination of inner packets */
	__u8 host_mac[6];
	__u32 stream_port; /* End.STREAM: the proxy's listener for this SID's function and arguments */
	__u32 stats;	   /* the SID's counters: its index in sp_sid_stats (the daemon's to give) */
};

/* What the node delivers to a stream proxy carries SP_STREAM_MARK | its SID's listener port in
 * skb->mark (a peer redirect keeps the mark): the pod side assigns SYNs to that listener, and
 * the proxy's netns delivers marked packets locally whatever their destination. */
#define SP_STREAM_MARK 0x5f6e0000u
#define SP_STREAM_MARK_MASK 0xffff0000u

/* What the node delivers to an End.AD function carries SP_REPLY_MARK | the low 16 bits of the
 * node-side veth it is delivered on, and the function's netns reflects a packet's mark onto the
 * replies its stack makes to it (fwmark_reflect: a REJECT's TCP reset or ICMP error): srv6pipes-cni's
 * rule for that mark routes them back out of the chain interface, to sp_vnf, rather than out of
 * the pod's primary interface, through the node's conntrack, which never saw the flow. */
#define SP_REPLY_MARK 0x5f6d0000u

/* An outer IPv6 header + SRH: a headend policy's H.Encaps header, or End.AD's cache. */
struct outer_hdr {
	__u32 len;
	__u32 pad;
	__u64 stamp; /* End.AD cache: when it was last learnt (ns, monotonic) */
	/* Read as words: hdr_words(). */
	__u8 bytes[SP_MAX_HDR] __attribute__((aligned(8)));
};

/* `h`'s bytes as 8-byte words. Not `*(__u64 *)&h->bytes[i]`: clang gives that load the
 * alignment of a byte array's element (1), and the BPF target splits it into eight byte loads
 * (End.AD's header comparison at age 0 was ~500 instructions instead of ~60). */
static __always_inline const __u64 *hdr_words(const struct outer_hdr *h)
{
	return (const __u64 *)h->bytes;
}

struct headend_key {
	__u32 prefixlen; /* 32 (ifindex) + destination prefix length */
	__u32 ifindex;	 /* the source pod's node-side interface */
	__u8 daddr[16];
};

/* An inner flow as it enters a VNF on the interface it will return on (End.AD per-flow cache):
 * one VNF interface can then serve several chains and both directions. */
struct flow_key {
	__u32 ifindex;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__be16 sport; /* TCP/UDP, first fragments only; else 0 */
	__be16 dport;
	__u16 pad;
	__u8 saddr[16]; /* IPv4: first 4 bytes */
	__u8 daddr[16];
};

/* Classifier stage 2: (class, protocol, destination port) -> policy, longest prefix wins:
 * prefixlen 32 = any protocol, 40 = this protocol and any port, 40 + n = a port block. */
struct l4_key {
	__u32 prefixlen;
	__u32 class;
	__u8 proto;
	__u8 port[2]; /* network order: blocks are prefixes from the top bit */
	__u8 pad;
};

/* Stage 2's answer: the policy, and the rule's rank in its class (when a destination-port and
 * a source-port entry both match, the lower rank wins). */
struct l4_target {
	__u32 policy;
	__u32 rank;
};
/* Set in a stage-1 class when a rule of the class matches source ports (a symmetric chain's
 * reverse rules); stage 2 keys those entries by (class | SP_CLASS_SRC_PORTS, source port). */
#define SP_CLASS_SRC_PORTS (1u << 31)
/* Fragments: (class, protocol) -> policy; proto SP_ANY_PROTO matches any. */
struct frag_key {
	__u32 class;
	__u32 proto;
};
#define SP_ANY_PROTO 256

/* End.AS: the configured return policy of a VNF interface, per inner family (4 or 6). */
struct as_key {
	__u32 ifindex;
	__u32 family;
};

struct headend_key4 {
	__u32 prefixlen; /* 32 (ifindex) + destination prefix length */
	__u32 ifindex;
	__u8 daddr[4];
};

/* Policy flags, in outer_hdr.pad of sp_policies entries. */
#define SP_POLICY_DROP (1u << 31)   /* failurePolicy Closed and a function has no replica */
#define SP_POLICY_INSERT (1u << 30) /* H.Insert: the SRH goes into the packet (End.AM chains) */
#define SP_POLICY_HOPS_MASK 0xffu   /* bit i: hop i picks a replica from sp_hop_slots */
#define SP_REPLICA_SLOTS 64

struct hop_key {
	__u32 policy;
	__u32 hop;
};

/* A hop's replicas spread over slots (rendezvous hashing in the control plane). */
struct hop_slots {
	__u8 sids[SP_REPLICA_SLOTS][16];
};

/* Sources allowed to address this node's End.AM SIDs besides the cluster's locator block:
 * SRH insertion keeps the original source (the chains' pods). */
struct src_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct sid_stats {
	__u64 packets;
	__u64 bytes;
	__u64 drops;
};

struct node_config {
	__u8 locator[16]; /* this node's locator */
	__u32 locator_len;
	__u32 block_len;
	__u8 block[16];	  /* the cluster's locator block: the SR domain */
	__u64 ad_age_ns;  /* End.AD: re-learn at most this often (0: on every packet) */
	__u8 src[16];	  /* this node's SRv6 source address (also of its ICMPv6 errors) */
	__u32 inner_mtu;  /* largest packet a chain carries (uplink MTU - SP_MAX_HDR); 0: no check */
	__u32 flow_quota; /* End.AD per-flow cache entries a chain (SRH tag) may hold; 0: no limit */
};

/* sp_vnf_flags: what a VNF's return interface is. */
#define SP_VNF_AM (1u << 0)	  /* End.AM: returns SRH'd packets to de-masquerade */
#define SP_VNF_NO_FLOWS (1u << 1) /* the function rewrites flows: never matched per flow */
#define SP_VNF_SHARED (1u << 2)	  /* several chains or both directions: no per-interface fallback */
#define SP_VNF_AS (1u << 3)	  /* End.AS: the configured return policy, nothing else */
#define SP_VNF_STREAM (1u << 4)	  /* a stream proxy: learned flows, else the chains' rules for it */

/* Datapath events that are no drops, counted per CPU in sp_events. */
enum sp_event {
	SP_EV_ICMP_SENT = 0, /* ICMP/ICMPv6 errors sent (Packet Too Big, SRH errors) */
	SP_EV_ICMP_LIMITED,  /* errors not sent: over the rate limit */
	SP_EV_MSS_CLAMPED,   /* TCP SYNs whose MSS the headend lowered */
	SP_EV_FLOW_QUOTA,    /* flows End.AD did not cache: their chain is at its quota */
	SP_EV_MAX,
};
