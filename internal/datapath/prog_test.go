package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testpacket"
)

// These tests run the programs on crafted packets with BPF_PROG_TEST_RUN
// (ebpf.Program.Run) and check what they return and what they leave.

func TestEgressNAT(t *testing.T) {
	e := newEnv(t, 2)
	for name, l4 := range l4Variants() {
		pkt := guestFrame(t, e.cfg, outside, l4...)
		verdict, out := e.egress(pkt, 1)
		if verdict != verdictNext {
			t.Fatalf("%s: verdict %d, want TCX_NEXT (on its way out)", name, int32(verdict))
		}
		if len(out) != len(pkt) {
			t.Fatalf("%s: length %d, want %d", name, len(out), len(pkt))
		}
		ip := out[14:]
		if got := addr(ip[12:16]); got != e.cfg.SlotIP(1) {
			t.Errorf("%s: source %s, want slot 1's address %s", name, got, e.cfg.SlotIP(1))
		}
		if got := addr(ip[16:20]); got != outside {
			t.Errorf("%s: destination changed to %s", name, got)
		}
		checkIPv4(t, name, ip)
		if !bytes.Equal(out[34:], pkt[34:]) && name != "tcp" && name != "udp" {
			t.Errorf("%s: payload changed", name)
		}
	}
	if s := e.stats(1); s.TxPackets != 3 || s.TxBytes == 0 {
		t.Errorf("slot 1 counters %+v, want 3 packets out", s)
	}
	if s := e.stats(0); s.TxPackets != 0 {
		t.Errorf("slot 0 counted another slot's packets: %+v", s)
	}
}

func TestIngressNAT(t *testing.T) {
	e := newEnv(t, 2)
	e.sendVariants(1, outside)
	for name, l4 := range replyVariants() {
		// The reply: from outside to slot 1's address.
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
		ip.Protocol = protoOf(l4)
		ls := append([]gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)
		pkt := serialize(t, ls...)
		verdict, out := e.ingress(pkt)
		if verdict != verdictRedirect {
			t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT (into the slot)", name, int32(verdict))
		}
		if got := net.HardwareAddr(out[0:6]); got.String() != e.cfg.SlotVethMAC(1).String() {
			t.Errorf("%s: destination MAC %s, want slot 1's eth0 %s", name, got, e.cfg.SlotVethMAC(1))
		}
		if got := addr(out[30:34]); got != e.cfg.GuestIP() {
			t.Errorf("%s: destination %s, want the guest address", name, got)
		}
		checkIPv4(t, name, out[14:])
	}
	if s := e.stats(1); s.RxPackets != 3 || s.Drops != nil {
		t.Errorf("slot 1 counters %+v, want 3 packets in", s)
	}

	// Not ours: the host's own traffic passes untouched.
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: underlay.AsSlice()}
	pkt := serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 1, DstPort: 53}, gopacket.Payload("x"))
	if verdict, out := e.ingress(pkt); verdict != verdictNext || !bytes.Equal(out, pkt) {
		t.Errorf("host traffic: verdict %d, changed %v", int32(verdict), !bytes.Equal(out, pkt))
	}
	// An address of the slot CIDR beyond the pool is no slot's: not ours
	// to translate, it goes on to the host (which does not route it).
	ip = &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(2).AsSlice()}
	pkt = serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 1, DstPort: 53}, gopacket.Payload("x"))
	if verdict, out := e.ingress(pkt); verdict != verdictNext || !bytes.Equal(out, pkt) {
		t.Errorf("beyond the pool: verdict %d, changed %v", int32(verdict), !bytes.Equal(out, pkt))
	}
}

func TestEgressFromHostPasses(t *testing.T) {
	e := newEnv(t, 1)
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: underlay.AsSlice(), DstIP: outside.AsSlice()}
	pkt := serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 1, DstPort: 2}, gopacket.Payload("host"))
	up, _ := netlink.LinkByName("up0")
	verdict, out := e.run(e.dp.objs.UplinkEgress, pkt, up.Attrs().Index)
	if verdict != verdictNext || !bytes.Equal(out, pkt) {
		t.Errorf("the host's own packet: verdict %d, changed %v", int32(verdict), !bytes.Equal(out, pkt))
	}
}

