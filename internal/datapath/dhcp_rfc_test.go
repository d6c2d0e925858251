package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testpacket"
)

// guestDHCP is a guest's DHCP message of type typ (its option 53 first),
// then opts.
func guestDHCP(mac net.HardwareAddr, typ layers.DHCPMsgType, opts ...layers.DHCPOption) *layers.DHCPv4 {
	return &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6, Xid: 0x5eed,
		ClientHWAddr: mac, Options: append([]layers.DHCPOption{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(typ)})}, opts...)}
}

// dhcpFrameOf frames d as a guest sends it (0.0.0.0:68 to
// 255.255.255.255:67, checksums computed); edit may change the headers
// first.
func dhcpFrameOf(t testing.TB, mac net.HardwareAddr, d *layers.DHCPv4, edit func(*layers.IPv4, *layers.UDP)) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	if edit != nil {
		edit(ip, udp)
	}
	return serialize(t, &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}, ip, udp, d)
}

// rawOptions encodes options as they sit in a field (sname, file),
// End included.
func rawOptions(opts ...layers.DHCPOption) []byte {
	var b []byte
	for _, o := range opts {
		b = append(b, byte(o.Type), byte(len(o.Data)))
		b = append(b, o.Data...)
	}
	return append(b, 255)
}

// dhcpAnswer decodes the program's answer with gopacket and checks it as
// a strict client would: IPv4 and UDP checksums, the checksum's
// completion a no-op (the answer may be CHECKSUM_PARTIAL), a well-formed
// options field with only pad after its End option, and the checksum's
// fix word inside a well-formed option, DHCPFixOption, before End.
func dhcpAnswer(t *testing.T, what string, out []byte) *layers.DHCPv4 {
	t.Helper()
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	d, _ := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
	if ip == nil || udp == nil || d == nil {
		t.Fatalf("%s: the answer does not decode: %v", what, p)
	}
	if int(ip.Length) != len(out)-14 || int(udp.Length) != len(out)-14-20 || (len(out)-14-20-8)%4 != 0 {
		t.Errorf("%s: %d bytes, IPv4 length %d, UDP length %d", what, len(out), ip.Length, udp.Length)
	}
	checkIPv4(t, what, out[14:])
	if udp.Checksum == 0 {
		t.Errorf("%s: no UDP checksum", what)
	}
	if got := testpacket.Checksum(out[14+20:], 0); got != udp.Checksum {
		t.Errorf("%s: completing the checksum would write %#04x over %#04x", what, got, udp.Checksum)
	}
	codes, err := testpacket.CheckDHCPOptions(out[14+20+8+240:])
	if err != nil {
		t.Errorf("%s: options field: %v", what, err)
	}
	var fix int
	for _, o := range d.Options {
		if o.Type == layers.DHCPOpt(dpconst.DHCPFixOption) {
			fix++
			if len(o.Data) != 2 {
				t.Errorf("%s: the fix option carries %d bytes", what, len(o.Data))
			}
		}
	}
	if fix != 1 {
		t.Errorf("%s: %d fix options (codes %v)", what, fix, codes)
	}
	return d
}

// option returns d's option o.
func option(d *layers.DHCPv4, o layers.DHCPOpt) ([]byte, bool) {
	for _, x := range d.Options {
		if x.Type == o {
			return x.Data, true
		}
	}
	return nil, false
}

func msgType(d *layers.DHCPv4) layers.DHCPMsgType {
	if b, ok := option(d, layers.DHCPOptMessageType); ok && len(b) == 1 {
		return layers.DHCPMsgType(b[0])
	}
	return 0
}

