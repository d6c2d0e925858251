// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * netslot backstop: what keeps a pool closed when its datapath is not
 * there (its tcx programs detached: their pins removed while no daemon held
 * them, a failed upgrade). Two classic tc filters on the uplink's clsact
 * qdisc, which the kernel runs after every tcx program, and which the
 * kernel holds itself (no pin, no daemon):
 *   egress   drops a packet leaving with the guest address as its source:
 *            untranslated slot traffic;
 *   ingress  drops a packet arriving for a slot address: undelivered, it
 *            would be routed by the host's other tables.
 * While the datapath works neither ever matches: its programs translate,
 * redirect or drop such packets before.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Written by netslotd at load (network order). */
volatile const __be32 guest_net = 0, guest_mask = 0;
volatile const __be32 slot_net = 0, slot_mask = 0;

static __always_inline int drop_if(struct __sk_buff *skb, __u32 off, __be32 net, __be32 mask)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__be32 *a = data + ETH_HLEN + off;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if ((void *)(a + 1) > end) {
		/* Headers not in the linear part: read them the slow way. */
		__be32 v;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + off, &v, sizeof(v)))
			return TC_ACT_UNSPEC;
		return (v & mask) == net ? TC_ACT_SHOT : TC_ACT_UNSPEC;
	}
	/* Not ours: on to the host's next filter, if any. */
	return (*a & mask) == net ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

SEC("tc")
int backstop_egress(struct __sk_buff *skb)
{
	return drop_if(skb, offsetof(struct iphdr, saddr), guest_net, guest_mask);
}

SEC("tc")
int backstop_ingress(struct __sk_buff *skb)
{
	return drop_if(skb, offsetof(struct iphdr, daddr), slot_net, slot_mask);
}

char _license[] SEC("license") = "Dual BSD/GPL";
