// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Geneve (RFC 8926): decapsulation toward a slot on the way in,
 * encapsulation toward its VTEP on the way out. */
#ifndef NETSLOT_GENEVE_H
#define NETSLOT_GENEVE_H

#include "policy.h"
#include "arp.h"
#include "icmp.h"

/* Geneve to the underlay address: everything below either delivers into a
 * slot, answers ARP, or drops with a reason. */
static __always_inline int geneve_ingress(struct __sk_buff *skb, const struct pool_config *cfg,
					  __u32 l3_off, __u32 ihl)
{
	struct geneve_frame g;
	__u32 none = cfg->slot_count;
	__u32 udp_off = l3_off + ihl;
	__u32 inner_off, optlen, vni, *idxp, idx, end;
	struct vni_key key = {};
	struct lease_policy *lp;
	struct tunnel_info *t;
	struct slot_info *s;

	/* The fixed part: the outer IPv4 header without options, UDP, the
	 * Geneve header and an inner Ethernet header. */
	if (ihl != sizeof(struct iphdr))
		return drop(none, DROP_GENEVE_TRUNCATED);
	if (skb->len < udp_off + sizeof(struct udphdr) + GENEVE_HLEN)
		return drop(none, DROP_GENEVE_TRUNCATED);
	if (bpf_skb_load_bytes(skb, l3_off, &g, offsetof(struct geneve_frame, inner)))
		return drop(none, DROP_GENEVE_TRUNCATED);
	/* What the tunnel carried ends with the outer IPv4 packet and its UDP
	 * datagram; bytes past them (Ethernet padding, trailers) are not the
	 * inner frame's. ipv4_ok checked the outer length against the skb. */
	end = udp_off + bpf_ntohs(g.udp.len);
	if (bpf_ntohs(g.udp.len) < sizeof(struct udphdr) + GENEVE_HLEN ||
	    end > l3_off + bpf_ntohs(g.ip.tot_len))
		return drop(none, DROP_GENEVE_TRUNCATED);
	if (g.ver_optlen >> 6)
		return drop(none, DROP_GENEVE_VERSION);
	/* RFC 8926 3.4: O marks a control message, not for a tenant; C marks
	 * critical options, and this endpoint understands none. */
	if (g.flags & GENEVE_F_OAM)
		return drop(none, DROP_GENEVE_OAM);
	if (g.flags & GENEVE_F_CRITICAL)
		return drop(none, DROP_GENEVE_CRITICAL);
	optlen = (g.ver_optlen & GENEVE_OPTLEN_MASK) * 4;
	inner_off = udp_off + sizeof(struct udphdr) + GENEVE_HLEN + optlen;
	if (end < inner_off)
		return drop(none, DROP_GENEVE_OPTLEN);
	if (g.proto != bpf_htons(ETH_P_TEB))
		return drop(none, DROP_GENEVE_PROTO);
	if (end < inner_off + ETH_HLEN ||
	    bpf_skb_load_bytes(skb, inner_off, &g.inner, sizeof(g.inner)))
		return drop(none, DROP_GENEVE_TRUNCATED);

	vni = (__u32)g.vni[0] << 16 | (__u32)g.vni[1] << 8 | g.vni[2];
	if (vni >= DUMMY_VNI_BASE)
		return drop(none, DROP_DUMMY_VNI);
	if (!bpf_map_lookup_elem(&vnis, &vni))
		return drop(none, DROP_UNKNOWN_VNI);

	key.vni = vni;
	if (g.inner.h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 arp;

		if (end < inner_off + ETH_HLEN + sizeof(arp) ||
		    bpf_skb_load_bytes(skb, inner_off + ETH_HLEN, &arp, sizeof(arp)))
			return drop(none, DROP_GENEVE_TRUNCATED);
		if (arp.hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) ||
		    arp.hdr.ar_pro != bpf_htons(ETH_P_IP) ||
		    arp.hdr.ar_hln != ETH_ALEN || arp.hdr.ar_pln != 4)
			return drop(none, DROP_INNER_OTHER);
		key.ip = arp.tpa;
		idxp = bpf_map_lookup_elem(&vni_dst, &key);
		if (!idxp)
			return drop(none, DROP_UNKNOWN_DST);
		idx = *idxp;
		t = bpf_map_lookup_elem(&tunnels, &idx);
		if (!t || t->vni != vni)
			return drop(none, DROP_UNKNOWN_DST);
		if (g.ip.saddr != t->remote_ip)
			return drop(idx, DROP_WRONG_VTEP);
		if (!open_lease(idx))
			return drop(none, DROP_NOT_LEASED);
		if (arp.sha[0] & 1)
			return drop(idx, DROP_INNER_OTHER);
		learn_peer(idx, t, arp.sha);
		if (arp.hdr.ar_op == bpf_htons(ARPOP_REQUEST))
			return answer_arp(skb, idx, l3_off, inner_off, &g, &arp, t);
		if (arp.hdr.ar_op == bpf_htons(ARPOP_REPLY)) {
			/* Learned above; nothing to deliver. */
			struct slot_stats *st = get_stats(idx);
			if (st)
				st->rx_packets++;
			return TCX_DROP;
		}
		return drop(idx, DROP_INNER_OTHER);
	}
	if (g.inner.h_proto == bpf_htons(ETH_P_IPV6))
		return drop(none, DROP_INNER_IPV6);
	if (g.inner.h_proto != bpf_htons(ETH_P_IP))
		return drop(none, DROP_INNER_OTHER);

	struct iphdr ip;
	__u32 in_l3 = inner_off + ETH_HLEN;

	if (end < in_l3 + sizeof(ip) || bpf_skb_load_bytes(skb, in_l3, &ip, sizeof(ip)))
		return drop(none, DROP_GENEVE_TRUNCATED);
	if ((g.inner.h_dest[0] & 1) || (bpf_ntohl(ip.daddr) >> 28) == 0xe ||
	    ip.daddr == 0xffffffff)
		return drop(none, DROP_INNER_MULTICAST);
	if (ip.ihl < 5 || ip.version != 4)
		return drop(none, DROP_INNER_OTHER);
	/* The inner total length must fit what the tunnel carried. */
	__u32 in_tot = bpf_ntohs(ip.tot_len);
	if (in_tot < ip.ihl * 4 || in_l3 + in_tot > end)
		return drop(none, DROP_GENEVE_TRUNCATED);
	key.ip = ip.daddr;
	idxp = bpf_map_lookup_elem(&vni_dst, &key);
	if (!idxp)
		return drop(none, DROP_UNKNOWN_DST);
	idx = *idxp;
	t = bpf_map_lookup_elem(&tunnels, &idx);
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!t || !s || t->vni != vni || !s->host_ifindex)
		return drop(none, DROP_UNKNOWN_DST);
	if (g.ip.saddr != t->remote_ip)
		return drop(idx, DROP_WRONG_VTEP);
	if (!mac_eq(g.inner.h_dest, t->vpc_mac))
		return drop(idx, DROP_INNER_MAC);
	lp = open_lease(idx);
	if (!lp)
		return drop(none, DROP_NOT_LEASED);
	if (!inbound_ok(skb, cfg, idx, lp, &ip, in_l3, t->vpc_ip, true))
		return drop(idx, DROP_INBOUND_UNSOLICITED);
	learn_peer(idx, t, g.inner.h_source);

	/* Take off outer IPv4, UDP, Geneve and the inner Ethernet header; the
	 * outer Ethernet header stays and is rewritten for the slot. Then cut
	 * what followed the inner packet. */
	if (bpf_skb_adjust_room(skb, -(__s32)(in_l3 - l3_off), BPF_ADJ_ROOM_MAC, 0))
		return drop(idx, DROP_REWRITE);
	if (skb->len > l3_off + in_tot && bpf_skb_change_tail(skb, l3_off + in_tot, 0))
		return drop(idx, DROP_REWRITE);
	__u32 in_l4 = l3_off + ip.ihl * 4;
	bool l4 = !ip_later_fragment(&ip);
	if (nat(skb, l3_off, in_l4, ip.protocol, l4, ip.daddr, cfg->guest_ip, true))
		return drop(idx, DROP_REWRITE);
	return deliver(skb, idx, s, true);
}

