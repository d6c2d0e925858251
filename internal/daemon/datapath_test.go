package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/firewall"
	nslinks "github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testpacket"
	"github.com/netslot/netslot/internal/testutil"
)

// A VPC behind the fabric's VTEP.
var (
	vpcHost = netip.MustParseAddr("10.9.0.1")
	vpcMAC  = net.HardwareAddr{0x02, 0x76, 0x70, 0x63, 0, 1}
)

const testVNI = 4242

// datapathPool boots a pool of n slots whose uplink leads to a fresh test
// fabric.
func datapathPool(t *testing.T, n int) (*testutil.Pool, *testutil.Fabric, string) {
	t.Helper()
	cfg := testutil.NewConfig(n)
	tag := cfg.Prefix[1:]
	fab := testutil.NewFabric(t, tag, cfg.SlotCIDR)
	p := testutil.StartPoolOpts(t, daemon.Options{
		Config: cfg, StateDir: t.TempDir(),
		Uplink: fab.Uplink, UnderlayIP: fab.Underlay, UplinkGateway: fab.Gateway,
	})
	return p, fab, tag
}

// vpcAttachment attaches to 10.9.0.0/24 on vni, at ip, through the
// fabric's VTEP.
func vpcAttachment(t *testing.T, fab *testutil.Fabric, vni uint32, ip string) *slot.Attachment {
	t.Helper()
	a, err := slot.ParseAttachment(vni, fab.VTEP.String(), ip, []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// serveOutside runs a UDP echo server and a TCP request/response server on
// the fabric's outside host.
func serveOutside(t *testing.T, fab *testutil.Fabric) {
	t.Helper()
	var udp *net.UDPConn
	var tcp net.Listener
	err := testutil.InNS(fab.NetnsPath(), func() error {
		var err error
		if udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.Outside, 7))); err != nil {
			return err
		}
		tcp, err = net.Listen("tcp4", netip.AddrPortFrom(fab.Outside, 80).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close(); tcp.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			udp.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "pong %s from %s", line, c.RemoteAddr())
				}
			}()
		}
	}()
}

