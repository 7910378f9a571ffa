/* SPDX-License-Identifier: GPL-2.0 */
/* Lossy links for the stream benchmark and the pipes tests (this kernel has no netem): at a tc
 * hook, each packet is dropped with probability LOSS_PPM / 1e6, independently. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifndef LOSS_PPM
#define LOSS_PPM 10000 /* 1 % */
#endif

SEC("classifier")
int loss(struct __sk_buff *skb)
{
	return bpf_get_prandom_u32() % 1000000 < LOSS_PPM ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
