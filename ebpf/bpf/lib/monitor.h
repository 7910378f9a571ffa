/* SPDX-License-Identifier: GPL-2.0 */
/* The live monitor (`srv6pipes monitor`): sampled, rate-limited drop and trace events through a
 * BPF ring buffer. Each entry point runs its behaviour between monitor_enter and monitor_leave;
 * with no one listening (sp_monitor_config.flags == 0) that costs one array load per packet (and
 * one more per drop). Layouts here are mirrored by ebpf/src/monitor.rs (#[repr(C)]). */
#pragma once
#include "common.h"

#define SP_MON_DROPS (1u << 0)	   /* an event for each (sampled) drop */
#define SP_MON_TRACE (1u << 1)	   /* an event for each (sampled) packet a program sees */
#define SP_MON_LISTENING (1u << 2) /* monitor_enter's answer: someone listens */

struct monitor_config {
	__u32 flags;	    /* SP_MON_* */
	__u32 drop_sample;  /* 1 in N drops (0 and 1: every drop) */
	__u32 trace_sample; /* 1 in N packets (0 and 1: every packet) */
	__u32 rate;	    /* most events per second per CPU (0: no limit) */
};

/* Per CPU: the rate limit's window and what it and a full ring kept out. */
struct monitor_state {
	__u64 window; /* start of the current second (ns, monotonic) */
	__u64 sent;   /* events in it */
	__u64 limited;
	__u64 lost;
};

enum sp_hook {
	SP_HOOK_UPLINK = 1,
	SP_HOOK_VNF,
	SP_HOOK_HEADEND,
	SP_HOOK_STREAM,
};

#define SP_MON_EV_DROP 1
#define SP_MON_EV_TRACE 2

/* monitor_event.flags: which fields hold something. */
#define SP_MON_HAS_SID (1u << 0)
#define SP_MON_HAS_TAG (1u << 1)
#define SP_MON_HAS_POLICY (1u << 2)
#define SP_MON_HAS_FLOW (1u << 3)

struct monitor_event {
	__u64 ts;      /* bpf_ktime_get_ns() */
	__u32 ifindex; /* the interface the program runs on */
	__u32 len;     /* skb->len on arrival (trace) or at the drop */
	__u8 kind;     /* SP_MON_EV_* */
	__u8 hook;     /* enum sp_hook */
	__u8 reason;   /* enum sp_drop (0: dropped without a reason, e.g. no scratch) */
	__u8 flags;    /* SP_MON_HAS_* */
	__s32 verdict; /* the program's return value */
	__u32 policy;  /* the headend policy that dropped it */
	__u16 tag;     /* the SRH's tag: the chain (compiler::chain_tag) */
	__u8 family;   /* the (inner) flow: 4 or 6 */
	__u8 proto;    /* its IP protocol */
	__be16 sport;  /* TCP/UDP ports, else 0 */
	__be16 dport;
	__u8 sid[16];	/* the SID it arrived at (the drop's SID), else the one it left for */
	__u8 saddr[16]; /* IPv4: first 4 bytes */
	__u8 daddr[16];
};

/* Per CPU, set by drop() for monitor_leave: why and where the packet was dropped. */
struct monitor_note {
	__u32 policy;
	__u8 sid[16];
	__u32 reason;
	__u32 flags; /* SP_MON_HAS_SID, SP_MON_HAS_POLICY */
};

/* The per-CPU scratch: the note, then the header being built (too big for the 512-byte stack).
 * While drops are monitored, every packet's note is cleared and read; the behaviours write the
 * header on every packet they forward, so the note's last words (reason, flags) share its first
 * cache line. With the note in a map of its own, End.AD's BPF time per packet with the drop
 * monitor attached was 2.1-3.7 % more than detached on a host with slow memory; here, 1.3-1.9 %
 * (docs/performance.md). In cache, clearing and reading it take ~1 ns (BPF_PROG_TEST_RUN). */
struct scratch {
	struct monitor_note note;
	struct outer_hdr h;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} sp_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_monitor_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_monitor_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_monitor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_event);
	__uint(max_entries, 1);
} sp_monitor_scratch SEC(".maps");