// decodeGeneve checks the outer headers of an encapsulated frame and
// returns the Geneve layer and the inner frame.
func decodeGeneve(t *testing.T, out []byte) (*layers.Geneve, []byte) {
	t.Helper()
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	gnv, _ := p.Layer(layers.LayerTypeGeneve).(*layers.Geneve)
	if ip4 == nil || udp == nil || gnv == nil {
		t.Fatalf("not Geneve over UDP over IPv4: %v", p)
	}
	if netip.AddrFrom4([4]byte(ip4.SrcIP.To4())) != underlay {
		t.Errorf("outer source %s, want the underlay address %s", ip4.SrcIP, underlay)
	}
	if int(ip4.Length) != len(out)-14 {
		t.Errorf("outer IPv4 length %d, frame carries %d", ip4.Length, len(out)-14)
	}
	if c := testpacket.Checksum(out[14:34], 0); c != 0 {
		t.Error("outer IPv4 checksum wrong")
	}
	if udp.DstPort != 6081 {
		t.Errorf("outer UDP port %d, want 6081", udp.DstPort)
	}
	if udp.SrcPort < 49152 {
		t.Errorf("outer UDP source port %d, want one from the flow hash in 49152-65535", udp.SrcPort)
	}
	if int(udp.Length) != len(out)-34 {
		t.Errorf("outer UDP length %d, want %d", udp.Length, len(out)-34)
	}
	if gnv.Version != 0 || gnv.Protocol != layers.EthernetTypeTransparentEthernetBridging || gnv.OptionsLength != 0 {
		t.Errorf("geneve header: version %d protocol %#x options %d", gnv.Version, uint16(gnv.Protocol), gnv.OptionsLength)
	}
	return gnv, out[14+20+8+8:]
}

func TestEncapsulation(t *testing.T) {
	e := newEnv(t, 2)
	e.attach(1, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	vni, dummy, err := e.dp.Tunnel(1)
	if err != nil || vni != 4242 || dummy {
		t.Fatalf("slot 1 tunnel: vni %d dummy %v err %v", vni, dummy, err)
	}
	ports := map[uint16]bool{}
	for name, l4 := range l4Variants() {
		pkt := guestFrame(t, e.cfg, netip.MustParseAddr("10.9.3.4"), l4...)
		verdict, out := e.egress(pkt, 1)
		if verdict != verdictRedirect {
			t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT (to the neighbour); counters %+v", name, int32(verdict), e.stats(1))
		}
		gnv, inner := decodeGeneve(t, out)
		if gnv.VNI != 4242 {
			t.Errorf("%s: vni %d, want 4242", name, gnv.VNI)
		}
		if got := net.HardwareAddr(inner[0:6]).String(); got != peerMAC.String() {
			t.Errorf("%s: inner destination MAC %s, want the peer's %s", name, got, peerMAC)
		}
		if got := net.HardwareAddr(inner[6:12]).String(); got != e.cfg.VPCMAC(1).String() {
			t.Errorf("%s: inner source MAC %s, want slot 1's VPC MAC", name, got)
		}
		if got := addr(inner[14+12 : 14+16]); got != netip.MustParseAddr("10.9.0.5") {
			t.Errorf("%s: inner source %s, want the VPC address", name, got)
		}
		checkIPv4(t, name+" inner", inner[14:])
		if len(inner) != len(pkt) {
			t.Errorf("%s: inner frame %d bytes, sent %d", name, len(inner), len(pkt))
		}
		ports[binary.BigEndian.Uint16(out[34:])] = true
	}
	if s := e.stats(1); s.EncapPackets != 3 || s.TxPackets != 3 {
		t.Errorf("counters %+v, want 3 encapsulated", s)
	}
	// Traffic outside the VPC's CIDRs is still NATed to the slot address.
	verdict, out := e.egress(guestFrame(t, e.cfg, outside, &layers.UDP{SrcPort: 1, DstPort: 2}), 1)
	if verdict != verdictNext || addr(out[26:30]) != e.cfg.SlotIP(1) {
		t.Errorf("non-VPC traffic of an attached slot: verdict %d source %s", int32(verdict), addr(out[26:30]))
	}
	// Another slot's traffic to the same CIDR is not tunneled.
	verdict, out = e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.3.4"), &layers.UDP{SrcPort: 1, DstPort: 2}), 0)
	if verdict != verdictNext || addr(out[26:30]) != e.cfg.SlotIP(0) {
		t.Errorf("unattached slot to a VPC CIDR: verdict %d source %s", int32(verdict), addr(out[26:30]))
	}

	// Detach flips back: nothing more goes through the tunnel.
	if err := e.dp.Detach(1, e.attachment(1)); err != nil {
		t.Fatal(err)
	}
	if vni, dummy, _ := e.dp.Tunnel(1); !dummy || vni != DummyVNIBase+1 {
		t.Errorf("after detach: vni %d dummy %v", vni, dummy)
	}
	verdict, out = e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.3.4"), &layers.UDP{SrcPort: 1, DstPort: 2}), 1)
	if verdict != verdictNext || addr(out[26:30]) != e.cfg.SlotIP(1) {
		t.Errorf("detached slot to the old VPC CIDR: verdict %d source %s", int32(verdict), addr(out[26:30]))
	}
}

func TestEncapsulationThroughGateway(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 77, "10.9.0.5", "10.9.0.0/16", peerMAC, vtepFar)
	verdict, out := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}), 0)
	if verdict != verdictRedirect {
		t.Fatalf("verdict %d", int32(verdict))
	}
	gnv, _ := decodeGeneve(t, out)
	if gnv.VNI != 77 || addr(out[30:34]) != vtepFar {
		t.Errorf("vni %d outer destination %s", gnv.VNI, addr(out[30:34]))
	}
}

