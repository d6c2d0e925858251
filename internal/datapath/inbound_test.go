package datapath

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
)

// Inbound traffic: a guest receives replies to its own flows and what its
// lease's inbound rules open, nothing else; a slot without an open lease
// neither receives nor sends. Every case runs on both paths into a slot:
// stateless NAT from the uplink, and Geneve from its VPC.

// inPath sends a packet from a remote host to slot i's guest: through the
// NAT (to the slot address) or the tunnel (to the VPC address).
type inPath struct {
	name   string
	remote netip.Addr
	// setup attaches what the path needs to slot i; local is the address
	// the guest's packets leave with on this path.
	setup func(e *env, i int) (local netip.Addr)
	send  func(e *env, i int, l4 ...gopacket.SerializableLayer) uint32
}

var vpcPeer = netip.MustParseAddr("10.9.0.1")

func inPaths() []inPath {
	return []inPath{
		{
			name: "nat", remote: outside,
			setup: func(e *env, i int) netip.Addr { return e.cfg.SlotIP(i) },
			send: func(e *env, i int, l4 ...gopacket.SerializableLayer) uint32 {
				ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(i).AsSlice()}
				ip.Protocol = protoOf(l4)
				v, _ := e.ingress(serialize(e.t, append([]gopacket.SerializableLayer{
					&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip}, l4...)...))
				return v
			},
		},
		{
			name: "geneve", remote: vpcPeer,
			setup: func(e *env, i int) netip.Addr {
				e.attach(i, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
				return netip.MustParseAddr("10.9.0.5")
			},
			send: func(e *env, i int, l4 ...gopacket.SerializableLayer) uint32 {
				v, _ := e.ingress(geneveFrame(e.t, gnvOpts{vni: 4242}, innerIPv4(e.t, e.cfg.VPCMAC(i), vpcPeer.String(), "10.9.0.5", l4...)))
				return v
			},
		},
	}
}

// inCase is a packet sent to a guest and whether it must be delivered.
type inCase struct {
	what string
	l4   []gopacket.SerializableLayer
	pass bool
}

func tcpSeg(sport, dport uint16, flags string) *layers.TCP {
	t := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 100, Window: 1024}
	for _, f := range flags {
		switch f {
		case 'S':
			t.SYN = true
		case 'A':
			t.ACK, t.Ack = true, 1
		case 'R':
			t.RST = true
		case 'F':
			t.FIN = true
		case 'P':
			t.PSH = true
		}
	}
	return t
}

func udpDgram(sport, dport uint16) []gopacket.SerializableLayer {
	return []gopacket.SerializableLayer{&layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}, gopacket.Payload("dgram")}
}

func icmpMsg(typ uint8, id uint16, payload []byte) []gopacket.SerializableLayer {
	return []gopacket.SerializableLayer{&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: 1}, gopacket.Payload(payload)}
}

// quoted is the start of a UDP packet from src:sport to dst:53, as an
// ICMP error quotes it.
func quoted(t testing.TB, src, dst netip.Addr, sport uint16) []byte {
	q := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 53}
	u.SetNetworkLayerForChecksum(q)
	return serialize(t, q, u)
}

