// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ARP through the tunnel: answering for a slot's VPC address, learning
 * the VPC side's MAC, and asking for it when unknown. */
#ifndef NETSLOT_ARP_H
#define NETSLOT_ARP_H

#include "nat.h"

/*
 * An ARP request for a slot's VPC address arrived through the tunnel (the
 * frame at off, a request already checked): answer it in place and send it
 * back out of the uplink to the VTEP it came from.
 */
static __always_inline int answer_arp(struct __sk_buff *skb, __u32 idx, __u32 l3_off,
				      __u32 inner_off, struct geneve_frame *g,
				      struct arp_ipv4 *arp, const struct tunnel_info *t)
{
	struct ethhdr outer;
	struct slot_stats *st;
	__be32 tmp;

	if (bpf_skb_load_bytes(skb, 0, &outer, sizeof(outer)))
		return drop(idx, DROP_REWRITE);
	/* Outer: back to where it came from. Swapping the addresses leaves the
	 * IPv4 checksum as it is. */
	__builtin_memcpy(outer.h_dest, outer.h_source, ETH_ALEN);
	tmp = g->ip.saddr;
	g->ip.saddr = g->ip.daddr;
	g->ip.daddr = tmp;
	g->udp.dest = bpf_htons(GENEVE_PORT);
	g->udp.check = 0;
	/* Inner: the reply. */
	__builtin_memcpy(g->inner.h_dest, arp->sha, ETH_ALEN);
	__builtin_memcpy(g->inner.h_source, t->vpc_mac, ETH_ALEN);
	arp->hdr.ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->sha, t->vpc_mac, ETH_ALEN);
	tmp = arp->spa;
	arp->spa = arp->tpa;
	arp->tpa = tmp;

	struct pool_config *cfg = get_config();
	if (!cfg)
		return drop(idx, DROP_REWRITE);
	__builtin_memcpy(outer.h_source, cfg->uplink_mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, l3_off, g, offsetof(struct geneve_frame, inner), 0) ||
	    bpf_skb_store_bytes(skb, inner_off, &g->inner, sizeof(g->inner), 0) ||
	    bpf_skb_store_bytes(skb, inner_off + ETH_HLEN, arp, sizeof(*arp), 0))
		return drop(idx, DROP_REWRITE);
	st = get_stats(idx);
	if (st)
		st->arp_replies++;
	return bpf_redirect(cfg->uplink_ifindex, 0);
}

static __always_inline void learn_peer(__u32 idx, const struct tunnel_info *t, const __u8 *mac)
{
	struct peer_info *p = bpf_map_lookup_elem(&peers, &idx);

	if (!p || (mac[0] & 1))
		return;
	if (p->known && p->vni == t->vni && p->remote == t->remote_ip && mac_eq(p->mac, mac))
		return;
	__builtin_memcpy(p->mac, mac, ETH_ALEN);
	p->vni = t->vni;
	p->remote = t->remote_ip;
	p->known = 1;
	/* netslotd sends what it holds for the slot (see hold). */
	struct lease_policy *lp = bpf_map_lookup_elem(&leases, &idx);
	struct {
		__u32 kind, slot, lease, len;
		__u64 time_ns;
	} note = {HOLD_LEARNED, idx, lp ? lp->flags : 0, 0, bpf_ktime_get_ns()};
	_Static_assert(sizeof(note) == HOLD_HEADER, "a note is a hold_event without data");
	bpf_ringbuf_output(&held, &note, sizeof(note), 0);
}

#define ARP_INTERVAL_NS (100 * 1000 * 1000)
#define HOLD_BURST 32         /* frames held per slot per window */
#define HOLD_WINDOW_TICKS 96  /* of 2^20 ns: about 100 ms */

/*
 * The peer's MAC is not known yet: a copy of the guest's frame goes to
 * netslotd, which sends it again into the slot once the ARP answer taught
 * the peer (a HOLD_LEARNED event), so that a VM's first packet to its VPC,
 * a TCP SYN included, is not lost to the resolution (a lost SYN costs a
 * 1 s retransmit). The copy is of the frame as the guest sent it (its
 * checksum possibly left to offload: netslotd completes it). No copy for
 * GSO packets (never a flow's first) or when the ring is full: the frame
 * is lost then, as before, and counted as peer_unknown.
 */
