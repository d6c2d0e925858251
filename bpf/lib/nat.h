// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Stateless NAT: address rewrites with their checksums (the ICMP errors
 * that quote a rewritten packet included), and delivery to a slot. */
#ifndef NETSLOT_NAT_H
#define NETSLOT_NAT_H

#include "stats.h"

/* linux/icmp.h pulls in libc headers (through linux/if.h); the ICMP types
 * and the echo header are small. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 id;
	__be16 seq;
};

/* Destination unreachable, time exceeded, parameter problem: the errors
 * that quote the packet they answer. */
static __always_inline bool icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/*
 * Rewrite the IPv4 source (dst = false) or destination (dst = true) at
 * l3_off from old to new, fixing the IPv4 checksum and, in a first or only
 * fragment, the TCP or UDP checksum (ICMP has no pseudo-header).
 */
static __always_inline int rewrite_ip(struct __sk_buff *skb, __u32 l3_off,
				      __u32 l4_off, __u8 proto, bool l4,
				      __be32 old, __be32 new, bool dst)
{
	__u32 addr_off = l3_off + (dst ? offsetof(struct iphdr, daddr)
				       : offsetof(struct iphdr, saddr));

	if (l4) {
		if (proto == IPPROTO_TCP) {
			if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check),
						old, new, BPF_F_PSEUDO_HDR | sizeof(new)))
				return -1;
		} else if (proto == IPPROTO_UDP) {
			if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct udphdr, check),
						old, new, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(new)))
				return -1;
		}
	}
	if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), old, new, sizeof(new)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new, sizeof(new), 0))
		return -1;
	return 0;
}

/*
 * ICMP errors (destination unreachable, time exceeded, parameter problem)
 * carry the header of the packet they answer, which holds the other side
 * of the translation: the slot (or VPC) address as source in an error
 * coming in, the guest address as destination in one going out. Rewrite
 * it too, with the embedded header's checksum and the ICMP checksum, or
 * the guest cannot match the error to its socket (path MTU discovery
 * breaks). The embedded transport checksum is left alone: nobody checks a
 * truncated copy.
 */
static __always_inline int rewrite_icmp_inner(struct __sk_buff *skb, __u32 l4_off, __be32 old, __be32 new,
					      bool inner_src)
{
	struct {
		__u8 type;
		__u8 code;
		__sum16 check;
		__u32 rest;
	} icmp;
	struct iphdr in;
	__u32 in_off = l4_off + 8;
	__sum16 new_check;

	if (bpf_skb_load_bytes(skb, l4_off, &icmp, sizeof(icmp)))
		return 0;
	if (!icmp_is_error(icmp.type))
		return 0;
	if (bpf_skb_load_bytes(skb, in_off, &in, sizeof(in)))
		return 0; /* too short to hold a header: nothing to translate */
	if ((inner_src ? in.saddr : in.daddr) != old)
		return 0;
	if (bpf_l3_csum_replace(skb, in_off + offsetof(struct iphdr, check), old, new, sizeof(new)) ||
	    bpf_skb_load_bytes(skb, in_off + offsetof(struct iphdr, check), &new_check, sizeof(new_check)) ||
	    bpf_l4_csum_replace(skb, l4_off + 2, old, new, sizeof(new)) ||
	    bpf_l4_csum_replace(skb, l4_off + 2, in.check, new_check, sizeof(new_check)) ||
	    bpf_skb_store_bytes(skb, in_off + (inner_src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr)),
				&new, sizeof(new), 0))
		return -1;
	return 0;
}

/* rewrite_ip, and the embedded header of an ICMP error. */
static __always_inline int nat(struct __sk_buff *skb, __u32 l3_off, __u32 l4_off, __u8 proto, bool l4,
			       __be32 old, __be32 new, bool dst)
{
	if (rewrite_ip(skb, l3_off, l4_off, proto, l4, old, new, dst))
		return -1;
	if (proto == IPPROTO_ICMP && l4)
		return rewrite_icmp_inner(skb, l4_off, old, new, dst);
	return 0;
}

/* Set the Ethernet header for delivery into slot s and hand the packet to
 * its eth0. */
static __always_inline int deliver(struct __sk_buff *skb, __u32 idx, const struct slot_info *s,
				   bool decap)
{
	struct ethhdr eth;

	__builtin_memcpy(eth.h_dest, s->slot_mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, s->host_mac, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return drop(idx, DROP_REWRITE);
	count_rx(idx, skb->len, decap);
	return bpf_redirect_peer(s->host_ifindex, 0);
}

/*
 * A flat underlay (no uplink gateway): the pool table routed the packet
 * through a placeholder next hop, which always resolves, so that a VPC
 * packet is never resolved on the uplink by its inner destination. Its
 * real next hop (its destination, or its VTEP once encapsulated) is the
 * kernel's to find: without a next hop, bpf_redirect_neigh routes the
 * packet again, by its mark, in the pool's resolve table (default out of
 * the uplink, on-link), and the route found replaces the placeholder's, so
 * a packet that waits for its neighbour leaves to the right one. The mark
 * (ENCAP_MARK or NEIGH_MARK) is set by the caller and lets the packet
 * through on its second pass.
 */
static __always_inline int redirect_resolve(const struct pool_config *cfg)
{
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

static __always_inline __u32 slot_of_ip(const struct pool_config *cfg, __be32 ip)
{
	return bpf_ntohl(ip) - bpf_ntohl(cfg->slot_first);
}

#endif /* NETSLOT_NAT_H */
