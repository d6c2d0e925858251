package daemon_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	nslinks "github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/slot"
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
	// Runs after the pool's teardown: nothing of the pool is left on the
	// uplink, in any mode.
	t.Cleanup(func() { checkNoUplinkObjects(t, cfg.Prefix, fab.Uplink) })
	opts := daemon.Options{Config: cfg, StateDir: t.TempDir(), Uplink: fab.Uplink, UnderlayIP: fab.Underlay}
	if gateway {
		opts.UplinkGateway = fab.Gateway
	}
	return testutil.StartPoolOpts(t, opts), fab, tag
}

// checkNoUplinkObjects fails t if a rule or route of prefix's tables, or
// the flat underlay's placeholder neighbour, is left.
func checkNoUplinkObjects(t *testing.T, prefix, uplink string) {
	t.Helper()
	tables := []int{nslinks.RouteTable(prefix), nslinks.ResolveTable(prefix)}
	rules, err := nslinks.Rules(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if slices.Contains(tables, r.Table) {
			t.Errorf("rule left after teardown: %v", r)
		}
	}
	for _, table := range tables {
		routes, err := nslinks.Routes(nil, unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			t.Errorf("route left after teardown: %v", r)
		}
	}
	if nb := uplinkNeighbours(uplink); strings.Contains(nb, nslinks.OnLinkNexthop.String()+" ") {
		t.Errorf("placeholder neighbour left after teardown:\n%s", nb)
	}
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
			throughNAT(t, g, fab, p.Config.SlotIP(info.Index), func() string {
				return "; uplink neighbours:\n" + uplinkNeighbours(fab.Uplink)
			})

			dp := countersExported(t, p, info.ID)
			if dp.EncapPackets == 0 || dp.DecapPackets == 0 || dp.TxPackets <= dp.EncapPackets {
				t.Errorf("slot counters %+v, want packets through the tunnel and through the NAT", dp)
			}
			for why, n := range dp.Drops {
				if n != 0 && why != "peer_unknown" {
					t.Errorf("%d drops %s", n, why)
				}
			}

			// A VTEP off the uplink's link: reachable through a gateway,
			// refused on a flat underlay, where nothing could reach it.
			far, err := slot.ParseAttachment(testVNI+1, "198.19.7.9", "10.9.0.6", []string{"10.9.0.0/24"})
			if err != nil {
				t.Fatal(err)
			}
			info2, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: far})
			switch {
			case u.gateway && err != nil:
				t.Errorf("acquire with a VTEP behind the gateway: %v", err)
			case u.gateway:
				if err := p.D.Release(info2.ID, info2.Lease.ID); err != nil {
					t.Error(err)
				}
			case !errors.Is(err, daemon.ErrInvalid) || !strings.Contains(err.Error(), "not on the uplink"):
				t.Errorf("acquire with a VTEP off the flat underlay: %v, want it refused", err)
			}
		})
	}
}