func TestEncapsulationARPsForUnknownPeer(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	verdict, out := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.ICMPv4{
		TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0)}), 0)
	if verdict != verdictRedirect {
		t.Fatalf("verdict %d", int32(verdict))
	}
	gnv, inner := decodeGeneve(t, out)
	p := gopacket.NewPacket(inner, layers.LayerTypeEthernet, gopacket.Default)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if gnv.VNI != 4242 || arp == nil {
		t.Fatalf("want an ARP request through the tunnel, got vni %d %v", gnv.VNI, p)
	}
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || arp.Operation != layers.ARPRequest ||
		addr(arp.SourceProtAddress) != netip.MustParseAddr("10.9.0.5") ||
		addr(arp.DstProtAddress) != netip.MustParseAddr("10.9.0.1") ||
		net.HardwareAddr(arp.SourceHwAddress).String() != e.cfg.VPCMAC(0).String() {
		t.Errorf("ARP request: %v", arp)
	}
	if s := e.stats(0); s.ARPRequests != 1 {
		t.Errorf("counters %+v, want one ARP request", s)
	}
}

// geneveFrame builds a Geneve packet from the VTEP to the underlay address.
type gnvOpts struct {
	src     netip.Addr
	vni     uint32
	flags   uint8 // O (0x80) and C (0x40)
	mf      bool  // outer IPv4 more-fragments
	version uint8
	optLen  uint8 // in 4-byte words, as on the wire
	proto   uint16
	cut     int // bytes to cut off the end (the IPv4 and UDP lengths follow)
}