func TestInboundIsClosedToUnsolicitedTraffic(t *testing.T) {
	for _, path := range inPaths() {
		t.Run(path.name, func(t *testing.T) {
			e := newEnv(t, 2)
			local := path.setup(e, 1)
			// The guest's own flows: UDP 40000 -> remote:53, an echo request id 9.
			e.sendVariants(1, path.remote)
			other := netip.MustParseAddr("198.19.1.77")
			cases := []inCase{
				{"tcp syn", []gopacket.SerializableLayer{tcpSeg(40000, 22, "S")}, false},
				{"tcp syn-ack (reply to the guest's connect)", []gopacket.SerializableLayer{tcpSeg(80, 40000, "SA")}, true},
				{"tcp ack with data", []gopacket.SerializableLayer{tcpSeg(80, 40000, "PA"), gopacket.Payload("data")}, true},
				{"tcp rst", []gopacket.SerializableLayer{tcpSeg(80, 40000, "R")}, true},
				{"tcp fin without ack", []gopacket.SerializableLayer{tcpSeg(80, 40000, "F")}, false},
				{"tcp without flags", []gopacket.SerializableLayer{tcpSeg(80, 40000, "")}, false},
				{"udp reply", udpDgram(53, 40000), true},
				{"udp from another port", udpDgram(54, 40000), false},
				{"udp to another port", udpDgram(53, 40001), false},
				{"udp unsolicited", udpDgram(5000, 6000), false},
				{"icmp echo reply", icmpMsg(layers.ICMPv4TypeEchoReply, 9, []byte("pong")), true},
				{"icmp echo reply, another id", icmpMsg(layers.ICMPv4TypeEchoReply, 10, []byte("pong")), false},
				{"icmp echo request", icmpMsg(layers.ICMPv4TypeEchoRequest, 9, []byte("ping")), false},
				{"icmp timestamp request", icmpMsg(layers.ICMPv4TypeTimestampRequest, 9, make([]byte, 12)), false},
				{"icmp error about the guest's packet", icmpMsg(layers.ICMPv4TypeDestinationUnreachable, 0, quoted(t, local, path.remote, 40000)), true},
				{"icmp error about another host's packet", icmpMsg(layers.ICMPv4TypeDestinationUnreachable, 0, quoted(t, other, path.remote, 40000)), false},
				{"icmp error quoting the guest's address, a flow it never had", icmpMsg(layers.ICMPv4TypeDestinationUnreachable, 0, quoted(t, local, path.remote, 40001)), false},
				{"icmp time exceeded about the guest's packet", icmpMsg(layers.ICMPv4TypeTimeExceeded, 0, quoted(t, local, path.remote, 40000)), true},
			}
			for _, c := range cases {
				before := e.total("inbound_unsolicited")
				v := path.send(e, 1, c.l4...)
				dropped := e.total("inbound_unsolicited") - before
				switch {
				case c.pass && v != verdictRedirect:
					t.Errorf("%s: verdict %d, want it delivered", c.what, int32(v))
				case !c.pass && (v != verdictDrop || dropped != 1):
					t.Errorf("%s: verdict %d and %d inbound_unsolicited drops, want it dropped and counted", c.what, int32(v), dropped)
				}
			}
			// The replies came from one remote host: from another, nothing.
			if path.name == "nat" {
				ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: other.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
				if v, _ := e.ingress(serialize(t, append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC,
					EthernetType: layers.EthernetTypeIPv4}, ip}, udpDgram(53, 40000)...)...)); v != verdictDrop {
					t.Errorf("udp from another host to the guest's port: verdict %d, want a drop", int32(v))
				}
			}
			// Slot 0 sent nothing: the replies to slot 1's flows are not its.
			if v := path.send(e, 0, udpDgram(53, 40000)...); v != verdictDrop && path.name == "nat" {
				t.Errorf("slot 1's udp reply to slot 0: verdict %d, want a drop", int32(v))
			}
		})
	}
}

func TestInboundRulesOpenTheGuest(t *testing.T) {
	for _, path := range inPaths() {
		t.Run(path.name, func(t *testing.T) {
			e := newEnv(t, 1)
			path.setup(e, 0)
			rules := []string{"tcp/8080", "udp/5300-5310," + path.remote.String() + "/32", "icmp,198.18.0.0/15"}
			if path.name == "geneve" {
				rules[2] = "icmp,10.9.0.0/24"
			}
			in, err := slot.ParseInboundSpecs(rules)
			if err != nil {
				t.Fatal(err)
			}
			// A lease's rules are written when it opens.
			e.dp.CloseLease(0)
			e.dp.OpenLease(0, in)
			cases := []inCase{
				{"tcp syn to 8080", []gopacket.SerializableLayer{tcpSeg(40000, 8080, "S")}, true},
				{"tcp syn to 8081", []gopacket.SerializableLayer{tcpSeg(40000, 8081, "S")}, false},
				{"udp to 5300", udpDgram(1234, 5300), true},
				{"udp to 5310", udpDgram(1234, 5310), true},
				{"udp to 5311", udpDgram(1234, 5311), false},
				{"tcp syn to 5300 (a udp rule)", []gopacket.SerializableLayer{tcpSeg(40000, 5300, "S")}, false},
				{"icmp echo request", icmpMsg(layers.ICMPv4TypeEchoRequest, 3, []byte("ping")), true},
			}
			for _, c := range cases {
				if v := path.send(e, 0, c.l4...); (v == verdictRedirect) != c.pass {
					t.Errorf("%s: verdict %d, want delivered=%t", c.what, int32(v), c.pass)
				}
			}
			// The same rules from a source outside their CIDR.
			e.dp.CloseLease(0)
			e.dp.OpenLease(0, []slot.InboundRule{{Proto: unix.IPPROTO_UDP, PortLo: 5300, PortHi: 5300,
				Src: netip.MustParsePrefix("203.0.113.0/24")}})
			if v := path.send(e, 0, udpDgram(1234, 5300)...); v != verdictDrop {
				t.Errorf("udp to 5300 from outside the rule's cidr: verdict %d, want a drop", int32(v))
			}
			// A new lease without rules is closed again.
			e.dp.CloseLease(0)
			e.dp.OpenLease(0, nil)
			if v := path.send(e, 0, tcpSeg(40000, 8080, "S")); v != verdictDrop {
				t.Errorf("tcp syn to 8080 after the rules went: verdict %d, want a drop", int32(v))
			}
		})
	}
}