// throughNAT checks ICMP, UDP and TCP from guest g to the fabric's
// outside host, which must see the slot address slotIP; more adds to a
// failure's message.
func throughNAT(t *testing.T, g *testutil.GuestNS, fab *testutil.Fabric, slotIP netip.Addr, more func() string) {
	t.Helper()
	if n := ping(t, g.Name, fab.Outside, 3); n != 3 {
		t.Errorf("guest pinged the outside host: %d of 3 replies%s", n, more())
	}
	if got, err := udpRoundTrip(t, g, netip.AddrPortFrom(fab.Outside, 7), "hello outside"); err != nil || got != "hello outside" {
		t.Errorf("UDP to the outside host: %q, %v", got, err)
	}
	c, err := g.Dial("tcp4", netip.AddrPortFrom(fab.Outside, 80))
	if err != nil {
		t.Fatalf("TCP connect to the outside host: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "ping\n")
	resp, _ := io.ReadAll(c)
	c.Close()
	if !strings.HasPrefix(string(resp), "pong ping") || !strings.Contains(string(resp), slotIP.String()) {
		t.Errorf("TCP response %q, want a pong seen from the slot address %s", resp, slotIP)
	}
}

// ping runs ping in namespace ns and returns how many replies came back.
func ping(t *testing.T, ns string, dst netip.Addr, count int) int {
	t.Helper()
	out, _ := exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", dst.String()).CombinedOutput()
	for _, f := range strings.Split(string(out), ",") {
		if strings.HasSuffix(strings.TrimSpace(f), "received") {
			n, _ := strconv.Atoi(strings.Fields(f)[0])
			return n
		}
	}
	t.Logf("ping %s: %s", dst, out)
	return 0
}

func udpRoundTrip(t *testing.T, g *testutil.GuestNS, to netip.AddrPort, msg string) (string, error) {
	c, err := g.Dial("udp4", to)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var last error
	for try := 0; try < 5; try++ {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		last = err
	}
	return "", last
}

func TestDatapathNATAndGeneveThroughFabric(t *testing.T) {
	p, fab, tag := datapathPool(t, 3)
	serveOutside(t, fab)
	vtep := testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
	shark := testutil.StartTshark(t, fab.Name, "f0", "udp port 6081", "geneve.vni", "ip.src", "ip.dst")

	a, err := slot.ParseAttachment(testVNI, fab.VTEP.String(), "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	// Take slot 1 so the leased slot is not slot 0.
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{}); err != nil {
		t.Fatal(err)
	}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := p.D.Get(info.ID); got.Datapath == nil || got.Datapath.VNI != testVNI || got.Datapath.Dummy {
		t.Fatalf("after acquire: datapath %+v, want vni %d", got.Datapath, testVNI)
	}
	g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(info.Index), p.Config)

	if n := ping(t, g.Name, p.Config.GatewayIP(), 3); n != 3 {
		t.Errorf("guest pinged its gateway: %d of 3 replies", n)
	}
	throughNAT(t, g, fab, p.Config.SlotIP(info.Index), func() string { return "" })

	// Geneve: ICMP and UDP to the VPC host. The first packet goes out as
	// an ARP request through the tunnel (the peer's MAC is learned from
	// the answer), so one echo may be lost.
	if n := ping(t, g.Name, vpcHost, 5); n < 4 {
		t.Errorf("guest pinged the VPC host: %d of 5 replies", n)
	}
	if got, err := udpRoundTrip(t, g, netip.AddrPortFrom(vpcHost, 9), "hello vpc"); err != nil || got != "hello vpc" {
		t.Errorf("UDP to the VPC host: %q, %v", got, err)
	}
	for _, f := range vtep.Seen() {
		if f.VNI != testVNI || f.From.Addr() != fab.Underlay {
			t.Errorf("VTEP got vni %d from %s, want %d from the underlay address", f.VNI, f.From, testVNI)
		}
		if !f.ARP && f.InnerSrc != a.VPCIP {
			t.Errorf("VTEP got inner source %s, want the VPC address %s", f.InnerSrc, a.VPCIP)
		}
	}

	// An independent decoder: tshark's Geneve dissector.
	lines := shark.Stop()
	innerOut, innerIn := 0, 0
	for _, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) < 3 {
			continue
		}
		vni, _ := strconv.ParseUint(f[0], 0, 32)
		if vni != testVNI {
			t.Errorf("tshark decoded vni %s: %q", f[0], l)
		}
		src, dst := strings.Split(f[1], ","), strings.Split(f[2], ",")
		if len(src) == 2 && len(dst) == 2 {
			switch {
			case src[0] == fab.Underlay.String() && dst[0] == fab.VTEP.String() && src[1] == "10.9.0.5" && dst[1] == vpcHost.String():
				innerOut++
			case src[0] == fab.VTEP.String() && dst[0] == fab.Underlay.String() && src[1] == vpcHost.String() && dst[1] == "10.9.0.5":
				innerIn++
			}
		}
	}
	if innerOut < 4 || innerIn < 4 {
		t.Errorf("tshark saw %d Geneve packets slot->VPC and %d back, want at least 4 each; lines:\n%s", innerOut, innerIn, strings.Join(lines, "\n"))
	}

	dp := countersExported(t, p, info.ID)
	if dp.TxPackets == 0 || dp.RxPackets == 0 || dp.EncapPackets < 4 || dp.DecapPackets < 4 || dp.ARPRequests == 0 {
		t.Errorf("slot counters %+v", dp)
	}

	// No conntrack entry anywhere for slot traffic.
	for _, ns := range []string{"", p.Config.NetnsPath(info.Index), fab.NetnsPath()} {
		n, err := testutil.ConntrackEntriesFor(ns, p.Config.GuestIP(), p.Config.SlotIP(info.Index), a.VPCIP)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("namespace %q has %d conntrack entries for slot traffic", ns, n)
		}
	}

	// Release flips the slot back to its dummy VNI: what the VPC sends
	// for the old VNI is dropped and counted, not delivered.
	g.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := p.D.Get(info.ID)
	if !got.Datapath.Dummy || got.Datapath.TxPackets != 0 {
		t.Errorf("after release: %+v, want the dummy vni and zeroed counters", got.Datapath)
	}
	vtep.Close() // frees the VTEP's port for the raw sender below
	before := p.D.UnattributedDrops()["unknown_vni"]
	sendGeneve(t, fab, testVNI, testutil.InnerUDP(vpcMAC, p.Config.VPCMAC(info.Index), vpcHost, a.VPCIP, 5555, []byte("late")))
	time.Sleep(100 * time.Millisecond)
	if after := p.D.UnattributedDrops()["unknown_vni"]; after != before+1 {
		t.Errorf("Geneve on the released VNI: unknown_vni drops %d -> %d, want one more", before, after)
	}
	if got, _ := p.D.Get(info.ID); got.Datapath.RxPackets != 0 {
		t.Errorf("the released slot received: %+v", got.Datapath)
	}
}

