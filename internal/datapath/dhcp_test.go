package datapath

import (
	"net"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/testpacket"
)

// slotSide makes the test's namespace look, to tap0's program, like the
// inside of slot i: a "tap" device with forwarding (what the program
// gets packets on) and the slot's route to its next hop through its eth0
// (here the peer of host veth i, given the slot's eth0 MAC) with the
// permanent neighbour. It returns the tap device's ifindex.
func (e *env) slotSide(i int) int {
	t := e.t
	t.Helper()
	eth0, err := netlink.LinkByName("p" + string(rune('0'+i)))
	if err != nil {
		t.Fatal(err)
	}
	tap := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, PeerName: "tap1"}
	for _, err := range []error{
		netlink.LinkSetHardwareAddr(eth0, e.cfg.SlotVethMAC(i)),
		netlink.LinkSetUp(eth0),
		netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: e.hosts[i]}}),
		netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: net.IPv4(169, 254, 1, 1).To4(), Mask: net.CIDRMask(32, 32)}}),
		netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: net.IPv4(169, 254, 1, 1).To4(), HardwareAddr: e.cfg.HostVethMAC(i)}),
		netlink.LinkAdd(tap),
		netlink.LinkSetUp(tap),
		os.WriteFile("/proc/sys/net/ipv4/conf/tap0/forwarding", []byte("1"), 0),
	} {
		if err != nil {
			t.Fatalf("slot side: %v", err)
		}
	}
	return tap.Index
}

// tapRun runs tap0's program on frame as received on the tap device.
func (e *env) tapRun(tap int, frame []byte) (uint32, []byte) {
	e.t.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+1024),
		Context: skbCtx{IngressIfindex: uint32(tap), Ifindex: uint32(tap)}}
	ret, err := e.dp.objs.TapDhcp.Run(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return ret, opts.DataOut
}

// dhcpFrame is a guest's DHCP message, as a client sends it.
func dhcpFrame(t testing.TB, mac net.HardwareAddr, typ layers.DHCPMsgType, opts ...layers.DHCPOption) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ip)
	d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6, Xid: 0x5eed,
		ClientHWAddr: mac, Options: append([]layers.DHCPOption{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(typ)})}, opts...)}
	return serialize(t, &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}, ip, udp, d)
}

// The answer to a DISCOVER, built by the program and parsed by gopacket,
// checksums included; and what it must not answer, counted by reason.
func TestTapDHCP(t *testing.T) {
	e := newEnv(t, 2)
	tap := e.slotSide(1)
	if err := e.dp.SetDHCP(1, DHCP{MTU: 1450, Hostname: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	v, out := e.tapRun(tap, dhcpFrame(t, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover))
	if v != verdictRedirect {
		t.Fatalf("DISCOVER: verdict %d, want a redirect back out of tap0 (drops %v)", int32(v), e.stats(1).Drops)
	}
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	d, _ := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
	if ip == nil || udp == nil || d == nil {
		t.Fatalf("answer does not decode: %v", p)
	}
	checkIPv4(t, "dhcp answer", out[14:])
	if udp.Checksum == 0 {
		t.Error("the answer has no UDP checksum")
	}
	// A request whose checksum the guest left to offload leaves the answer
	// CHECKSUM_PARTIAL: the kernel may sum the segment, check field
	// included, and write that there. It must write what is there.
	seg := out[14+20 : 14+int(ip.Length)]
	if got := testpacket.Checksum(seg, 0); got != udp.Checksum {
		t.Errorf("completing the answer's checksum would write %#04x over %#04x", got, udp.Checksum)
	}
	if d.Operation != layers.DHCPOpReply || d.Xid != 0x5eed || d.YourClientIP.String() != e.cfg.GuestIP().String() {
		t.Errorf("answer %v", d)
	}
	var mtu, host []byte
	for _, o := range d.Options {
		switch o.Type {
		case layers.DHCPOptInterfaceMTU:
			mtu = o.Data
		case layers.DHCPOptHostname:
			host = o.Data
		case layers.DHCPOptDNS:
			t.Errorf("dns option %v with none set", o.Data)
		}
	}
	if string(mtu) != "\x05\xaa" || string(host) != "vm-1" {
		t.Errorf("mtu %v, hostname %q", mtu, host)
	}
	if s := e.stats(1); s.DHCPReplies != 1 {
		t.Errorf("dhcp_replies %d", s.DHCPReplies)
	}

	badCookie := dhcpFrame(t, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover)
	badCookie[14+20+8+236] ^= 0xff
	testpacket.FixChecksums(badCookie)
	for _, c := range []struct {
		reason string
		frame  []byte
	}{
		{"dhcp_ignored", dhcpFrame(t, e.cfg.GuestMAC, layers.DHCPMsgTypeRelease)},
		{"dhcp_not_guest", dhcpFrame(t, net.HardwareAddr{6, 0, 0, 0, 0, 9}, layers.DHCPMsgTypeDiscover)},
		{"dhcp_bad_length", dhcpFrame(t, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover)[:14+20+8+100]},
		{"dhcp_malformed", badCookie},
	} {
		before := e.stats(1).Drops[c.reason]
		if v, _ := e.tapRun(tap, c.frame); v != verdictDrop {
			t.Errorf("%s: verdict %d", c.reason, int32(v))
		}
		if got := e.stats(1).Drops[c.reason]; got != before+1 {
			t.Errorf("%s: counted %d, want %d", c.reason, got, before+1)
		}
	}
	// Not DHCP: on to the slot's firewall, untouched.
	plain := guestFrame(t, e.cfg, outside, &layers.UDP{SrcPort: 68, DstPort: 53}, gopacket.Payload("dns"))
	if v, out := e.tapRun(tap, plain); v != 0 || string(out[:len(plain)]) != string(plain) {
		t.Errorf("a packet that is not DHCP: verdict %d", int32(v))
	}
	// A slot whose lease is closed answers nothing; the drop is the pool's.
	e.dp.CloseLease(1)
	before := e.stats(e.cfg.Count).Drops["not_leased"]
	if v, _ := e.tapRun(tap, dhcpFrame(t, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover)); v != verdictDrop {
		t.Errorf("closed lease: verdict %d", int32(v))
	}
	if got := e.stats(e.cfg.Count).Drops["not_leased"]; got != before+1 {
		t.Errorf("closed lease: not_leased %d, want %d", got, before+1)
	}
}
