package daemon_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testpacket"
	"github.com/netslot/netslot/internal/testutil"
)

// Fabric addresses from the benchmarking range; nothing is routed there:
// frames stop at the host veth, where the test captures them.
var (
	allowedDst = netip.MustParseAddr("198.18.5.7")
	deniedDst  = netip.MustParseAddr("198.18.9.7")
)

func TestEgressAllowListAndAntiSpoofingWithPackets(t *testing.T) {
	p := testutil.StartPool(t, 4)
	c := p.Config
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := testutil.AttachTap(c.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	capt, err := testutil.CaptureOn(c.HostVeth(info.Index))
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	send := func(src net.HardwareAddr, sip, dip netip.Addr, port uint16) {
		t.Helper()
		if err := g.Send(testpacket.UDPFrame(src, c.TapMAC, sip, dip, 4000, port, []byte("netslot"))); err != nil {
			t.Fatal(err)
		}
	}
	guest := c.GuestIP()
	send(c.GuestMAC, guest, allowedDst, 1001)
	send(c.GuestMAC, guest, deniedDst, 1002)
	send(net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}, guest, allowedDst, 1003) // spoofed MAC
	send(c.GuestMAC, c.GuestCIDR.Addr().Prev(), allowedDst, 1004)           // spoofed source
	send(c.GuestMAC, c.SlotIP(info.Index+1), allowedDst, 1005)              // another slot's address
	if !capt.SawUDP(allowedDst, 1001, 2*time.Second) {
		t.Fatal("allowed packet did not leave the slot")
	}
	for port, what := range map[uint16]string{1002: "denied destination", 1003: "spoofed MAC", 1004: "spoofed source", 1005: "other slot's address"} {
		if capt.SawUDP(allowedDst, port, 0) || capt.SawUDP(deniedDst, port, 300*time.Millisecond) {
			t.Errorf("%s left the slot", what)
		}
	}
	g.Close()

	// Release clears the allow-list: the same slot now lets the guest reach
	// what was denied.
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	g, err = testutil.AttachTap(c.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	send(c.GuestMAC, guest, deniedDst, 1006)
	if !capt.SawUDP(deniedDst, 1006, 2*time.Second) {
		t.Fatal("allow-list still enforced after release")
	}
}