// What real clients send, against RFC 2131/2132: long options (read to
// the End option, not 256 bytes), options in file and sname (option 52),
// the client identifier echoed (RFC 6842), and only pad after an
// answer's End option. Each request is parsed back from the answer with
// gopacket.
func TestTapDHCPReadsWhatClientsSend(t *testing.T) {
	e := newEnv(t, 2)
	tap := e.slotSide(1)
	if err := e.dp.SetDHCP(1, DHCP{MTU: 1500, Hostname: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	mac, gw, guest := e.cfg.GuestMAC, e.cfg.GatewayIP().AsSlice(), e.cfg.GuestIP().AsSlice()
	long := func(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }
	opt := layers.NewDHCPOption
	cid := append([]byte{1}, mac...)
	longCID := append([]byte{0xff}, long(254, 0xc1)...)
	// A message that fills a 1500-byte frame: options up to 1472 bytes
	// of BOOTP message, the type last.
	fill := func() *layers.DHCPv4 {
		d := guestDHCP(mac, layers.DHCPMsgTypeDiscover)
		d.Options = nil
		for range 4 {
			d.Options = append(d.Options, opt(layers.DHCPOptVendorOption, long(255, 'v')))
		}
		left := dpconst.DHCPMessageMax - 240 - 4*257 - 3 - 1 // less the type and End
		d.Options = append(d.Options, opt(layers.DHCPOptDomainName, long(left-2, 'd')),
			opt(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeDiscover)}))
		return d
	}
	overload := func(typ layers.DHCPMsgType, v byte, file, sname []byte, opts ...layers.DHCPOption) *layers.DHCPv4 {
		d := guestDHCP(mac, typ, append(opts, opt(layers.DHCPOptExtOptions, []byte{v}))...)
		if typ == 0 {
			d.Options = d.Options[1:]
		}
		d.File, d.ServerName = file, sname
		return d
	}
	for _, c := range []struct {
		name string
		d    *layers.DHCPv4
		want layers.DHCPMsgType
		cid  []byte // the client identifier echoed
	}{
		// ISC dhclient with `send host-name` (60 bytes) and `send
		// vendor-class-identifier` (200 bytes): no answer before.
		{"host-name 60, vendor class 200", guestDHCP(mac, layers.DHCPMsgTypeDiscover, opt(layers.DHCPOptHostname, long(60, 'h')),
			opt(layers.DHCPOptClassID, long(200, 'c')), opt(layers.DHCPOptParamsRequest, []byte{1, 3, 6, 12, 26})), layers.DHCPMsgTypeOffer, nil},
		{"host-name 255", guestDHCP(mac, layers.DHCPMsgTypeDiscover, opt(layers.DHCPOptHostname, long(255, 'h'))), layers.DHCPMsgTypeOffer, nil},
		{"type after 300 bytes", func() *layers.DHCPv4 {
			d := guestDHCP(mac, layers.DHCPMsgTypeRequest, opt(layers.DHCPOptHostname, long(255, 'h')), opt(layers.DHCPOptClassID, long(60, 'c')),
				opt(layers.DHCPOptServerID, gw), opt(layers.DHCPOptRequestIP, guest))
			d.Options = append(d.Options[1:], d.Options[0])
			return d
		}(), layers.DHCPMsgTypeAck, nil},
		{"a full frame's message", fill(), layers.DHCPMsgTypeOffer, nil},
		// Option overload (RFC 2132 9.3): a REQUEST whose requested
		// address and server identifier are in file (NAKed before), a
		// DISCOVER whose type is in file or sname (dropped before).
		{"request: 50 and 54 in file", overload(layers.DHCPMsgTypeRequest, 1,
			rawOptions(opt(layers.DHCPOptRequestIP, guest), opt(layers.DHCPOptServerID, gw)), nil), layers.DHCPMsgTypeAck, nil},
		{"discover: 53 in file", overload(0, 1, rawOptions(opt(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeDiscover)})), nil),
			layers.DHCPMsgTypeOffer, nil},
		{"discover: 53 in sname", overload(0, 2, nil, rawOptions(opt(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeDiscover)}))),
			layers.DHCPMsgTypeOffer, nil},
		{"request: 54 in file, 50 in sname", overload(layers.DHCPMsgTypeRequest, 3,
			rawOptions(opt(layers.DHCPOptServerID, gw)), rawOptions(opt(layers.DHCPOptRequestIP, guest))), layers.DHCPMsgTypeAck, nil},
		// The client identifier (RFC 6842): echoed unmodified, wherever
		// the request carried it.
		{"client id", guestDHCP(mac, layers.DHCPMsgTypeDiscover, opt(layers.DHCPOptClientID, cid)), layers.DHCPMsgTypeOffer, cid},
		{"client id of 255 bytes", guestDHCP(mac, layers.DHCPMsgTypeRequest, opt(layers.DHCPOptClientID, longCID),
			opt(layers.DHCPOptRequestIP, guest)), layers.DHCPMsgTypeAck, longCID},
		{"client id in file", overload(layers.DHCPMsgTypeDiscover, 1, rawOptions(opt(layers.DHCPOptClientID, cid)), nil), layers.DHCPMsgTypeOffer, cid},
		{"client id, NAK", guestDHCP(mac, layers.DHCPMsgTypeRequest, opt(layers.DHCPOptClientID, cid),
			opt(layers.DHCPOptRequestIP, []byte{172, 16, 9, 9})), layers.DHCPMsgTypeNak, cid},
	} {
		// In the test's goroutine: its thread is in the env's namespace.
		func() {
			e.dp.CloseLease(1) // a fresh lease each, with its full answer rate
			e.dp.OpenLease(1, nil)
			f := dhcpFrameOf(t, mac, c.d, nil)
			v, out := e.tapRun(tap, f)
			if v != verdictRedirect {
				t.Errorf("%s: a %d-byte frame: verdict %d, want an answer (drops %v)", c.name, len(f), int32(v), e.stats(1).Drops)
				return
			}
			d := dhcpAnswer(t, c.name, out)
			if got := msgType(d); got != c.want {
				t.Errorf("%s: answered with %s, want %s", c.name, got, c.want)
			}
			got, ok := option(d, layers.DHCPOptClientID)
			if c.cid == nil && ok {
				t.Errorf("%s: client id %x in the answer, none asked", c.name, got)
			}
			if c.cid != nil && !bytes.Equal(got, c.cid) {
				t.Errorf("%s: client id %x in the answer, want %x", c.name, got, c.cid)
			}
			if c.want != layers.DHCPMsgTypeNak {
				if h, _ := option(d, layers.DHCPOptHostname); string(h) != "vm-1" || d.YourClientIP.String() != e.cfg.GuestIP().String() {
					t.Errorf("%s: answer gives %s, hostname %q", c.name, d.YourClientIP, h)
				}
			}
			// An answer without a client identifier fits what every client
			// takes: 576 bytes of IPv4 (RFC 2131 2).
			if c.cid == nil && len(out)-14 > 576 {
				t.Errorf("%s: an answer of %d bytes of IPv4", c.name, len(out)-14)
			}
		}()
	}

	// Too long for a 1500-byte tap, or options that run past their field
	// or an overload that names no field: malformed, not guessed at.
	tooLong := fill()
	tooLong.Options[4].Data = append(tooLong.Options[4].Data, 'd')
	tooLong.Options[4].Length++
	past := dhcpFrameOf(t, mac, guestDHCP(mac, layers.DHCPMsgTypeDiscover, opt(layers.DHCPOptHostname, long(20, 'h'))), nil)
	past = past[:len(past)-1-15] // the End and the host-name's last 15 bytes cut...
	binary.BigEndian.PutUint16(past[16:], uint16(len(past)-14))
	binary.BigEndian.PutUint16(past[38:], uint16(len(past)-34))
	testpacket.FixChecksums(past) // ...with lengths and checksums that agree
	for name, f := range map[string][]byte{
		"longer than a tap's frame": dhcpFrameOf(t, mac, tooLong, nil),
		"option past the message":   past,
		"overload 0":                dhcpFrameOf(t, mac, overload(layers.DHCPMsgTypeDiscover, 0, nil, nil), nil),
		"overload 4":                dhcpFrameOf(t, mac, overload(layers.DHCPMsgTypeDiscover, 4, nil, nil), nil),
		"type in file, no overload": dhcpFrameOf(t, mac, func() *layers.DHCPv4 {
			d := overload(0, 1, rawOptions(opt(layers.DHCPOptMessageType, []byte{1})), nil)
			d.Options = []layers.DHCPOption{opt(layers.DHCPOptHostname, []byte("x"))}
			return d
		}(), nil),
	} {
		before := e.stats(1).Drops["dhcp_malformed"]
		if v, _ := e.tapRun(tap, f); v != verdictDrop {
			t.Errorf("%s: verdict %d, want a drop", name, int32(v))
		}
		if got := e.stats(1).Drops["dhcp_malformed"]; got != before+1 {
			t.Errorf("%s: dhcp_malformed %d, want %d", name, got, before+1)
		}
	}
}