func TestSlotWithoutLeaseNeitherSendsNorReceives(t *testing.T) {
	for _, path := range inPaths() {
		t.Run(path.name, func(t *testing.T) {
			e := newEnv(t, 2)
			path.setup(e, 1)
			e.sendVariants(1, path.remote)
			e.dp.CloseLease(1)
			none := e.cfg.Count
			before := e.stats(none).Drops["not_leased"]
			// Replies to flows of the lease that ended, and what a rule
			// would have let in: nothing reaches the slot.
			for _, l4 := range [][]gopacket.SerializableLayer{udpDgram(53, 40000), {tcpSeg(80, 40000, "PA")}} {
				if v := path.send(e, 1, l4...); v != verdictDrop {
					t.Errorf("to a closed slot: verdict %d, want a drop", int32(v))
				}
			}
			if v, _ := e.egress(guestFrame(t, e.cfg, path.remote, udpDgram(40000, 53)...), 1); v != verdictDrop {
				t.Errorf("from a closed slot: verdict %d, want a drop", int32(v))
			}
			// Counted as the pool's, not as the next tenant's.
			if got := e.stats(none).Drops["not_leased"] - before; got != 3 {
				t.Errorf("%d not_leased drops on the pool's entry, want 3", got)
			}
			if s := e.stats(1); s.Drops["not_leased"] != 0 {
				t.Errorf("slot 1 counted not_leased drops: %+v", s)
			}
			// Slot 0, still leased, is untouched.
			if v, _ := e.egress(guestFrame(t, e.cfg, outside, udpDgram(40000, 53)...), 0); v != verdictNext {
				t.Errorf("slot 0: verdict %d", int32(v))
			}
		})
	}
	// ARP through the tunnel for a closed slot's VPC address is not answered.
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	e.dp.CloseLease(0)
	req := serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: peerMAC, SourceProtAddress: vpcPeer.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: netip.MustParseAddr("10.9.0.5").AsSlice()})
	if v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 4242}, req)); v != verdictDrop {
		t.Errorf("ARP for a closed slot's VPC address: verdict %d, want a drop", int32(v))
	}
}

