// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Path MTU through the tunnel: a guest's packet that does not fit the
 * tunnel and may not be fragmented is answered with ICMP "fragmentation
 * needed" (RFC 792, RFC 1191), built in the packet itself and handed back
 * to the slot, so that the guest's TCP (or any PMTU-aware socket) adapts. */
#ifndef NETSLOT_ICMP_H
#define NETSLOT_ICMP_H

#include "nat.h"

#define ICMP_FRAG_NEEDED 4
#define IPTOS_PREC_INTERNETCONTROL 0xc0
/* What the answer quotes: the packet's IPv4 header (up to 60 bytes) and
 * the first 8 bytes after it (RFC 792), 20 for TCP (see frag_needed). */
#define ICMP_QUOTE_MAX (60 + 20)

struct icmp_frag_hdr {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 unused;
	__be16 mtu;
} __attribute__((packed)) __attribute__((aligned(4)));

/* One more answer for slot idx's guest? A token bucket per slot: at most
 * ICMP_FRAG_BURST answers in a row, one per ICMP_FRAG_INTERVAL_NS on
 * average (the kernel's icmp_ratelimit). */
static __always_inline bool icmp_frag_allowed(__u32 idx)
{
	struct icmp_limit *l = bpf_map_lookup_elem(&icmp_limits, &idx);

	return l && tokens_take(&l->stamp_ns, &l->credit_ns, ICMP_FRAG_INTERVAL_NS, ICMP_FRAG_BURST);
}

/*
 * frag_needed answers slot idx's packet (ip, a copy of its IPv4 header of
 * ihl bytes; the packet is as the guest sent it, not yet translated), too
 * big for a tunnel that carries mtu bytes of it: the packet itself becomes
 * an ICMP destination unreachable, fragmentation needed, with that MTU,
 * to the guest, from the packet's destination, and goes back into the
 * slot (its host veth's egress: into the slot's eth0, routed to tap0).
 * Without DF, or over the slot's rate, or when anything fails, the packet
 * is dropped as too_big: nothing fragments here.
 *
 * The source is the destination the guest tried to reach. A router would
 * use its own address, but the slot's router, the gateway on tap0, is a
 * local address of the slot's namespace, which drops it as a martian when
 * it comes in on eth0; 169.254.1.1 (the root side) is no address the guest
 * knows and a guest's firewall may well drop link-local sources. Linux
 * (icmp_unreach, tcp_v4_err, udp_err) matches an error by the quoted
 * header against its sockets and never looks at the source; a guest
 * firewall with conntrack sees the error as related to the guest's own
 * flow to that destination.
 *
 * The quote is the IPv4 header and 8 bytes, 20 for TCP: a guest with
 * checksum offload (virtio, every VMM's tap) leaves its TCP checksum to be
 * completed (CHECKSUM_PARTIAL), and the kernel does not trim such a packet
 * before the end of that checksum. The packet keeps that state, so a tap
 * without checksum offload on the way would complete the quoted checksum
 * and break the ICMP checksum. The quoted transport checksum is therefore
 * set to the value that completion would write (it is a fixed point: x =
 * ~(S + x), so x = ~S / 2 in ones' complement, a rotation): completed or
 * not, the answer's checksum holds. Nobody checks a truncated segment's
 * checksum; the ports, and TCP's sequence number that tcp_v4_err checks,
 * are the guest's.
 */
static __always_inline int frag_needed(struct __sk_buff *skb, __u32 idx, const struct iphdr *ip,
				       __u32 ihl, __u32 mtu)
{
	__u8 quote[ICMP_QUOTE_MAX];
	struct icmp_frag_hdr h = {};
	struct slot_stats *st;
	struct slot_info *s;
	struct ethhdr eth;
	__u32 qlen, l4len = 8, sum, csum_at = 0;

	if (!(ip->frag_off & bpf_htons(IP_DF)))
		return drop(idx, DROP_TOO_BIG);
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!s || !s->host_ifindex)
		return drop(idx, DROP_TOO_BIG);
	if (!ip_later_fragment(ip)) {
		if (ip->protocol == IPPROTO_TCP) {
			l4len = sizeof(struct tcphdr);
			csum_at = offsetof(struct tcphdr, check);
		} else if (ip->protocol == IPPROTO_UDP) {
			csum_at = offsetof(struct udphdr, check);
		}
	}
	qlen = ihl + l4len;
	if (ihl > 60 || qlen > sizeof(quote))
		return drop(idx, DROP_TOO_BIG);
	if (!icmp_frag_allowed(idx))
		return drop(idx, DROP_TOO_BIG);
	if (bpf_skb_load_bytes(skb, ETH_HLEN, quote, qlen))
		return drop(idx, DROP_TOO_BIG);

	if (csum_at) {
		__u16 zero = 0, c;
		__u32 at = ihl + csum_at;

		if (at > sizeof(quote) - sizeof(zero))
			return drop(idx, DROP_TOO_BIG);
		__builtin_memcpy(&quote[at], &zero, sizeof(zero));
		if (ihl + l4len > sizeof(quote))
			return drop(idx, DROP_TOO_BIG);
		sum = bpf_csum_diff(0, 0, (__be32 *)&quote[ihl], l4len, 0);
		c = bpf_ntohs(csum_fold(sum));
		c = (c >> 1) | (c << 15);
		c = bpf_htons(c);
		__builtin_memcpy(&quote[at], &c, sizeof(c));
	}

	/* Cut the packet to the quote (this also ends GSO: one small packet),
	 * then open room for the new IPv4 and ICMP headers in front of it. */
	if (bpf_skb_change_tail(skb, ETH_HLEN + qlen, 0) ||
	    bpf_skb_adjust_room(skb, sizeof(h), BPF_ADJ_ROOM_MAC, 0))
		return drop(idx, DROP_TOO_BIG);

	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = IPTOS_PREC_INTERNETCONTROL;
	h.ip.tot_len = bpf_htons(sizeof(h) + qlen);
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_ICMP;
	h.ip.saddr = ip->daddr;
	h.ip.daddr = ip->saddr;
	h.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
	h.type = ICMP_DEST_UNREACH;
	h.code = ICMP_FRAG_NEEDED;
	h.mtu = bpf_htons(mtu);
	sum = bpf_csum_diff(0, 0, (__be32 *)&h.type, sizeof(h) - sizeof(h.ip), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)quote, qlen, sum);
	h.check = csum_fold(sum);

	__builtin_memcpy(eth.h_dest, s->slot_mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, s->host_mac, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(h), quote, qlen, 0))
		return drop(idx, DROP_TOO_BIG);

	st = get_stats(idx);
	if (st)
		st->icmp_frag_needed++;
	/* bpf_redirect_peer would skip the slot's backlog but is for tc
	 * ingress only; from the uplink's egress the host veth's egress is
	 * the way into the slot (the veth hands it to eth0). */
	return bpf_redirect(s->host_ifindex, 0);
}

#endif /* NETSLOT_ICMP_H */
