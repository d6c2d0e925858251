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

#define GENEVE_PORT 6081
#define ETH_P_TEB_ 0x6558
/* VNIs from DUMMY_VNI_BASE up are never a customer's: slot i carries
 * DUMMY_VNI_BASE + i while it is not attached to a VPC. */
#define DUMMY_VNI_BASE 0xF00000
#define GENEVE_HLEN 8
#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + GENEVE_HLEN + ETH_HLEN)
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff
/* Constants netslotd shares (bpf2go exports them to Go). */
enum datapath_const {
	/* skb->mark of a packet this program encapsulated, on its second
	 * pass through the uplink's egress (after bpf_redirect_neigh). A guest
	 * cannot set it: the kernel clears the mark of every packet that
	 * crosses from a slot's namespace into the root namespace. */
	ENCAP_MARK = 0x6e530001,
	/* lease_policy.flags: the slot is leased, its traffic flows. */
	LEASE_OPEN = 1,
	/* The flow table's clock ticks every 2^FLOW_TIME_SHIFT jiffies. */
	FLOW_TIME_SHIFT = 6,
};

/* Why a packet was dropped; the order is the order of stats.drops, and
 * new reasons are appended, never inserted. */
enum drop_reason {
	DROP_GENEVE_TRUNCATED,   /* Geneve header or inner frame cut short */
	DROP_GENEVE_VERSION,     /* Geneve version is not 0 */
	DROP_GENEVE_OPTLEN,      /* options run past the packet */
	DROP_GENEVE_PROTO,       /* protocol type is not Ethernet (0x6558) */
	DROP_DUMMY_VNI,          /* a pooled slot's dummy VNI */
	DROP_UNKNOWN_VNI,        /* no slot attached to this VNI */
	DROP_UNKNOWN_DST,        /* known VNI, no slot with this inner address */
	DROP_WRONG_VTEP,         /* outer source is not the slot's remote VTEP */
	DROP_INNER_IPV6,         /* the guest has no IPv6 */
	DROP_INNER_MULTICAST,    /* inner multicast/broadcast not for the guest */
	DROP_INNER_MAC,          /* inner unicast to another MAC */
	DROP_INNER_OTHER,        /* other inner ethertypes and ARP operations */
	DROP_EGRESS_DUMMY_VNI,   /* never send a dummy VNI */
	DROP_EGRESS_NOT_IPV4,    /* slot egress that is not well-formed IPv4 */
	DROP_EGRESS_SPOOF,       /* slot egress not from the guest address */
	DROP_NO_ROUTE,           /* no route to the remote VTEP */
	DROP_REWRITE,            /* a helper failed (truncated L4, GSO limits) */
	DROP_NO_SLOT,            /* to a slot address that is not a slot */
	DROP_SLOT_TO_SLOT,       /* a guest to another slot's address */
	DROP_GENEVE_OAM,         /* control message (O bit): not for a guest */
	DROP_GENEVE_CRITICAL,    /* critical options (C bit): none understood */
	DROP_GENEVE_FRAGMENT,    /* fragmented Geneve: never reassembled here */
	DROP_TOO_BIG,            /* encapsulated packet over the uplink's MTU */
	DROP_PEER_UNKNOWN,       /* VPC peer MAC unknown and no ARP possible */
	DROP_UNREGISTERED,       /* guest-sourced from a veth not (yet) a slot */
	DROP_INBOUND_UNSOLICITED, /* to a guest: no reply to its flows, no inbound rule */
	DROP_NOT_LEASED,         /* to or from a slot that is pooled or being released */
	DROP_EGRESS_DENIED,      /* NATed to a destination in the pool's deny set */
	DROP_REASONS,
};

struct pool_config {
	__be32 guest_ip;      /* the guest address, the same in every slot */
	__be32 slot_first;    /* the address of slot 0 */
	__u32 slot_count;
	__be32 underlay_ip;   /* outer source of Geneve, destination of ingress */
	__u32 uplink_ifindex;
	__u32 route_table;    /* where VTEPs are looked up */
	__u8 uplink_mac[6];
	__u8 pad[2];
	__u32 flow_ttl;       /* how long a flow stays open, in flow_now() units */
};

