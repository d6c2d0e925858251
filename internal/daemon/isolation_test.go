package daemon_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testpacket"
	"github.com/netslot/netslot/internal/testutil"
)

// TestIsolationMatrix tries, with real packets, everything a guest or the
// fabric might use to reach what is not theirs. Every cell is a subtest;
// the matrix is printed (and written to $NETSLOT_MATRIX_OUT if set). Each
// cell that must be blocked is checked to have been blocked where the
// design says (a drop counter, a kernel counter that did not move, a
// neighbour entry that was not made), next to a control cell that shows
// the same probe passing where it is allowed.
func TestIsolationMatrix(t *testing.T) {
	p, fab, tag := datapathPool(t, 4)
	serveOutside(t, fab)
	// A cloud's instance metadata service, answered on the fabric: a guest
	// that reached it would get its replies.
	metadata := netip.MustParseAddr("169.254.169.254")
	testutil.Exec(t, fab.Name, "ip", "addr", "add", metadata.String()+"/32", "dev", "lo")
	// Another host behind the fabric's gateway, off slot A's allow-list.
	fabricHost := netip.MustParseAddr("198.19.1.2")
	testutil.Exec(t, fab.Name, "ip", "addr", "add", fabricHost.String()+"/32", "dev", "lo")
	att := func(vni uint32, ip string) *slot.Attachment { return vpcAttachment(t, fab, vni, ip) }
	inbound, err := slot.ParseInboundSpecs([]string{"tcp/8080", "udp/5555,10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	// Slot A may only reach the outside host and serves TCP 8080 (from
	// anywhere) and UDP 5555 (to its VPC); slot B has no policy at all;
	// slot C may send nowhere.
	a, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: att(100, "10.9.0.5"), Egress: slot.Egress{Allow: []netip.Prefix{netip.PrefixFrom(fab.Outside, 32)}},
		Inbound: inbound})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: att(200, "10.9.0.6")})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{DenyAll: true}})
	if err != nil {
		t.Fatal(err)
	}
	pooled := 6 - a.Index - b.Index - c.Index // the slot nobody holds
	ga := testutil.NewGuestNS(t, tag+"a", p.Config.NetnsPath(a.Index), p.Config)
	gb := testutil.NewGuestNS(t, tag+"b", p.Config.NetnsPath(b.Index), p.Config)
	gc := testutil.NewGuestNS(t, tag+"c", p.Config.NetnsPath(c.Index), p.Config)
	nsA := p.Config.ID(a.Index)

	// A host service listening on every address of the root namespace
	// (the worst case of the daemon's metrics endpoint, which listens on
	// loopback only).
	hostSvc, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostSvc.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := hostSvc.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	svcPort := uint16(hostSvc.Addr().(*net.TCPAddr).Port)

	type cell struct {
		from, to, want, got string
	}
	var cells []cell
	check := func(from, to string, allowed bool, probe func(t *testing.T) (bool, string)) {
		t.Run(from+" to "+to, func(t *testing.T) {
			passed, evidence := probe(t)
			want, got := "blocked", "blocked"
			if allowed {
				want = "allowed"
			}
			if passed {
				got = "passed"
			}
			cells = append(cells, cell{from, to, want, got + ": " + evidence})
			if passed != allowed {
				t.Errorf("%s to %s: %s, want %s (%s)", from, to, got, want, evidence)
			}
		})
	}
	pings := func(g *testutil.GuestNS, dst netip.Addr) func(*testing.T) (bool, string) {
		return func(t *testing.T) (bool, string) {
			n := ping(t, g.Name, dst, 2)
			return n > 0, fmt.Sprintf("%d of 2 echo replies", n)
		}
	}
	drops := func(t *testing.T, slotID, reason string) uint64 {
		info, err := p.D.Get(slotID)
		if err != nil || info.Datapath == nil {
			t.Fatalf("get %s: %v", slotID, err)
		}
		return info.Datapath.Drops[reason]
	}

	check("guest A", "the outside host (allow-listed)", true, pings(ga, fab.Outside))
	check("guest A", "a fabric host (not allow-listed)", false, pings(ga, fabricHost))
	check("guest B", "a fabric host (no policy)", true, pings(gb, fabricHost))
	check("guest B", "the outside host (no policy)", true, pings(gb, fab.Outside))
	check("guest C", "the outside host (deny-all)", false, pings(gc, fab.Outside))
	// The pool's deny set holds whatever the lease says.
	fabricEchos := func(t *testing.T) int { return snmp(t, fab.Name, "Icmp", "InEchos") }
	denied := func(g *testutil.GuestNS, id string, dst netip.Addr) func(*testing.T) (bool, string) {
		return func(t *testing.T) (bool, string) {
			before, dropsBefore := fabricEchos(t), drops(t, id, "egress_denied")
			n := ping(t, g.Name, dst, 2)
			got, d := fabricEchos(t)-before, drops(t, id, "egress_denied")-dropsBefore
			if n == 0 && got == 0 && d != 2 {
				t.Errorf("blocked, but egress_denied drops +%d, want +2", d)
			}
			return n > 0 || got > 0, fmt.Sprintf("%d of 2 echo replies; the fabric received %d echo requests; egress_denied drops +%d", n, got, d)
		}
	}
	check("guest B", "the link-local metadata address 169.254.169.254 (no policy)", false, denied(gb, b.ID, metadata))
	check("guest B", "the fabric gateway, on the underlay's subnet (no policy)", false, denied(gb, b.ID, fab.Gateway))
	check("guest B", "the VTEP's underlay address (no policy)", false, denied(gb, b.ID, fab.VTEP))
	// Guest B has no egress policy: only the datapath stands between it
	// and slot A (guest A's policy would stop it first).
	check("guest B", "slot A's address", false, func(t *testing.T) (bool, string) {
		before := drops(t, b.ID, "slot_to_slot")
		n := ping(t, gb.Name, p.Config.SlotIP(a.Index), 2)
		d := drops(t, b.ID, "slot_to_slot") - before
		if n == 0 && d == 0 {
			t.Errorf("blocked, but not by the datapath's slot_to_slot check")
		}
		return n > 0, fmt.Sprintf("%d replies, slot_to_slot drops +%d", n, d)
	})
	// The host, from guest B: no egress policy of its own, only the root
	// namespace's rules and routing stand in the way.
	check("guest B", "the host's underlay address", false, pings(gb, fab.Underlay))
	check("guest B", "the host end of its veth", false, pings(gb, slot.HostGateway))
	for _, dst := range []netip.Addr{slot.HostGateway, fab.Underlay} {
		check("guest B", fmt.Sprintf("a host TCP service on all addresses (%s)", dst), false, func(t *testing.T) (bool, string) {
			before := accepted.Load()
			var err error
			gb.Do(func() error {
				var c net.Conn
				c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(dst, svcPort).String(), time.Second)
				if err == nil {
					c.Close()
				}
				return nil
			})
			time.Sleep(100 * time.Millisecond)
			n := accepted.Load() - before
			var ne net.Error
			if n == 0 && errors.As(err, &ne) && ne.Timeout() {
				return false, "no answer, nothing accepted"
			}
			return true, fmt.Sprintf("connect: %v, %d accepted", err, n)
		})
	}

	// Frames a guest forges: sent raw on its own device, into tap0.
	guestMAC := p.Config.GuestMAC
	gwMAC := p.Config.TapMAC
	check("guest A", "its gateway with another source MAC", false, func(t *testing.T) (bool, string) {
		before := snmp(t, nsA, "Ip", "InReceives")
		sendRaw(t, ga, icmpEcho(net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}, gwMAC, p.Config.GuestIP(), p.Config.GatewayIP()))
		n := snmp(t, nsA, "Ip", "InReceives") - before
		return n > 0, fmt.Sprintf("slot IP InReceives +%d", n)
	})
	check("guest A", "its gateway with its own MAC (control)", true, func(t *testing.T) (bool, string) {
		before := snmp(t, nsA, "Ip", "InReceives")
		sendRaw(t, ga, icmpEcho(guestMAC, gwMAC, p.Config.GuestIP(), p.Config.GatewayIP()))
		n := snmp(t, nsA, "Ip", "InReceives") - before
		return n > 0, fmt.Sprintf("slot IP InReceives +%d", n)
	})
	check("guest A", "its gateway from another IPv4 source", false, func(t *testing.T) (bool, string) {
		before := snmp(t, nsA, "Ip", "InReceives")
		sendRaw(t, ga, icmpEcho(guestMAC, gwMAC, netip.MustParseAddr("10.77.0.2"), p.Config.GatewayIP()))
		n := snmp(t, nsA, "Ip", "InReceives") - before
		return n > 0, fmt.Sprintf("slot IP InReceives +%d", n)
	})
	entry := func(t *testing.T) string {
		return strings.TrimSpace(testutil.Exec(t, nsA, "ip", "neigh", "show", p.Config.GuestIP().String()))
	}
	check("guest A", "the slot's ARP table, as itself (control)", true, func(t *testing.T) (bool, string) {
		testutil.Exec(t, nsA, "ip", "neigh", "flush", "dev", slot.TapName)
		sendRaw(t, ga, arpRequest(guestMAC, guestMAC, p.Config.GuestIP(), p.Config.GatewayIP()))
		time.Sleep(200 * time.Millisecond)
		e := entry(t)
		return strings.Contains(e, guestMAC.String()), fmt.Sprintf("neighbour entry %q", e)
	})
	fake := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	check("guest A", "the slot's ARP table, the guest address claimed for another MAC", false, func(t *testing.T) (bool, string) {
		sendRaw(t, ga, arpRequest(guestMAC, fake, p.Config.GuestIP(), p.Config.GatewayIP()))
		time.Sleep(200 * time.Millisecond)
		e := entry(t)
		return strings.Contains(e, fake.String()), fmt.Sprintf("neighbour entry %q", e)
	})
	for _, v6 := range []struct {
		name string
		typ  byte
	}{{"an IPv6 router advertisement", 134}, {"an IPv6 neighbour solicitation", 135}} {
		check("guest A", v6.name, false, func(t *testing.T) (bool, string) {
			before := snmp6(t, nsA, "Ip6InReceives")
			sendRaw(t, ga, icmp6(guestMAC, v6.typ))
			n := snmp6(t, nsA, "Ip6InReceives") - before
			return n > 0, fmt.Sprintf("slot Ip6InReceives +%d", n)
		})
	}

	// Geneve from the fabric.
	for _, g := range []struct {
		what, reason string
		vni          uint32
		dst          string
	}{
		{"an unknown VNI", "unknown_vni", 999, "10.9.0.5"},
		{fmt.Sprintf("slot %d's dummy VNI", pooled), "dummy_vni", slot.DummyVNIBase + uint32(pooled), "10.9.0.5"},
		{"slot A's VNI with slot B's inner address", "unknown_dst", 100, "10.9.0.6"},
	} {
		check("the fabric", "a slot, Geneve with "+g.what, false, func(t *testing.T) (bool, string) {
			before := p.D.UnattributedDrops()[g.reason]
			rx := slotRx(t, p, a.ID) + slotRx(t, p, b.ID)
			sendGeneve(t, fab, g.vni, testutil.InnerUDP(vpcMAC, p.Config.VPCMAC(a.Index), vpcHost, netip.MustParseAddr(g.dst), 5555, []byte("x")))
			time.Sleep(100 * time.Millisecond)
			delivered := slotRx(t, p, a.ID) + slotRx(t, p, b.ID) - rx
			d := p.D.UnattributedDrops()[g.reason] - before
			if delivered == 0 && d != 1 {
				t.Errorf("blocked, but %s drops +%d, want +1", g.reason, d)
			}
			return delivered > 0, fmt.Sprintf("%s drops +%d, delivered %d", g.reason, d, delivered)
		})
	}
	check("the fabric", "slot A, Geneve with its own VNI and address, to a port it serves (control)", true, func(t *testing.T) (bool, string) {
		rx := slotRx(t, p, a.ID)
		sendGeneve(t, fab, 100, testutil.InnerUDP(vpcMAC, p.Config.VPCMAC(a.Index), vpcHost, netip.MustParseAddr("10.9.0.5"), 5555, []byte("x")))
		time.Sleep(100 * time.Millisecond)
		n := slotRx(t, p, a.ID) - rx
		return n > 0, fmt.Sprintf("delivered %d", n)
	})
	check("the fabric", "guest B, unsolicited UDP through Geneve", false, func(t *testing.T) (bool, string) {
		before := drops(t, b.ID, "inbound_unsolicited")
		rx := slotRx(t, p, b.ID)
		sendGeneve(t, fab, 200, testutil.InnerUDP(vpcMAC, p.Config.VPCMAC(b.Index), vpcHost, netip.MustParseAddr("10.9.0.6"), 5555, []byte("x")))
		time.Sleep(100 * time.Millisecond)
		n, d := slotRx(t, p, b.ID)-rx, drops(t, b.ID, "inbound_unsolicited")-before
		if n == 0 && d != 1 {
			t.Errorf("blocked, but inbound_unsolicited drops +%d, want +1", d)
		}
		return n > 0, fmt.Sprintf("delivered %d, inbound_unsolicited drops +%d", n, d)
	})

	// New traffic from outside, through the NAT: only what a lease opens.
	listenTCP := func(g *testutil.GuestNS, port int) (accepted func() int) {
		l, err := g.Listen(port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		var n atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				n.Add(1)
				c.Close()
			}
		}()
		return func() int { return int(n.Load()) }
	}
	dialFromOutside := func(t *testing.T, to netip.Addr, port int) error {
		return testutil.InNS(fab.NetnsPath(), func() error {
			d := net.Dialer{Timeout: time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(fab.Outside, 0))}
			c, err := d.Dial("tcp4", netip.AddrPortFrom(to, uint16(port)).String())
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	sshB := listenTCP(gb, 22)
	webA := listenTCP(ga, 8080)
	check("the outside host", "guest B, a TCP connection to a port it listens on (no inbound rule)", false, func(t *testing.T) (bool, string) {
		before := drops(t, b.ID, "inbound_unsolicited")
		err := dialFromOutside(t, p.Config.SlotIP(b.Index), 22)
		d := drops(t, b.ID, "inbound_unsolicited") - before
		if err != nil && d == 0 {
			t.Errorf("blocked, but not by the datapath (no inbound_unsolicited drop)")
		}
		return err == nil || sshB() > 0, fmt.Sprintf("connect: %v; %d accepted; inbound_unsolicited drops +%d", err, sshB(), d)
	})
	check("the outside host", "guest A, a TCP connection to its inbound port 8080 (control)", true, func(t *testing.T) (bool, string) {
		err := dialFromOutside(t, p.Config.SlotIP(a.Index), 8080)
		time.Sleep(50 * time.Millisecond)
		return err == nil && webA() > 0, fmt.Sprintf("connect: %v; %d accepted", err, webA())
	})
	check("the outside host", "guest B, an ICMP echo request", false, func(t *testing.T) (bool, string) {
		before := drops(t, b.ID, "inbound_unsolicited")
		n := ping(t, fab.Name, p.Config.SlotIP(b.Index), 2)
		d := drops(t, b.ID, "inbound_unsolicited") - before
		if n == 0 && d != 2 {
			t.Errorf("blocked, but inbound_unsolicited drops +%d, want +2", d)
		}
		return n > 0, fmt.Sprintf("%d of 2 echo replies, inbound_unsolicited drops +%d", n, d)
	})
	check("the outside host", "guest B, unsolicited UDP", false, func(t *testing.T) (bool, string) {
		l, err := gb.ListenUDP(5353)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		before := drops(t, b.ID, "inbound_unsolicited")
		testutil.InNS(fab.NetnsPath(), func() error {
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.Outside, 5300)),
				net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Config.SlotIP(b.Index), 5353)))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("unasked"))
			return err
		})
		l.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 64)
		n, _ := l.Read(buf)
		d := drops(t, b.ID, "inbound_unsolicited") - before
		if n == 0 && d != 1 {
			t.Errorf("blocked, but inbound_unsolicited drops +%d, want +1", d)
		}
		return n > 0, fmt.Sprintf("%d bytes read, inbound_unsolicited drops +%d", n, d)
	})
	check("the outside host", "guest B, the UDP reply to its own request (control)", true, func(t *testing.T) (bool, string) {
		got, err := udpRoundTrip(t, gb, netip.AddrPortFrom(fab.Outside, 7), "asked")
		return err == nil && got == "asked", fmt.Sprintf("echo %q, %v", got, err)
	})
	check("the outside host", fmt.Sprintf("the pooled slot %d's address, a TCP connection", pooled), false, func(t *testing.T) (bool, string) {
		before := p.D.UnattributedDrops()["not_leased"]
		err := dialFromOutside(t, p.Config.SlotIP(pooled), 22)
		d := p.D.UnattributedDrops()["not_leased"] - before
		if err != nil && d == 0 {
			t.Errorf("blocked, but no not_leased drop")
		}
		return err == nil, fmt.Sprintf("connect: %v; not_leased drops +%d", err, d)
	})

	var m strings.Builder
	fmt.Fprintln(&m, "| from | to | must be | was |")
	fmt.Fprintln(&m, "|---|---|---|---|")
	for _, c := range cells {
		fmt.Fprintf(&m, "| %s | %s | %s | %s |\n", c.from, c.to, c.want, c.got)
	}
	t.Logf("isolation matrix, %d cells:\n%s", len(cells), m.String())
	if out := os.Getenv("NETSLOT_MATRIX_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(m.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func slotRx(t *testing.T, p *testutil.Pool, id string) uint64 {
	t.Helper()
	info, err := p.D.Get(id)
	if err != nil || info.Datapath == nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return info.Datapath.RxPackets
}