func geneveFrame(t testing.TB, o gnvOpts, inner []byte) []byte {
	t.Helper()
	if !o.src.IsValid() {
		o.src = vtep
	}
	if o.proto == 0 {
		o.proto = 0x6558
	}
	hdr := make([]byte, 8+int(o.optLen)*4)
	hdr[0] = o.version<<6 | o.optLen
	hdr[1] = o.flags
	binary.BigEndian.PutUint16(hdr[2:], o.proto)
	hdr[4], hdr[5], hdr[6] = byte(o.vni>>16), byte(o.vni>>8), byte(o.vni)
	for i := 8; i < len(hdr); i += 4 {
		hdr[i+3] = 1 // options: a class/type that nobody knows, length 0
		hdr[i+2] = 0
	}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: o.src.AsSlice(), DstIP: underlay.AsSlice()}
	if o.mf {
		ip.Flags = layers.IPv4MoreFragments
	}
	pkt := serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 50000, DstPort: 6081}, gopacket.Payload(append(hdr, inner...)))
	if o.cut == 0 {
		return pkt
	}
	pkt = pkt[:len(pkt)-o.cut]
	binary.BigEndian.PutUint16(pkt[16:18], uint16(len(pkt)-14))
	pkt[24], pkt[25] = 0, 0
	binary.BigEndian.PutUint16(pkt[24:26], testpacket.Checksum(pkt[14:34], 0))
	binary.BigEndian.PutUint16(pkt[38:40], uint16(len(pkt)-34))
	pkt[40], pkt[41] = 0, 0 // no UDP checksum, as Geneve senders do
	return pkt
}

func innerIPv4(t testing.TB, dstMAC net.HardwareAddr, src, dst string, l4 ...gopacket.SerializableLayer) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	ip.Protocol = protoOf(l4)
	ls := append([]gopacket.SerializableLayer{
		&layers.Ethernet{SrcMAC: peerMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)
	return serialize(t, ls...)
}

func TestDecapsulation(t *testing.T) {
	e := newEnv(t, 2)
	e.attach(1, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	e.sendVariants(1, netip.MustParseAddr("10.9.0.1"))
	for name, l4 := range replyVariants() {
		inner := innerIPv4(t, e.cfg.VPCMAC(1), "10.9.0.1", "10.9.0.5", l4...)
		verdict, out := e.ingress(geneveFrame(t, gnvOpts{vni: 4242}, inner))
		if verdict != verdictRedirect {
			t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT into the slot", name, int32(verdict))
		}
		// The inner frame less any Ethernet padding it had.
		if want := 14 + int(binary.BigEndian.Uint16(inner[16:18])); len(out) != want {
			t.Fatalf("%s: %d bytes left, want the inner packet's %d and an Ethernet header", name, len(out), want)
		}
		if got := net.HardwareAddr(out[0:6]).String(); got != e.cfg.SlotVethMAC(1).String() {
			t.Errorf("%s: destination MAC %s, want slot 1's eth0", name, got)
		}
		if got := addr(out[30:34]); got != e.cfg.GuestIP() {
			t.Errorf("%s: destination %s, want the guest address", name, got)
		}
		if got := addr(out[26:30]); got != netip.MustParseAddr("10.9.0.1") {
			t.Errorf("%s: source changed to %s", name, got)
		}
		checkIPv4(t, name, out[14:])
	}
	if s := e.stats(1); s.DecapPackets != 3 || s.RxPackets != 3 {
		t.Errorf("counters %+v, want 3 decapsulated", s)
	}
	// The peer's MAC was learned from the inner source: traffic back needs
	// no ARP.
	verdict, out := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}), 1)
	_, in := decodeGeneve(t, out)
	if verdict != verdictRedirect || net.HardwareAddr(in[0:6]).String() != peerMAC.String() {
		t.Errorf("reply: verdict %d inner destination %s, want the learned %s", int32(verdict), net.HardwareAddr(in[0:6]), peerMAC)
	}
	// With options, the inner frame starts after them.
	inner := innerIPv4(t, e.cfg.VPCMAC(1), "10.9.0.1", "10.9.0.5", &layers.UDP{SrcPort: 2, DstPort: 1}, gopacket.Payload("opt"))
	if verdict, out := e.ingress(geneveFrame(t, gnvOpts{vni: 4242, optLen: 2}, inner)); verdict != verdictRedirect || len(out) != 14+int(binary.BigEndian.Uint16(inner[16:18])) {
		t.Errorf("with options: verdict %d, %d bytes", int32(verdict), len(out))
	}
}