struct slot_info {
	__u32 host_ifindex;   /* the root-side veth; 0: no slot */
	__be32 slot_ip;
	__u8 slot_mac[6];     /* eth0 in the slot */
	__u8 host_mac[6];     /* the root-side veth */
};

#define TUNNEL_CIDRS 8

struct vpc_cidr {
	__be32 addr;
	__be32 mask;
};

/* The slot's VPC attachment. Pooled slots carry vni = DUMMY_VNI_BASE + i and
 * nothing else; acquire replaces the whole entry in one update, VPC CIDRs
 * included (up to TUNNEL_CIDRS of them; more go to vpc_routes first), so
 * packets see a slot attached or not, never half of it. */
struct tunnel_info {
	__u32 vni;
	__be32 vpc_ip;
	__be32 remote_ip;
	__u8 vpc_mac[6];      /* the slot's MAC in the VPC */
	__u8 ncidrs;          /* used entries of cidrs */
	__u8 more_routes;     /* further CIDRs are in vpc_routes */
	struct vpc_cidr cidrs[TUNNEL_CIDRS];
};

/* The VPC side's MAC as seen by a slot: given at attach or learned from
 * frames the slot receives through the tunnel. */
/* Learned for (vni, remote): a MAC learned under an earlier attachment is
 * never used by a later one, even if a packet in flight during the release
 * wrote it after the release cleared it. */
struct peer_info {
	__u8 mac[6];
	__u16 known;
	__u32 vni;
	__be32 remote;
	__u64 asked_ns;       /* last ARP request sent for this slot */
};

struct vni_key {
	__u32 vni;
	__be32 ip;
};

struct vpc_route_key {
	__u32 prefixlen;      /* 32 (slot) + CIDR length */
	__u32 slot;
	__be32 ip;
};

/* The pool's deny set: destinations no guest's NATed traffic may reach
 * (link-local, multicast, the underlay's subnets, the operator's ranges).
 * Traffic to a slot's VPC is not NATed and not subject to it: VPC CIDRs
 * may overlap the underlay. */
struct deny_key {
	__u32 prefixlen;
	__be32 ip;
};

/* What the lease of a slot lets through, written by netslotd at acquire
 * and cleared first thing at release. A slot without LEASE_OPEN (pooled,
 * or being released) receives nothing and sends nothing. */
#define INBOUND_RULES 16

/* An inbound rule: new traffic (not a reply to the guest's own flows) of
 * proto from src/mask to destination ports [port_lo, port_hi] may reach
 * the guest. Ports are in host order; ICMP and other protocols ignore
 * them. */
struct inbound_rule {
	__u8 proto;
	__u8 pad;
	__u16 port_lo;
	__u16 port_hi;
	__u16 pad2;
	__be32 src;
	__be32 mask;
};

struct lease_policy {
	__u32 flags;
	__u32 ninbound;
	struct inbound_rule inbound[INBOUND_RULES];
};

/*
 * The guest's recent outbound flows that are not TCP (UDP, ICMP echo,
 * other protocols), so that their replies, and nothing else unasked, come
 * in: a small per-slot table, FLOW_SETS sets of FLOW_WAYS entries, looked
 * up by a hash of the flow. A new flow takes the older entry of its set,
 * so the table never grows and one slot's flows never evict another's.
 * TCP needs no table: a segment without ACK or RST cannot be a reply, and
 * one with them cannot open a connection. No conntrack.
 */
#define FLOW_SETS 64
#define FLOW_WAYS 2

struct flow {
	__be32 remote;        /* the peer's address */
	__be16 rport;         /* the peer's UDP port; 0 for other protocols */
	__be16 lport;         /* the guest's UDP port, or its ICMP echo id */
	__u8 proto;           /* 0: empty */
	__u8 vpc;             /* the flow goes through the tunnel, not the NAT */
	__u8 pad[2];
	__u32 seen;           /* coarse time of the last packet out */
};

struct slot_flows {
	struct flow f[FLOW_SETS * FLOW_WAYS];
};

