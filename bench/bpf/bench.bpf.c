// SPDX-License-Identifier: GPL-2.0
/* The benchmark's own XDP programs (not part of the datapath):
 *  - bench_gen: run with BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES from the generator's
 *    netns, one long call per trial (ended by a signal): frames leave the generator's veth
 *    (XDP_TX) paced by the clock, one every `interval_ns` (0: as fast as it goes); the frames in
 *    between are dropped at once (the run's setup costs ~20 ms, so pacing by many short calls
 *    is impossible). Live frames are not re-initialised when their pages come back, and the
 *    system under test changed them (hop limits, decapsulation: veth builds its skbs on these
 *    very pages), so every frame is rewritten from the template first. With more than one
 *    destination configured the outer destination (and the SRH segment it mirrors) is then
 *    rewritten round robin, so that traffic spreads over many SIDs. With `mark_off` set, the
 *    frame's last four bytes (the inner UDP payload's, 00 00 ff ff in the template: no mark)
 *    become 00 m+1 ff ff-(m+1), m the side `gen_mark` holds at that moment: the UDP checksum
 *    stays valid (the two 16-bit words' sum is unchanged), and frames sent are counted by m.
 *    While `gen_mark` also has GEN_OTHER_LANE set, frames are built from the second template
 *    (its length too: the frame's tail is moved to it) with the second lane's configuration
 *    (its destinations to spread over, its mark's offset) and redirected to `alt_ifindex`,
 *    another lane's generator veth in the same netns: two lanes measured in slices of one
 *    stream.
 *  - bench_sink: attached to each sink veth; counts frames whose IPv6 destination is the
 *    expected one (and the others apart, multicast aside), then drops them; with `marks` set,
 *    the expected ones by their mark too.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_DSTS 16384
#define MAX_SLOTS 64
#define MAX_OFF 256

struct addr {
	__u8 b[16];
};

/* [0]: the stream's (its pacing; its first lane's frames); [1]: the second lane's frames
 * (n_dsts, da_off, seg_off, mark_off only). */
struct gen_config {
	__u32 n_dsts;
	__u32 da_off;	   /* offset of the outer destination in the frame */
	__u32 seg_off;	   /* offset of the SRH entry that must equal it; 0: none */
	__u32 mark_off;	   /* offset of the frame's last four bytes, the mark; 0: unmarked */
	__u32 alt_ifindex; /* the second lane's generator veth (GEN_OTHER_LANE); 0: none */
	__u32 pad;
	__u64 interval_ns;
	__u64 window_ns; /* lag beyond which a late generator skips rather than bursts */
};

#define MAX_FRAME 256

struct gen_frame {
	__u32 len;
	__u32 pad;
	__u8 b[MAX_FRAME];
};

/* [0]: the first lane's frame, [1]: the second lane's (GEN_OTHER_LANE), of its own length
 * (put_frame moves the tail) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gen_frame);
} gen_frame SEC(".maps");

/* The frame becomes the template `t`, its length first (live frames start at the length the
 * run was given, the first lane's). */
static __always_inline int put_frame(struct xdp_md *ctx, const struct gen_frame *t)
{
	__u32 len = t->len;
	int delta = (int)len - (int)(ctx->data_end - ctx->data);
	if (len > MAX_FRAME || (delta && bpf_xdp_adjust_tail(ctx, delta)))
		return -1;
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (data + len != end)
		return -1;
	__u32 off = 0;
	for (int i = 0; i < MAX_FRAME / 8; i++) {
		off = i * 8;
		if (off + 8 > len || data + off + 8 > end)
			break;
		__builtin_memcpy(data + off, &t->b[off], 8);
		off += 8;
	}
	for (int j = 0; j < 8; j++) {
		__u32 o = (off + j) & (MAX_FRAME - 1);
		if (o >= len || data + o + 1 > end)
			break;
		((__u8 *)data)[o] = t->b[o];
	}
	return 0;
}

#define MARKS 3 /* base, changed, between (counted by neither side) */

struct gen_state {
	__u64 next_ns;
	__u64 tx;
	__u64 first_ns;
	__u64 last_ns;
	__u64 tx_marked[MARKS];
};

/* The side frames are marked with now (user space flips it during a trial), with
 * GEN_OTHER_LANE set while they go to the other lane. */
#define GEN_OTHER_LANE 0x100
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_mark SEC(".maps");

/* [lane * MAX_DSTS + i]: the lane's destinations */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_DSTS);
	__type(key, __u32);
	__type(value, struct addr);
} gen_dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_state SEC(".maps");

static __always_inline int put_addr(struct xdp_md *ctx, __u32 off, const struct addr *a)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (off > MAX_OFF)
		return -1;
	__u8 *p = data + off;
	if ((void *)(p + 16) > end)
		return -1;
	__builtin_memcpy(p, a->b, 16);
	return 0;
}

/* The mark `gen_mark` holds now (read once: user space flips it): the side in `m`, the lane
 * (0 or 1) in `lane`. */