// sendGeneve sends one Geneve packet from the fabric's VTEP address to the
// underlay address.
func sendGeneve(t *testing.T, fab *testutil.Fabric, vni uint32, frame []byte) {
	t.Helper()
	var c *net.UDPConn
	if err := testutil.InNS(fab.NetnsPath(), func() error {
		var err error
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.VTEP, 6081)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.Underlay, 6081)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(testpacket.Geneve(vni, frame)); err != nil {
		t.Fatal(err)
	}
}

// poolObjects are the kernel objects an acquire must not create.
type poolObjects struct {
	Links    int // the pool's: root-namespace links named by its prefix, and every link in its slots
	Rules    int // the rules of the pool's table in the root namespace
	NewProgs int // BPF programs loaded after the baseline's
}

// kernelObjects counts p's objects. Only the pool's own links count: other
// tests' namespaces are dismantled in the background, and their host veths
// leave the root namespace when the kernel gets to it. Programs count by
// id, those loaded after lastProg: other tests' programs are freed in the
// background too.
func kernelObjects(t *testing.T, p *testutil.Pool, lastProg ebpf.ProgramID) poolObjects {
	t.Helper()
	var o poolObjects
	root, err := nslinks.Links(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range root {
		if strings.HasPrefix(l.Attrs().Name, p.Config.Prefix) {
			o.Links++
		}
	}
	for i := range p.Config.Count {
		o.Links += len(slotLinks(t, p.Config.NetnsPath(i)))
	}
	if o.Rules, err = firewall.CountRules(p.Config.Prefix); err != nil {
		t.Fatal(err)
	}
	for id := lastProg; ; o.NewProgs++ {
		if id, err = ebpf.ProgramGetNextID(id); err != nil {
			break
		}
	}
	return o
}

// lastProgram is the highest id of a loaded BPF program.
func lastProgram() ebpf.ProgramID {
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return id
		}
		id = next
	}
}

