package datapath

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/testenv"
)

// TestBackstopFilters writes, checks, repairs and removes the backstop on
// a veth of a namespace made for the test; what the filters drop
// is tested with packets in TestBackstopDrops and test/e2e
// (TestFailsClosedWithTheDatapathDetached).
func TestBackstopFilters(t *testing.T) {
	testenv.PrivateNetns(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	b := Backstop{Prefix: "tbs", Uplink: "up0",
		GuestCIDR: netip.MustParsePrefix("172.16.0.0/30"), SlotCIDR: netip.MustParsePrefix("100.64.0.0/16")}
	other := Backstop{Prefix: "tother", Uplink: "up0",
		GuestCIDR: netip.MustParsePrefix("172.17.0.0/30"), SlotCIDR: netip.MustParsePrefix("100.65.0.0/16")}
	if err := b.Check(); err == nil {
		t.Fatal("check passes with no filter")
	}
	for _, x := range []Backstop{b, other} {
		if changed, err := x.Apply(); err != nil || !changed {
			t.Fatalf("apply %s: %v, changed %v", x.Prefix, err, changed)
		}
	}
	if changed, err := b.Apply(); err != nil || changed {
		t.Errorf("second apply: %v, changed %v; want nothing to do", err, changed)
	}
	if err := b.Check(); err != nil {
		t.Fatal(err)
	}
	up0, err := netlink.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	count := func(parent uint32, prefix string) int {
		fs, err := backstopFilters(up0, parent, BackstopPriority(prefix))
		if err != nil {
			t.Fatal(err)
		}
		return len(fs)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS} {
		if n := count(parent, "tbs"); n != 1 {
			t.Errorf("%d filters of the pool on %x, want 1", n, parent)
		}
	}
	// The key read back is the key written: a changed slot CIDR is noticed
	// and replaced, not added beside the old one.
	moved := b
	moved.SlotCIDR = netip.MustParsePrefix("100.66.0.0/24")
	if err := moved.Check(); err == nil {
		t.Error("check passes with another slot CIDR's filter")
	}
	if changed, err := moved.Apply(); err != nil || !changed {
		t.Fatalf("apply with another slot CIDR: %v, changed %v", err, changed)
	}
	if n := count(netlink.HANDLE_MIN_INGRESS, "tbs"); n != 1 || moved.Check() != nil || b.Check() == nil {
		t.Errorf("after the change: %d ingress filters, check %v", n, moved.Check())
	}
	// A deleted filter is noticed and put back.
	fs, _ := backstopFilters(up0, netlink.HANDLE_MIN_EGRESS, BackstopPriority("tbs"))
	if err := netlink.FilterDel(fs[0]); err != nil {
		t.Fatal(err)
	}
	if err := moved.Check(); err == nil {
		t.Error("check passes with the egress filter deleted")
	}
	if changed, err := moved.Apply(); err != nil || !changed || moved.Check() != nil {
		t.Errorf("repair: %v, changed %v, check %v", err, changed, moved.Check())
	}
	// Removal takes the pool's filters only, through a wrong hint too.
	up1, _ := netlink.LinkByName("up1")
	if err := RemoveBackstop("tbs", up1.Attrs().Index); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS} {
		if n := count(parent, "tbs"); n != 0 {
			t.Errorf("%d filters of the pool left on %x", n, parent)
		}
	}
	if err := other.Check(); err != nil {
		t.Errorf("the other pool's backstop: %v", err)
	}
	if err := RemoveBackstop("tother", up0.Attrs().Index); err != nil || other.Check() == nil {
		t.Errorf("remove by hint: %v", err)
	}
}

// TestBackstopDrops runs the backstop's programs on frames: each drops
// only what it is for, and leaves the rest to the host's next filter.
func TestBackstopDrops(t *testing.T) {
	testenv.RequireRoot(t)
	b := Backstop{Prefix: "tbs", GuestCIDR: netip.MustParsePrefix("172.16.0.0/30"),
		SlotCIDR: netip.MustParsePrefix("100.64.0.0/16")}
	objs, err := b.load()
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	frame := func(src, dst string) []byte {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 63, Protocol: layers.IPProtocolUDP,
			SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
		return serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4},
			ip, &layers.UDP{SrcPort: 4000, DstPort: 53}, gopacket.Payload("x"))
	}
	v6 := serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv6},
		&layers.IPv6{Version: 6, HopLimit: 9, NextHeader: layers.IPProtocolNoNextHeader,
			SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")})
	const shot, next = 2, ^uint32(0) // TC_ACT_SHOT, TC_ACT_UNSPEC
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
		want uint32
	}{
		{"egress from the guest address", objs.BackstopEgress, frame("172.16.0.2", "198.19.1.1"), shot},
		{"egress from the guest network's last address", objs.BackstopEgress, frame("172.16.0.3", "198.19.1.1"), shot},
		{"egress translated", objs.BackstopEgress, frame("100.64.0.7", "198.19.1.1"), next},
		{"egress of the host", objs.BackstopEgress, frame("198.18.0.2", "172.16.0.2"), next},
		{"egress IPv6", objs.BackstopEgress, v6, next},
		{"ingress to a slot address", objs.BackstopIngress, frame("198.19.1.1", "100.64.3.9"), shot},
		{"ingress to the host", objs.BackstopIngress, frame("100.64.3.9", "198.18.0.2"), next},
		{"ingress to the next network", objs.BackstopIngress, frame("198.19.1.1", "100.65.0.1"), next},
		{"ingress IPv6", objs.BackstopIngress, v6, next},
	} {
		ret, err := c.prog.Run(&ebpf.RunOptions{Data: c.pkt})
		if err != nil {
			t.Fatal(err)
		}
		if ret != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, int32(ret), int32(c.want))
		}
	}
}
