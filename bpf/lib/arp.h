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
}

static __always_inline bool peer_known(const struct peer_info *p, const struct tunnel_info *t)
{
	return p && p->known && p->vni == t->vni && p->remote == t->remote_ip;
}

#define ARP_INTERVAL_NS (100 * 1000 * 1000)

/*
 * The peer's MAC is not known yet: turn the packet into an ARP request for
 * its destination, to go through the tunnel in its place (the packet is
 * lost, as when a neighbour queue is full; the answer teaches the peer's
 * MAC). At most one request per slot every ARP_INTERVAL_NS.
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
