// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * netslot datapath: stateless NAT and Geneve for every slot of a pool, from
 * two programs attached to the uplink (tcx ingress and egress) whatever the
 * number of slots.
 *
 *   slot -> world   The slot namespace routes the guest's packet to its host
 *                   veth; the root namespace forwards it to the uplink (one
 *                   policy rule for the whole pool). uplink_egress tells the
 *                   slot by skb->ingress_ifindex (the host veth), then
 *                     - to a VPC CIDR of the slot's attachment: source
 *                       rewritten to the slot's VPC address, Geneve
 *                       encapsulation with the slot's VNI toward its VTEP;
 *                     - anywhere else: source rewritten to the slot address.
 *   world -> slot   uplink_ingress takes
 *                     - IPv4 to a slot address: destination rewritten to the
 *                       guest address;
 *                     - Geneve to the underlay address with (VNI, inner
 *                       destination) of an attached slot: decapsulated,
 *                       destination rewritten to the guest address;
 *                   and hands the packet to the slot's eth0 with
 *                   bpf_redirect_peer (no root-namespace stack, no backlog).
 *
 * No conntrack: every rewrite comes from per-slot map entries written by
 * netslotd. Toward a guest, only replies to its own flows pass (for UDP,
 * ICMP echo and other protocols, by a small fixed-size table per slot)
 * and what its lease opens. Every lookup is O(1) in the number of slots
 * and flows.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/nat.h"
#include "lib/policy.h"
#include "lib/arp.h"
#include "lib/geneve.h"
#include "lib/dhcp.h"

SEC("tcx/ingress")
int uplink_ingress(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4_header(skb);
	struct pool_config *cfg;
	__u32 l3_off = ETH_HLEN, ihl, idx;

	if (!ip)
		return TCX_NEXT;
	cfg = get_config();
	if (!cfg || !cfg->slot_count)
		return TCX_NEXT;
	ihl = ip->ihl * 4;
	if (!ipv4_ok(skb, ip, l3_off))
		return TCX_NEXT; /* the host's stack drops it */

	if (ip->daddr == cfg->underlay_ip && ip->protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (ip_later_fragment(ip))
			return TCX_NEXT; /* no UDP header to tell */
		if (bpf_skb_load_bytes(skb, l3_off + ihl, &udp, sizeof(udp)))
			return TCX_NEXT;
		if (udp.dest != bpf_htons(GENEVE_PORT))
			return TCX_NEXT;
		/* Our own tunnels leave with DF; a peer's fragments would need
		 * reassembly, which nothing here does. */
		if (ip_more_fragments(ip))
			return drop(cfg->slot_count, DROP_GENEVE_FRAGMENT);
		return geneve_ingress(skb, cfg, l3_off, ihl);
	}

	idx = slot_of_ip(cfg, ip->daddr);
	if (idx >= cfg->slot_count)
		return TCX_NEXT;

	/* To a slot address: the reply half of the stateless NAT. */
	struct slot_info *s = bpf_map_lookup_elem(&slots, &idx);
	if (!s || !s->host_ifindex || s->slot_ip != ip->daddr)
		return drop(cfg->slot_count, DROP_NO_SLOT);
	struct lease_policy *lp = open_lease(idx);
	if (!lp)
		return drop(cfg->slot_count, DROP_NOT_LEASED);
	if (!inbound_ok(skb, cfg, idx, lp, ip, l3_off, ip->daddr, false))
		return drop(idx, DROP_INBOUND_UNSOLICITED);
	__be32 old = ip->daddr;
	__u8 proto = ip->protocol;
	bool l4 = !ip_later_fragment(ip);
	if (nat(skb, l3_off, l3_off + ihl, proto, l4, old, cfg->guest_ip, true))
		return drop(idx, DROP_REWRITE);
	return deliver(skb, idx, s, false);
}

