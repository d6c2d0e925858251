// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Counting: drops by reason, and what reaches a guest. */
#ifndef NETSLOT_STATS_H
#define NETSLOT_STATS_H

#include "maps.h"

static __always_inline int drop(__u32 idx, enum drop_reason why)
{
	struct slot_stats *s = get_stats(idx);
	if (s && why < DROP_REASONS)
		s->drops[why]++;
	return TCX_DROP;
}

static __always_inline void count_rx(__u32 idx, __u32 len, bool decap)
{
	struct slot_stats *s = get_stats(idx);
	if (!s)
		return;
	s->rx_packets++;
	s->rx_bytes += len;
	if (decap)
		s->decap_packets++;
}

#endif /* NETSLOT_STATS_H */
