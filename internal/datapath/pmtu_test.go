package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/testpacket"
)

// skbCtxGSO is struct __sk_buff up to gso_size: BPF_PROG_TEST_RUN copies
// gso_segs and gso_size into the skb it builds (not gso_type, which stays
// 0: enough for skb_is_gso and the programs' skb->gso_size).
type skbCtxGSO struct {
	skbCtx
	_        [(164 - 44) / 4]uint32 // tc_index .. wire_len
	GSOSegs  uint32
	_        [2]uint32 // sk
	GSOSize  uint32
	_        uint32 // tstamp_type
	Hwtstamp uint64
}

// uplinkMTU sets the test uplink's MTU for the rest of the test.
func uplinkMTU(t *testing.T, mtu int) {
	t.Helper()
	up, err := netlink.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMTU(up, mtu); err != nil {
		t.Fatal(err)
	}
}

// pmtuEnv is one slot attached to a VPC with a known peer, on a 1500-byte
// uplink.
func pmtuEnv(t *testing.T) *env {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	uplinkMTU(t, 1500)
	return e
}

var tooBigDst = netip.MustParseAddr("10.9.3.4")

// bigTCP is a guest's TCP segment of tot bytes (IPv4 length) to the VPC
// peer, with DF if df.
func bigTCP(t *testing.T, e *env, tot int, df bool) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Id: 4321,
		SrcIP: e.cfg.GuestIP().AsSlice(), DstIP: tooBigDst.AsSlice()}
	if df {
		ip.Flags = layers.IPv4DontFragment
	}
	return serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.TCP{SrcPort: 40000, DstPort: 5001, Seq: 0x01020304, Ack: 99, ACK: true, Window: 502},
		gopacket.Payload(bytes.Repeat([]byte{0xab}, tot-40)))
}

// checkFragNeeded checks that out is the ICMP "fragmentation needed" with
// mtu that answers pkt, on its way into slot 0.
func checkFragNeeded(t *testing.T, e *env, pkt, out []byte, mtu int) {
	t.Helper()
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if eth == nil || ip4 == nil || icmp == nil {
		t.Fatalf("not ICMP over IPv4: %v", p)
	}
	if eth.DstMAC.String() != e.cfg.SlotVethMAC(0).String() || eth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("ethernet %s -> %s type %v, want to the slot's eth0 %s", eth.SrcMAC, eth.DstMAC, eth.EthernetType, e.cfg.SlotVethMAC(0))
	}
	if addr(ip4.SrcIP.To4()) != tooBigDst || addr(ip4.DstIP.To4()) != e.cfg.GuestIP() {
		t.Errorf("ICMP %s -> %s, want from the packet's destination %s to the guest %s", ip4.SrcIP, ip4.DstIP, tooBigDst, e.cfg.GuestIP())
	}
	if ip4.TTL == 0 || ip4.Flags&layers.IPv4MoreFragments != 0 || ip4.FragOffset != 0 {
		t.Errorf("ICMP's IPv4 header: ttl %d flags %v offset %d", ip4.TTL, ip4.Flags, ip4.FragOffset)
	}
	if icmp.TypeCode.Type() != layers.ICMPv4TypeDestinationUnreachable || icmp.TypeCode.Code() != layers.ICMPv4CodeFragmentationNeeded {
		t.Errorf("ICMP %v, want destination unreachable, fragmentation needed", icmp.TypeCode)
	}
	// RFC 1191: the next-hop MTU is the low 16 bits of the second word.
	if int(icmp.Seq) != mtu || icmp.Id != 0 {
		t.Errorf("next-hop MTU %d (unused %d), want %d", icmp.Seq, icmp.Id, mtu)
	}
	checkIPv4(t, "ICMP", out[14:])
	if int(ip4.Length) != len(out)-14 {
		t.Errorf("IPv4 length %d, frame carries %d", ip4.Length, len(out)-14)
	}
	quote := icmp.Payload
	ihl := int(pkt[14]&0xf) * 4
	l4 := 8
	if pkt[14+9] == 6 {
		l4 = 20
	}
	if len(quote) != ihl+l4 {
		t.Fatalf("quote of %d bytes, want the IPv4 header and %d bytes", len(quote), l4)
	}
	if !bytes.Equal(quote[:ihl], pkt[14:14+ihl]) {
		t.Errorf("quoted header\n%x, sent\n%x", quote[:ihl], pkt[14:14+ihl])
	}
	csumAt := 6 // UDP
	if l4 == 20 {
		csumAt = 16
	}
	if n := min(8, csumAt); !bytes.Equal(quote[ihl:ihl+n], pkt[14+ihl:14+ihl+n]) {
		t.Errorf("quoted ports and sequence %x, sent %x", quote[ihl:ihl+n], pkt[14+ihl:14+ihl+n])
	}
	// The transport checksum is the value a checksum completion over the
	// quote writes, so that the ICMP checksum holds whether or not the
	// kernel completes it (a guest with checksum offload).
	if c := testpacket.Checksum(quote[ihl:], 0); c != binary.BigEndian.Uint16(quote[ihl+csumAt:]) {
		t.Errorf("quoted transport checksum %#x is not a fixed point of its completion (%#x)", binary.BigEndian.Uint16(quote[ihl+csumAt:]), c)
	}
	if l4 == 20 {
		// The rest of the TCP header as sent.
		if !bytes.Equal(quote[ihl+8:ihl+16], pkt[14+ihl+8:14+ihl+16]) || !bytes.Equal(quote[ihl+18:], pkt[14+ihl+18:14+ihl+20]) {
			t.Errorf("quoted TCP header %x, sent %x", quote[ihl:], pkt[14+ihl:14+ihl+20])
		}
	}
}

