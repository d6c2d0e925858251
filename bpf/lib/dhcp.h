// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* DHCP on tap0: a guest's DISCOVER, REQUEST and INFORM answered in place,
 * with no process, thread or socket per slot (RFC 2131, RFC 2132). */
#ifndef NETSLOT_DHCP_H
#define NETSLOT_DHCP_H

#include "stats.h"
#include "policy.h"

#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define DHCP_MAGIC 0x63825363
#define BOOTREQUEST 1
#define BOOTREPLY 2
#define BOOTP_BROADCAST 0x8000

enum dhcp_type {
	DHCPDISCOVER = 1,
	DHCPOFFER = 2,
	DHCPREQUEST = 3,
	DHCPDECLINE = 4,
	DHCPACK = 5,
	DHCPNAK = 6,
	DHCPRELEASE = 7,
	DHCPINFORM = 8,
};

enum dhcp_option {
	OPT_PAD = 0,
	OPT_MASK = 1,
	OPT_ROUTER = 3,
	OPT_DNS = 6,
	OPT_HOSTNAME = 12,
	OPT_MTU = 26,
	OPT_REQUESTED_IP = 50,
	OPT_LEASE_TIME = 51,
	OPT_TYPE = 53,
	OPT_SERVER_ID = 54,
	OPT_END = 255,
};

struct bootp {
	__u8 op;
	__u8 htype;
	__u8 hlen;
	__u8 hops;
	__be32 xid;
	__be16 secs;
	__be16 flags;
	__be32 ciaddr;
	__be32 yiaddr;
	__be32 siaddr;
	__be32 giaddr;
	__u8 chaddr[16];
	__u8 sname[64];
	__u8 file[128];
	__be32 cookie;
} __attribute__((packed));

/*
 * An answer's options sit at fixed offsets, each one either present or
 * replaced by pad bytes (option 0, which may appear anywhere): the
 * verifier sees constant offsets only, and every answer has one size.
 */
enum {
	AT_TYPE = 0,                      /* 53, 1 */
	AT_SERVER = AT_TYPE + 3,          /* 54, 4 */
	AT_LEASE = AT_SERVER + 6,         /* 51, 4 */
	AT_MASK = AT_LEASE + 6,           /* 1, 4 */
	AT_ROUTER = AT_MASK + 6,          /* 3, 4 */
	AT_MTU = AT_ROUTER + 6,           /* 26, 2 */
	AT_DNS = AT_MTU + 4,              /* 6, 4 per server */
	AT_HOSTNAME = AT_DNS + 2 + 4 * DHCP_DNS_MAX, /* 12, up to DHCP_HOSTNAME_MAX */
	AT_END = AT_HOSTNAME + 2 + DHCP_HOSTNAME_MAX,
	/* Past the end option (where a client reads nothing): the word that
	 * makes the UDP checksum right whether or not the kernel completes it
	 * (see the checksum below). At an even offset of the UDP header. */
	AT_FIX = (AT_END + 2) & ~1,
	REPLY_OPTS = (AT_FIX + 2 + 3) & ~3, /* UDP's length, a multiple of 4 */
};

struct dhcp_reply {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct bootp b;
	__u8 opts[REPLY_OPTS];
} __attribute__((packed));

#define REQUEST_OPTS 256 /* of a request's options, read; the type comes first */

struct dhcp_scratch {
	struct dhcp_reply r;
	__u8 opts[REQUEST_OPTS + 8]; /* the request's, with room to read past */
};

_Static_assert(REQUEST_OPTS == 256, "parse_options masks with 0xff");
_Static_assert(sizeof(struct bootp) == 240, "BOOTP's fixed part is 240 bytes");
_Static_assert(sizeof(struct udphdr) + sizeof(struct bootp) + REPLY_OPTS <= 512,
	       "bpf_csum_diff sums at most 512 bytes");
_Static_assert(sizeof(struct bootp) + REPLY_OPTS >= 300, "BOOTP's minimum message is 300 bytes");

/* Per CPU: an answer is built outside the stack's 512 bytes. Bytes to the
 * map (bpf2go cannot express the kernel's iphdr), a dhcp_scratch to the
 * program. */
struct dhcp_scratch_bytes {
	__u8 b[sizeof(struct dhcp_scratch)];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dhcp_scratch_bytes);
} dhcp_scratch SEC(".maps");

/*
 * Which slot a packet on tap0 is in. Every slot's tap0 looks the same, and
 * bpf_get_netns_cookie gives a tc program the initial namespace's cookie
 * when the packet has no socket; but the lookup of the slot's next hop runs
 * in the slot's namespace, and its answer, eth0's MAC, carries the slot's
 * index (slot.Config.SlotVethMAC), checked against the slot's entry.
 */