// The IPv4 and UDP headers are checked as the kernel's receive path
// checks them, and what it would drop is dropped and counted with a
// reason of its own; as are relayed requests (which cannot come from a
// guest) and DECLINE.
func TestTapDHCPChecksHeaders(t *testing.T) {
	e := newEnv(t, 2)
	tap := e.slotSide(1)
	if err := e.dp.SetDHCP(1, DHCP{MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	mac := e.cfg.GuestMAC
	discover := func() []byte { return dhcpFrameOf(t, mac, guestDHCP(mac, layers.DHCPMsgTypeDiscover), nil) }
	edit := func(f []byte, fn func(f []byte), fix bool) []byte {
		fn(f)
		if fix {
			testpacket.FixChecksums(f)
		}
		return f
	}
	setIPLen := func(d int) func([]byte) {
		return func(f []byte) { binary.BigEndian.PutUint16(f[16:], uint16(int(binary.BigEndian.Uint16(f[16:]))+d)) }
	}
	setUDPLen := func(n int) func([]byte) { return func(f []byte) { binary.BigEndian.PutUint16(f[38:], uint16(n)) } }
	// A guest that leaves its checksum to offload (virtio, a UDP socket)
	// sends the pseudo-header's sum in its place.
	partial := discover()
	binary.BigEndian.PutUint16(partial[40:], ^testpacket.Checksum(nil, testpacket.UDPPseudoSum(partial)))
	// The UDP length shorter than the IPv4 payload: the kernel trims the
	// datagram to it (udp_rcv), and so does the answer.
	trailing := edit(append(discover(), 0xde, 0xad, 0xbe, 0xef), func(f []byte) { setIPLen(4)(f) }, true)
	for _, c := range []struct {
		name   string
		frame  []byte
		reason string // "": answered
	}{
		{"valid", discover(), ""},
		{"no UDP checksum", edit(discover(), func(f []byte) { f[40], f[41] = 0, 0 }, false), ""},
		{"checksum left to offload", partial, ""},
		{"trailing bytes past the UDP length", trailing, ""},
		{"bad IPv4 checksum", edit(discover(), func(f []byte) { f[24] ^= 0x01 }, false), "dhcp_bad_ip_checksum"},
		{"bad UDP checksum", edit(discover(), func(f []byte) { f[40] ^= 0x10 }, false), "dhcp_bad_udp_checksum"},
		{"payload changed under its checksum", edit(discover(), func(f []byte) { f[14+20+8+4] ^= 0x01 }, false), "dhcp_bad_udp_checksum"},
		{"IPv4 length past the frame", edit(discover(), setIPLen(4), true), "dhcp_bad_length"},
		{"IPv4 length short of its UDP", edit(discover(), setIPLen(-4), true), "dhcp_bad_length"},
		{"UDP length past the IPv4 payload", edit(discover(), func(f []byte) { setUDPLen(len(f) - 34 + 2)(f) }, false), "dhcp_bad_length"},
		{"UDP length below its header", edit(discover(), setUDPLen(7), false), "dhcp_bad_length"},
		{"relayed: giaddr", dhcpFrameOf(t, mac, func() *layers.DHCPv4 {
			d := guestDHCP(mac, layers.DHCPMsgTypeDiscover)
			d.RelayAgentIP = net.IPv4(198, 18, 0, 9)
			return d
		}(), nil), "dhcp_relayed"},
		{"relayed: from port 67", dhcpFrameOf(t, mac, guestDHCP(mac, layers.DHCPMsgTypeDiscover),
			func(_ *layers.IPv4, u *layers.UDP) { u.SrcPort = 67 }), "dhcp_relayed"},
		{"decline", dhcpFrameOf(t, mac, guestDHCP(mac, layers.DHCPMsgTypeDecline,
			layers.NewDHCPOption(layers.DHCPOptRequestIP, e.cfg.GuestIP().AsSlice()),
			layers.NewDHCPOption(layers.DHCPOptServerID, e.cfg.GatewayIP().AsSlice())), nil), "dhcp_declined"},
	} {
		// In the test's goroutine: its thread is in the env's namespace.
		func() {
			before := e.stats(1)
			v, out := e.tapRun(tap, c.frame)
			after := e.stats(1)
			if c.reason == "" {
				if v != verdictRedirect {
					t.Errorf("%s: verdict %d, want an answer (drops %v)", c.name, int32(v), after.Drops)
					return
				}
				if d := dhcpAnswer(t, c.name, out); msgType(d) != layers.DHCPMsgTypeOffer {
					t.Errorf("%s: answered with %s", c.name, msgType(d))
				}
				return
			}
			if v != verdictDrop {
				t.Errorf("%s: verdict %d, want a drop", c.name, int32(v))
			}
			if got := after.Drops[c.reason] - before.Drops[c.reason]; got != 1 || after.DHCPReplies != before.DHCPReplies {
				t.Errorf("%s: %s counted %d, want 1; %d answers (drops %v)", c.name, c.reason, got, after.DHCPReplies-before.DHCPReplies, after.Drops)
			}
		}()
	}
}

// One guest's flood is answered at the slot's rate: a burst, then one
// answer per interval; what is refused is counted; the next lease starts
// with a full bucket.
func TestTapDHCPRateLimit(t *testing.T) {
	e := newEnv(t, 2)
	tap := e.slotSide(1)
	if err := e.dp.SetDHCP(1, DHCP{MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	f := dhcpFrameOf(t, e.cfg.GuestMAC, guestDHCP(e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover), nil)
	const flood = 1000
	answered := 0
	start := time.Now()
	for range flood {
		if v, _ := e.tapRun(tap, f); v == verdictRedirect {
			answered++
		}
	}
	took := time.Since(start)
	// At most the burst and what the time taken refilled (one more for a
	// refill in progress); at least the burst.
	most := dpconst.DHCPBurst + int(took/(dpconst.DHCPIntervalNs*time.Nanosecond)) + 1
	if answered < dpconst.DHCPBurst || answered > most {
		t.Errorf("%d of %d DISCOVERs answered in %v: want %d to %d", answered, flood, took, dpconst.DHCPBurst, most)
	}
	s := e.stats(1)
	if int(s.DHCPReplies) != answered || int(s.Drops["dhcp_rate_limited"]) != flood-answered {
		t.Errorf("counted %d answers, %d rate_limited; want %d, %d", s.DHCPReplies, s.Drops["dhcp_rate_limited"], answered, flood-answered)
	}
	// The bucket refills: an answer again within a few intervals.
	if !waitFor(100*dpconst.DHCPIntervalNs*time.Nanosecond, func() bool { v, _ := e.tapRun(tap, f); return v == verdictRedirect }) {
		t.Error("no answer after the bucket had time to refill")
	}
	// Drained again, then the next lease: a full burst at once.
	for range 2 * dpconst.DHCPBurst {
		e.tapRun(tap, f)
	}
	e.dp.CloseLease(1)
	e.dp.OpenLease(1, nil)
	for k := range dpconst.DHCPBurst {
		if v, _ := e.tapRun(tap, f); v != verdictRedirect {
			t.Fatalf("next lease: request %d refused (drops %v)", k+1, e.stats(1).Drops)
		}
	}
}

// waitFor polls cond until it holds or limit passes.
func waitFor(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); ; time.Sleep(limit / 50) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// The DHCP program reads a request's message up to what a frame of the
// tap's MTU holds: the constant it is built with is that.
func TestDHCPMessageMaxIsTheTapsFrame(t *testing.T) {
	if want := slot.GuestMTU - 20 - 8; dpconst.DHCPMessageMax != want {
		t.Errorf("DHCPMessageMax %d, want %d (the tap's MTU less IPv4 and UDP headers)", dpconst.DHCPMessageMax, want)
	}
}