static __always_inline struct monitor_note *monitor_note(void)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&sp_scratch, &zero);
	return s ? &s->note : NULL;
}

static __always_inline struct monitor_config *monitor_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sp_monitor_config, &zero);
}

/* drop(): the reason, nothing else known yet; noted only while drops are monitored. The notes
 * are calls, not inlined: drop sites are many, and sp_vnf must stay within 32k instructions. */
static __noinline void monitor_note_drop(__u32 reason)
{
	struct monitor_config *m = monitor_config();
	if (!m || !(m->flags & SP_MON_DROPS))
		return;
	struct monitor_note *n = monitor_note();
	if (n) {
		n->reason = reason;
		n->flags = 0;
	}
}

/* drop_sid(): the SID the drop counts against. */
static __noinline void monitor_note_sid(const void *sid)
{
	struct monitor_note *n = monitor_note();
	if (n) {
		__builtin_memcpy(n->sid, sid, 16);
		n->flags |= SP_MON_HAS_SID;
	}
}

/* The headend policy that took the packet (its chain). */
static __noinline void monitor_note_policy(__u32 policy)
{
	struct monitor_note *n = monitor_note();
	if (n) {
		n->policy = policy;
		n->flags |= SP_MON_HAS_POLICY;
	}
}

/* apply_policy(): notes the policy while someone listens (detached: one load). */
static __always_inline void monitor_policy(__u32 policy)
{
	struct monitor_config *m = monitor_config();
	if (m && m->flags)
		monitor_note_policy(policy);
}

/* The transport ports at `l4` for TCP and UDP, straight into the event. */
static __always_inline void monitor_ports(struct __sk_buff *skb, __u32 l4, struct monitor_event *ev)
{
	if (ev->proto == 6 || ev->proto == 17)
		bpf_skb_load_bytes(skb, l4, &ev->sport, sizeof(ev->sport) + sizeof(ev->dport));
}

/* The flow of an IP header at `off`. Loaded field by field into the event: the programs' own
 * frames leave the monitor little stack. */
static __always_inline void monitor_flow(struct __sk_buff *skb, __u32 off, int v6, struct monitor_event *ev)
{
	if (v6) {
		if (bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, nexthdr), &ev->proto, 1) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, saddr), ev->saddr, 16) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, daddr), ev->daddr, 16))
			return;
		ev->family = 6;
		ev->flags |= SP_MON_HAS_FLOW;
		monitor_ports(skb, off + SP_IP6_LEN, ev);
		return;
	}
	__u8 ihl;
	__be16 frag;
	if (bpf_skb_load_bytes(skb, off, &ihl, 1) || bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, frag_off), &frag, 2) ||
	    bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, protocol), &ev->proto, 1) ||
	    bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, saddr), ev->saddr, 4) ||
	    bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, daddr), ev->daddr, 4))
		return;
	ev->family = 4;
	ev->flags |= SP_MON_HAS_FLOW;
	if (frag & bpf_htons(0x1fff))
		ev->proto = 0; /* no transport header in a non-first fragment */
	monitor_ports(skb, off + (ihl & 0xf) * 4, ev);
}

/* Fills what `ev` does not have yet from the IP packet at `off`: the SID (an SRv6 packet's
 * destination), the SRH's tag, the flow (an encapsulated packet's inner one). */
