package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/testpacket"
)

// FuzzPrograms runs the uplink programs through BPF_PROG_TEST_RUN on
// random and mutated Ethernet/IPv4/UDP/Geneve/ARP frames, as sent by a
// guest (egress, from slot 0 or 1) or arriving from the fabric (ingress).
// Whatever the frame, the program runs (the verifier has already proven it
// reads nothing past the packet; the run proves it loads and returns), its
// verdict is one of pass, drop or redirect, and a frame it changes is well
// formed: valid IPv4 header and checksum, lengths that fit, a valid L4
// checksum if the original had one, and the same for the inner frame of a
// Geneve packet it builds.
func FuzzPrograms(f *testing.F) {
	e := newEnvAt(f, 2, pinRoot)
	e.attach(1, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	up, err := netlink.LinkByName("up0")
	if err != nil {
		f.Fatal(err)
	}
	// BPF_PROG_TEST_RUN takes the packet's device from the calling
	// thread's namespace, and the programs look up routes and MTUs there:
	// every run happens on one thread locked into the env's namespace
	// (inputs are run on goroutines of their own).
	nsFD, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer unix.Close(nsFD)
	runs := make(chan func())
	entered := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		entered <- unix.Setns(nsFD, unix.CLONE_NEWNET)
		for fn := range runs {
			fn()
		}
	}()
	if err := <-entered; err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { close(runs) })
	run := func(prog *ebpf.Program, frame []byte, iif int) (uint32, []byte, error) {
		out := make([]byte, len(frame)+1024) // room for a DHCP answer to the shortest request
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: skbCtx{IngressIfindex: uint32(iif)}}
		var verdict uint32
		done := make(chan error)
		runs <- func() {
			var err error
			verdict, err = prog.Run(opts)
			done <- err
		}
		err := <-done
		return verdict, opts.DataOut, err
	}
	// The harness reaches the encapsulation: a guest packet to slot 1's VPC
	// leaves in Geneve.
	if v, out, err := run(e.dp.objs.UplinkEgress, guestFrame(f, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}), e.hosts[1]); err != nil || v != verdictRedirect || !isGeneve(out) {
		f.Fatalf("VPC egress in the harness: verdict %d, geneve %t, %v", int32(v), isGeneve(out), err)
	}
	// Both guests have flows open (as a running guest has), so that the
	// replies among the seeds are let in and reach the rewrites.
	e.sendVariants(0, outside)
	e.sendVariants(1, netip.MustParseAddr("10.9.0.1"))
	// And a guest's frames into slot 0's tap0, to its DHCP program.
	tap := e.slotSide(0)
	if err := e.dp.SetDHCP(0, DHCP{MTU: 1500, DNS: []netip.Addr{outside}, Hostname: "fuzz"}); err != nil {
		f.Fatal(err)
	}
	const (
		egress0 = iota
		egress1
		ingress
		tapIn
		directions
	)
	for _, typ := range []layers.DHCPMsgType{layers.DHCPMsgTypeDiscover, layers.DHCPMsgTypeRequest, layers.DHCPMsgTypeInform, layers.DHCPMsgTypeRelease} {
		f.Add(dhcpFrame(f, e.cfg.GuestMAC, typ), uint8(tapIn))
		f.Add(dhcpFrame(f, e.cfg.GuestMAC, typ, layers.NewDHCPOption(layers.DHCPOptServerID, e.cfg.GatewayIP().AsSlice()),
			layers.NewDHCPOption(layers.DHCPOptRequestIP, e.cfg.GuestIP().AsSlice())), uint8(tapIn))
	}
	// Long options, options in file and sname, a client identifier.
	long := func(n int) []byte { return bytes.Repeat([]byte{'x'}, n) }
	f.Add(dhcpFrame(f, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover, layers.NewDHCPOption(layers.DHCPOptHostname, long(255)),
		layers.NewDHCPOption(layers.DHCPOptClassID, long(200)), layers.NewDHCPOption(layers.DHCPOptClientID, long(255))), uint8(tapIn))
	over := guestDHCP(e.cfg.GuestMAC, layers.DHCPMsgTypeRequest, layers.NewDHCPOption(layers.DHCPOptExtOptions, []byte{3}))
	over.File = rawOptions(layers.NewDHCPOption(layers.DHCPOptServerID, e.cfg.GatewayIP().AsSlice()), layers.NewDHCPOption(layers.DHCPOptClientID, long(7)))
	over.ServerName = rawOptions(layers.NewDHCPOption(layers.DHCPOptRequestIP, e.cfg.GuestIP().AsSlice()))
	f.Add(dhcpFrameOf(f, e.cfg.GuestMAC, over, nil), uint8(tapIn))
	// The tap program's answer rate would refuse most runs: its bucket is
	// refilled before each (stamp 0: full credit).
	fullBucket := make([]byte, e.dp.objs.DhcpLimits.ValueSize())
	binary.LittleEndian.PutUint32(fullBucket[16:], e.dp.LeaseWord(0)) // struct dhcp_limit's lease
	for _, l4 := range l4Variants() {
		f.Add(guestFrame(f, e.cfg, outside, l4...), uint8(egress0))
		f.Add(guestFrame(f, e.cfg, netip.MustParseAddr("10.9.0.1"), l4...), uint8(egress1))
		inner := innerIPv4(f, e.cfg.VPCMAC(1), "10.9.0.1", "10.9.0.5", l4...)
		f.Add(geneveFrame(f, gnvOpts{vni: 4242}, inner), uint8(ingress))
		f.Add(geneveFrame(f, gnvOpts{vni: 4242, optLen: 2}, inner), uint8(ingress))
		f.Add(geneveFrame(f, gnvOpts{vni: 0xF00000}, inner), uint8(ingress))
		// The inner header's TTL changed in flight (its checksum no longer
		// holds, the outer one does): decapsulated, and judged by the
		// inner header it came with.
		ttl := geneveFrame(f, gnvOpts{vni: 4242}, inner)
		ttl[50+14+8]--
		f.Add(ttl, uint8(ingress))
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(0).AsSlice(), Protocol: protoOf(l4)}
		f.Add(serialize(f, append([]gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)...), uint8(ingress))
	}
	f.Add(serialize(f, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: peerMAC, SourceProtAddress: []byte{10, 9, 0, 1},
			DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 9, 0, 5}}), uint8(egress1))
	for _, l4 := range replyVariants() {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(0).AsSlice(), Protocol: protoOf(l4)}
		f.Add(serialize(f, append([]gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)...), uint8(ingress))
		inner := innerIPv4(f, e.cfg.VPCMAC(1), "10.9.0.1", "10.9.0.5", l4...)
		f.Add(geneveFrame(f, gnvOpts{vni: 4242}, inner), uint8(ingress))
		// Bytes past the tunnel packet: not the inner packet's.
		f.Add(append(geneveFrame(f, gnvOpts{vni: 4242}, inner), "trailer"...), uint8(ingress))
	}
	// A guest's packet dressed as one of the datapath's own tunnel packets.
	spoof := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: underlay.AsSlice(), DstIP: vtep.AsSlice()}
	f.Add(serialize(f, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4}, spoof,
		&layers.UDP{SrcPort: 50000, DstPort: 6081}, gopacket.Payload(make([]byte, 30))), uint8(egress0))
	f.Add(make([]byte, 60), uint8(ingress))
	f.Fuzz(func(t *testing.T, frame []byte, dir uint8) {
		if len(frame) < 14 || len(frame) > 3000 {
			return // BPF_PROG_TEST_RUN takes a whole Ethernet header, and up to a page with head and tail room
		}
		prog, iif := e.dp.objs.UplinkEgress, e.hosts[0]
		switch dir % directions {
		case egress1:
			iif = e.hosts[1]
		case ingress:
			prog, iif = e.dp.objs.UplinkIngress, up.Attrs().Index
		case tapIn:
			prog, iif = e.dp.objs.TapDhcp, tap
			if err := e.dp.objs.DhcpLimits.Update(uint32(0), fullBucket, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
		}
		verdict, out, err := run(prog, frame, iif)
		if errors.Is(err, unix.EINVAL) && len(frame) < 14+40 {
			return // the test runner refuses IP frames without a whole IP header
		}
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		switch verdict {
		case verdictDrop:
			return
		case verdictNext, verdictRedirect, 0:
		default:
			t.Fatalf("verdict %d", int32(verdict))
		}
		if bytes.Equal(out, frame) {
			return
		}
		// A DHCP answer's options are well formed, with pad after End.
		if dir%directions == tapIn && verdict == verdictRedirect && len(out) >= 14+20+8+240 {
			if _, err := testpacket.CheckDHCPOptions(out[14+20+8+240:]); err != nil {
				t.Fatalf("DHCP answer's options: %v\n%x", err, out)
			}
		}
		// A decapsulated frame is held to what came inside the tunnel.
		ref := frame
		if in := geneveInner(frame); in != nil && !isGeneve(out) {
			ref = in
		}
		checkFrame(t, ref, out, false)
	})
}

