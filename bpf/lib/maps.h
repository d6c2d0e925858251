// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The datapath's types and maps, which netslotd writes and reads (bpf2go
 * generates their Go types), and the lookups of the pool's configuration
 * and counters. */
#ifndef NETSLOT_MAPS_H
#define NETSLOT_MAPS_H

#include "common.h"

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
	__u32 flat;           /* no uplink gateway: every next hop is the packet's
			       * own destination (or VTEP), resolved here; the
			       * pool table's next hop is a placeholder */
	/* The slot side's addressing, the same in every slot, for the DHCP
	 * answers on tap0. */
	__be32 gateway_ip;    /* tap0's address: the guest's router */
	__be32 guest_mask;
	__be32 host_gateway;  /* the slot's next hop on eth0 (169.254.1.1) */
	__u8 tap_mac[6];
	__u8 guest_mac[6];
};

/* NETSLOT_TEST_LAYOUT builds the datapath with an older layout made for
 * the upgrade test: a leading field the current layout does not have,
 * which shifts every other (see internal/datapath/layout.go). */
#ifdef NETSLOT_TEST_LAYOUT
#define TEST_LAYOUT_FIELD __u32 test_gen;
#else
#define TEST_LAYOUT_FIELD
#endif

struct slot_info {
	TEST_LAYOUT_FIELD
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
	TEST_LAYOUT_FIELD
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
	__u32 held;           /* frames held for netslotd in this window (see hold) */
	__u32 hold_window;    /* when the window began, in 2^20 ns ticks */
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

/* What the lease of a slot lets through, written by netslotd at acquire
 * and cleared first thing at release. A slot without LEASE_OPEN (pooled,
 * or being released) receives nothing and sends nothing. */
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
	__u64 dhcp_replies;   /* DHCP answers sent to the guest on tap0 */
	__u64 icmp_frag_needed; /* "fragmentation needed" sent to the guest for
				 * a packet too big for the tunnel */
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

/* What a lease's DHCP answers carry beyond the pool's addressing, written
 * by acquire before it opens the lease and cleared by release after it
 * closes it (an mmapped array, like leases: no syscall either way). */
struct dhcp_lease {
	__be32 dns[DHCP_DNS_MAX];
	__u16 mtu;            /* option 26; 0: none */
	__u8 ndns;
	__u8 hostname_len;    /* option 12; 0: none */
	char hostname[DHCP_HOSTNAME_MAX + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct dhcp_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dhcp SEC(".maps");

/*
 * Events for netslotd (kinds HOLD_FRAME, HOLD_LEARNED): a copy of a guest's
 * frame to its VPC sent while the peer's MAC is unknown, which netslotd
 * sends again once the peer is learned, and the peer learned. `lease` is
 * the slot's lease_policy.flags when the frame left: its lease's
 * generation, so that nothing of one lease is sent under the next.
 */
struct hold_event {
	__u32 kind;
	__u32 slot;
	__u32 lease;
	__u32 len;            /* of data */
	__u64 time_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u8 data[HOLD_MAX];  /* HOLD_FRAME: the frame, as the uplink saw it */
};

#define HOLD_HEADER offsetof(struct hold_event, data)

/* Records are as long as their frame (a SYN takes 24 + 74 bytes): the
 * ring holds thousands of first packets for the whole pool. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} held SEC(".maps");

/* Per CPU: a hold_event is built here, then copied into the ring at its
 * frame's length. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hold_event);
} hold_scratch SEC(".maps");

/* The token bucket of a slot's ICMP "fragmentation needed" answers
 * (lib/icmp.h): credit in nanoseconds, as the kernel's xrlim_allow. */
struct icmp_limit {
	__u64 stamp_ns;       /* last refill */
	__u64 credit_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct icmp_limit);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} icmp_limits SEC(".maps");

/* The token bucket of a slot's DHCP answers (lib/dhcp.h), as icmp_limit,
 * for one lease: a bucket of an earlier lease (another lease_policy.flags)
 * is full again for the next. */
struct dhcp_limit {
	__u64 stamp_ns;
	__u64 credit_ns;
	__u32 lease;          /* lease_policy.flags of the lease it counts */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dhcp_limit);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dhcp_limits SEC(".maps");

/* tokens_take: one more of what a token bucket bounds? Credit, in
 * nanoseconds, grows with time up to burst intervals' worth; each use
 * takes an interval of it (the kernel's xrlim_allow). Updates from two
 * CPUs at once may let one more through; that is all a race costs. */
static __always_inline bool tokens_take(__u64 *stamp_ns, __u64 *credit_ns, __u64 interval, __u64 burst)
{
	__u64 now = bpf_ktime_get_ns(), credit;

	credit = *credit_ns + (now - *stamp_ns);
	if (credit > burst * interval)
		credit = burst * interval;
	*stamp_ns = now;
	if (credit < interval) {
		*credit_ns = credit;
		return false;
	}
	*credit_ns = credit - interval;
	return true;
}

/* Entry slot_count (the last) counts what belongs to no slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slot_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");


static __always_inline struct pool_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline struct slot_stats *get_stats(__u32 idx)
{
	return bpf_map_lookup_elem(&stats, &idx);
}

#endif /* NETSLOT_MAPS_H */
