package testutil

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testpacket"
)

// Types of package lab, for tests.
type (
	Fabric  = lab.Fabric
	GuestNS = lab.GuestNS
	VTEP    = lab.VTEP
)

// Functions of package lab that need no cleanup.
var (
	InNS                = lab.InNS
	InNewNS             = lab.InNewNS
	ConntrackEntriesFor = lab.ConntrackEntriesFor
)

// NewFabric builds a test fabric (see lab.NewFabric) removed when tb ends;
// tb is skipped if the host routes the fabric's ranges.
func NewFabric(tb testing.TB, tag string, slotCIDR netip.Prefix) *Fabric {
	tb.Helper()
	testenv.RequireRoot(tb)
	f, err := lab.NewFabric(tag, slotCIDR)
	if errors.Is(err, lab.ErrRangeInUse) {
		tb.Skip(err.Error())
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Remove)
	return f
}

// NewGuestNS wires a guest namespace to a slot's tap (see lab.NewGuestNS)
// and removes it when tb ends.
func NewGuestNS(tb testing.TB, tag, slotNS string, cfg slot.Config) *GuestNS {
	tb.Helper()
	g, err := lab.NewGuestNS(tag, slotNS, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(g.Close)
	return g
}

// NewBareGuestNS is NewGuestNS for a guest that configures itself (see
// lab.NewBareGuestNS).
func NewBareGuestNS(tb testing.TB, tag, slotNS string, cfg slot.Config) *GuestNS {
	tb.Helper()
	return NewGuestNSWith(tb, tag, slotNS, cfg, lab.GuestOptions{Bare: true})
}

// NewGuestNSWith is NewGuestNS with options (see lab.GuestOptions).
func NewGuestNSWith(tb testing.TB, tag, slotNS string, cfg slot.Config, o lab.GuestOptions) *GuestNS {
	tb.Helper()
	g, err := lab.NewGuestNSWith(tag, slotNS, cfg, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(g.Close)
	return g
}

// StartVTEP starts a userspace VPC host in the fabric (see lab.StartVTEP)
// and stops it when tb ends.
func StartVTEP(tb testing.TB, f *Fabric, vni uint32, ip netip.Addr, mac net.HardwareAddr) *VTEP {
	tb.Helper()
	v, err := lab.StartVTEP(f, vni, ip, mac)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.Close)
	return v
}

// InnerUDP builds an Ethernet/IPv4/UDP frame (checksums computed).
func InnerUDP(src, dst net.HardwareAddr, sip, dip netip.Addr, dport uint16, payload []byte) []byte {
	return testpacket.UDPFrame(src, dst, sip, dip, 40000, dport, payload)
}