func TestFragNeededForTooBigDF(t *testing.T) {
	e := pmtuEnv(t)
	// The largest packet that fits: 1450 + 50 = 1500.
	verdict, out := e.egress(bigTCP(t, e, 1450, true), 0)
	if verdict != verdictRedirect {
		t.Fatalf("1450-byte packet: verdict %d, counters %+v", int32(verdict), e.stats(0))
	}
	decodeGeneve(t, out)

	pkt := bigTCP(t, e, 1451, true)
	verdict, out = e.egress(pkt, 0)
	if verdict != verdictRedirect {
		t.Fatalf("1451-byte packet: verdict %d, want a redirect into the slot; counters %+v", int32(verdict), e.stats(0))
	}
	checkFragNeeded(t, e, pkt, out, 1450)

	// A full 1500-byte packet, UDP this time.
	udp := serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
			SrcIP: e.cfg.GuestIP().AsSlice(), DstIP: tooBigDst.AsSlice()},
		&layers.UDP{SrcPort: 5353, DstPort: 9}, gopacket.Payload(make([]byte, 1472)))
	verdict, out = e.egress(udp, 0)
	if verdict != verdictRedirect {
		t.Fatalf("1500-byte UDP: verdict %d", int32(verdict))
	}
	checkFragNeeded(t, e, udp, out, 1450)

	// With a 9000-byte uplink the tunnel carries 8950.
	uplinkMTU(t, 9000)
	if verdict, out = e.egress(bigTCP(t, e, 1500, true), 0); verdict != verdictRedirect {
		t.Fatalf("1500 bytes on a 9000-byte uplink: verdict %d", int32(verdict))
	}
	decodeGeneve(t, out)
	uplinkMTU(t, 1500)

	s := e.stats(0)
	if s.ICMPFragNeeded != 2 || s.EncapPackets != 2 || s.Drops["too_big"] != 0 {
		t.Errorf("counters %+v, want 2 answered, 2 encapsulated, no too_big drop", s)
	}
}

func TestTooBigWithoutDFIsDropped(t *testing.T) {
	e := pmtuEnv(t)
	if verdict, _ := e.egress(bigTCP(t, e, 1500, false), 0); verdict != verdictDrop {
		t.Fatalf("verdict %d, want a drop: nothing fragments in eBPF", int32(verdict))
	}
	if s := e.stats(0); s.Drops["too_big"] != 1 || s.ICMPFragNeeded != 0 {
		t.Errorf("counters %+v, want one too_big, no answer", s)
	}
}

func TestFragNeededIsRateLimited(t *testing.T) {
	e := pmtuEnv(t)
	const sent = 40
	start := time.Now()
	answered := 0
	for i := 0; i < sent; i++ {
		verdict, _ := e.egress(bigTCP(t, e, 1500, true), 0)
		switch verdict {
		case verdictRedirect:
			answered++
		case verdictDrop:
		default:
			t.Fatalf("verdict %d", int32(verdict))
		}
	}
	elapsed := time.Since(start)
	limit := dpconst.ICMPFragBurst + int(elapsed/(dpconst.ICMPFragIntervalNs*time.Nanosecond)) + 1
	if answered < dpconst.ICMPFragBurst || answered > limit {
		t.Errorf("%d of %d answered in %v, want a burst of %d and at most %d", answered, sent, elapsed, dpconst.ICMPFragBurst, limit)
	}
	s := e.stats(0)
	if s.ICMPFragNeeded != uint64(answered) || s.Drops["too_big"] != uint64(sent-answered) {
		t.Errorf("counters %+v, want %d answered and %d too_big", s, answered, sent-answered)
	}
	// The bucket refills.
	time.Sleep(3 * dpconst.ICMPFragIntervalNs * time.Nanosecond)
	if verdict, _ := e.egress(bigTCP(t, e, 1500, true), 0); verdict != verdictRedirect {
		t.Errorf("after a pause: verdict %d, want an answer", int32(verdict))
	}
}

// A GSO packet whose segments, with the tunnel's headers, exceed the
// uplink's MTU is answered too (each segment is what goes on the wire):
// BPF_PROG_TEST_RUN sets the skb's gso_size from the context.
func TestFragNeededForGSO(t *testing.T) {
	e := pmtuEnv(t)
	pkt := bigTCP(t, e, 2960, true) // two segments of 1460 bytes
	run := func(gsoSize uint32) (uint32, []byte) {
		out := make([]byte, len(pkt)+512)
		opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: skbCtxGSO{
			skbCtx: skbCtx{IngressIfindex: uint32(e.hosts[0])}, GSOSegs: 2, GSOSize: gsoSize}}
		ret, err := e.dp.objs.UplinkEgress.Run(opts)
		if err != nil {
			t.Fatal(err)
		}
		return ret, opts.DataOut
	}
	verdict, out := run(1460)
	if verdict != verdictRedirect {
		t.Fatalf("GSO with 1500-byte segments: verdict %d, counters %+v", int32(verdict), e.stats(0))
	}
	checkFragNeeded(t, e, pkt, out, 1450)
	if s := e.stats(0); s.ICMPFragNeeded != 1 {
		t.Errorf("counters %+v", s)
	}
	// Segments of 1410 bytes of payload fit (1450 + 50): the packet goes on
	// to the encapsulation (where this test's skb, with no gso_type, is
	// refused by the kernel: real GSO is tested end to end).
	if verdict, _ = run(1410); verdict == verdictRedirect {
		t.Errorf("GSO with segments that fit answered with %v", e.stats(0))
	}
	if s := e.stats(0); s.ICMPFragNeeded != 1 {
		t.Errorf("segments that fit were answered: %+v", s)
	}
}