// checkFrame fails t unless out, a frame a program changed from in, is a
// well-formed IPv4 or ARP frame. Checksums the program only updates
// (incrementally, as NAT does) must be valid if they were in in; those of
// a header it built (inner says out is the frame inside one) always.
func checkFrame(t *testing.T, in, out []byte, inner bool) {
	t.Helper()
	if len(out) < 14 {
		t.Fatalf("changed frame of %d bytes", len(out))
	}
	switch binary.BigEndian.Uint16(out[12:14]) {
	case 0x0806:
		if len(out) < 42 || binary.BigEndian.Uint16(out[14:16]) != 1 || binary.BigEndian.Uint16(out[16:18]) != 0x0800 ||
			out[18] != 6 || out[19] != 4 || binary.BigEndian.Uint16(out[20:22]) > 2 {
			t.Fatalf("malformed ARP out: %x", out)
		}
		return
	case 0x0800:
	default:
		t.Fatalf("changed a frame of type %#04x: %x", binary.BigEndian.Uint16(out[12:14]), out)
	}
	ip := out[14:]
	if len(ip) < 20 || ip[0]>>4 != 4 || ip[0]&0xf < 5 {
		t.Fatalf("malformed IPv4 header out: %x", out)
	}
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if len(ip) < hl || total < hl || total > len(ip) {
		t.Fatalf("IPv4 lengths: header %d, total %d, frame holds %d", hl, total, len(ip))
	}
	if testpacket.Checksum(ip[:hl], 0) != 0 && testpacket.IPv4HeaderOK(in) {
		t.Fatalf("IPv4 header checksum broken by the program: %x", ip[:hl])
	}
	l4 := ip[hl:total]
	frag := binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0
	if ip[9] == 17 && len(l4) >= 8 && binary.BigEndian.Uint16(l4[2:4]) == 6081 && !inner && !isGeneve(in) {
		// Built here: the outer header's checksum must be right, and the
		// inner frame follows the Geneve header and its options.
		if testpacket.Checksum(ip[:hl], 0) != 0 {
			t.Fatalf("bad checksum in the outer IPv4 header built: %x", ip[:hl])
		}
		if len(l4) < 16 {
			t.Fatalf("geneve packet of %d bytes", len(l4))
		}
		opt := int(l4[8]&0x3f) * 4
		if len(l4) < 16+opt {
			t.Fatalf("geneve options past the packet")
		}
		checkFrame(t, in, l4[16+opt:], true)
		return
	}
	if frag || !l4ChecksumOK(in) {
		return
	}
	if !l4ChecksumOK(out[:14+total]) {
		t.Fatalf("L4 checksum broken by the program:\nin  %x\nout %x", in, out)
	}
}

