package daemon_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// slotState is a full dump of the kernel state a tenant could leave in
// slot i (links with tap0's owner and group, addresses, routes, rules, neighbours, multicast
// memberships, qdiscs, nftables, the devices' sysctls, what the next VMM
// finds on tap0: see testutil.TapState) and the datapath's entries for
// it, with the slot's own identity (address, MACs, peer ifindex) written
// as names.
func slotState(t *testing.T, p *testutil.Pool, i int) string {
	t.Helper()
	ns := p.Config.ID(i)
	sysctls := `for f in /proc/sys/net/ipv4/conf/*/* /proc/sys/net/ipv4/neigh/*/* /proc/sys/net/ipv6/conf/*/* /proc/sys/net/ipv6/neigh/*/*; do
		printf '%s=%s\n' "$f" "$(cat "$f" 2>/dev/null | tr '\t' ' ')"; done`
	parts := []string{
		testutil.Exec(t, ns, "ip", "-d", "link"),
		testutil.Exec(t, ns, "ip", "addr"),
		testutil.Exec(t, ns, "ip", "-4", "route", "show", "table", "all"),
		testutil.Exec(t, ns, "ip", "-6", "route", "show", "table", "all"),
		testutil.Exec(t, ns, "ip", "-4", "rule"),
		testutil.Exec(t, ns, "ip", "-6", "rule"),
		testutil.Exec(t, ns, "ip", "neigh", "show", "nud", "all"),
		testutil.Exec(t, ns, "ip", "maddr", "show", "dev", "lo"),
		testutil.Exec(t, ns, "ip", "maddr", "show", "dev", slot.VethName),
		// After a VM has come and gone, a tap that is taken down and up
		// without carrier lacks the link-layer filter of IPv6 all-nodes
		// (33:33:00:00:00:01) until the next VM attaches, when the kernel
		// adds it back (checked with iproute2 and a tun descriptor): it
		// is not something the next tenant can see.
		strings.ReplaceAll(testutil.Exec(t, ns, "ip", "maddr", "show", "dev", slot.TapName), "\tlink  33:33:00:00:00:01\n", ""),
		testutil.Exec(t, ns, "tc", "qdisc", "show"),
		testutil.Exec(t, ns, "nft", "list", "ruleset"),
		testutil.Exec(t, ns, "sh", "-c", sysctls),
		// Last: it attaches to tap0, as a VMM does.
		testutil.TapState(t, p.Config.NetnsPath(i), slot.TapName, p.Config.GuestMAC),
	}
	dp, err := p.D.DatapathState(i)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(append(parts, dp), "\n")
	s = strings.ReplaceAll(s, p.Config.SlotIP(i).String(), "SLOTIP")
	s = strings.ReplaceAll(s, p.Config.HostVethMAC(i).String(), "HOSTMAC")
	s = strings.ReplaceAll(s, p.Config.SlotVethMAC(i).String(), "SLOTMAC")
	return peerIndex.ReplaceAllString(s, "@ifN")
}