// slotLinks lists the links of the namespace pinned at path.
func slotLinks(t *testing.T, path string) []netlink.Link {
	t.Helper()
	fd, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	h, err := netlink.NewHandleAt(vnetns.NsHandle(fd))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := nslinks.Links(h)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// Isolation with real packets, and what an attach creates: nothing but map
// entries.
func TestDatapathIsolationAndAttachCreatesNothing(t *testing.T) {
	p, fab, tag := datapathPool(t, 3)
	serveOutside(t, fab)
	att := func(vni uint32, ip string) *slot.Attachment { return vpcAttachment(t, fab, vni, ip) }
	lastProg := lastProgram()
	objs := kernelObjects(t, p, lastProg)
	a, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: att(100, "10.9.0.5")})
	if err != nil {
		t.Fatal(err)
	}
	// B serves UDP on 5555 to its VPC: new traffic from outside reaches a
	// guest only through such a rule.
	serve, err := slot.ParseInboundSpec("udp/5555,10.9.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: att(200, "10.9.0.6"), Inbound: []slot.InboundRule{serve}})
	if err != nil {
		t.Fatal(err)
	}
	if after := kernelObjects(t, p, lastProg); after != objs {
		t.Errorf("acquire with a VPC created kernel objects:\nbefore %+v\nafter  %+v", objs, after)
	}
	// The same VPC address on the same VNI is refused.
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: att(100, "10.9.0.5")}); err == nil {
		t.Error("a second slot took 10.9.0.5 on vni 100")
	}

	ga := testutil.NewGuestNS(t, tag+"a", p.Config.NetnsPath(a.Index), p.Config)
	gb := testutil.NewGuestNS(t, tag+"b", p.Config.NetnsPath(b.Index), p.Config)
	// Guest A cannot reach slot B, not even by its slot address (which the
	// fabric would route back to the host).
	if n := ping(t, ga.Name, p.Config.SlotIP(b.Index), 3); n != 0 {
		t.Errorf("guest A reached slot B's address: %d replies", n)
	}
	if got, _ := p.D.Get(a.ID); got.Datapath.Drops["slot_to_slot"] == 0 {
		t.Errorf("no slot_to_slot drop counted: %+v", got.Datapath)
	}
	// Nor the host's own addresses.
	if n := ping(t, ga.Name, fab.Underlay, 2); n != 0 {
		t.Errorf("guest A reached the host's underlay address: %d replies", n)
	}

	// Geneve from the VTEP with slot A's VNI and slot B's inner address is
	// not delivered to B; with B's VNI it is.
	lb, err := gb.ListenUDP(5555)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	send := func(vni uint32, dst string) {
		sendGeneve(t, fab, vni, testutil.InnerUDP(vpcMAC, p.Config.VPCMAC(b.Index), vpcHost, netip.MustParseAddr(dst), 5555, []byte("for b")))
	}
	before := p.D.UnattributedDrops()["unknown_dst"]
	send(100, "10.9.0.6") // slot A's VNI, slot B's address
	lb.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := lb.Read(buf); err == nil {
		t.Errorf("slot B got %q sent on slot A's VNI", buf[:n])
	}
	if after := p.D.UnattributedDrops()["unknown_dst"]; after != before+1 {
		t.Errorf("unknown_dst drops %d -> %d, want one more", before, after)
	}
	send(200, "10.9.0.6") // B's own VNI: delivered
	lb.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := lb.Read(buf); err != nil || string(buf[:n]) != "for b" {
		t.Errorf("slot B on its own VNI: %q, %v", buf[:n], err)
	}

	dp := countersExported(t, p, b.ID)
	if dp.RxPackets == 0 || dp.DecapPackets == 0 {
		t.Errorf("slot %s saw no traffic: %+v", b.ID, dp)
	}
}

// countersExported checks that every counter show prints of slot id
// reaches the metrics endpoint (read after show: counters only grow), and
// returns what show printed.
func countersExported(t *testing.T, p *testutil.Pool, id string) *daemon.DatapathInfo {
	t.Helper()
	shown, err := p.D.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := p.D.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["slot"] != id {
				continue
			}
			key := mf.GetName() + "/" + labels["direction"] + labels["op"] + labels["reason"]
			got[key] = m.GetCounter().GetValue()
		}
	}
	dp := shown.Datapath
	want := map[string]uint64{
		"netslot_slot_packets_total/tx": dp.TxPackets, "netslot_slot_packets_total/rx": dp.RxPackets,
		"netslot_slot_bytes_total/tx": dp.TxBytes, "netslot_slot_bytes_total/rx": dp.RxBytes,
		"netslot_slot_tunnel_packets_total/encap": dp.EncapPackets, "netslot_slot_tunnel_packets_total/decap": dp.DecapPackets,
		"netslot_slot_tunnel_arp_total/reply": dp.ARPReplies, "netslot_slot_tunnel_arp_total/request": dp.ARPRequests,
		"netslot_slot_held_frames_dropped_total/": dp.HeldDropped,
	}
	for reason, n := range dp.Drops {
		want["netslot_datapath_drops_total/"+reason] = n
	}
	for key, n := range want {
		if v, ok := got[key]; !ok || v < float64(n) {
			t.Errorf("metric %s of %s: %v (exported: %t), show says %d", key, id, v, ok, n)
		}
	}
	return dp
}

