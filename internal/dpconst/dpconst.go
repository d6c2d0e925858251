// Package dpconst holds the constants that the eBPF datapath (bpf/) and the
// Go code share, once. bpf/lib/consts.h is generated from this package
// (go generate ./internal/datapath, or make generate); the tests fail when
// the committed header is not what this package generates.
package dpconst

// Plain values, #defines in the header.
const (
	// DummyVNIBase starts the VNIs reserved for pooled slots: slot i
	// carries DummyVNIBase+i while no VPC is attached, and no attachment
	// may use them.
	DummyVNIBase = 0xF00000
	// InboundRules bounds the inbound rules of one lease.
	InboundRules = 16
	// GenevePort is Geneve's UDP port (RFC 8926).
	GenevePort = 6081
	// GeneveHeaderLen is Geneve's fixed header, options excluded.
	GeneveHeaderLen = 8
	// EncapOverhead is what Geneve adds to a guest's frame on the
	// underlay: outer IPv4 and UDP headers, the Geneve header and the
	// inner Ethernet header (the C side asserts it against the kernel's
	// structures).
	EncapOverhead = 20 + 8 + GeneveHeaderLen + 14
	// DHCPDNSMax bounds the DNS servers a DHCP answer carries.
	DHCPDNSMax = 3
	// DHCPHostnameMax bounds the hostname a DHCP answer carries (one
	// label's worth: what every client takes).
	DHCPHostnameMax = 63
	// DHCPLeaseSeconds is the lease time DHCP answers give. The address is
	// the slot's for as long as the VM runs, in every slot alike: a long
	// lease only saves renewals.
	DHCPLeaseSeconds = 86400
	// ICMPFragIntervalNs and ICMPFragBurst bound the ICMP "fragmentation
	// needed" answers the datapath sends one slot's guest (for packets too
	// big for the tunnel): a token bucket, one answer per interval on
	// average, at most a burst in a row, as the kernel's icmp_ratelimit
	// (xrlim_allow) does per destination. A guest cannot turn the datapath
	// into an ICMP generator: at most 100 a second, each smaller than the
	// packet that caused it, and only ever back to itself.
	ICMPFragIntervalNs = 10_000_000
	ICMPFragBurst      = 10
	// DHCPIntervalNs and DHCPBurst bound the DHCP answers one slot's
	// guest gets on tap0, the same way: a token bucket, one answer per
	// interval on average (100 a second), at most a burst in a row. A
	// client asks a handful of times at boot and once a day after; a
	// guest that floods its tap with requests gets no more answers than
	// that, and what is refused is counted (dhcp_rate_limited). A new
	// lease starts with a full bucket.
	DHCPIntervalNs = 10_000_000
	DHCPBurst      = 16
	// DHCPMessageMax bounds the request the DHCP program reads: a BOOTP
	// message (fixed part and every option) in a frame of the tap's MTU,
	// slot.GuestMTU (1500), less the IPv4 and UDP headers. What a client
	// may send on tap0 is read whole, up to its End option; a longer
	// message cannot come from a guest on a 1500-byte link.
	DHCPMessageMax = 1500 - 20 - 8
	// DHCPFixOption is the option code of the word that keeps a DHCP
	// answer's UDP checksum right whether or not the kernel completes it
	// (bpf/lib/dhcp.h): a site-specific option (RFC 2132 section 2, RFC
	// 3942: 224-254 are for private use), which clients skip like any
	// option they were not configured for.
	DHCPFixOption = 224
)

// Values the programs and netslotd exchange through maps and marks, in the
// header's enum datapath_const.
const (
	// EncapMark is the skb->mark of a packet the datapath encapsulated, on
	// its second pass through the uplink's egress (after
	// bpf_redirect_neigh). A guest cannot set it: the kernel clears the
	// mark of every packet that crosses from a slot's namespace into the
	// root namespace.
	EncapMark = 0x6e530001
	// NeighMark is the skb->mark of a NATed packet the datapath handed to
	// the neighbour subsystem itself (a flat underlay: no gateway, so the
	// next hop is the packet's own destination), on its second pass
	// through the uplink's egress. Unforgeable, as EncapMark.
	NeighMark = 0x6e530002
	// LeaseOpen is lease_policy.flags of a leased slot: its traffic flows.
	// The bits above it carry the lease's generation (LeaseGenShift): what
	// the datapath holds for netslotd names the lease it belongs to.
	LeaseOpen = 1
	// LeaseGenShift: lease_policy.flags >> LeaseGenShift is the lease's
	// generation, a count of the slot's leases.
	LeaseGenShift = 1
	// FlowTimeShift: the flow table's clock ticks every 2^FlowTimeShift
	// jiffies.
	FlowTimeShift = 6
	// HoldFrame and HoldLearned are the kinds of the datapath's events
	// for netslotd (the held ring buffer): a guest's frame held while its
	// VPC peer's MAC is unknown, and a VPC peer's MAC learned.
	HoldFrame   = 1
	HoldLearned = 2
	// HoldMax bounds a held frame (a guest's frame: its MTU is at most
	// 1500).
	HoldMax = 2048
)

