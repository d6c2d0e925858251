package dpconst

import (
	"fmt"
	"strings"
)

// Header is bpf/lib/consts.h: this package's constants for the C side.
func Header() string {
	var b strings.Builder
	b.WriteString(`// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The constants the datapath shares with netslotd. Generated from
 * internal/dpconst by go generate ./internal/datapath: edit them there. */
#ifndef NETSLOT_CONSTS_H
#define NETSLOT_CONSTS_H

`)
	for _, d := range []struct {
		name string
		v    uint64
		hex  bool
	}{
		{"DUMMY_VNI_BASE", DummyVNIBase, true},
		{"INBOUND_RULES", InboundRules, false},
		{"GENEVE_PORT", GenevePort, false},
		{"GENEVE_HLEN", GeneveHeaderLen, false},
		{"ENCAP_LEN", EncapOverhead, false},
		{"DHCP_DNS_MAX", DHCPDNSMax, false},
		{"DHCP_HOSTNAME_MAX", DHCPHostnameMax, false},
		{"DHCP_LEASE_SECONDS", DHCPLeaseSeconds, false},
		{"ICMP_FRAG_INTERVAL_NS", ICMPFragIntervalNs, false},
		{"ICMP_FRAG_BURST", ICMPFragBurst, false},
		{"DHCP_INTERVAL_NS", DHCPIntervalNs, false},
		{"DHCP_BURST", DHCPBurst, false},
		{"DHCP_MESSAGE_MAX", DHCPMessageMax, false},
		{"DHCP_FIX_OPTION", DHCPFixOption, false},
	} {
		if d.hex {
			fmt.Fprintf(&b, "#define %s %#x\n", d.name, d.v)
		} else {
			fmt.Fprintf(&b, "#define %s %d\n", d.name, d.v)
		}
	}
	fmt.Fprintf(&b, `
/* Exchanged with netslotd through maps and marks. */
enum datapath_const {
	ENCAP_MARK = %#x,
	NEIGH_MARK = %#x,
	LEASE_OPEN = %d,
	LEASE_GEN_SHIFT = %d,
	FLOW_TIME_SHIFT = %d,
	HOLD_FRAME = %d,
	HOLD_LEARNED = %d,
	HOLD_MAX = %d,
};

/* Why a packet was dropped: the index of its counter in slot_stats.drops.
 * Append only (see internal/dpconst). */
enum drop_reason {
`, EncapMark, NeighMark, LeaseOpen, LeaseGenShift, FlowTimeShift, HoldFrame, HoldLearned, HoldMax)
	for i, r := range DropReasons {
		fmt.Fprintf(&b, "\tDROP_%s = %d, /* %s */\n", strings.ToUpper(r.Name), i, r.Doc)
	}
	fmt.Fprintf(&b, "\tDROP_REASONS = %d,\n};\n\n#endif /* NETSLOT_CONSTS_H */\n", len(DropReasons))
	return b.String()
}