static __always_inline void monitor_ip(struct __sk_buff *skb, struct monitor_event *ev, __u32 off, int v6)
{
	if (!v6) {
		if (!(ev->flags & SP_MON_HAS_FLOW))
			monitor_flow(skb, off, 0, ev);
		return;
	}
	__u32 ip6 = off;
	__u8 nh, rh[8];
	if (bpf_skb_load_bytes(skb, ip6 + offsetof(struct ipv6hdr, nexthdr), &nh, 1))
		return;
	off += SP_IP6_LEN;
	int srv6 = nh == SP_NH_IPV6 || nh == SP_NH_IPV4;
	if (nh == SP_NH_ROUTING && !bpf_skb_load_bytes(skb, off, rh, sizeof(rh))) {
		if (rh[2] == SP_RT_SRH && !(ev->flags & SP_MON_HAS_TAG)) {
			ev->tag = (__u16)rh[6] << 8 | rh[7];
			ev->flags |= SP_MON_HAS_TAG;
		}
		srv6 = rh[2] == SP_RT_SRH;
		nh = rh[0];
		off += ((__u32)rh[1] + 1) * 8;
	}
	if (srv6 && !(ev->flags & SP_MON_HAS_SID) && !bpf_skb_load_bytes(skb, ip6 + offsetof(struct ipv6hdr, daddr), ev->sid, 16))
		ev->flags |= SP_MON_HAS_SID;
	if (ev->flags & SP_MON_HAS_FLOW)
		return;
	if (nh == SP_NH_IPV6 || nh == SP_NH_IPV4) {
		monitor_flow(skb, off, nh == SP_NH_IPV6, ev);
		return;
	}
	/* A plain IPv6 packet, or one with an inserted SRH (End.AM): the outer addresses. */
	if (bpf_skb_load_bytes(skb, ip6 + offsetof(struct ipv6hdr, saddr), ev->saddr, 16) ||
	    bpf_skb_load_bytes(skb, ip6 + offsetof(struct ipv6hdr, daddr), ev->daddr, 16))
		return;
	ev->family = 6;
	ev->proto = nh;
	ev->flags |= SP_MON_HAS_FLOW;
	monitor_ports(skb, off, ev);
}

/* Fills what `ev` does not have yet from the packet as it is now (monitor_ip). `quoted`: the
 * packet is an ICMP error the program answered a drop with; the dropped packet is the one it
 * quotes. Not inlined: it runs only for the events sent. */
static __noinline void monitor_parse(struct __sk_buff *skb, struct monitor_event *ev, int quoted)
{
	__be16 ethertype;
	if (!ev || bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &ethertype, 2))
		return;
	int v6 = ethertype == bpf_htons(ETH_P_IPV6);
	if (!v6 && ethertype != bpf_htons(ETH_P_IP))
		return;
	__u32 off = ETH_HLEN;
	if (quoted) {
		__u8 first;
		if (!v6 && bpf_skb_load_bytes(skb, off, &first, 1))
			return;
		off += (v6 ? SP_IP6_LEN : (first & 0xf) * 4) + 8; /* the error's IP and ICMP headers */
		if (bpf_skb_load_bytes(skb, off, &first, 1) || ((first >> 4) != 4 && (first >> 4) != 6))
			return;
		v6 = (first >> 4) == 6;
	}
	monitor_ip(skb, ev, off, v6);
}

static __always_inline struct monitor_event *monitor_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sp_monitor_scratch, &zero);
}

static __always_inline int sampled(__u32 one_in)
{
	return one_in <= 1 || bpf_get_prandom_u32() % one_in == 0;
}

/* Clears the note, so that only this packet's drop and policy are reported. */
static __always_inline void monitor_clear(void)
{
	struct monitor_note *n = monitor_note();
	if (n) {
		n->reason = 0;
		n->flags = 0;
	}
}

/* Someone traces: clears the note and, if this packet is sampled, captures it on arrival.
 * Returns monitor_enter's answer. Global (verified once, on its own) like monitor_report. */
__noinline __u32 monitor_begin(struct __sk_buff *skb, __u32 ifindex, __u32 flags, __u32 trace_sample)
{
	monitor_clear();
	__u32 mon = flags & SP_MON_DROPS;
	if (!sampled(trace_sample))
		return mon | SP_MON_LISTENING;
	struct monitor_event *ev = monitor_scratch();
	if (!ev)
		return mon | SP_MON_LISTENING;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ifindex = ifindex;
	ev->len = skb->len;
	monitor_parse(skb, ev, 0);
	return mon | SP_MON_TRACE | SP_MON_LISTENING;
}

/* Before the behaviour: 0 when no one listens (the cost of a detached monitor: this load);
 * else SP_MON_LISTENING, | SP_MON_DROPS if drops are monitored, | SP_MON_TRACE if this packet
 * is traced. */