struct slot_stats {
	__u64 tx_packets;     /* slot to uplink */
	__u64 tx_bytes;
	__u64 rx_packets;     /* uplink to slot */
	__u64 rx_bytes;
	__u64 encap_packets;  /* of tx, sent through the tunnel */
	__u64 decap_packets;  /* of rx, received through the tunnel */
	__u64 arp_replies;    /* answered for the VPC address */
	__u64 arp_requests;   /* sent for an unknown VPC peer */
	__u64 drops[DROP_REASONS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pool_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* set to the pool size at load */
	__type(key, __u32);
	__type(value, struct slot_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);   /* host veth ifindex */
	__type(value, __u32); /* slot index */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} by_ifindex SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* replaced whole, RCU-freed */
	__type(key, __u32);
	__type(value, struct tunnel_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct peer_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct vni_key);
	__type(value, __u32); /* slot index */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vni_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);   /* VNI */
	__type(value, __u32); /* attached slots */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vnis SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vpc_route_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vpc_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct deny_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} deny SEC(".maps");

/* netslotd writes these two through a memory mapping, not a syscall per
 * update: opening a lease is one store (the flags word, last), a release
 * clears a slot's flows with a memset. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct lease_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} leases SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct slot_flows);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

/* Entry slot_count (the last) counts what belongs to no slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slot_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* Give bpf2go the types the maps do not name. */
const enum drop_reason *unused_drop_reason __attribute__((unused));
const enum datapath_const *unused_datapath_const __attribute__((unused));

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

static __always_inline struct pool_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline struct slot_stats *get_stats(__u32 idx)
{
	return bpf_map_lookup_elem(&stats, &idx);
}

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

static __always_inline __u32 slot_of_ip(const struct pool_config *cfg, __be32 ip)
{
	return bpf_ntohl(ip) - bpf_ntohl(cfg->slot_first);
}

/* The lease policy of slot idx if the slot is leased, else NULL. */
static __always_inline struct lease_policy *open_lease(__u32 idx)
{
	struct lease_policy *lp = bpf_map_lookup_elem(&leases, &idx);

	if (!lp || !(lp->flags & LEASE_OPEN))
		return NULL;
	return lp;
}

/* The flow table's clock: jiffies in units of 2^FLOW_TIME_SHIFT (64 ms at
 * HZ=1000, 256 ms at HZ=250). The verifier inlines bpf_jiffies64 into a
 * load; a ktime helper costs a call per packet. netslotd writes the time a
 * flow stays open (120 s) in these units, from the kernel's tick length. */
static __always_inline __u32 flow_now(void)
{
	return (__u32)(bpf_jiffies64() >> FLOW_TIME_SHIFT);
}

/*
 * The flow of a guest's packet that is not TCP, as the guest sees it (out:
 * it sends the packet; else it receives it): 0 and k filled in, or -1 if
 * the packet has none to track (TCP, ICMP other than echo, a header cut
 * short). The caller skips later fragments, which have no L4 header.
 */
static __always_inline int flow_of(struct __sk_buff *skb, const struct iphdr *ip, __u32 l4_off, bool out,
				   bool vpc, struct flow *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->proto = ip->protocol;
	k->vpc = vpc;
	k->remote = out ? ip->daddr : ip->saddr;
	if (ip->protocol == IPPROTO_TCP)
		return -1;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr u;

		if (load(skb, l4_off, &u, sizeof(u)))
			return -1;
		k->rport = out ? u.dest : u.source;
		k->lport = out ? u.source : u.dest;
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmp_echo e;

		if (load(skb, l4_off, &e, sizeof(e)) ||
		    e.type != (out ? ICMP_ECHO : ICMP_ECHOREPLY))
			return -1;
		k->lport = e.id;
	}
	return 0;
}

static __always_inline __u32 flow_set(const struct flow *k)
{
	__u32 h = k->remote ^ ((__u32)k->rport << 16 | k->lport) ^ ((__u32)k->proto << 24);

	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return (h & (FLOW_SETS - 1)) * FLOW_WAYS;
}

