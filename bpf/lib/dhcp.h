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
	OPT_OVERLOAD = 52,
	OPT_TYPE = 53,
	OPT_SERVER_ID = 54,
	OPT_CLIENT_ID = 61,
	OPT_END = 255,
};

/* Option 52's value: which of the fixed fields carry options too. */
#define OVERLOAD_FILE 1
#define OVERLOAD_SNAME 2

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
 * verifier sees constant offsets only. The client identifier, echoed as
 * the request carried it (RFC 6842), comes last, then the end option:
 * an answer is as long as its client identifier makes it, the rest of
 * the options field is pad to a multiple of 4 bytes.
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
	/* The word that makes the UDP checksum right whether or not the
	 * kernel completes it (see the checksum below), as the value of a
	 * site-specific option, DHCP_FIX_OPTION, 2: a well-formed option that
	 * every client skips. Its word is at an even offset of the UDP
	 * header. */
	AT_FIX = AT_HOSTNAME + 2 + DHCP_HOSTNAME_MAX,
	AT_CLIENT_ID = AT_FIX + 4,        /* 61, as the request's */
	REPLY_OPTS = (AT_CLIENT_ID + 2 + 255 + 1 + 3) & ~3, /* the longest answer's */
};

struct dhcp_reply {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct bootp b;
	__u8 opts[REPLY_OPTS];
} __attribute__((packed));

/* Of a request, read: its whole BOOTP message (at most DHCP_MESSAGE_MAX
 * bytes), in a buffer whose size is a power of two for the verifier's
 * masks. */
#define DHCP_BUF 2048

/* What an answer depends on of the request's options. */
struct dhcp_request {
	__u8 type;
	__u8 overload;        /* option 52 */
	__u8 cid_len;         /* option 61's length; 0: none */
	bool has_server;
	__u32 cid_at;         /* where option 61's value is in the message */
	__be32 requested;
	__be32 server;
};

/* A walk over one field of options: [pos, end) of the message. It lives
 * in the scratch map, where the verifier knows none of its values: it
 * verifies the walk's step once, not once for every position it could
 * take. */
struct option_walk {
	__u32 pos;
	__u32 end;
	bool in_options;      /* the options field, not sname or file */
	int err;
	struct dhcp_request q;
};

struct dhcp_scratch {
	struct dhcp_reply r;
	struct option_walk w;
	__u8 msg[DHCP_BUF + 8]; /* the request's message, with room to read past */
};

_Static_assert(DHCP_MESSAGE_MAX < DHCP_BUF && !(DHCP_BUF & (DHCP_BUF - 1)), "DHCP_BUF masks a message's offsets");
_Static_assert(sizeof(struct bootp) == 240, "BOOTP's fixed part is 240 bytes");
_Static_assert(((sizeof(struct udphdr) + sizeof(struct bootp) + AT_FIX + 2) & 1) == 0,
	       "the checksum's fix word sits at an even offset of the UDP header");
_Static_assert(sizeof(struct bootp) + AT_CLIENT_ID + 1 >= 300, "BOOTP's minimum message is 300 bytes");
_Static_assert(sizeof(struct bootp) + ((AT_CLIENT_ID + 1 + 3) & ~3) + 28 <= 576,
	       "an answer without a client identifier fits the 576 bytes every client takes");

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

/* One option of the request's, read from the scratch buffer; a bpf_loop
 * callback, so that the verifier walks its body once, not once per
 * option. */
static long option_step(__u64 k, void *ctx)
{
	struct dhcp_scratch *sc;
	struct option_walk *w;
	__u32 zero = 0, pos, v;
	__u8 code, len;

	sc = (struct dhcp_scratch *)bpf_map_lookup_elem(&dhcp_scratch, &zero);
	if (!sc)
		return 1;
	w = &sc->w;
	pos = w->pos;
	if (pos >= w->end)
		return 1;
	code = sc->msg[pos & (DHCP_BUF - 1)];
	if (code == OPT_END)
		return 1;
	if (code == OPT_PAD) {
		w->pos = pos + 1;
		return 0;
	}
	if (pos + 2 > w->end) {
		w->err = -1;
		return 1;
	}
	len = sc->msg[(pos + 1) & (DHCP_BUF - 1)];
	v = (pos + 2) & (DHCP_BUF - 1);
	if (pos + 2 + len > w->end) {
		w->err = -1;
		return 1;
	}
	if (code == OPT_TYPE && len == 1)
		w->q.type = sc->msg[v];
	else if (code == OPT_REQUESTED_IP && len == 4)
		__builtin_memcpy(&w->q.requested, sc->msg + v, 4);
	else if (code == OPT_SERVER_ID && len == 4) {
		__builtin_memcpy(&w->q.server, sc->msg + v, 4);
		w->q.has_server = true;
	} else if (code == OPT_CLIENT_ID && len) {
		w->q.cid_at = pos + 2;
		w->q.cid_len = len;
	} else if (code == OPT_OVERLOAD && w->in_options) {
		/* 1: file, 2: sname, 3: both (RFC 2132 9.3). */
		if (len != 1 || !sc->msg[v] || sc->msg[v] > (OVERLOAD_FILE | OVERLOAD_SNAME)) {
			w->err = -1;
			return 1;
		}
		w->q.overload = sc->msg[v];
	}
	w->pos = pos + 2 + len;
	return 0;
}