// sideNet is a network the host routes through a device other than the
// uplink: a namespace behind a veth, holding 198.19.77.1, with the root
// namespace routing 198.19.77.0/24 there. Slot traffic must never take it.
func sideNet(t *testing.T, tag string) (ns string, listen func() *net.UDPConn) {
	t.Helper()
	ns = "s" + tag
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", "v"+tag).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
	run("ip", "link", "add", "v"+tag, "type", "veth", "peer", "name", "side0", "netns", ns)
	run("ip", "addr", "add", "198.18.77.2/24", "dev", "v"+tag)
	run("ip", "link", "set", "v"+tag, "up")
	run("ip", "route", "add", "198.19.77.0/24", "via", "198.18.77.1")
	for _, a := range [][]string{
		{"ip", "link", "set", "lo", "up"}, {"ip", "link", "set", "side0", "up"},
		{"ip", "addr", "add", "198.18.77.1/24", "dev", "side0"}, {"ip", "addr", "add", "198.19.77.1/32", "dev", "lo"},
	} {
		run(append([]string{"ip", "netns", "exec", ns}, a...)...)
	}
	return ns, func() *net.UDPConn {
		var c *net.UDPConn
		if err := testutil.InNS("/run/netns/"+ns, func() error {
			var err error
			c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 19, 77, 1), Port: 9})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// TestSlotTrafficLeavesOnlyThroughUplink sends guest traffic to a
// destination the host routes through another device: with no uplink it
// does not leave the host at all, with one it leaves through the uplink
// (where the fabric has no route for it), never through the host's own
// routes.
func TestSlotTrafficLeavesOnlyThroughUplink(t *testing.T) {
	for _, withUplink := range []bool{false, true} {
		t.Run(fmt.Sprintf("uplink=%v", withUplink), func(t *testing.T) {
			var p *testutil.Pool
			var tag string
			if withUplink {
				p, _, tag = datapathPool(t, 2)
			} else {
				p = testutil.StartPool(t, 2)
				tag = p.Config.Prefix[1:]
			}
			_, listen := sideNet(t, tag)
			side := listen()
			defer side.Close()
			info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
			if err != nil {
				t.Fatal(err)
			}
			g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(info.Index), p.Config)
			c, err := g.Dial("udp4", netip.MustParseAddrPort("198.19.77.1:9"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for range 5 {
				c.Write([]byte("must not arrive"))
			}
			side.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 64)
			if n, from, err := side.ReadFrom(buf); err == nil {
				t.Fatalf("slot traffic left through the host's own route: %q from %v", buf[:n], from)
			}
			got, _ := p.D.Get(info.ID)
			for deadline := time.Now().Add(3 * time.Second); withUplink && got.Datapath.TxPackets < 5 && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
				got, _ = p.D.Get(info.ID)
			}
			if withUplink && got.Datapath.TxPackets != 5 {
				t.Errorf("with an uplink the 5 datagrams should have left through it: %+v; drops outside slots %v", got.Datapath, p.D.UnattributedDrops())
			}
		})
	}
}

