/* SPDX-License-Identifier: GPL-2.0 */
/* End.AS, the static proxy (draft §6.1): inbound as End.AD without learning (steer.h);
 * outbound, the interface's configured return policy, applied as a headend policy. */
#pragma once
#include "headend.h"

/* End.AS outbound: the configured headers for the packet's family, or a drop — never End.AD's
 * caches (a stale entry of another chain) nor the host's routing (that would skip the remaining
 * functions). */
static __always_inline int end_as_return(struct __sk_buff *skb, __u32 ifindex, int ipv4)
{
	struct as_key ak = {.ifindex = ifindex, .family = ipv4 ? 4 : 6};
	__u32 *ret = bpf_map_lookup_elem(&sp_as_return, &ak);
	if (!ret)
		return drop(SP_DROP_NO_RETURN);
	struct l4 l;
	if (parse_l4(skb, ipv4, &l))
		return drop(SP_DROP_MALFORMED);
	int verdict;
	return inner_hop(skb, ipv4, &verdict) ? verdict : apply_policy(skb, *ret, &l, 0);
}