static __always_inline int encap(struct __sk_buff *skb, const struct pool_config *cfg, __u32 idx,
				 const struct iphdr *ip, __u32 ihl)
{
	static const __u8 bcast[ETH_ALEN] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	struct bpf_fib_lookup fib = {};
	struct geneve_frame g = {};
	struct ethhdr outer;
	struct tunnel_info *t;
	struct peer_info *p;
	bool arp = false;
	__be16 sport;
	__u32 sum;
	long rc;

	t = bpf_map_lookup_elem(&tunnels, &idx);
	if (!t || t->vni >= DUMMY_VNI_BASE || !t->vni)
		return drop(idx, DROP_EGRESS_DUMMY_VNI);

	/* Where the VTEP is: the pool's routing table, which only holds the
	 * uplink's routes, looked up as a packet forwarded from the slot's
	 * host veth (the lookup wants forwarding on its input device; the
	 * uplink need not forward anything). */
	fib.family = AF_INET;
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = cfg->underlay_ip;
	fib.ipv4_dst = t->remote_ip;
	fib.tbid = cfg->route_table;
	/* And what the route carries (the uplink's MTU, or an MTU set on the
	 * pool table's route; no path MTU is learned here: the tunnel's
	 * packets have no socket for an ICMP error to reach): the lookup answers
	 * FRAG_NEEDED for a packet longer than that once encapsulated. A GSO
	 * packet is not (its length is its segments'): given no length, the
	 * lookup checks its segments as they are against the uplink's MTU,
	 * returns that MTU, and the segments are checked below with the
	 * tunnel's headers. */
	if (!skb->gso_size)
		fib.tot_len = bpf_ntohs(ip->tot_len) + ENCAP_LEN;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib),
			    BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && fib.mtu_result > ENCAP_LEN)
		return frag_needed(skb, idx, ip, ihl, fib.mtu_result - ENCAP_LEN);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != cfg->uplink_ifindex)
		return drop(idx, DROP_NO_ROUTE);
	/* Each segment of a GSO packet keeps its size through the tunnel
	 * (BPF_F_ADJ_ROOM_FIXED_GSO below) and must fit with the tunnel's
	 * headers: IPv4 header, transport header and gso_size. */
	if (skb->gso_size && fib.mtu_result > ENCAP_LEN) {
		__u32 l4hdr = 0;

		if (ip->protocol == IPPROTO_UDP) {
			l4hdr = sizeof(struct udphdr);
		} else if (ip->protocol == IPPROTO_TCP) {
			__u8 doff;

			if (load(skb, ETH_HLEN + ihl + 12, &doff, sizeof(doff)))
				return drop(idx, DROP_REWRITE);
			l4hdr = (doff >> 4) * 4;
		}
		if (ihl + l4hdr + skb->gso_size + ENCAP_LEN > fib.mtu_result)
			return frag_needed(skb, idx, ip, ihl, fib.mtu_result - ENCAP_LEN);
	}

	sport = flow_port(skb);
	p = bpf_map_lookup_elem(&peers, &idx);
	if (peer_known(p, t)) {
		bool l4 = !ip_later_fragment(ip);
		if (nat(skb, ETH_HLEN, ETH_HLEN + ihl, ip->protocol, l4, ip->saddr, t->vpc_ip, false))
			return drop(idx, DROP_REWRITE);
		__builtin_memcpy(g.inner.h_dest, p->mac, ETH_ALEN);
		g.inner.h_proto = bpf_htons(ETH_P_IP);
	} else {
		bool held = hold(skb, idx, p);
		if (to_arp_request(skb, idx, t, ip, ihl, p))
			return held ? TCX_DROP : drop(idx, DROP_PEER_UNKNOWN);
		__builtin_memcpy(g.inner.h_dest, bcast, ETH_ALEN);
		g.inner.h_proto = bpf_htons(ETH_P_ARP);
		arp = true;
	}
	__builtin_memcpy(g.inner.h_source, t->vpc_mac, ETH_ALEN);

	/* FIXED_GSO: a GSO packet's segments keep their size (checked above
	 * to fit with the headers) and each gets the tunnel's headers. Without
	 * it the kernel shrinks a TCP packet's gso_size by the headers, so
	 * that the tunnel silently resegments what the guest's TCP sent (while
	 * a full-sized packet that is not GSO is dropped: the guest never
	 * learns its path MTU), and refuses UDP GSO, whose gso_size delimits
	 * datagrams. */
	if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO |
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)))
		return drop(idx, DROP_REWRITE);

	__u16 tot = skb->len - ETH_HLEN;
	struct iphdr oip = {
		.version = 4,
		.ihl = 5,
		.tos = arp ? 0 : ip->tos,
		.tot_len = bpf_htons(tot),
		/* DF: fragments of a tunnel packet would need reassembly at
		 * the VTEP; too big is dropped below instead. */
		.frag_off = bpf_htons(IP_DF),
		.ttl = 64,
		.protocol = IPPROTO_UDP,
		.saddr = cfg->underlay_ip,
		.daddr = t->remote_ip,
	};
	sum = bpf_csum_diff(0, 0, (__be32 *)&oip, sizeof(oip), 0);
	oip.check = csum_fold(sum);
	__builtin_memcpy(&g.ip, &oip, sizeof(oip));
	g.udp.source = sport;
	g.udp.dest = bpf_htons(GENEVE_PORT);
	g.udp.len = bpf_htons(tot - sizeof(struct iphdr));
	g.udp.check = 0; /* allowed for IPv4 (RFC 8926 section 3.3) */
	g.proto = bpf_htons(ETH_P_TEB);
	g.vni[0] = t->vni >> 16;
	g.vni[1] = t->vni >> 8;
	g.vni[2] = t->vni;

	__builtin_memcpy(outer.h_source, cfg->uplink_mac, ETH_ALEN);
	__builtin_memcpy(outer.h_dest, cfg->uplink_mac, ETH_ALEN); /* set by the neighbour */
	outer.h_proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &g, sizeof(g), 0))
		return drop(idx, DROP_REWRITE);
	struct slot_stats *st = get_stats(idx);
	if (st) {
		st->tx_packets++;
		st->tx_bytes += skb->len;
		st->encap_packets++;
	}
	/* The neighbour subsystem resolves the next hop's MAC (and queues
	 * while it does). The packet passes this program once more on its way
	 * out; the mark lets it through. */
	skb->mark = ENCAP_MARK;
	if (cfg->flat)
		return redirect_resolve(cfg);
	struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};
	return bpf_redirect_neigh(cfg->uplink_ifindex, &nh, sizeof(nh), 0);
}

#endif /* NETSLOT_GENEVE_H */