SEC("tcx/egress")
int uplink_egress(struct __sk_buff *skb)
{
	struct vpc_route_key rk;
	struct iphdr *ip;
	struct pool_config *cfg;
	__u32 ifindex = skb->ingress_ifindex, *idxp, idx, ihl;

	cfg = get_config();
	if (!cfg)
		return TCX_NEXT;
	idxp = bpf_map_lookup_elem(&by_ifindex, &ifindex);
	idx = idxp ? *idxp : cfg->slot_count;
	ip = ipv4_header(skb);
	if (!ip)
		return idxp ? drop(idx, DROP_EGRESS_NOT_IPV4) : TCX_NEXT;
	if (idxp && skb->mark == ENCAP_MARK && ip->saddr == cfg->underlay_ip && ip->protocol == IPPROTO_UDP) {
		/* Encapsulated above, on its second pass: out it goes. */
		skb->mark = 0;
		return TCX_NEXT;
	}
	/* A slot that is not leased sends nothing, and what it tries counts
	 * as the pool's, never as the next tenant's. */
	if (idxp && !open_lease(idx))
		return drop(cfg->slot_count, DROP_NOT_LEASED);
	if (idxp && !ipv4_ok(skb, ip, ETH_HLEN))
		return drop(idx, DROP_EGRESS_NOT_IPV4);
	if (!idxp) {
		/* Not forwarded from a known slot. The guest address must never
		 * leave untranslated: a slot whose veth the datapath does not
		 * know (yet) is stopped here, not leaked. */
		if (ip->saddr == cfg->guest_ip)
			return drop(cfg->slot_count, DROP_UNREGISTERED);
		return TCX_NEXT;
	}
	ihl = ip->ihl * 4;
	if (ip->saddr != cfg->guest_ip || ihl < sizeof(*ip))
		return drop(idx, DROP_EGRESS_SPOOF);

	/* Slots never reach each other, not even by a hairpin through the
	 * fabric. */
	if (slot_of_ip(cfg, ip->daddr) < cfg->slot_count)
		return drop(idx, DROP_SLOT_TO_SLOT);

	/* To the slot's VPC: the CIDRs of its tunnel entry (a bounded loop),
	 * then, for long lists, the slot's routes in the LPM trie. */
	struct tunnel_info *t = bpf_map_lookup_elem(&tunnels, &idx);
	if (t && t->ncidrs) {
		bool vpc = false;
		for (int k = 0; k < TUNNEL_CIDRS; k++) {
			if (k >= t->ncidrs)
				break;
			if ((ip->daddr & t->cidrs[k].mask) == t->cidrs[k].addr) {
				vpc = true;
				break;
			}
		}
		if (!vpc && t->more_routes) {
			rk.prefixlen = 64;
			rk.slot = idx;
			rk.ip = ip->daddr;
			vpc = bpf_map_lookup_elem(&vpc_routes, &rk) != NULL;
		}
		if (vpc) {
			struct iphdr copy = *ip;

			flow_out(skb, idx, ip, ETH_HLEN + ihl, true);
			return encap(skb, cfg, idx, &copy, ihl);
		}
	}

	/* Anywhere else: the request half of the stateless NAT, unless the
	 * destination is in the pool's deny set. */
	struct deny_key dk = {.prefixlen = 32, .ip = ip->daddr};
	if (bpf_map_lookup_elem(&deny, &dk))
		return drop(idx, DROP_EGRESS_DENIED);
	struct slot_info *s = bpf_map_lookup_elem(&slots, &idx);
	if (!s || !s->host_ifindex)
		return drop(idx, DROP_NO_SLOT);
	flow_out(skb, idx, ip, ETH_HLEN + ihl, false);
	__be32 old = ip->saddr;
	__u8 proto = ip->protocol;
	bool l4 = !ip_later_fragment(ip);
	if (nat(skb, ETH_HLEN, ETH_HLEN + ihl, proto, l4, old, s->slot_ip, false))
		return drop(idx, DROP_REWRITE);
	struct slot_stats *st = get_stats(idx);
	if (st) {
		st->tx_packets++;
		st->tx_bytes += skb->len;
	}
	return TCX_NEXT;
}

/* Every slot's tap0, tc ingress: DHCP for the guest (lib/dhcp.h). */
SEC("tc")
int tap_dhcp(struct __sk_buff *skb)
{
	return tap_dhcp_answer(skb);
}

char __license[] SEC("license") = "Dual BSD/GPL";