func TestARPThroughTunnel(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	req := serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: peerMAC, SourceProtAddress: netip.MustParseAddr("10.9.0.1").AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: netip.MustParseAddr("10.9.0.5").AsSlice()})
	verdict, out := e.ingress(geneveFrame(t, gnvOpts{vni: 4242}, req))
	if verdict != verdictRedirect {
		t.Fatalf("verdict %d, want TC_ACT_REDIRECT back out of the uplink", int32(verdict))
	}
	if got := net.HardwareAddr(out[0:6]).String(); got != fabricGWMAC.String() {
		t.Errorf("outer destination MAC %s, want the sender's %s", got, fabricGWMAC)
	}
	if addr(out[30:34]) != vtep || addr(out[26:30]) != underlay {
		t.Errorf("outer %s -> %s, want %s -> %s", addr(out[26:30]), addr(out[30:34]), underlay, vtep)
	}
	gnv, inner := decodeGeneve(t, out)
	p := gopacket.NewPacket(inner, layers.LayerTypeEthernet, gopacket.Default)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if gnv.VNI != 4242 || arp == nil || arp.Operation != layers.ARPReply {
		t.Fatalf("want an ARP reply on vni 4242, got %v", p)
	}
	if net.HardwareAddr(arp.SourceHwAddress).String() != e.cfg.VPCMAC(0).String() ||
		addr(arp.SourceProtAddress) != netip.MustParseAddr("10.9.0.5") ||
		net.HardwareAddr(arp.DstHwAddress).String() != peerMAC.String() ||
		addr(arp.DstProtAddress) != netip.MustParseAddr("10.9.0.1") {
		t.Errorf("reply %+v", arp)
	}
	if s := e.stats(0); s.ARPReplies != 1 {
		t.Errorf("counters %+v, want one ARP reply", s)
	}
}

// More VPC CIDRs than a tunnel entry holds: the rest are routes in the LPM
// trie, consulted only for that slot.
func TestEncapsulationManyCIDRs(t *testing.T) {
	e := newEnv(t, 2)
	var cidrs []string
	for k := range 20 {
		cidrs = append(cidrs, fmt.Sprintf("10.%d.0.0/16", 100+k))
	}
	a, err := slot.ParseAttachment(99, vtep.String(), "10.100.0.5", cidrs)
	if err != nil {
		t.Fatal(err)
	}
	a.PeerMAC = peerMAC
	if err := e.dp.Attach(1, a); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"10.100.1.1", "10.107.1.1", "10.108.1.1", "10.119.255.1"} {
		verdict, out := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr(dst), &layers.UDP{SrcPort: 1, DstPort: 2}), 1)
		if verdict != verdictRedirect {
			t.Errorf("%s: verdict %d, want it through the tunnel", dst, int32(verdict))
			continue
		}
		if gnv, _ := decodeGeneve(t, out); gnv.VNI != 99 {
			t.Errorf("%s: vni %d", dst, gnv.VNI)
		}
	}
	for _, dst := range []string{"10.120.0.1", "10.99.0.1"} {
		if verdict, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr(dst), &layers.UDP{SrcPort: 1, DstPort: 2}), 1); verdict != verdictNext {
			t.Errorf("%s (not in the VPC): verdict %d, want NAT", dst, int32(verdict))
		}
	}
	// Slot 0 has none of slot 1's routes.
	if verdict, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.119.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}), 0); verdict != verdictNext {
		t.Errorf("slot 0 to slot 1's VPC: verdict %d, want NAT", int32(verdict))
	}
	if err := e.dp.Detach(1, a); err != nil {
		t.Fatal(err)
	}
	var k datapathVpcRouteKey
	var v uint8
	if it := e.dp.objs.VpcRoutes.Iterate(); it.Next(&k, &v) {
		t.Errorf("route %+v left after detach", k)
	}
}

