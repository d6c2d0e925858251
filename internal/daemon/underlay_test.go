package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/testutil"
)

// underlayPool boots a pool of n slots on a fresh fabric, with the fabric's
// gateway as --uplink-gateway or, without gateway, on a flat underlay: every
// destination, the VTEP included, on the uplink's own link.
func underlayPool(t *testing.T, n int, gateway bool) (*testutil.Pool, *testutil.Fabric, string) {
	t.Helper()
	cfg := testutil.NewConfig(n)
	tag := cfg.Prefix[1:]
	fab := testutil.NewFabric(t, tag, cfg.SlotCIDR)
	opts := daemon.Options{Config: cfg, StateDir: t.TempDir(), Uplink: fab.Uplink, UnderlayIP: fab.Underlay}
	if gateway {
		opts.UplinkGateway = fab.Gateway
	}
	return testutil.StartPoolOpts(t, opts), fab, tag
}

// underlays are the two topologies every VPC and NAT test runs on.
var underlays = []struct {
	name    string
	gateway bool
}{{"gateway", true}, {"flat", false}}

// uplinkNeighbours is `ip neigh show dev uplink`, for failure messages and
// for what must never be there: a VPC address.
func uplinkNeighbours(uplink string) string {
	out, _ := exec.Command("ip", "neigh", "show", "dev", uplink).CombinedOutput()
	return string(out)
}

// VPC traffic and NAT traffic both work with and without an uplink
// gateway. Without one, the host must not try to resolve a VPC address on
// the uplink (it is behind the tunnel): the packet must reach the
// datapath and leave encapsulated toward the VTEP, which is on-link.
func TestVPCAndNATWithAndWithoutGateway(t *testing.T) {
	for _, u := range underlays {
		t.Run(u.name, func(t *testing.T) {
			p, fab, tag := underlayPool(t, 2, u.gateway)
			serveOutside(t, fab)
			vtep := testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
			info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: vpcAttachment(t, fab, testVNI, "10.9.0.5")})
			if err != nil {
				t.Fatal(err)
			}
			g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(info.Index), p.Config)

			// Through the tunnel.
			if got, err := udpRoundTrip(t, g, netip.AddrPortFrom(vpcHost, 9), "hello vpc"); err != nil || got != "hello vpc" {
				t.Errorf("UDP to the VPC host: %q, %v; uplink neighbours:\n%s", got, err, uplinkNeighbours(fab.Uplink))
			}
			if n := ping(t, g.Name, vpcHost, 3); n != 3 {
				t.Errorf("guest pinged the VPC host: %d of 3 replies", n)
			}
			if nb := uplinkNeighbours(fab.Uplink); strings.Contains(nb, vpcHost.String()+" ") {
				t.Errorf("the host resolves the VPC address on the uplink:\n%s", nb)
			}
			if len(vtep.Seen()) == 0 {
				t.Errorf("the VTEP received nothing")
			}

			// Through the NAT: ICMP, UDP and TCP.
			if n := ping(t, g.Name, fab.Outside, 3); n != 3 {
				t.Errorf("guest pinged the outside host: %d of 3 replies; uplink neighbours:\n%s", n, uplinkNeighbours(fab.Uplink))
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
			if want := p.Config.SlotIP(info.Index).String(); !strings.Contains(string(resp), want) {
				t.Errorf("TCP response %q, want a pong seen from the slot address %s", resp, want)
			}

			dp := countersExported(t, p, info.ID)
			if dp.EncapPackets == 0 || dp.DecapPackets == 0 || dp.TxPackets <= dp.EncapPackets {
				t.Errorf("slot counters %+v, want packets through the tunnel and through the NAT", dp)
			}
			for why, n := range dp.Drops {
				if n != 0 && why != "peer_unknown" {
					t.Errorf("%d drops %s", n, why)
				}
			}
		})
	}
}
