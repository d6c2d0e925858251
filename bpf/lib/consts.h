// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The constants the datapath shares with netslotd. Generated from
 * internal/dpconst by go generate ./internal/datapath: edit them there. */
#ifndef NETSLOT_CONSTS_H
#define NETSLOT_CONSTS_H

#define DUMMY_VNI_BASE 0xf00000
#define INBOUND_RULES 16
#define GENEVE_PORT 6081
#define GENEVE_HLEN 8
#define ENCAP_LEN 50
#define DHCP_DNS_MAX 3
#define DHCP_HOSTNAME_MAX 63
#define DHCP_LEASE_SECONDS 86400
#define ICMP_FRAG_INTERVAL_NS 10000000
#define ICMP_FRAG_BURST 10
#define DHCP_INTERVAL_NS 10000000
#define DHCP_BURST 16
#define DHCP_MESSAGE_MAX 1472
#define DHCP_FIX_OPTION 224

/* Exchanged with netslotd through maps and marks. */
enum datapath_const {
	ENCAP_MARK = 0x6e530001,
	NEIGH_MARK = 0x6e530002,
	LEASE_OPEN = 1,
	LEASE_GEN_SHIFT = 1,
	FLOW_TIME_SHIFT = 6,
	HOLD_FRAME = 1,
	HOLD_LEARNED = 2,
	HOLD_MAX = 2048,
};

/* Why a packet was dropped: the index of its counter in slot_stats.drops.
 * Append only (see internal/dpconst). */
enum drop_reason {
	DROP_GENEVE_TRUNCATED = 0, /* Geneve header or inner frame cut short */
	DROP_GENEVE_VERSION = 1, /* Geneve version is not 0 */
	DROP_GENEVE_OPTLEN = 2, /* options run past the packet */
	DROP_GENEVE_PROTO = 3, /* protocol type is not Ethernet (0x6558) */
	DROP_DUMMY_VNI = 4, /* a pooled slot's dummy VNI */
	DROP_UNKNOWN_VNI = 5, /* no slot attached to this VNI */
	DROP_UNKNOWN_DST = 6, /* known VNI, no slot with this inner address */
	DROP_WRONG_VTEP = 7, /* outer source is not the slot's remote VTEP */
	DROP_INNER_IPV6 = 8, /* the guest has no IPv6 */
	DROP_INNER_MULTICAST = 9, /* inner multicast/broadcast not for the guest */
	DROP_INNER_MAC = 10, /* inner unicast to another MAC */
	DROP_INNER_OTHER = 11, /* other inner ethertypes and ARP operations */
	DROP_EGRESS_DUMMY_VNI = 12, /* never send a dummy VNI */
	DROP_EGRESS_NOT_IPV4 = 13, /* slot egress that is not well-formed IPv4 */
	DROP_EGRESS_SPOOF = 14, /* slot egress not from the guest address */
	DROP_NO_ROUTE = 15, /* no route to the remote VTEP */
	DROP_REWRITE = 16, /* a helper failed (truncated L4, GSO limits) */
	DROP_NO_SLOT = 17, /* to a slot address that is not a slot */
	DROP_SLOT_TO_SLOT = 18, /* a guest to another slot's address */
	DROP_GENEVE_OAM = 19, /* control message (O bit): not for a guest */
	DROP_GENEVE_CRITICAL = 20, /* critical options (C bit): none understood */
	DROP_GENEVE_FRAGMENT = 21, /* fragmented Geneve: never reassembled here */
	DROP_TOO_BIG = 22, /* encapsulated packet over the uplink's MTU */
	DROP_PEER_UNKNOWN = 23, /* VPC peer MAC unknown and no ARP possible */
	DROP_UNREGISTERED = 24, /* guest-sourced from a veth not (yet) a slot */
	DROP_INBOUND_UNSOLICITED = 25, /* to a guest: no reply to its flows, no inbound rule */
	DROP_NOT_LEASED = 26, /* to or from a slot that is pooled or being released */
	DROP_EGRESS_DENIED = 27, /* NATed to a destination in the pool's deny set */
	DROP_DHCP_MALFORMED = 28, /* to port 67: not a well-formed DHCP request */
	DROP_DHCP_NOT_GUEST = 29, /* to port 67 from a MAC or address not the guest's */
	DROP_DHCP_IGNORED = 30, /* DHCP RELEASE, for another server, or a type no server answers */
	DROP_DHCP_BAD_LENGTH = 31, /* to port 67: IPv4 or UDP length does not fit the frame */
	DROP_DHCP_BAD_IP_CHECKSUM = 32, /* to port 67: wrong IPv4 header checksum */
	DROP_DHCP_BAD_UDP_CHECKSUM = 33, /* to port 67: wrong UDP checksum (not left to offload) */
	DROP_DHCP_RELAYED = 34, /* DHCP from a relay (giaddr set or source port 67): none on a tap */
	DROP_DHCP_DECLINED = 35, /* DHCP DECLINE: the guest found its address in use */
	DROP_DHCP_RATE_LIMITED = 36, /* DHCP request over the slot's answer rate */
	DROP_REASONS = 37,
};

#endif /* NETSLOT_CONSTS_H */