// A learned peer MAC belongs to the attachment it was learned under: one
// written late by a packet of the previous lease (after the release
// cleared it) is not used by the next lease, which asks by ARP instead.
func TestStalePeerIsNotReused(t *testing.T) {
	e := newEnv(t, 1)
	a := e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	if err := e.dp.Detach(0, a); err != nil {
		t.Fatal(err)
	}
	stale := datapathPeerInfo{Mac: mac6(peerMAC), Known: 1, Vni: 4242, Remote: be32(vtep)}
	if err := e.dp.objs.Peers.Update(uint32(0), &stale, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	e.attach(0, 5151, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	verdict, out := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}), 0)
	if verdict != verdictRedirect {
		t.Fatalf("verdict %d", int32(verdict))
	}
	gnv, inner := decodeGeneve(t, out)
	if gnv.VNI != 5151 || binary.BigEndian.Uint16(inner[12:]) != 0x0806 {
		t.Errorf("want an ARP request on vni 5151, got vni %d ethertype %#x to %s", gnv.VNI,
			binary.BigEndian.Uint16(inner[12:]), net.HardwareAddr(inner[0:6]))
	}
}

// An ICMP error for a slot's traffic carries the slot address inside; the
// guest must see its own address there. And the other way round.
func TestICMPErrorsTranslated(t *testing.T) {
	e := newEnv(t, 2)
	// The packet the error answers: sent by slot 1's guest.
	e.egress(guestFrame(t, e.cfg, outside, &layers.UDP{SrcPort: 40000, DstPort: 53}, gopacket.Payload("big")), 1)
	// What the guest sent, as the outside host saw it (from the slot
	// address), quoted in a fragmentation-needed error.
	quoted := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
		SrcIP: e.cfg.SlotIP(1).AsSlice(), DstIP: outside.AsSlice()}
	qudp := &layers.UDP{SrcPort: 40000, DstPort: 53}
	qudp.SetNetworkLayerForChecksum(quoted)
	inner := serialize(t, quoted, qudp)
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolICMPv4, SrcIP: fabricGW.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
	pkt := serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), Seq: 1400},
		gopacket.Payload(inner))
	verdict, out := e.ingress(pkt)
	if verdict != verdictRedirect {
		t.Fatalf("verdict %d", int32(verdict))
	}
	checkIPv4(t, "error to the guest", out[14:])
	q := out[14+20+8:]
	if got := addr(q[12:16]); got != e.cfg.GuestIP() {
		t.Errorf("quoted source %s, want the guest address", got)
	}
	if c := testpacket.Checksum(q[:20], 0); c != 0 {
		t.Error("quoted header checksum wrong")
	}

	// The guest answers a packet from outside with port unreachable: the
	// quoted packet's destination must become the slot address.
	quoted = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: e.cfg.GuestIP().AsSlice()}
	qudp = &layers.UDP{SrcPort: 53, DstPort: 999}
	qudp.SetNetworkLayerForChecksum(quoted)
	inner = serialize(t, quoted, qudp)
	verdict, out = e.egress(guestFrame(t, e.cfg, outside, &layers.ICMPv4{
		TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)}, gopacket.Payload(inner)), 1)
	if verdict != verdictNext {
		t.Fatalf("verdict %d", int32(verdict))
	}
	checkIPv4(t, "error from the guest", out[14:])
	q = out[14+20+8:]
	if got := addr(q[16:20]); got != e.cfg.SlotIP(1) {
		t.Errorf("quoted destination %s, want the slot address", got)
	}
	if c := testpacket.Checksum(q[:20], 0); c != 0 {
		t.Error("quoted header checksum wrong")
	}
}

// Two acquires of one (VNI, address) at once: exactly one wins.
func TestAttachConflictRace(t *testing.T) {
	e := newEnv(t, 8)
	a, err := slot.ParseAttachment(77, vtep.String(), "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for i := range 8 {
		go func() { errs <- e.dp.Attach(i, a) }()
	}
	ok := 0
	for range 8 {
		if err := <-errs; err == nil {
			ok++
		} else if !errors.Is(err, ErrConflict) {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d slots attached the same address", ok)
	}
	var k datapathVniKey
	var v uint32
	n := 0
	for it := e.dp.objs.VniDst.Iterate(); it.Next(&k, &v); n++ {
	}
	if n != 1 {
		t.Errorf("%d inbound entries, want 1", n)
	}
}