// The flow table is per slot and bounded; its entries age out, and
// ClearFlows forgets them.
func TestFlowTable(t *testing.T) {
	e := newEnv(t, 2)
	reply := func(i int, sport, dport uint16) uint32 {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(i).AsSlice()}
		v, _ := e.ingress(serialize(t, append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC,
			EthernetType: layers.EthernetTypeIPv4}, ip}, udpDgram(sport, dport)...)...))
		return v
	}
	// Slot 0 opens one flow; slot 1 opens far more than its table holds.
	e.egress(guestFrame(t, e.cfg, outside, udpDgram(40000, 53)...), 0)
	const many = 2000
	for p := range many {
		e.egress(guestFrame(t, e.cfg, outside, udpDgram(uint16(10000+p), 53)...), 1)
	}
	var fl datapathSlotFlows
	if err := e.dp.objs.Flows.Lookup(uint32(1), &fl); err != nil {
		t.Fatal(err)
	}
	used := 0
	for _, f := range fl.F {
		if f.Proto != 0 {
			used++
		}
	}
	if used != len(fl.F) {
		t.Errorf("%d flows sent, %d of %d entries used", many, used, len(fl.F))
	}
	if v := reply(1, 53, 10000+many-1); v != verdictRedirect {
		t.Errorf("reply to slot 1's latest flow: verdict %d", int32(v))
	}
	if v := reply(0, 53, 40000); v != verdictRedirect {
		t.Errorf("slot 1's flows evicted slot 0's: verdict %d", int32(v))
	}
	// An entry last refreshed longer ago than the timeout lets nothing in.
	if err := e.dp.objs.Flows.Lookup(uint32(0), &fl); err != nil {
		t.Fatal(err)
	}
	ttl, err := flowTTL()
	if err != nil {
		t.Fatal(err)
	}
	aged := 0
	for k := range fl.F {
		if fl.F[k].Proto != 0 {
			fl.F[k].Seen -= ttl + 1
			aged++
		}
	}
	if aged != 1 {
		t.Fatalf("slot 0 holds %d flows, want 1", aged)
	}
	if err := e.dp.objs.Flows.Update(uint32(0), &fl, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if v := reply(0, 53, 40000); v != verdictDrop {
		t.Errorf("reply to a flow idle for over 120 s: verdict %d, want a drop", int32(v))
	}
	e.egress(guestFrame(t, e.cfg, outside, udpDgram(40000, 53)...), 0)
	if v := reply(0, 53, 40000); v != verdictRedirect {
		t.Errorf("reply after the guest sent again: verdict %d", int32(v))
	}
	e.dp.ClearFlows(0)
	if v := reply(0, 53, 40000); v != verdictDrop {
		t.Errorf("reply after ClearFlows: verdict %d, want a drop", int32(v))
	}
	// A lease that opens starts from an empty table, whatever a packet in
	// flight at the last release wrote.
	e.egress(guestFrame(t, e.cfg, outside, udpDgram(40000, 53)...), 0)
	e.dp.CloseLease(0)
	e.dp.OpenLease(0, nil)
	if v := reply(0, 53, 40000); v != verdictDrop {
		t.Errorf("reply to a flow of the last lease: verdict %d, want a drop", int32(v))
	}
}

// A flow belongs to the path it left by: the peer's reply through the NAT
// does not answer a flow sent through the tunnel, nor the reverse.
func TestFlowsAreBoundToTheirPath(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	peer := netip.MustParseAddr("10.9.0.1")
	e.egress(guestFrame(t, e.cfg, peer, udpDgram(40000, 53)...), 0) // through the tunnel
	natReply := func() uint32 {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: peer.AsSlice(), DstIP: e.cfg.SlotIP(0).AsSlice()}
		v, _ := e.ingress(serialize(t, append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC,
			EthernetType: layers.EthernetTypeIPv4}, ip}, udpDgram(53, 40000)...)...))
		return v
	}
	tunnelReply := func() uint32 {
		v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 4242}, innerIPv4(t, e.cfg.VPCMAC(0), peer.String(), "10.9.0.5", udpDgram(53, 40000)...)))
		return v
	}
	if v := tunnelReply(); v != verdictRedirect {
		t.Errorf("reply through the tunnel: verdict %d", int32(v))
	}
	if v := natReply(); v != verdictDrop {
		t.Errorf("the VPC peer's address through the NAT: verdict %d, want a drop", int32(v))
	}
}

// The pool's deny set stops NATed traffic, and spares the slot's VPC,
// whose CIDRs may overlap it.
func TestDenySetSparesTheVPC(t *testing.T) {
	e := newEnv(t, 2)
	e.attach(1, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	e.dp.cfg.Deny = append(slices.Clone(FixedDeny), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("198.19.1.0/24"))
	if err := e.dp.writeDeny(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		slot int
		dst  string
		want uint32
	}{
		{"NAT to an operator's range", 0, "198.19.1.1", verdictDrop},
		{"NAT to instance metadata", 0, "169.254.169.254", verdictDrop},
		{"NAT to 10/8 (no VPC)", 0, "10.9.0.1", verdictDrop},
		{"NAT outside the deny set", 0, "198.19.2.1", verdictNext},
		{"the VPC inside 10/8", 1, "10.9.0.1", verdictRedirect},
		{"NAT from a VPC slot to 10/8 outside its VPC", 1, "10.10.0.1", verdictDrop},
	} {
		before := e.stats(c.slot).Drops["egress_denied"]
		v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr(c.dst), udpDgram(40000, 53)...), c.slot)
		d := e.stats(c.slot).Drops["egress_denied"] - before
		if v != c.want || (c.want == verdictDrop) != (d == 1) {
			t.Errorf("%s: verdict %d, egress_denied +%d; want verdict %d", c.what, int32(v), d, int32(c.want))
		}
	}
	// A smaller set takes effect whole: what it no longer holds passes.
	e.dp.cfg.Deny = FixedDeny
	if err := e.dp.writeDeny(); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("198.19.1.1"), udpDgram(40000, 53)...), 0); v != verdictNext {
		t.Errorf("after the operator's range went: verdict %d", int32(v))
	}
}

