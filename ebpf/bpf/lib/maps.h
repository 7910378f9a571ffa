/* SPDX-License-Identifier: GPL-2.0 */
#pragma once
#include "common.h"
#include "monitor.h"

/* Pinned by name under the node's pin directory, so a restarted daemon finds them. */
#define SP_PINNED __uint(pinning, LIBBPF_PIN_BY_NAME)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_addr);
	__type(value, struct sid_entry);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_sids SEC(".maps");

/* End.AD cache keyed by the VNF's return interface (node-side ifindex). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct outer_hdr);
	__uint(max_entries, 16384);
	SP_PINNED;
} sp_ad_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct as_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_as_return SEC(".maps");

/* VNF return interfaces (node-side ifindex) -> SP_VNF_* flags. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16384);
	SP_PINNED;
} sp_vnf_flags SEC(".maps");

/* End.AD per-flow entries per chain (the SRH tag the headend sets): counted up here when an
 * entry is made, recounted from sp_ad_flows by the daemon (LRU evictions are not seen here). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_flow_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct src_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	SP_PINNED;
} sp_insert_sources SEC(".maps");

/* The flows a headend here steered, keyed as their other direction's packets look (addresses
 * and ports swapped) -> the source pod's interface (steered.h). Least recently used first out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(max_entries, 131072);
	SP_PINNED;
} sp_steered_flows SEC(".maps");

/* End.AD per flow, least recently used first out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct outer_hdr);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_ad_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct headend_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	SP_PINNED;
} sp_headend_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct headend_key4);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	SP_PINNED;
} sp_headend_rules4 SEC(".maps");

/* Stage 1 (sp_headend_rules, sp_headend_rules4) yields a class; stage 2 a policy. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct l4_key);
	__type(value, struct l4_target);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	SP_PINNED;
} sp_l4_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct frag_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_frag_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct outer_hdr);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_policies SEC(".maps");

/* Local SIDs' counters at the index their sp_sids entry holds: a packet to a SID reaches them
 * from the entry it has, without hashing the SID again (spread over 1,000 VNFs, a hash entry
 * per SID was one more cold lookup per packet). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sid_stats);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_sid_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct hop_key);
	__type(value, struct hop_slots);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_hop_slots SEC(".maps");

/* Per headend policy (one per chain, segment list and family): what the headend steered. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct sid_stats);
	__uint(max_entries, 65536);
	SP_PINNED;
} sp_policy_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SP_DROP_MAX);
	SP_PINNED;
} sp_drop_reasons SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SP_EV_MAX);
	SP_PINNED;
} sp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	SP_PINNED;
} sp_config SEC(".maps");

/* encap_forward's next hops by (ingress interface, or 0 for every VNF's; outer source, outer
 * destination): the FIB's complete answers (neighbour known), each reused for SP_FIB_CACHE_NS.
 * Not pinned: a new datapath starts with none. */
struct fib_key {
	__u32 ifindex;
	__u8 src[16];
	__u8 dst[16];
};

struct fib_hop {
	__u64 stamp;   /* when the FIB gave it (the tick clock) */
	__u32 ifindex; /* the egress interface */
	__u32 max_len; /* the longest packet (IPv6 total length) it was checked for; 0: GSO only */
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fib_key);
	__type(value, struct fib_hop);
	__uint(max_entries, 16384);
} sp_fib_cache SEC(".maps");

static __always_inline void count(struct sid_stats *s, __u32 len, int dropped)
{
	if (!s)
		return;
	if (dropped) {
		s->drops++;
	} else {
		s->packets++;
		s->bytes += len;
	}
}

/* Counts a packet to a local SID (`stats`: its entry's counters index). */
static __always_inline void count_sid(__u32 stats, __u32 len, int dropped)
{
	count(bpf_map_lookup_elem(&sp_sid_stats, &stats), len, dropped);
}

static __always_inline void event(__u32 ev)
{
	__u64 *c = bpf_map_lookup_elem(&sp_events, &ev);
	if (c)
		(*c)++;
}

static __always_inline int drop(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&sp_drop_reasons, &reason);
	if (c)
		(*c)++;
	monitor_note_drop(reason);
	return TC_ACT_SHOT;
}

/* Drops a packet to local SID `sid` (`stats`: its entry's counters index). */
static __always_inline int drop_sid(const void *sid, __u32 stats, __u32 len, __u32 reason)
{
	count_sid(stats, len, 1);
	drop(reason);
	monitor_note_sid(sid);
	return TC_ACT_SHOT;
}
