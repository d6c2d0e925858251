package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
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
	if _, err := p.D.Acquire(daemon.AcquireRequest{}); err != nil {
		t.Fatal(err)
	}
	info, err := p.D.Acquire(daemon.AcquireRequest{VPC: a})
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
	// NAT: ICMP, UDP and TCP to the outside host, which sees the slot's
	// address.
	if n := ping(t, g.Name, fab.Outside, 3); n != 3 {
		t.Errorf("guest pinged the outside host: %d of 3 replies", n)
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
	wantFrom := p.Config.SlotIP(info.Index).String()
	if !strings.HasPrefix(string(resp), "pong ping") || !strings.Contains(string(resp), wantFrom) {
		t.Errorf("TCP response %q, want a pong seen from the slot address %s", resp, wantFrom)
	}

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

	got, _ := p.D.Get(info.ID)
	dp := got.Datapath
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
	if err := p.D.Release(info.ID, ""); err != nil {
		t.Fatal(err)
	}
	got, _ = p.D.Get(info.ID)
	if !got.Datapath.Dummy || got.Datapath.TxPackets != 0 {
		t.Errorf("after release: %+v, want the dummy vni and zeroed counters", got.Datapath)
	}
}
