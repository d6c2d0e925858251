package daemon_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
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
