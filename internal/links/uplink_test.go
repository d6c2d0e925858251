package links

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/testenv"
)

// vethsUp makes veth pairs in the calling thread's namespace, both ends up.
func vethsUp(t *testing.T, pairs ...[2]string) {
	t.Helper()
	for _, v := range pairs {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v[0]}, PeerName: v[1]}); err != nil {
			t.Fatal(err)
		}
		for _, n := range v {
			l, _ := netlink.LinkByName(n)
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestUplinkRouteFailsClosed checks, in a namespace made for the test,
// that the pool's table drops slot traffic (the kernel's route lookup
// answers with its blackhole) whenever the uplink's route is gone, that
// Check notices what is missing and Apply puts it back, and that
// RemoveUplinkRoute leaves nothing.
func TestUplinkRouteFailsClosed(t *testing.T) {
	testenv.PrivateNetns(t)
	vethsUp(t, [2]string{"up0", "up1"}, [2]string{"h0", "h1"})
	up0, _ := netlink.LinkByName("up0")
	if err := netlink.AddrAdd(up0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 2), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	h0, _ := netlink.LinkByName("h0")
	u := UplinkRoute{Prefix: "tur", Uplink: "up0", Gateway: netip.MustParseAddr("198.18.0.1"),
		GuestCIDR: netip.MustParsePrefix("172.16.0.0/30")}
	// route is how the kernel routes a guest's packet arriving on h0.
	route := func() (string, error) {
		rs, err := netlink.RouteGetWithOptions(net.IPv4(198, 19, 1, 1), &netlink.RouteGetOptions{
			IifIndex: h0.Attrs().Index, SrcAddr: net.IPv4(172, 16, 0, 2)})
		switch {
		case errors.Is(err, unix.EINVAL):
			return "blackhole", nil // the kernel's answer for a blackhole
		case err != nil:
			return "", err
		case len(rs) != 1:
			return "", errors.New("not one route")
		}
		l, err := netlink.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return "", err
		}
		return l.Attrs().Name, nil
	}
	if err := u.Check(); err == nil {
		t.Fatal("check passes before apply")
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	if got, err := route(); got != "up0" {
		t.Errorf("guest traffic routed to %q (%v), want up0", got, err)
	}
	// The uplink down: the kernel drops its route; the blackhole stays.
	if err := netlink.LinkSetDown(up0); err != nil {
		t.Fatal(err)
	}
	if err := u.Check(); err == nil {
		t.Error("check passes with the uplink's route gone")
	}
	if got, err := route(); got != "blackhole" {
		t.Errorf("with the uplink down, guest traffic routed to %q (%v), want the blackhole", got, err)
	}
	// The blackhole and the rule deleted while it is down: Apply puts them
	// back even though it cannot route through the uplink yet.
	table := RouteTable(u.Prefix)
	if err := netlink.RouteDel(u.blackhole()); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RuleDel(u.rule()); err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err == nil {
		t.Error("apply succeeds with the uplink down")
	}
	if rs, _ := Routes(nil, unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE); len(rs) != 1 || rs[0].Type != unix.RTN_BLACKHOLE {
		t.Errorf("table while the uplink is down: %+v, want the blackhole", rs)
	}
	if got, err := route(); got != "blackhole" {
		t.Errorf("after apply with the uplink down, guest traffic routed to %q (%v)", got, err)
	}
	if err := netlink.LinkSetUp(up0); err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if err := u.Check(); err != nil {
		t.Error(err)
	}
	if got, err := route(); got != "up0" {
		t.Errorf("after the repair, guest traffic routed to %q (%v)", got, err)
	}
	if err := RemoveUplinkRoute(u.Prefix); err != nil {
		t.Fatal(err)
	}
	rules, _ := Rules(nil, unix.AF_INET)
	for _, r := range rules {
		if r.Table == table {
			t.Errorf("rule left: %+v", r)
		}
	}
	if rs, _ := Routes(nil, unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE); len(rs) != 0 {
		t.Errorf("routes left: %+v", rs)
	}
}

// A flat underlay's pool restarted on another uplink: the resolve rule
// follows it, and the old uplink keeps no placeholder neighbour.
func TestFlatUnderlayMovesToAnotherUplink(t *testing.T) {
	testenv.PrivateNetns(t)
	vethsUp(t, [2]string{"upa", "upa1"}, [2]string{"upb", "upb1"})
	for n, name := range []string{"upa", "upb"} {
		l, _ := netlink.LinkByName(name)
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, byte(n), 2), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	a := UplinkRoute{Prefix: "tfl", Uplink: "upa", GuestCIDR: netip.MustParsePrefix("172.16.0.0/30")}
	if err := a.Apply(); err != nil {
		t.Fatal(err)
	}
	b := a
	b.Uplink = "upb"
	if err := b.Apply(); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(); err != nil {
		t.Errorf("after moving to upb: %v", err)
	}
	rules, err := Rules(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == ResolveTable("tfl") && r.OifName != "upb" {
			t.Errorf("a resolve rule for %s is left", r.OifName)
		}
	}
	if out, err := exec.Command("ip", "-4", "neigh", "show", "dev", "upa", OnLinkNexthop.String()).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("placeholder neighbour left on upa: %s %v", out, err)
	}
	if err := RemoveUplinkRoute("tfl"); err != nil {
		t.Fatal(err)
	}
}