// snmp reads counter name of group (Ip, Icmp, ...) from the namespace's
// /proc/net/snmp.
func snmp(t *testing.T, ns, group, name string) int {
	t.Helper()
	lines := strings.Split(testutil.Exec(t, ns, "cat", "/proc/net/snmp"), "\n")
	for k := 0; k+1 < len(lines); k++ {
		head, vals := strings.Fields(lines[k]), strings.Fields(lines[k+1])
		if len(head) == 0 || head[0] != group+":" || len(vals) != len(head) {
			continue
		}
		for j, h := range head {
			if h == name {
				n, _ := strconv.Atoi(vals[j])
				return n
			}
		}
	}
	t.Fatalf("no %s %s in /proc/net/snmp", group, name)
	return 0
}

func snmp6(t *testing.T, ns, name string) int {
	t.Helper()
	for _, l := range strings.Split(testutil.Exec(t, ns, "cat", "/proc/net/snmp6"), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatalf("no %s in /proc/net/snmp6", name)
	return 0
}

// sendRaw sends frame as is on the guest's device.
func sendRaw(t *testing.T, g *testutil.GuestNS, frame []byte) {
	t.Helper()
	err := g.Do(func() error {
		ifi, err := netlink.LinkByName("g0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Attrs().Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("send raw frame: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
}

func ether(src, dst net.HardwareAddr, typ uint16) []byte {
	b := append(append([]byte{}, dst...), src...)
	return binary.BigEndian.AppendUint16(b, typ)
}

// icmpEcho is an ICMP echo request frame.
func icmpEcho(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	icmp := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'n', 's'}
	binary.BigEndian.PutUint16(icmp[2:], testpacket.Checksum(icmp, 0))
	ip := []byte{0x45, 0, 0, byte(20 + len(icmp)), 0, 1, 0x40, 0, 64, 1, 0, 0}
	ip = append(append(ip, src.AsSlice()...), dst.AsSlice()...)
	binary.BigEndian.PutUint16(ip[10:], testpacket.Checksum(ip, 0))
	return append(append(ether(srcMAC, dstMAC, unix.ETH_P_IP), ip...), icmp...)
}

// arpRequest asks for target, sent from src with sha and sender as the
// sender's hardware and protocol addresses.
func arpRequest(src, sha net.HardwareAddr, sender, target netip.Addr) []byte {
	b := ether(src, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, unix.ETH_P_ARP)
	b = append(b, 0, 1, 8, 0, 6, 4, 0, 1)
	b = append(append(b, sha...), sender.AsSlice()...)
	b = append(append(b, make([]byte, 6)...), target.AsSlice()...)
	return b
}

// icmp6 is an ICMPv6 message of type typ from a link-local address to
// all nodes (a router advertisement or neighbour solicitation's headers).
func icmp6(mac net.HardwareAddr, typ byte) []byte {
	body := []byte{typ, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
	ip := []byte{0x60, 0, 0, 0, 0, byte(len(body)), 58, 255}
	ip = append(ip, netip.MustParseAddr("fe80::66").AsSlice()...)
	ip = append(ip, netip.MustParseAddr("ff02::1").AsSlice()...)
	return append(append(ether(mac, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, unix.ETH_P_IPV6), ip...), body...)
}