// A DropReason is why the datapath dropped a packet. Its number is its
// index in DropReasons, which is also its counter's index in the slot's
// statistics.
type DropReason struct {
	Name string // the counter's name in the API and the metrics
	Doc  string // what it means, for the header's comment
}

// DropReasons lists every drop reason. Append only: a reason is never
// removed, reordered or renamed (counters, dashboards and a pinned map of an
// older netslotd use the numbers); testdata/drop_reasons.txt holds the list
// as released and the tests fail on anything but an append to both.
var DropReasons = []DropReason{
	{"geneve_truncated", "Geneve header or inner frame cut short"},
	{"geneve_version", "Geneve version is not 0"},
	{"geneve_optlen", "options run past the packet"},
	{"geneve_proto", "protocol type is not Ethernet (0x6558)"},
	{"dummy_vni", "a pooled slot's dummy VNI"},
	{"unknown_vni", "no slot attached to this VNI"},
	{"unknown_dst", "known VNI, no slot with this inner address"},
	{"wrong_vtep", "outer source is not the slot's remote VTEP"},
	{"inner_ipv6", "the guest has no IPv6"},
	{"inner_multicast", "inner multicast/broadcast not for the guest"},
	{"inner_mac", "inner unicast to another MAC"},
	{"inner_other", "other inner ethertypes and ARP operations"},
	{"egress_dummy_vni", "never send a dummy VNI"},
	{"egress_not_ipv4", "slot egress that is not well-formed IPv4"},
	{"egress_spoof", "slot egress not from the guest address"},
	{"no_route", "no route to the remote VTEP"},
	{"rewrite", "a helper failed (truncated L4, GSO limits)"},
	{"no_slot", "to a slot address that is not a slot"},
	{"slot_to_slot", "a guest to another slot's address"},
	{"geneve_oam", "control message (O bit): not for a guest"},
	{"geneve_critical", "critical options (C bit): none understood"},
	{"geneve_fragment", "fragmented Geneve: never reassembled here"},
	{"too_big", "encapsulated packet over the uplink's MTU"},
	{"peer_unknown", "VPC peer MAC unknown and no ARP possible"},
	{"unregistered", "guest-sourced from a veth not (yet) a slot"},
	{"inbound_unsolicited", "to a guest: no reply to its flows, no inbound rule"},
	{"not_leased", "to or from a slot that is pooled or being released"},
	{"egress_denied", "NATed to a destination in the pool's deny set"},
	{"dhcp_malformed", "to port 67: not a well-formed DHCP request"},
	{"dhcp_not_guest", "to port 67 from a MAC or address not the guest's"},
	{"dhcp_ignored", "DHCP RELEASE, for another server, or a type no server answers"},
	{"dhcp_bad_length", "to port 67: IPv4 or UDP length does not fit the frame"},
	{"dhcp_bad_ip_checksum", "to port 67: wrong IPv4 header checksum"},
	{"dhcp_bad_udp_checksum", "to port 67: wrong UDP checksum (not left to offload)"},
	{"dhcp_relayed", "DHCP from a relay (giaddr set or source port 67): none on a tap"},
	{"dhcp_declined", "DHCP DECLINE: the guest found its address in use"},
	{"dhcp_rate_limited", "DHCP request over the slot's answer rate"},
}

// DropReasonNames returns the reasons' names by number.
func DropReasonNames() []string {
	names := make([]string, len(DropReasons))
	for i, r := range DropReasons {
		names[i] = r.Name
	}
	return names
}