// A guest's packet that claims the underlay address as source and looks
// like a tunnel packet is not taken for one of netslot's own.
func TestEgressUnderlaySourceIsSpoofing(t *testing.T) {
	e := newEnv(t, 1)
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: underlay.AsSlice(), DstIP: vtep.AsSlice()}
	pkt := serialize(t, &layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 50000, DstPort: 6081}, gopacket.Payload(make([]byte, 30)))
	before := e.stats(0).Drops["egress_spoof"]
	if v, _ := e.egress(pkt, 0); v != verdictDrop {
		t.Errorf("guest packet from the underlay address to 6081: verdict %d, want a drop", int32(v))
	}
	if got := e.stats(0).Drops["egress_spoof"] - before; got != 1 {
		t.Errorf("%d egress_spoof drops, want 1", got)
	}
	// What the program itself encapsulated carries its mark, which only
	// the root namespace can set: that passes (and leaves unmarked).
	out := make([]byte, len(pkt)+512)
	ctxOut := make([]byte, 256) // the whole struct __sk_buff; mark is its third word
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: skbCtx{IngressIfindex: uint32(e.hosts[0]), Mark: encapMark}, ContextOut: ctxOut}
	v, err := e.dp.objs.UplinkEgress.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	if mark := binary.NativeEndian.Uint32(ctxOut[8:]); v != verdictNext || mark != 0 {
		t.Errorf("encapsulated packet on its second pass: verdict %d, mark %#x after, want TCX_NEXT and no mark", int32(v), mark)
	}
}

// Bytes after the outer packet (Ethernet padding, a trailer) are not the
// inner packet's, and a UDP length past the IPv4 packet is refused.
func TestGeneveBoundedByOuterLengths(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	e.sendVariants(0, vpcPeer)
	inner := innerIPv4(t, e.cfg.VPCMAC(0), vpcPeer.String(), "10.9.0.5", udpDgram(53, 40000)...)
	innerLen := 14 + int(binary.BigEndian.Uint16(inner[16:18]))
	trailer := append(geneveFrame(t, gnvOpts{vni: 4242}, inner), []byte("TRAILER-NOT-INNER")...)
	v, out := e.ingress(trailer)
	if v != verdictRedirect {
		t.Fatalf("with a trailer: verdict %d", int32(v))
	}
	if len(out) != innerLen {
		t.Errorf("delivered %d bytes, want the inner packet's %d", len(out), innerLen)
	}
	checkIPv4(t, "trimmed", out[14:])

	// The inner IPv4 length runs one byte into the trailer: the tunnel did
	// not carry that byte.
	long := geneveFrame(t, gnvOpts{vni: 4242}, inner)
	binary.BigEndian.PutUint16(long[14+20+8+8+14+2:], uint16(len(inner)-14+1))
	long = append(long, make([]byte, 10)...)
	before := e.total("geneve_truncated")
	if v, _ := e.ingress(long); v != verdictDrop || e.total("geneve_truncated") != before+1 {
		t.Errorf("inner packet longer than the tunnel packet: verdict %d, want a geneve_truncated drop", int32(v))
	}
	// An outer UDP length past the outer IPv4 packet.
	bad := geneveFrame(t, gnvOpts{vni: 4242}, inner)
	binary.BigEndian.PutUint16(bad[38:40], uint16(len(bad)-34+8))
	bad = append(bad, make([]byte, 8)...)
	before = e.total("geneve_truncated")
	if v, _ := e.ingress(bad); v != verdictDrop || e.total("geneve_truncated") != before+1 {
		t.Errorf("udp length past the IPv4 packet: verdict %d, want a geneve_truncated drop", int32(v))
	}
}