// TestTenantLeavesNothingBehind: a guest with a real network stack uses a
// slot with a VPC attachment and an egress policy every way it can
// (ARP, pings, UDP and TCP through the NAT, ICMP and UDP through Geneve,
// multicast, a learned VPC peer, counters), its VMM, jailed, changes
// tap0 every way its owner can (testutil.TapOps), and the slot's devices
// are also changed from inside the slot (MAC, MTU, queue length,
// neighbours, state). After release, the slot's full state (see
// slotState) must equal that of a slot of the same pool that was never
// used; the next tenant of the slot starts from nothing.
func TestTenantLeavesNothingBehind(t *testing.T) {
	p, fab, tag := datapathPool(t, 3)
	serveOutside(t, fab)
	testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
	a, err := slot.ParseAttachment(testVNI, fab.VTEP.String(), "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a, Egress: slot.Egress{Allow: []netip.Prefix{netip.PrefixFrom(fab.Outside, 32)}},
		DNS: []netip.Addr{fab.Outside}, Hostname: "tenant-vm", TapOwner: &slot.TapOwner{UID: 4242, GID: 4243}})
	if err != nil {
		t.Fatal(err)
	}
	i := info.Index
	fresh := (i + 1) % 3
	want := slotState(t, p, fresh)

	g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(i), p.Config)
	ping(t, g.Name, p.Config.GatewayIP(), 2)
	ping(t, g.Name, fab.Outside, 2)
	ping(t, g.Name, vpcHost, 3)
	udpRoundTrip(t, g, netip.AddrPortFrom(fab.Outside, 7), "tenant")
	udpRoundTrip(t, g, netip.AddrPortFrom(vpcHost, 9), "tenant")
	if c, err := g.Dial("tcp4", netip.AddrPortFrom(fab.Outside, 80)); err == nil {
		c.Write([]byte("ping\n"))
		c.Close()
	}
	exec.Command("ip", "netns", "exec", g.Name, "ping", "-c", "2", "-W", "1", "224.0.0.1").Run()
	exec.Command("ip", "netns", "exec", g.Name, "ping", "-c", "1", "-W", "1", p.Config.GuestIP().Next().String()).Run() // ARP for a neighbour that is not there

	// While the VM still holds tap0 (and whatever is queued for it), the
	// slot cannot be released, and nothing of it changes.
	held, err := p.D.DatapathState(i)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
		t.Fatalf("release while the VM holds tap0: %v, want ErrInUse", err)
	}
	if got, _ := p.D.Get(info.ID); got.Lease == nil {
		t.Fatal("a refused release freed the slot")
	}
	if now, _ := p.D.DatapathState(i); now != held {
		t.Fatalf("a refused release changed the slot's datapath:\n%s", lineDiff(now, held))
	}
	g.Close() // the kernel purges tap0's queue when the last holder closes it
	// Then the lease's VMM, jailed, sets what it may on tap0 and exits
	// (the rest of testutil.TapOps take tap0's owner or tap0 itself:
	// TestTapSettingsDoNotReachTheNextTenant).
	ops := []string{"tx-filter", "socket-filter", "ebpf-filter", "ebpf-steering", "sndbuf", "offload",
		"vnet-hdr-size", "vnet-le", "vnet-be", "debug", "carrier-off", "mac"}
	done, err := testutil.NewJailedVMM(t).Set(p.Config.NetnsPath(i), slot.TapName, 4242, 4243, ops...)
	if err != nil {
		t.Fatalf("the lease's VMM cannot attach: %v", err)
	}
	for op, e := range done {
		if e != 0 && !(op == "vnet-be" && e == syscall.EINVAL) { // a kernel without CONFIG_TUN_VNET_CROSS_LE
			t.Fatalf("%s as tap0's owner: %v", op, e)
		}
	}
	ns := p.Config.ID(i)
	testutil.Exec(t, ns, "ip", "neigh", "replace", p.Config.GuestIP().Next().String(), "lladdr", "02:00:00:00:00:02", "dev", "tap0", "nud", "permanent")
	testutil.Exec(t, ns, "ip", "link", "set", "tap0", "address", "02:00:00:00:00:99", "mtu", "1400", "txqueuelen", "10")

	if used := slotState(t, p, i); used == want {
		t.Fatal("using the slot changed nothing: the comparison cannot fail")
	} else if !strings.Contains(used, "user 4242 group 4243") || !strings.Contains(want, "user root group root") {
		t.Fatalf("the dump does not show tap0's owner and group:\n%s", used)
	} else if !strings.Contains(used, "tap0 frame to the guest's MAC delivered: false") || !strings.Contains(used, "tap0 vnet header size 12") {
		t.Fatalf("the dump does not show what the VMM set on tap0:\n%s", used)
	}
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	if got := slotState(t, p, i); got != want {
		t.Fatalf("released slot differs from a fresh one:\n%s", lineDiff(got, want))
	}
}

// lineDiff lists the lines of got that want lacks and the reverse.
func lineDiff(got, want string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	g, w := count(got), count(want)
	var out []string
	for l, n := range g {
		if w[l] < n {
			out = append(out, "+ "+l)
		}
	}
	for l, n := range w {
		if g[l] < n {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}
