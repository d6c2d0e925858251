package daemon_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// The first datagram a guest sends to a VPC host, right after acquire,
// while the VPC peer's MAC is unknown, is delivered and answered: with a
// peer that answers ARP at once and with one that takes 150 ms, with and
// without an uplink gateway. (Issue 15, item 4.)
func TestFirstVPCPacketIsDelivered(t *testing.T) {
	for _, u := range underlays {
		for _, delay := range []time.Duration{0, 150 * time.Millisecond} {
			t.Run(u.name+"/arp-delay-"+delay.String(), func(t *testing.T) {
				// One slot, so that the guest is on its tap before the
				// acquire, as a VM restored from a snapshot would be.
				p, fab, tag := underlayPool(t, 1, u.gateway)
				vtep := testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
				vtep.SetARPDelay(delay)
				g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(0), p.Config)
				c, err := g.Dial("udp4", netip.AddrPortFrom(vpcHost, 9))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()

				if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: vpcAttachment(t, fab, testVNI, "10.9.0.5")}); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if _, err := c.Write([]byte("first")); err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 64)
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != "first" {
					t.Fatalf("the first datagram, sent once right after acquire: %q, %v (VTEP saw %d frames)", buf[:n], err, len(vtep.Seen()))
				}
				t.Logf("answered after %v", time.Since(start).Round(time.Microsecond))
			})
		}
	}
}

// The VPC side of the first-connect test: a Debian kernel with the kernel's
// geneve driver and no static neighbour, serving one TCP connection.
const vpcTCPGuestScript = vpcGeneveSetup + `
echo hello-from-the-vpc | timeout 120 nc.openbsd -l -N 5000 >/tmp/served 2>&1 &
until netstat -ltn | grep -q ':5000 '; do sleep 0.1; done
echo VPC-READY
wait $! || exit 20
echo TCP-SERVED
`

// A guest's first TCP connect to a VPC host, sent right after acquire, to
// a real Linux TCP stack behind the kernel's geneve driver that knows no
// neighbour: its SYN is held while the peer's MAC is learned and sent
// then, so the connection completes with no retransmit (a lost SYN costs
// one: 1 s).
func TestFirstTCPConnectToAVPCPeer(t *testing.T) {
	testutil.GuestImage(t) // builds the image first, or skips without qemu
	p, fab, tag := datapathPool(t, 1)
	vpcGuestTap(t, fab)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vpc := testutil.StartVM(t, testutil.VMConfig{Netns: fab.NetnsPath(), Tap: "vt0", MAC: "52:54:00:09:00:01", Script: vpcTCPGuestScript})
	if _, err := vpc.WaitLine(ctx, "VPC-READY"); err != nil {
		t.Fatalf("vpc guest: %v\n%s", err, vpc.Output())
	}
	g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(0), p.Config)
	a, err := slot.ParseAttachment(4242, "198.18.1.2", "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := g.Dial("tcp4", netip.MustParseAddrPort("10.9.0.1:5000"))
	if err != nil {
		t.Fatalf("connect: %v\n--- vpc guest:\n%s", err, vpc.Output())
	}
	defer c.Close()
	took := time.Since(start)
	var info *unix.TCPInfo
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err == nil {
		raw.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) })
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	greeting, _ := io.ReadAll(c)
	if !strings.Contains(string(greeting), "hello-from-the-vpc") {
		t.Errorf("read %q from the VPC host", greeting)
	}
	if info.Total_retrans != 0 {
		t.Errorf("the first connect retransmitted %d times (connected after %v)", info.Total_retrans, took)
	}
	// Counted once netslotd is back from the slot's namespace, which may
	// be after the handshake ended.
	var held, sent float64
	testutil.Eventually(t, "the SYN held and sent", func() bool {
		held = promtest.ToFloat64(p.D.Metrics.HeldFrames.WithLabelValues("held"))
		sent = promtest.ToFloat64(p.D.Metrics.HeldFrames.WithLabelValues("sent"))
		return held >= 1 && sent >= 1
	})
	t.Logf("connected after %v, %d retransmits; %v frames held, %v sent", took.Round(time.Microsecond), info.Total_retrans, held, sent)
}