// geneveInner is the frame a Geneve packet carries (nil if frame is not
// one, or is cut short).
func geneveInner(frame []byte) []byte {
	if !isGeneve(frame) {
		return nil
	}
	udp := 14 + int(frame[14]&0xf)*4
	if len(frame) < udp+16 {
		return nil
	}
	start := udp + 16 + int(frame[udp+8]&0x3f)*4
	if len(frame) < start+14 {
		return nil
	}
	return frame[start:]
}

func isGeneve(frame []byte) bool {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 || frame[23] != 17 {
		return false
	}
	udp := 14 + int(frame[14]&0xf)*4
	return len(frame) >= udp+8 && binary.BigEndian.Uint16(frame[udp+2:]) == 6081
}

// l4ChecksumOK reports whether an IPv4 frame's TCP or UDP checksum is
// valid (true for anything else, and for UDP without a checksum).
func l4ChecksumOK(frame []byte) bool {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 || frame[14]>>4 != 4 {
		return true
	}
	ip := frame[14:]
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if hl < 20 || total < hl || total > len(ip) || binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
		return true
	}
	l4 := ip[hl:total]
	switch ip[9] {
	case 6:
		if len(l4) < 20 {
			return true
		}
	case 17:
		if len(l4) < 8 || binary.BigEndian.Uint16(l4[6:8]) == 0 {
			return true
		}
	default:
		return true
	}
	pseudo := make([]byte, 0, 12+len(l4))
	pseudo = append(pseudo, ip[12:20]...)
	pseudo = append(pseudo, 0, ip[9], byte(len(l4)>>8), byte(len(l4)))
	pseudo = append(pseudo, l4...)
	return testpacket.Checksum(pseudo, 0) == 0
}