static __always_inline __u32 slot_of_tap(struct __sk_buff *skb, const struct pool_config *cfg)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ifindex = skb->ingress_ifindex,
		.ipv4_src = cfg->guest_ip,
		.ipv4_dst = cfg->host_gateway,
	};
	struct slot_info *s;
	__u32 idx;

	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return cfg->slot_count;
	idx = (__u32)fib.smac[2] << 16 | (__u32)fib.smac[3] << 8 | fib.smac[4];
	if (idx >= cfg->slot_count)
		return cfg->slot_count;
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!s || !s->host_ifindex || !mac_eq(s->slot_mac, fib.smac))
		return cfg->slot_count;
	return idx;
}

static __always_inline void put4(__u8 *o, __u8 code, __be32 v)
{
	o[0] = code;
	o[1] = 4;
	__builtin_memcpy(o + 2, &v, 4);
}

/* The request's message type, requested address and server identifier. */
struct dhcp_request {
	__u8 type;
	bool has_server;
	__be32 requested;
	__be32 server;
};

struct option_walk {
	__u32 pos;
	__u32 avail;
	int err;
	struct dhcp_request q;
};

/* One option of the request's, read from the scratch buffer; a bpf_loop
 * callback, so that the verifier walks its body once, not once per
 * option. */
static long option_step(__u64 k, void *ctx)
{
	struct option_walk *w = ctx;
	struct dhcp_scratch *sc;
	__u32 zero = 0, pos = w->pos, v;
	__u8 code, len;

	sc = (struct dhcp_scratch *)bpf_map_lookup_elem(&dhcp_scratch, &zero);
	if (!sc || pos + 2 > w->avail)
		return 1;
	code = sc->opts[pos & (REQUEST_OPTS - 1)];
	if (code == OPT_END)
		return 1;
	if (code == OPT_PAD) {
		w->pos = pos + 1;
		return 0;
	}
	len = sc->opts[(pos + 1) & (REQUEST_OPTS - 1)];
	v = (pos + 2) & (REQUEST_OPTS - 1);
	if (pos + 2 + len > w->avail) {
		w->err = -1;
		return 1;
	}
	if (code == OPT_TYPE && len == 1)
		w->q.type = sc->opts[v];
	else if (code == OPT_REQUESTED_IP && len == 4)
		__builtin_memcpy(&w->q.requested, sc->opts + v, 4);
	else if (code == OPT_SERVER_ID && len == 4) {
		__builtin_memcpy(&w->q.server, sc->opts + v, 4);
		w->q.has_server = true;
	}
	w->pos = pos + 2 + len;
	return 0;
}

/* Reads the request's options at off (at most REQUEST_OPTS bytes of
 * them: clients put the message type first) into the scratch buffer and
 * takes what an answer depends on. */
static __always_inline int parse_options(struct __sk_buff *skb, __u32 off, __u8 *opts, struct dhcp_request *q)
{
	struct option_walk w = {};
	__u64 n;

	if (skb->len <= off)
		return -1;
	n = skb->len - off;
	if (n >= REQUEST_OPTS) {
		n = REQUEST_OPTS;
		if (bpf_skb_load_bytes(skb, off, opts, REQUEST_OPTS))
			return -1;
	} else {
		/* Masked in the register the call gets: the compiler, which
		 * knows n < REQUEST_OPTS, would drop a C mask, and the
		 * verifier, which does not, needs it. */
		asm volatile("%0 &= 0xff" : "+r"(n));
		if (n < 3 || bpf_skb_load_bytes(skb, off, opts, n))
			return -1;
	}
	w.avail = n;
	bpf_loop(REQUEST_OPTS / 2, option_step, &w, 0);
	*q = w.q;
	return w.err || !q->type ? -1 : 0;
}