static __always_inline bool hold(struct __sk_buff *skb, __u32 idx, struct peer_info *p)
{
	struct lease_policy *lp = bpf_map_lookup_elem(&leases, &idx);
	__u32 zero = 0, tick = bpf_ktime_get_ns() >> 20;
	struct hold_event *e;
	__u64 len = skb->len;

	if (!lp || !p || skb->gso_size || len > HOLD_MAX)
		return false;
	/* A guest that floods an unknown peer is not copied for more than
	 * HOLD_BURST frames a window, whatever becomes of its ARP requests
	 * (one that cannot be made, say, moves no ARP clock). */
	if (tick - p->hold_window >= HOLD_WINDOW_TICKS) {
		p->hold_window = tick;
		p->held = 0;
	}
	if (p->held >= HOLD_BURST)
		return false;
	p->held++;
	/* Masked in the register the calls get (the compiler would drop a
	 * C mask it can prove redundant; the verifier needs it). */
	asm volatile("%0 &= 0x7ff" : "+r"(len));
	_Static_assert(HOLD_MAX == 2048, "hold masks with 0x7ff");
	if (len < ETH_HLEN)
		return false;
	e = bpf_map_lookup_elem(&hold_scratch, &zero);
	if (!e || bpf_skb_load_bytes(skb, 0, e->data, len))
		return false;
	e->kind = HOLD_FRAME;
	e->slot = idx;
	e->lease = lp->flags;
	e->len = len;
	e->time_ns = bpf_ktime_get_ns();
	return bpf_ringbuf_output(&held, e, HOLD_HEADER + len, 0) == 0;
}

static __always_inline bool peer_known(const struct peer_info *p, const struct tunnel_info *t)
{
	return p && p->known && p->vni == t->vni && p->remote == t->remote_ip;
}

/*
 * The peer's MAC is not known yet: turn the packet into an ARP request for
 * its destination, to go through the tunnel in its place (the packet
 * itself was held, see hold; the answer teaches the peer's MAC). At most
 * one request per slot every ARP_INTERVAL_NS.
 *
 * The request is inserted in front of the IP header and what follows is
 * cut down to the transport header, never below: a guest that left its
 * checksum to offload (CHECKSUM_PARTIAL, as virtio guests do) has it
 * written later into the frame's trailer, not into the request, and the
 * kernel refuses to trim below that checksum anyway.
 */
static __always_inline int to_arp_request(struct __sk_buff *skb, __u32 idx, const struct tunnel_info *t,
					  const struct iphdr *ip, __u32 ihl, struct peer_info *p)
{
	struct arp_ipv4 arp = {
		.hdr = {
			.ar_hrd = bpf_htons(ARPHRD_ETHER),
			.ar_pro = bpf_htons(ETH_P_IP),
			.ar_hln = ETH_ALEN,
			.ar_pln = 4,
			.ar_op = bpf_htons(ARPOP_REQUEST),
		},
		.spa = t->vpc_ip,
		.tpa = ip->daddr,
	};
	__be16 proto = bpf_htons(ETH_P_ARP);
	__u64 now = bpf_ktime_get_ns();
	__u32 keep;

	if (!p || skb->gso_size)
		return -1; /* a flow's first packet is never a GSO one */
	if (p->asked_ns && now - p->asked_ns < ARP_INTERVAL_NS)
		return -1;
	__builtin_memcpy(arp.sha, t->vpc_mac, ETH_ALEN);
	keep = ETH_HLEN + sizeof(arp) + ihl + (ip->protocol == IPPROTO_TCP ? sizeof(struct tcphdr) : 8);
	if (bpf_skb_adjust_room(skb, sizeof(arp), BPF_ADJ_ROOM_MAC, 0))
		return -1;
	if (skb->len > keep && bpf_skb_change_tail(skb, keep, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &arp, sizeof(arp), 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto), 0))
		return -1;
	p->asked_ns = now;
	struct slot_stats *st = get_stats(idx);
	if (st)
		st->arp_requests++;
	return 0;
}

#endif /* NETSLOT_ARP_H */