static __always_inline bool flow_eq(const struct flow *a, const struct flow *b)
{
	return a->remote == b->remote && a->rport == b->rport && a->lport == b->lport &&
	       a->proto == b->proto && a->vpc == b->vpc;
}

/* Record (or refresh) the flow of a packet slot idx's guest sends, through
 * the tunnel (vpc) or the NAT. */
static __always_inline void flow_out(struct __sk_buff *skb, __u32 idx, const struct iphdr *ip, __u32 l4_off,
				     bool vpc)
{
	struct slot_flows *t;
	struct flow k, *a, *b, *hit;
	__u32 set, now;

	if (ip->frag_off & bpf_htons(IP_OFFMASK))
		return;
	if (flow_of(skb, ip, l4_off, true, vpc, &k))
		return;
	t = bpf_map_lookup_elem(&flows, &idx);
	if (!t)
		return;
	set = flow_set(&k);
	a = &t->f[set];
	b = &t->f[set + 1];
	now = flow_now();
	hit = flow_eq(a, &k) ? a : flow_eq(b, &k) ? b : NULL;
	if (hit) {
		if (hit->seen != now) /* at most one write a second per flow */
			hit->seen = now;
		return;
	}
	k.seen = now;
	*(a->seen <= b->seen ? a : b) = k;
}

/* Whether k, a packet the guest receives, answers a flow it sent less
 * than ttl ago. */
static __always_inline bool flow_in(__u32 idx, const struct flow *k, __u32 ttl)
{
	struct slot_flows *t = bpf_map_lookup_elem(&flows, &idx);
	__u32 set, now;

	if (!t)
		return false;
	set = flow_set(k);
	now = flow_now();
#pragma unroll
	for (int w = 0; w < FLOW_WAYS; w++) {
		struct flow *f = &t->f[set + w];
		if (flow_eq(f, k) && now - f->seen <= ttl)
			return true;
	}
	return false;
}

/* Whether the lease's inbound rules let new traffic of proto from src to
 * port (host order; ports: whether the protocol has ports) in. */
static __always_inline bool inbound_allowed(const struct lease_policy *lp, __u8 proto, __be32 src, __u16 port,
					    bool ports)
{
	for (int k = 0; k < INBOUND_RULES; k++) {
		const struct inbound_rule *r = &lp->inbound[k];

		if (k >= lp->ninbound)
			break;
		if (r->proto != proto || (src & r->mask) != r->src)
			continue;
		if (ports && (port < r->port_lo || port > r->port_hi))
			continue;
		return true;
	}
	return false;
}

/*
 * Whether an ICMP error at l4_off, to slot idx's guest, is about a packet
 * the guest sent on this path (vpc: the tunnel): the packet it quotes left
 * from local (the slot or VPC address) and, unless it was TCP (whose
 * errors the guest's stack matches to a sequence number itself) or a
 * later fragment, belongs to one of the guest's recent flows.
 */
static __always_inline bool icmp_error_ok(struct __sk_buff *skb, __u32 idx, __u32 l4_off, __be32 local, bool vpc,
					  __u32 ttl)
{
	__u32 q_off = l4_off + sizeof(struct icmp_echo);
	struct iphdr q;
	struct flow k;

	if (bpf_skb_load_bytes(skb, q_off, &q, sizeof(q)) || q.saddr != local || q.ihl < 5)
		return false;
	if (q.protocol == IPPROTO_TCP || (q.frag_off & bpf_htons(IP_OFFMASK)))
		return true;
	return !flow_of(skb, &q, q_off + q.ihl * 4, true, vpc, &k) && flow_in(idx, &k, ttl);
}

/*
 * Whether a packet from outside may reach slot idx's guest: a reply to one
 * of the guest's flows on the same path (vpc: through the tunnel, else
 * through the NAT): TCP with ACK or RST; UDP, ICMP echo and other
 * protocols from the peer of a recent flow; an ICMP error about one of
 * its packets (see icmp_error_ok, local being the address the guest's
 * packets leave with on this path); or new traffic the lease's inbound
 * rules allow. ip is the header at l3_off, before any translation.
 */