static __always_inline int read_mark(__u32 *m, __u32 *lane)
{
	__u32 zero = 0;
	__u32 *v = bpf_map_lookup_elem(&gen_mark, &zero);
	if (!v)
		return -1;
	__u32 now = *(volatile __u32 *)v;
	*m = now & 0xff;
	*lane = now & GEN_OTHER_LANE ? 1 : 0;
	return *m < MARKS ? 0 : -1;
}

static __always_inline int put_mark(struct xdp_md *ctx, __u32 off, __u32 m, struct gen_state *st)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (off > MAX_FRAME || m >= MARKS)
		return -1;
	__u8 *p = data + off;
	if ((void *)(p + 4) > end)
		return -1;
	p[1] = m + 1;
	p[3] = 0xff - (m + 1);
	st->tx_marked[m] += 1;
	return 0;
}

/* With more than one destination in `lc`, lane `lane`'s: the one frame `seq` goes to. */
static __always_inline int spread(struct xdp_md *ctx, const struct gen_config *lc, __u32 lane, __u64 seq)
{
	if (lc->n_dsts <= 1)
		return 0;
	if (lc->n_dsts > MAX_DSTS)
		return -1; /* never into the other lane's */
	__u32 idx = lane * MAX_DSTS + (__u32)(seq % lc->n_dsts);
	struct addr *a = bpf_map_lookup_elem(&gen_dsts, &idx);
	if (!a)
		return 0;
	if (put_addr(ctx, lc->da_off, a))
		return -1;
	if (lc->seg_off && put_addr(ctx, lc->seg_off, a))
		return -1;
	return 0;
}

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_config *cfg = bpf_map_lookup_elem(&gen_config, &zero);
	struct gen_state *st = bpf_map_lookup_elem(&gen_state, &zero);
	if (!cfg || !st)
		return XDP_ABORTED;
	__u64 now = bpf_ktime_get_ns();
	if (cfg->interval_ns) {
		if (now < st->next_ns)
			return XDP_DROP;
		__u64 next = st->next_ns + cfg->interval_ns;
		st->next_ns = next + cfg->window_ns < now ? now : next;
	}
	if (!st->first_ns)
		st->first_ns = now;
	st->last_ns = now;
	__u64 seq = st->tx++;
	__u32 m = 0, lane = 0;
	if (cfg->mark_off && read_mark(&m, &lane))
		return XDP_ABORTED;
	__u32 alt_ifindex = cfg->alt_ifindex;
	if (lane && !alt_ifindex)
		return XDP_ABORTED;
	struct gen_config *lc = lane ? bpf_map_lookup_elem(&gen_config, &lane) : cfg;
	struct gen_frame *t = bpf_map_lookup_elem(&gen_frame, &lane);
	if (!lc || !t || put_frame(ctx, t))
		return XDP_ABORTED;
	if (lc->mark_off && put_mark(ctx, lc->mark_off, m, st))
		return XDP_ABORTED;
	if (spread(ctx, lc, lane, seq))
		return XDP_ABORTED;
	return lane ? bpf_redirect(alt_ifindex, 0) : XDP_TX;
}

struct sink_config {
	__u32 slot;
	__u32 bytes; /* leading bytes of dst compared: 16 exact, 8 a /64, 0 any */
	struct addr dst;
	__u32 marks; /* count the expected frames by their mark too */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32); /* ingress ifindex */
	__type(value, struct sink_config);
} sink_config SEC(".maps");

/* [slot * 2]: expected frames, [slot * 2 + 1]: anything else */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS * 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_counts SEC(".maps");

/* [slot * 4 + m]: expected frames marked m (MARKS: no mark) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS * 4);
	__type(key, __u32);
	__type(value, __u64);
} sink_marks SEC(".maps");

static __always_inline void count_mark(struct xdp_md *ctx, __u32 slot)
{
	__u8 tail[4];
	__u32 len = bpf_xdp_get_buff_len(ctx);
	__u32 m = MARKS;
	if (len >= sizeof(tail) && !bpf_xdp_load_bytes(ctx, len - sizeof(tail), tail, sizeof(tail)) && !tail[0] && tail[1] >= 1 &&
	    tail[1] <= MARKS && tail[2] == 0xff && tail[3] == 0xff - tail[1])
		m = tail[1] - 1;
	__u32 key = slot * 4 + m;
	__u64 *c = bpf_map_lookup_elem(&sink_marks, &key);
	if (c)
		*c += 1;
}

SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct sink_config *cfg = bpf_map_lookup_elem(&sink_config, &ifindex);
	if (!cfg)
		return XDP_DROP;
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int match = 0;
	if ((void *)(eth + 1) + 40 <= end && eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *dst = (__u8 *)(eth + 1) + 24;
		/* The node's own neighbour discovery and MLD: neither delivered nor stray. */
		if (dst[0] == 0xff)
			return XDP_DROP;
		match = 1;
		for (int i = 0; i < 16; i++)
			if (i < cfg->bytes && dst[i] != cfg->dst.b[i])
				match = 0;
	}
	__u32 key = cfg->slot * 2 + (match ? 0 : 1);
	__u64 *c = bpf_map_lookup_elem(&sink_counts, &key);
	if (c)
		*c += 1;
	if (match && cfg->marks)
		count_mark(ctx, cfg->slot);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