// A pinned map of another layout (another netslotd version): replaced when
// no lease is held, refused with a clear error when one is.
func TestIncompatiblePinnedDatapath(t *testing.T) {
	cfg := testutil.NewConfig(4)
	dir := t.TempDir()
	opts := daemon.Options{Config: cfg, StateDir: dir}
	p := testutil.StartPoolOpts(t, opts)
	p.D.Close()
	replaceStats := func() {
		t.Helper()
		pin := filepath.Join(datapath.PinDir("", cfg.Prefix), "stats")
		if err := os.Remove(pin); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(pin); err != nil {
			t.Fatal(err)
		}
	}
	replaceStats()
	p = testutil.StartPoolOpts(t, opts) // no lease: replaced
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{}); err != nil {
		t.Fatal(err)
	}
	p.D.Close()
	replaceStats()
	d, err := daemon.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Boot(context.Background()); !errors.Is(err, datapath.ErrIncompatible) || !strings.Contains(err.Error(), "teardown") {
		t.Fatalf("boot with a lease and an incompatible datapath: %v", err)
	}
}

// A pinned layout that lies about its maps (damaged, or written by hand)
// is never trusted: the datapath is replaced when no lease is held, and
// the start refused, saying what is wrong and what to do, when one is;
// the pinned maps are then left as they are. Before, the migration read
// entries by the lie and panicked on every start: netslotd crash-looped.
func TestTamperedPinnedLayout(t *testing.T) {
	cfg := testutil.NewConfig(4)
	opts := daemon.Options{Config: cfg, StateDir: t.TempDir()}
	p := testutil.StartPoolOpts(t, opts)
	p.D.Close()
	dir := datapath.PinDir("", cfg.Prefix)
	// layout reads the pinned layout's JSON, lets change change it and
	// writes it back in place; it returns slot_mac's offset in the slots
	// map's value as it was.
	layout := func(change func(off any) any) any {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "layout"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		buf := make([]byte, m.ValueSize())
		if err := m.Lookup(uint32(0), &buf); err != nil {
			t.Fatal(err)
		}
		var l map[string]map[string]any
		if err := json.Unmarshal(buf[:bytes.IndexByte(buf, 0)], &l); err != nil {
			t.Fatal(err)
		}
		var was any
		for _, f := range l["slots"]["value"].(map[string]any)["fields"].([]any) {
			if f := f.(map[string]any); f["name"] == "slot_mac" {
				was, f["off"] = f["off"], change(f["off"])
			}
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		clear(buf)
		copy(buf, b)
		if err := m.Put(uint32(0), buf); err != nil {
			t.Fatal(err)
		}
		return was
	}
	pastTheValue := func(any) any { return 4000 }
	slotsID := func() ebpf.MapID {
		t.Helper()
		id, err := datapath.PinnedMapID(dir, "slots")
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	layout(pastTheValue)
	p = testutil.StartPoolOpts(t, opts) // no lease: replaced
	if n := promtest.ToFloat64(p.D.Metrics.ReconcileAction.WithLabelValues("replace_datapath")); n != 1 {
		t.Errorf("replace_datapath %v, want 1", n)
	}
	if off := layout(func(off any) any { return off }); off != float64(8) {
		t.Errorf("slot_mac's offset in the replaced datapath's layout: %v, want 8", off)
	}
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{}); err != nil {
		t.Fatal(err)
	}
	p.D.Close()

	layout(pastTheValue)
	pinned := slotsID()
	d, err := daemon.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Boot(context.Background())
	if !errors.Is(err, datapath.ErrIncompatible) || !strings.Contains(err.Error(), `map slots: value: field "slot_mac" of 6 bytes at offset 4000, past the struct's 20 bytes`) ||
		!strings.Contains(err.Error(), fmt.Sprintf("run 'netslotd teardown' for prefix %q", cfg.Prefix)) {
		t.Fatalf("boot with a lease and a tampered layout: %v", err)
	}
	t.Logf("refused: %v", err)
	if slotsID() != pinned {
		t.Errorf("the refused start replaced the pinned slots map")
	}
}