static __always_inline bool inbound_ok(struct __sk_buff *skb, const struct pool_config *cfg, __u32 idx,
				       const struct lease_policy *lp, const struct iphdr *ip, __u32 l3_off,
				       __be32 local, bool vpc)
{
	__u32 l4_off = l3_off + ip->ihl * 4;
	__u16 port = 0;
	bool ports = false;
	struct flow k;

	if (ip->frag_off & bpf_htons(IP_OFFMASK))
		return true; /* a later fragment: its first one was judged; alone it opens nothing */
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr th;

		if (load(skb, l4_off, &th, sizeof(th)))
			return false;
		if (th.ack || th.rst)
			return true;
		port = bpf_ntohs(th.dest);
		ports = true;
	} else if (ip->protocol == IPPROTO_ICMP) {
		__u8 type;

		if (load(skb, l4_off, &type, sizeof(type)))
			return false;
		if (icmp_is_error(type)) {
			if (icmp_error_ok(skb, idx, l4_off, local, vpc, cfg->flow_ttl))
				return true;
		} else if (!flow_of(skb, ip, l4_off, false, vpc, &k) && flow_in(idx, &k, cfg->flow_ttl)) {
			return true;
		}
	} else {
		if (flow_of(skb, ip, l4_off, false, vpc, &k))
			return false;
		if (flow_in(idx, &k, cfg->flow_ttl))
			return true;
		if (ip->protocol == IPPROTO_UDP) {
			port = bpf_ntohs(k.lport);
			ports = true;
		}
	}
	return inbound_allowed(lp, ip->protocol, ip->saddr, port, ports);
}

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
	if (g.flags & 0x80)
		return drop(none, DROP_GENEVE_OAM);
	if (g.flags & 0x40)
		return drop(none, DROP_GENEVE_CRITICAL);
	optlen = (g.ver_optlen & 0x3f) * 4;
	inner_off = udp_off + sizeof(struct udphdr) + GENEVE_HLEN + optlen;
	if (end < inner_off)
		return drop(none, DROP_GENEVE_OPTLEN);
	if (g.proto != bpf_htons(ETH_P_TEB_))
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
	bool l4 = !(ip.frag_off & bpf_htons(IP_OFFMASK));
	if (nat(skb, l3_off, in_l4, ip.protocol, l4, ip.daddr, cfg->guest_ip, true))
		return drop(idx, DROP_REWRITE);
	return deliver(skb, idx, s, true);
}

SEC("tcx/ingress")
int uplink_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct pool_config *cfg;
	__u32 l3_off = ETH_HLEN, ihl, idx;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TCX_NEXT;
	if (data + ETH_HLEN + sizeof(*ip) > end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*ip)))
			return TCX_NEXT;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(*ip) > end)
			return TCX_NEXT;
	}
	ip = data + ETH_HLEN;
	cfg = get_config();
	if (!cfg || !cfg->slot_count)
		return TCX_NEXT;
	ihl = ip->ihl * 4;
	if (!ipv4_ok(skb, ip, l3_off))
		return TCX_NEXT; /* the host's stack drops it */

	if (ip->daddr == cfg->underlay_ip && ip->protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (ip->frag_off & bpf_htons(IP_OFFMASK))
			return TCX_NEXT; /* a later fragment: no UDP header to tell */
		if (bpf_skb_load_bytes(skb, l3_off + ihl, &udp, sizeof(udp)))
			return TCX_NEXT;
		if (udp.dest != bpf_htons(GENEVE_PORT))
			return TCX_NEXT;
		/* Our own tunnels leave with DF; a peer's fragments would need
		 * reassembly, which nothing here does. */
		if (ip->frag_off & bpf_htons(IP_MF))
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
	bool l4 = !(ip->frag_off & bpf_htons(IP_OFFMASK));
	if (nat(skb, l3_off, l3_off + ihl, proto, l4, old, cfg->guest_ip, true))
		return drop(idx, DROP_REWRITE);
	return deliver(skb, idx, s, false);
}