/* Walks the options in [from, to) of the message in the scratch buffer. */
static __always_inline int walk_options(struct option_walk *w, __u32 from, __u32 to, bool in_options)
{
	w->pos = from;
	w->end = to;
	w->in_options = in_options;
	/* Each option takes a byte at least: the walk ends within DHCP_BUF. */
	bpf_loop(DHCP_BUF, option_step, NULL, 0);
	return w->err;
}

/* Takes what an answer depends on from the request's options (its
 * message of n bytes is in the scratch buffer sc): the options field,
 * then, where option 52 says so, file and then sname (RFC 2131 4.1). */
static __always_inline int parse_options(struct dhcp_scratch *sc, __u32 n, struct dhcp_request *q)
{
	struct option_walk *w = &sc->w;

	__builtin_memset(w, 0, sizeof(*w));
	if (walk_options(w, sizeof(struct bootp), n, true))
		return -1;
	if ((w->q.overload & OVERLOAD_FILE) &&
	    walk_options(w, offsetof(struct bootp, file), offsetof(struct bootp, cookie), false))
		return -1;
	if ((w->q.overload & OVERLOAD_SNAME) &&
	    walk_options(w, offsetof(struct bootp, sname), offsetof(struct bootp, file), false))
		return -1;
	*q = w->q;
	return q->type ? 0 : -1;
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

/* Sums len bytes (a multiple of 4, at most DHCP_BUF) at p, in the scratch
 * map's value, into seed: bpf_csum_diff takes 512 bytes at most a call.
 * Bytes past len up to DHCP_BUF must be there (they are: the scratch
 * buffer's). */
static __always_inline __u32 csum_add_long(__u8 *p, __u32 len, __u32 seed)
{
#pragma unroll
	for (__u32 k = 0; k < DHCP_BUF / 512; k++) {
		__u32 off = k * 512, n;

		if (len <= off)
			break;
		n = len - off;
		if (n > 512)
			n = 512;
		/* In the register the call gets, for the verifier (see
		 * load_message). */
		asm volatile("%0 &= 0x3ff" : "+r"(n));
		if (n == 0 || n > 512)
			break;
		seed = bpf_csum_diff(NULL, 0, (void *)(p + off), n, seed);
	}
	return seed;
}

/* Loads the request's BOOTP message, n bytes at off, into buf (DHCP_BUF
 * + 8 bytes), and zeroes the 3 bytes after it: summed as 4-byte words,
 * the message ends with zero bytes, as a checksum pads it. */
static __always_inline int load_message(struct __sk_buff *skb, __u32 off, __u8 *buf, __u32 n)
{
	__u64 len = n;

	if (len < sizeof(struct bootp) || len > DHCP_MESSAGE_MAX)
		return -1;
	/* Masked in the register the call gets: the compiler, which knows
	 * len < DHCP_BUF, would drop a C mask, and the verifier, which does
	 * not, needs it. */
	asm volatile("%0 &= 0x7ff" : "+r"(len));
	if (len < sizeof(struct bootp) || bpf_skb_load_bytes(skb, off, buf, len))
		return -1;
	buf[len] = 0;
	buf[len + 1] = 0;
	buf[len + 2] = 0;
	return 0;
}

_Static_assert(DHCP_BUF - 1 == 0x7ff, "load_message masks with 0x7ff");

/* One more answer for slot idx's guest, under lease? A token bucket per
 * slot, full at the start of each lease. */
static __always_inline bool dhcp_allowed(__u32 idx, __u32 lease)
{
	struct dhcp_limit *l = bpf_map_lookup_elem(&dhcp_limits, &idx);

	if (!l)
		return false;
	if (l->lease != lease) {
		l->lease = lease;
		l->stamp_ns = bpf_ktime_get_ns();
		l->credit_ns = (__u64)DHCP_BURST * DHCP_INTERVAL_NS;
	}
	return tokens_take(&l->stamp_ns, &l->credit_ns, DHCP_INTERVAL_NS, DHCP_BURST);
}

/*
 * tap_dhcp: tc ingress of every slot's tap0 (one classic tc filter per
 * slot, the same program). Anything not to UDP port 67 goes on, to the
 * slot's firewall. To port 67, only a DHCP request from the guest's MAC,
 * from 0.0.0.0 or the guest address, of a leased slot, with IPv4 and UDP
 * headers the kernel would take (lengths, checksums), is answered, within
 * the slot's rate; the rest is dropped and counted. The answer is sent
 * straight back out of tap0 (bpf_redirect to its egress): the guest's VMM
 * reads it.
 */
static __always_inline int tap_dhcp_answer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct udphdr udp;
	struct pool_config *cfg;
	struct lease_policy *lp;
	struct dhcp_scratch *sc;
	struct dhcp_request q = {};
	struct dhcp_lease *dl;
	__u32 zero = 0, idx, ihl, off, tot, ulen, n;

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
	lp = open_lease(idx);
	if (!lp)
		return drop(cfg->slot_count, DROP_NOT_LEASED);
	if (!mac_eq(eth->h_source, cfg->guest_mac) || (ip->saddr && ip->saddr != cfg->guest_ip))
		return drop(idx, DROP_DHCP_NOT_GUEST);
	/* No client sends IP options or fragments; the answer's headers are
	 * where the request's were (see the checksum below). */
	if (ihl != sizeof(*ip) || ip_more_fragments(ip))
		return drop(idx, DROP_DHCP_MALFORMED);
	/* The headers, as the kernel's ip_rcv and udp_rcv check them: the
	 * IPv4 checksum, an IPv4 length within the frame (Ethernet may pad
	 * it) and a UDP length within the IPv4 payload (the message ends
	 * there). */
	if (csum_fold(csum_add_bytes(ip, sizeof(*ip), 0)))
		return drop(idx, DROP_DHCP_BAD_IP_CHECKSUM);
	tot = bpf_ntohs(ip->tot_len);
	ulen = bpf_ntohs(udp.len);
	if (tot < sizeof(*ip) + sizeof(udp) || ETH_HLEN + tot > skb->len || ulen < sizeof(udp) ||
	    ulen > tot - sizeof(*ip))
		return drop(idx, DROP_DHCP_BAD_LENGTH);
	/* A relay agent's (RFC 1542): none sits between a guest and its tap,
	 * and an answer would go to the guest, not to it. */
	if (udp.source == bpf_htons(DHCP_SERVER_PORT))
		return drop(idx, DROP_DHCP_RELAYED);
	if (udp.source != bpf_htons(DHCP_CLIENT_PORT))
		return drop(idx, DROP_DHCP_MALFORMED);

	sc = (struct dhcp_scratch *)bpf_map_lookup_elem(&dhcp_scratch, &zero);
	dl = bpf_map_lookup_elem(&dhcp, &idx);
	if (!sc || !dl)
		return drop(idx, DROP_REWRITE);
	off = ETH_HLEN + sizeof(*ip) + sizeof(udp);
	n = ulen - sizeof(udp);
	if (load_message(skb, off, sc->msg, n))
		return drop(idx, DROP_DHCP_MALFORMED);

	/*
	 * The UDP checksum, unless there is none (0). A guest that left it to
	 * offload (a virtio NIC and a UDP socket: a renewing client of the
	 * kernel's stack) sent the pseudo-header's sum P in its place, to be
	 * completed: taken as it is. A one in 65,536 chance that a wrong
	 * checksum looks like P is all that costs; the program cannot tell
	 * the skb's checksum state (CHECKSUM_PARTIAL) from a tc hook.
	 */
	struct {
		__be32 saddr, daddr;
		__u8 zero, proto;
		__be16 len;
	} pseudo = {ip->saddr, ip->daddr, 0, IPPROTO_UDP, udp.len};
	if (udp.check) {
		__u32 sum = csum_add_bytes(&pseudo, sizeof(pseudo), 0);
		__u16 p = fold16(sum);

		sum = csum_add_bytes(&udp, sizeof(udp), sum);
		sum = csum_add_long(sc->msg, (n + 3) & ~3, sum);
		if (fold16(sum) != 0xffff && udp.check != p)
			return drop(idx, DROP_DHCP_BAD_UDP_CHECKSUM);
	}

	struct bootp *b = (struct bootp *)sc->msg;
	if (b->op != BOOTREQUEST || b->htype != 1 || b->hlen != ETH_ALEN ||
	    b->cookie != bpf_htonl(DHCP_MAGIC) || !mac_eq(b->chaddr, cfg->guest_mac))
		return drop(idx, DROP_DHCP_MALFORMED);
	if (b->giaddr)
		return drop(idx, DROP_DHCP_RELAYED);
	if (parse_options(sc, n, &q))
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
		    (!q.requested && b->ciaddr != cfg->guest_ip))
			type = DHCPNAK;
		else
			type = DHCPACK;
		break;
	case DHCPINFORM:
		type = DHCPACK;
		break;
	case DHCPDECLINE:
		/* The guest found its address in use on its link (RFC 2131
		 * 3.1.5). A slot has one address, the guest's: nothing else
		 * to offer. Counted, for its operator to see. */
		return drop(idx, DROP_DHCP_DECLINED);
	default: /* RELEASE changes nothing; the rest is for clients */
		return drop(idx, DROP_DHCP_IGNORED);
	}
	if (!dhcp_allowed(idx, lp->flags))
		return drop(idx, DROP_DHCP_RATE_LIMITED);
	bool nak = type == DHCPNAK, inform = q.type == DHCPINFORM;

	/* The BOOTP part, from the request's (xid, flags, ciaddr, giaddr,
	 * chaddr). */
	struct dhcp_reply *r = &sc->r;
	__builtin_memcpy(&r->b, b, sizeof(r->b));
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
	o[AT_FIX] = DHCP_FIX_OPTION;
	o[AT_FIX + 1] = 2;
	/* The client identifier, unmodified (RFC 6842), from the request
	 * (its options field, file or sname). */
	__u32 at_end = AT_CLIENT_ID;
	__u32 cid_len = q.cid_len;
	if (cid_len) {
		o[AT_CLIENT_ID] = OPT_CLIENT_ID;
		o[AT_CLIENT_ID + 1] = cid_len;
		if (cid_len > 255 || bpf_skb_load_bytes(skb, off + q.cid_at, o + AT_CLIENT_ID + 2, cid_len))
			return drop(idx, DROP_REWRITE);
		at_end = AT_CLIENT_ID + 2 + cid_len;
	}
	if (at_end >= REPLY_OPTS)
		return drop(idx, DROP_REWRITE);
	o[at_end] = OPT_END;
	__u32 opts_len = (at_end + 1 + 3) & ~3; /* then pads (zero) */

	/* Headers: from tap0 (the gateway) to the guest's MAC and address,
	 * or broadcast where the client asked for it (and for a NAK). */
	bool bcast = nak || (r->b.flags & bpf_htons(BOOTP_BROADCAST)) || (inform && !r->b.ciaddr);
	__builtin_memcpy(r->eth.h_source, cfg->tap_mac, ETH_ALEN);
	if (bcast)
		__builtin_memset(r->eth.h_dest, 0xff, ETH_ALEN);
	else
		__builtin_memcpy(r->eth.h_dest, cfg->guest_mac, ETH_ALEN);
	r->eth.h_proto = bpf_htons(ETH_P_IP);
	__u32 udp_len = sizeof(struct udphdr) + sizeof(struct bootp) + opts_len;
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
	 * pseudo-header's sum P (what completion expects) and the word of the
	 * option at AT_FIX makes P the right checksum of the whole as well:
	 * the answer is right whether or not it is completed. Sums are in the
	 * buffer's byte order throughout (one's complement sums do not care
	 * which).
	 */
	pseudo.saddr = r->ip.saddr;
	pseudo.daddr = r->ip.daddr;
	pseudo.len = r->udp.len;
	__u16 p = fold16(csum_add_bytes(&pseudo, sizeof(pseudo), 0));
	if (p == 0)
		p = 0xffff; /* a UDP checksum is never 0, which means none */
	r->udp.check = 0;
	__u16 s0 = fold16(csum_add_long((__u8 *)&r->udp, udp_len, 0)); /* fix word 0 */
	/* fold(P + S0 + fix) must be ~P: the checksum is then ~~P = P. */
	__u16 fix = fold16((__u32)(__u16)~p + (__u16)~fold16((__u32)p + s0));
	__builtin_memcpy(o + AT_FIX + 2, &fix, sizeof(fix));
	r->udp.check = p;

	__u32 len = sizeof(*r) - REPLY_OPTS + opts_len;
	if (len > sizeof(*r) || bpf_skb_change_tail(skb, len, 0) || bpf_skb_store_bytes(skb, 0, r, len, 0))
		return drop(idx, DROP_REWRITE);
	struct slot_stats *st = get_stats(idx);
	if (st)
		st->dhcp_replies++;
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* NETSLOT_DHCP_H */
