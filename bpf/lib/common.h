// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* What every part of the datapath uses: kernel headers, tcx verdicts, the
 * wire formats and their constants, and small packet helpers. */
#ifndef NETSLOT_COMMON_H
#define NETSLOT_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TCX_NEXT
#define TCX_NEXT -1
#define TCX_PASS 0
#define TCX_DROP 2
#define TCX_REDIRECT 7
#endif

/* Shared with netslotd: DUMMY_VNI_BASE, GENEVE_PORT, GENEVE_HLEN, ENCAP_LEN,
 * INBOUND_RULES, enum datapath_const and enum drop_reason. */
#include "consts.h"
/* Geneve's flags byte (RFC 8926 3.4): a control message, critical options. */
#define GENEVE_F_OAM 0x80
#define GENEVE_F_CRITICAL 0x40
/* Geneve's first byte: version (2 bits), options length in 4-byte words. */
#define GENEVE_OPTLEN_MASK 0x3f
/* The IPv4 header's frag_off bits (include/net/ip.h, not a uapi header). */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff
/* <sys/socket.h>'s, which is libc's: not includable here. */
#define AF_INET 2

struct geneve_frame {
	struct iphdr ip;
	struct udphdr udp;
	__u8 ver_optlen;
	__u8 flags;
	__be16 proto;
	__u8 vni[3];
	__u8 rsvd;
	struct ethhdr inner;
} __attribute__((packed));

/* linux/if_arp.h pulls in libc headers; the ARP header is small. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_ipv4 {
	struct {
		__be16 ar_hrd;
		__be16 ar_pro;
		__u8 ar_hln;
		__u8 ar_pln;
		__be16 ar_op;
	} hdr;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline bool mac_eq(const __u8 *a, const __u8 *b)
{
	/* Byte by byte: the MACs sit unaligned in packed headers. */
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* Copy len bytes at off into to: straight from the packet's linear data
 * when they are there (the headers of a forwarded packet are), else
 * through bpf_skb_load_bytes. The direct read saves a helper call on the
 * paths every packet takes. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off < 256 && data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* ipv4_ok: version 4, a header of at least 20 bytes, and a total length
 * that covers the header and fits the packet (0, as the kernel allows, for
 * a TCP GSO packet: BIG TCP's super-packets over 64 KiB). Found by
 * fuzzing: without it, headers the receiving stack drops anyway were
 * translated and passed on. */
static __always_inline bool ipv4_ok(const struct __sk_buff *skb, const struct iphdr *ip, __u32 l3_off)
{
	__u32 ihl = ip->ihl * 4, tot = bpf_ntohs(ip->tot_len);

	if (ip->version != 4 || ihl < sizeof(*ip))
		return false;
	if (tot == 0)
		return skb->gso_size && ip->protocol == IPPROTO_TCP;
	return tot >= ihl && l3_off + tot <= skb->len;
}

_Static_assert(ENCAP_LEN == sizeof(struct iphdr) + sizeof(struct udphdr) + GENEVE_HLEN + ETH_HLEN,
	       "internal/dpconst.EncapOverhead is not what Geneve adds");

/* ip_later_fragment: a fragment after the first, which has no L4 header. */
static __always_inline bool ip_later_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(IP_OFFMASK);
}

/* ip_more_fragments: not the last fragment of its datagram. */
static __always_inline bool ip_more_fragments(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(IP_MF);
}

/* ipv4_header pulls skb's Ethernet and IPv4 headers into its linear data
 * and returns the IPv4 header, or NULL if skb is not IPv4 or is too short
 * to hold one. The programs' common prologue. */
static __always_inline struct iphdr *ipv4_header(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	if (data + ETH_HLEN + sizeof(struct iphdr) > end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct iphdr)))
			return NULL;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(struct iphdr) > end)
			return NULL;
	}
	return data + ETH_HLEN;
}

#endif /* NETSLOT_COMMON_H */