/* The UDP source port of a tunnel packet spreads flows over the underlay
 * (RFC 8926 section 3.3), in the ephemeral range like the kernel's. */
static __always_inline __be16 flow_port(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);
	return bpf_htons((__u16)(((__u64)hash * (65535 - 49152 + 1)) >> 32) + 49152);
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
	fib.family = 2; /* AF_INET */
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = cfg->underlay_ip;
	fib.ipv4_dst = t->remote_ip;
	fib.tbid = cfg->route_table;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib),
			    BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != cfg->uplink_ifindex)
		return drop(idx, DROP_NO_ROUTE);

	sport = flow_port(skb);
	p = bpf_map_lookup_elem(&peers, &idx);
	if (peer_known(p, t)) {
		bool l4 = !(ip->frag_off & bpf_htons(IP_OFFMASK));
		if (nat(skb, ETH_HLEN, ETH_HLEN + ihl, ip->protocol, l4, ip->saddr, t->vpc_ip, false))
			return drop(idx, DROP_REWRITE);
		__builtin_memcpy(g.inner.h_dest, p->mac, ETH_ALEN);
		g.inner.h_proto = bpf_htons(ETH_P_IP);
	} else {
		if (to_arp_request(skb, idx, t, ip, ihl, p))
			return drop(idx, DROP_PEER_UNKNOWN);
		__builtin_memcpy(g.inner.h_dest, bcast, ETH_ALEN);
		g.inner.h_proto = bpf_htons(ETH_P_ARP);
		arp = true;
	}
	__builtin_memcpy(g.inner.h_source, t->vpc_mac, ETH_ALEN);

	if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC,
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
	g.proto = bpf_htons(ETH_P_TEB_);
	g.vni[0] = t->vni >> 16;
	g.vni[1] = t->vni >> 8;
	g.vni[2] = t->vni;

	__builtin_memcpy(outer.h_source, cfg->uplink_mac, ETH_ALEN);
	__builtin_memcpy(outer.h_dest, cfg->uplink_mac, ETH_ALEN); /* set by the neighbour */
	outer.h_proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &g, sizeof(g), 0))
		return drop(idx, DROP_REWRITE);
	/* The uplink's MTU must hold the guest's packet plus the tunnel's
	 * headers (GSO packets: each segment). */
	__u32 mtu = 0;
	if (bpf_check_mtu(skb, cfg->uplink_ifindex, &mtu, 0, 0))
		return drop(idx, DROP_TOO_BIG);

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
	struct bpf_redir_neigh nh = {.nh_family = 2, .ipv4_nh = fib.ipv4_dst};
	return bpf_redirect_neigh(cfg->uplink_ifindex, &nh, sizeof(nh), 0);
}

SEC("tcx/egress")
int uplink_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct vpc_route_key rk;
	struct iphdr *ip;
	struct pool_config *cfg;
	__u32 ifindex = skb->ingress_ifindex, *idxp, idx, ihl;

	cfg = get_config();
	if (!cfg)
		return TCX_NEXT;
	idxp = bpf_map_lookup_elem(&by_ifindex, &ifindex);
	idx = idxp ? *idxp : cfg->slot_count;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return idxp ? drop(idx, DROP_EGRESS_NOT_IPV4) : TCX_NEXT;
	if (data + ETH_HLEN + sizeof(*ip) > end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*ip)))
			return idxp ? drop(idx, DROP_EGRESS_NOT_IPV4) : TCX_NEXT;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + sizeof(*ip) > end)
			return idxp ? drop(idx, DROP_EGRESS_NOT_IPV4) : TCX_NEXT;
	}
	ip = data + ETH_HLEN;
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
	bool l4 = !(ip->frag_off & bpf_htons(IP_OFFMASK));
	if (nat(skb, ETH_HLEN, ETH_HLEN + ihl, proto, l4, old, s->slot_ip, false))
		return drop(idx, DROP_REWRITE);
	struct slot_stats *st = get_stats(idx);
	if (st) {
		st->tx_packets++;
		st->tx_bytes += skb->len;
	}
	return TCX_NEXT;
}

char __license[] SEC("license") = "Dual BSD/GPL";
