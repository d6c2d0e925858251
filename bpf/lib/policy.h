// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* What may reach a guest: its lease, the replies to its own flows (a small
 * fixed-size flow table per slot), and the inbound rules it was given. */
#ifndef NETSLOT_POLICY_H
#define NETSLOT_POLICY_H

#include "nat.h"

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

	if (ip_later_fragment(ip))
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
	if (q.protocol == IPPROTO_TCP || ip_later_fragment(&q))
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

	if (ip_later_fragment(ip))
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

/* The UDP source port of a tunnel packet spreads flows over the underlay
 * (RFC 8926 section 3.3), in the ephemeral range like the kernel's. */
static __always_inline __be16 flow_port(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);
	return bpf_htons((__u16)(((__u64)hash * (65535 - 49152 + 1)) >> 32) + 49152);
}

#endif /* NETSLOT_POLICY_H */