static __always_inline __u32 monitor_enter(struct __sk_buff *skb, __u32 ifindex)
{
	struct monitor_config *m = monitor_config();
	if (!m || !m->flags)
		return 0;
	/* Drops only: nothing to capture, no call (see monitor_leave). */
	if (!(m->flags & SP_MON_TRACE)) {
		monitor_clear();
		return (m->flags & SP_MON_DROPS) | SP_MON_LISTENING;
	}
	return monitor_begin(skb, ifindex, m->flags, m->trace_sample);
}

/* Sends `ev` unless this CPU is over the rate (counted as limited) or the ring is full (lost). */
static __always_inline void monitor_send(struct monitor_event *ev, __u32 rate)
{
	__u32 zero = 0;
	struct monitor_state *s = bpf_map_lookup_elem(&sp_monitor_state, &zero);
	if (!s)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now - s->window >= 1000000000ULL) {
		s->window = now;
		s->sent = 0;
	}
	if (rate && s->sent >= rate) {
		s->limited++;
		return;
	}
	ev->ts = now;
	if (bpf_ringbuf_output(&sp_monitor, ev, sizeof(*ev), 0))
		s->lost++;
	else
		s->sent++;
}

/* After the behaviour, when someone listens: a drop event for a (sampled) drop — a packet the
 * program dropped, or answered with an ICMP error instead of forwarding it — and a trace event
 * for a traced packet. Returns `verdict`. */
__noinline int monitor_report(struct __sk_buff *skb, __u32 ifindex, __u32 hook, __u32 mon, int verdict)
{
	struct monitor_config *m = monitor_config();
	if (!m)
		return verdict;
	/* Read from the note in place (no copy: little stack is left), cleared once used. */
	struct monitor_note *n = monitor_note();
	__u32 reason = n ? n->reason : 0;
	int traced = mon & SP_MON_TRACE;
	int dropped = reason || verdict == TC_ACT_SHOT;
	int as_drop = dropped && (mon & SP_MON_DROPS) && (traced || sampled(m->drop_sample));
	struct monitor_event *ev = (as_drop || traced) ? monitor_scratch() : NULL;
	if (ev && !traced) {
		__builtin_memset(ev, 0, sizeof(*ev));
		ev->ifindex = ifindex;
		ev->len = skb->len;
	}
	if (ev && n) {
		if (n->flags & SP_MON_HAS_SID) {
			__builtin_memcpy(ev->sid, n->sid, 16);
			ev->flags |= SP_MON_HAS_SID;
		}
		if (n->flags & SP_MON_HAS_POLICY) {
			ev->policy = n->policy;
			ev->flags |= SP_MON_HAS_POLICY;
		}
	}
	if (n) {
		n->reason = 0;
		n->flags = 0;
	}
	if (!ev)
		return verdict;
	ev->kind = as_drop ? SP_MON_EV_DROP : SP_MON_EV_TRACE;
	ev->hook = hook;
	ev->verdict = verdict;
	ev->reason = reason;
	/* A drop the program answered with an ICMP error: the flow of the packet it quotes. */
	monitor_parse(skb, ev, as_drop && verdict != TC_ACT_SHOT);
	monitor_send(ev, m->rate);
	return verdict;
}

/* After the behaviour. A packet neither traced nor dropped (nearly every packet while drops are
 * monitored) ends here, its note only read (the next packet's monitor_enter clears it): the calls
 * to the two global functions were ~35 ns of each program's run on this path (`bench/run`'s BPF
 * time with the drop monitor attached). */
static __always_inline int monitor_leave(struct __sk_buff *skb, __u32 ifindex, __u32 hook, __u32 mon, int verdict)
{
	if (!mon)
		return verdict;
	if (!(mon & SP_MON_TRACE) && verdict != TC_ACT_SHOT) {
		struct monitor_note *n = monitor_note();
		if (n && !n->reason)
			return verdict;
	}
	return monitor_report(skb, ifindex, hook, mon, verdict);
}