/* fold16 folds a one's complement sum to 16 bits (not complemented). */
static __always_inline __u16 fold16(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* Sums len bytes at p into the one's complement sum seed. */
static __always_inline __u32 csum_add_bytes(void *p, __u32 len, __u32 seed)
{
	return bpf_csum_diff(NULL, 0, p, len, seed);
}

/*
 * tap_dhcp: tc ingress of every slot's tap0 (one classic tc filter per
 * slot, the same program). Anything not to UDP port 67 goes on, to the
 * slot's firewall. To port 67, only a DHCP request from the guest's MAC,
 * from 0.0.0.0 or the guest address, of a leased slot, is answered; the
 * rest is dropped and counted. The answer is sent straight back out of
 * tap0 (bpf_redirect to its egress): the guest's VMM reads it.
 */
static __always_inline int tap_dhcp_answer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct udphdr udp;
	struct pool_config *cfg;
	struct dhcp_scratch *sc;
	struct dhcp_request q = {};
	struct dhcp_lease *dl;
	__u32 zero = 0, idx, ihl, off;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || ihl > 60)
		return TC_ACT_OK; /* the stack drops it */
	/* A later fragment has no UDP header: its bytes are payload. */
	if (ip_later_fragment(ip))
		return TC_ACT_OK;
	if (load(skb, ETH_HLEN + ihl, &udp, sizeof(udp)) || udp.dest != bpf_htons(DHCP_SERVER_PORT))
		return TC_ACT_OK;

	cfg = get_config();
	if (!cfg)
		return TC_ACT_SHOT;
	idx = slot_of_tap(skb, cfg);
	if (idx >= cfg->slot_count)
		return drop(cfg->slot_count, DROP_NO_SLOT);
	if (!open_lease(idx))
		return drop(cfg->slot_count, DROP_NOT_LEASED);
	if (!mac_eq(eth->h_source, cfg->guest_mac) || (ip->saddr && ip->saddr != cfg->guest_ip))
		return drop(idx, DROP_DHCP_NOT_GUEST);
	/* No client sends IP options or fragments; the answer's headers are
	 * where the request's were (see the checksum below). */
	if (ihl != sizeof(*ip) || ip_more_fragments(ip) || udp.source != bpf_htons(DHCP_CLIENT_PORT))
		return drop(idx, DROP_DHCP_MALFORMED);

	sc = (struct dhcp_scratch *)bpf_map_lookup_elem(&dhcp_scratch, &zero);
	dl = bpf_map_lookup_elem(&dhcp, &idx);
	if (!sc || !dl)
		return drop(idx, DROP_REWRITE);
	struct dhcp_reply *r = &sc->r;
	off = ETH_HLEN + ihl + sizeof(struct udphdr);
	if (bpf_skb_load_bytes(skb, off, &r->b, sizeof(r->b)))
		return drop(idx, DROP_DHCP_MALFORMED);
	if (r->b.op != BOOTREQUEST || r->b.htype != 1 || r->b.hlen != ETH_ALEN ||
	    r->b.cookie != bpf_htonl(DHCP_MAGIC) || !mac_eq(r->b.chaddr, cfg->guest_mac))
		return drop(idx, DROP_DHCP_MALFORMED);
	if (parse_options(skb, off + sizeof(struct bootp), sc->opts, &q))
		return drop(idx, DROP_DHCP_MALFORMED);

	__u8 type;
	switch (q.type) {
	case DHCPDISCOVER:
		type = DHCPOFFER;
		break;
	case DHCPREQUEST:
		/* Selecting (server id) or init-reboot (requested address) or
		 * renewing (ciaddr): for the guest address, from this server. */
		if (q.has_server && q.server != cfg->gateway_ip)
			return drop(idx, DROP_DHCP_IGNORED);
		if ((q.requested && q.requested != cfg->guest_ip) ||
		    (!q.requested && r->b.ciaddr != cfg->guest_ip))
			type = DHCPNAK;
		else
			type = DHCPACK;
		break;
	case DHCPINFORM:
		type = DHCPACK;
		break;
	default: /* RELEASE and DECLINE change nothing; the rest is for clients */
		return drop(idx, DROP_DHCP_IGNORED);
	}
	bool nak = type == DHCPNAK, inform = q.type == DHCPINFORM;

	/* The BOOTP part, from the request's (xid, flags, ciaddr, giaddr,
	 * chaddr). */
	r->b.op = BOOTREPLY;
	r->b.hops = 0;
	r->b.secs = 0;
	r->b.yiaddr = nak || inform ? 0 : cfg->guest_ip;
	r->b.siaddr = 0;
	if (nak)
		r->b.ciaddr = 0;
	__builtin_memset(r->b.sname, 0, sizeof(r->b.sname) + sizeof(r->b.file));

	/* Options, at their fixed places. */
	__u8 *o = r->opts;
	__builtin_memset(o, 0, REPLY_OPTS);
	o[AT_TYPE] = OPT_TYPE;
	o[AT_TYPE + 1] = 1;
	o[AT_TYPE + 2] = type;
	put4(o + AT_SERVER, OPT_SERVER_ID, cfg->gateway_ip);
	if (!nak) {
		if (!inform)
			put4(o + AT_LEASE, OPT_LEASE_TIME, bpf_htonl(DHCP_LEASE_SECONDS));
		put4(o + AT_MASK, OPT_MASK, cfg->guest_mask);
		put4(o + AT_ROUTER, OPT_ROUTER, cfg->gateway_ip);
		if (dl->mtu >= 68) {
			__be16 mtu = bpf_htons(dl->mtu);

			o[AT_MTU] = OPT_MTU;
			o[AT_MTU + 1] = 2;
			__builtin_memcpy(o + AT_MTU + 2, &mtu, 2);
		}
		__u8 ndns = dl->ndns;
		if (ndns > DHCP_DNS_MAX)
			ndns = DHCP_DNS_MAX;
		if (ndns) {
			o[AT_DNS] = OPT_DNS;
			o[AT_DNS + 1] = 4 * ndns;
			/* Unused entries are zero in the lease, hence pads. */
			__builtin_memcpy(o + AT_DNS + 2, dl->dns, sizeof(dl->dns));
		}
		if (dl->hostname_len && dl->hostname_len <= DHCP_HOSTNAME_MAX) {
			o[AT_HOSTNAME] = OPT_HOSTNAME;
			o[AT_HOSTNAME + 1] = dl->hostname_len;
			/* Zero past its length in the lease: pads. */
			__builtin_memcpy(o + AT_HOSTNAME + 2, dl->hostname, DHCP_HOSTNAME_MAX);
		}
	}
	o[AT_END] = OPT_END;

	/* Headers: from tap0 (the gateway) to the guest's MAC and address,
	 * or broadcast where the client asked for it (and for a NAK). */
	bool bcast = nak || (r->b.flags & bpf_htons(BOOTP_BROADCAST)) || (inform && !r->b.ciaddr);
	__builtin_memcpy(r->eth.h_source, cfg->tap_mac, ETH_ALEN);
	if (bcast)
		__builtin_memset(r->eth.h_dest, 0xff, ETH_ALEN);
	else
		__builtin_memcpy(r->eth.h_dest, cfg->guest_mac, ETH_ALEN);
	r->eth.h_proto = bpf_htons(ETH_P_IP);
	__u16 udp_len = sizeof(struct udphdr) + sizeof(struct bootp) + REPLY_OPTS;
	r->ip = (struct iphdr){
		.version = 4,
		.ihl = 5,
		.tot_len = bpf_htons(sizeof(struct iphdr) + udp_len),
		.ttl = 64,
		.protocol = IPPROTO_UDP,
		.saddr = cfg->gateway_ip,
		.daddr = bcast ? 0xffffffff : inform ? r->b.ciaddr : cfg->guest_ip,
	};
	r->ip.check = csum_fold(csum_add_bytes(&r->ip, sizeof(r->ip), 0));
	r->udp.source = bpf_htons(DHCP_SERVER_PORT);
	r->udp.dest = bpf_htons(DHCP_CLIENT_PORT);
	r->udp.len = bpf_htons(udp_len);
	/*
	 * The UDP checksum. The answer is the request's skb, which keeps the
	 * request's checksum state: a guest that left its checksum to offload
	 * (a virtio NIC with a UDP socket, as a renewing systemd-networkd)
	 * made it CHECKSUM_PARTIAL at the UDP header, and then the kernel
	 * completes the answer's checksum on its way to a tap without
	 * checksum offload: it sums the segment, check field included, and
	 * writes the result there. So the check field holds the
	 * pseudo-header's sum P (what completion expects) and the word at
	 * AT_FIX makes P the right checksum of the whole as well: the answer
	 * is right whether or not it is completed. Sums are in the buffer's
	 * byte order throughout (one's complement sums do not care which).
	 */
	struct {
		__be32 saddr, daddr;
		__u8 zero, proto;
		__be16 len;
	} pseudo = {r->ip.saddr, r->ip.daddr, 0, IPPROTO_UDP, r->udp.len};
	__u16 p = fold16(csum_add_bytes(&pseudo, sizeof(pseudo), 0));
	if (p == 0)
		p = 0xffff; /* a UDP checksum is never 0, which means none */
	r->udp.check = 0;
	__u16 s0 = fold16(csum_add_bytes(&r->udp, udp_len, 0)); /* fix word 0 */
	/* fold(P + S0 + fix) must be ~P: the checksum is then ~~P = P. */
	__u16 fix = fold16((__u32)(__u16)~p + (__u16)~fold16((__u32)p + s0));
	__builtin_memcpy(o + AT_FIX, &fix, sizeof(fix));
	r->udp.check = p;

	if (bpf_skb_change_tail(skb, sizeof(*r), 0) || bpf_skb_store_bytes(skb, 0, r, sizeof(*r), 0))
		return drop(idx, DROP_REWRITE);
	struct slot_stats *st = get_stats(idx);
	if (st)
		st->dhcp_replies++;
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* NETSLOT_DHCP_H */
