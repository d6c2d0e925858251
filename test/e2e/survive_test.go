package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/state"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testutil"
)

// survivor is a running uplink pool with a real-stack guest on a leased
// slot, and a capture on the fabric of anything that leaves with the
// guest's own address (it must never: the NAT is the only way out).
type survivor struct {
	*pool
	fab   *testutil.Fabric
	guest *testutil.GuestNS
	leak  *testutil.Tshark
	lease *netslotv1.Slot
}

func newSurvivor(t *testing.T) *survivor {
	p, fab, up := uplinkPool(t, 4)
	p.start(up...)
	c := p.client()
	s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.cfg
	sv := &survivor{pool: p, fab: fab, lease: s,
		guest: testutil.NewGuestNS(t, p.prefix[1:], s.Netns, cfg),
		leak:  testutil.StartTshark(t, fab.Name, "f0", "src net "+cfg.GuestCIDR.String(), "ip.src", "ip.dst")}
	if !sv.reaches(1) {
		t.Fatal("the guest does not reach the outside host to begin with")
	}
	return sv
}

// reaches reports whether the guest gets an echo reply from the outside
// host within tries pings (each waits a second for its reply).
func (sv *survivor) reaches(tries int) bool {
	for range tries {
		if exec.Command("ip", "netns", "exec", sv.guest.Name, "ping", "-c", "1", "-W", "1", sv.fab.Outside.String()).Run() == nil {
			return true
		}
	}
	return false
}

// comesBack waits up to 3 s for the guest's traffic to come back, the
// daemon to log what it repaired, and checks that nothing left un-NATed.
func (sv *survivor) comesBack(t *testing.T, repaired string) {
	t.Helper()
	start := time.Now()
	if !sv.reaches(3) {
		t.Errorf("the guest's traffic did not come back:\n%s", sv.log)
	}
	t.Logf("traffic back %v after the host was whole again", time.Since(start).Round(10*time.Millisecond))
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(sv.log.String(), repaired) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(sv.log.String(), repaired) {
		t.Errorf("no %q in the daemon's log:\n%s", repaired, sv.log)
	}
	if st := sv.status(); st.Leased != 1 {
		t.Errorf("the lease went: %+v", st)
	}
	if leaked := sv.leak.Stop(); len(leaked) > 0 {
		t.Errorf("%d packets left the host with the guest's own address: %v", len(leaked), leaked)
	}
}

func TestSurvivesPinsRemoved(t *testing.T) {
	sv := newSurvivor(t)
	if err := os.RemoveAll(datapath.PinDir("", sv.prefix)); err != nil {
		t.Fatal(err)
	}
	// The daemon holds its links: nothing detached, nothing to wait for.
	if !sv.reaches(1) {
		t.Error("the guest lost its traffic with the pins")
	}
	sv.comesBack(t, "repaired: datapath: pin link_uplink_egress")
	if _, err := os.Stat(filepath.Join(datapath.PinDir("", sv.prefix), "tunnels")); err != nil {
		t.Errorf("pins not back: %v", err)
	}
	// A second pool on the same uplink is refused again.
	b := newPool(t, 4)
	if out, err := b.netslotd(b.args("--uplink", sv.fab.Uplink, "--underlay-ip", sv.fab.Underlay.String())...); err == nil || !strings.Contains(out, "already carries pool") {
		t.Errorf("a second pool on the uplink: %v\n%s", err, out)
	}
}

func TestSurvivesUplinkFlap(t *testing.T) {
	sv := newSurvivor(t)
	if out, err := exec.Command("ip", "link", "set", sv.fab.Uplink, "down").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	if st := sv.status(); !strings.Contains(strings.Join(st.Problems, "; "), "is down") {
		t.Errorf("status while the uplink is down: %+v", st)
	}
	sv.blackholed(t)
	if out, err := exec.Command("ip", "link", "set", sv.fab.Uplink, "up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sv.comesBack(t, "repaired: the pool's route through the uplink")
	if !strings.Contains(sv.log.String(), "uplink state changed") {
		t.Errorf("the flap is not in the log:\n%s", sv.log)
	}
}

// blackholed checks, while the uplink's route is gone, that the kernel
// routes the guest's traffic (as it arrives from the slot's host veth)
// into the pool table's blackhole, not on to the host's main table.
func (sv *survivor) blackholed(t *testing.T) {
	t.Helper()
	host, err := netlink.LinkByName(sv.cfg.HostVeth(int(sv.lease.Index)))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := netlink.RouteGetWithOptions(sv.fab.Outside.AsSlice(), &netlink.RouteGetOptions{
		IifIndex: host.Attrs().Index, SrcAddr: sv.cfg.GuestIP().AsSlice()})
	if err == nil && (len(rs) != 1 || rs[0].Type != unix.RTN_BLACKHOLE) {
		t.Errorf("the guest's traffic is routed %+v with the uplink's route gone, want the pool's blackhole", rs)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) { // a blackhole answers EINVAL; no route, ENETUNREACH
		t.Errorf("route lookup: %v", err)
	}
}

// The uplink deleted and made again under its name (a network
// configuration reapplied): while it is missing the guest's traffic is
// dropped (blackholed, no leak); then the daemon attaches the datapath and
// the backstop to the new device and routes through it.
func TestSurvivesUplinkRecreated(t *testing.T) {
	sv := newSurvivor(t)
	if err := sv.fab.Unlink(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if st := sv.status(); !strings.Contains(strings.Join(st.Problems, "; "), "is missing") {
		t.Errorf("status while the uplink is missing: %+v", st)
	}
	sv.blackholed(t)
	sv.leak.Stop()
	if err := sv.fab.Relink(sv.cfg.SlotCIDR); err != nil {
		t.Fatal(err)
	}
	sv.leak = testutil.StartTshark(t, sv.fab.Name, "f0", "src net "+sv.cfg.GuestCIDR.String(), "ip.src", "ip.dst")
	sv.comesBack(t, "repaired: datapath: attach to "+sv.fab.Uplink)
	if err := sv.backstop().Check(); err != nil {
		t.Errorf("after the repair: %v", err)
	}
}

func TestSurvivesPolicyRuleDeleted(t *testing.T) {
	sv := newSurvivor(t)
	if out, err := exec.Command("ip", "rule", "del", "priority", "1000", "from", sv.cfg.GuestCIDR.String()).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sv.comesBack(t, "repaired: the pool's route through the uplink")
}

func TestSurvivesFirewallReload(t *testing.T) {
	sv := newSurvivor(t)
	if out, err := exec.Command("nft", "delete", "table", "inet", sv.prefix).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if st := sv.status(); st.RootRules != 0 {
		t.Errorf("status counts %d root rules with the table gone", st.RootRules)
	}
	sv.comesBack(t, "repaired: root table rewritten")
	if err := (firewall.Root{Prefix: sv.prefix, Uplink: sv.fab.Uplink}).Verify(); err != nil {
		t.Errorf("root table after the repair: %v", err)
	}
	if st := sv.status(); st.RootRules == 0 {
		t.Errorf("status after the repair: %+v", st)
	}
}

// The state directory removed under the daemon: it writes the store anew
// with every lease, and a restart finds them.
func TestSurvivesStateDirRemoved(t *testing.T) {
	sv := newSurvivor(t)
	if err := os.RemoveAll(sv.stateDir); err != nil {
		t.Fatal(err)
	}
	sv.comesBack(t, "repaired: state store written anew")
	s2, err := sv.client().Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "vm-2"})
	if err != nil {
		t.Fatal(err)
	}
	sv.kill()
	sv.start("--uplink", sv.fab.Uplink, "--underlay-ip", sv.fab.Underlay.String(), "--uplink-gateway", sv.fab.Gateway.String())
	if st := sv.status(); st.Leased != 2 {
		t.Errorf("after the restart: %+v, want both leases", st)
	}
	// The second lease, whose slot no VM holds, is released as any.
	if err := sv.client().Release(ctx(t), s2.Id, s2.GetLease().GetLeaseId()); err != nil {
		t.Errorf("release %s: %v", s2.Id, err)
	}
	if _, err := os.Stat(filepath.Join(sv.stateDir, state.FileName)); err != nil {
		t.Error(err)
	}
}

// The API socket removed: the daemon listens on it again.
func TestSurvivesSocketRemoved(t *testing.T) {
	p := newPool(t, 2)
	p.start()
	if err := os.Remove(p.socket); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := p.cli("status"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API is unreachable 3 s after its socket was removed:\n%s", p.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(p.log.String(), "repaired: the API socket was removed") {
		t.Errorf("not in the log:\n%s", p.log)
	}
	if fi, err := os.Stat(p.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket: %v %v", fi, err)
	}
}

// With the daemon dead and the pins removed, the kernel detaches the
// datapath's programs. The backstop it leaves on the uplink keeps the
// pool closed: the guest's packets do not leave with its own address, and
// packets for slot addresses (sent with TTL 1, which the host would answer
// with an ICMP error were it to route them) are not routed by the host.
// A restart puts the datapath back, and the guest's traffic with it.
func TestFailsClosedWithTheDatapathDetached(t *testing.T) {
	sv := newSurvivor(t)
	sv.kill()
	if err := os.RemoveAll(datapath.PinDir("", sv.prefix)); err != nil {
		t.Fatal(err)
	}
	up, err := netlink.LinkByName(sv.fab.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel frees a pinned link after an RCU grace period and a
	// work item: the detach follows the unlink, it is not part of it.
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		testutil.Eventually(t, fmt.Sprintf("the datapath detached from %v", at), func() bool {
			q, err := link.QueryPrograms(link.QueryOptions{Target: up.Attrs().Index, Attach: at})
			return err == nil && len(q.Programs) == 0
		})
	}
	answers := testutil.StartTshark(t, sv.fab.Name, "f0", "icmp and (icmp[0] == 3 or icmp[0] == 11)", "ip.src", "icmp.type")
	if sv.reaches(2) {
		t.Error("the guest reached the outside host with the datapath detached")
	}
	slotIP := netip.MustParseAddr(sv.lease.SlotIp)
	exec.Command("ip", "netns", "exec", sv.fab.Name, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-t", "1",
		"-I", sv.fab.Gateway.String(), slotIP.String()).Run()
	if got := answers.Stop(); len(got) > 0 {
		t.Errorf("the host routed packets for a slot address: %v", got)
	}
	if leaked := sv.leak.Stop(); len(leaked) > 0 {
		t.Errorf("%d packets left the host with the guest's own address: %v", len(leaked), leaked)
	}
	sv.leak = testutil.StartTshark(t, sv.fab.Name, "f0", "src net "+sv.cfg.GuestCIDR.String(), "ip.src", "ip.dst")
	sv.start("--uplink", sv.fab.Uplink, "--underlay-ip", sv.fab.Underlay.String(), "--uplink-gateway", sv.fab.Gateway.String())
	if !sv.reaches(3) {
		t.Errorf("the guest's traffic did not come back after the restart:\n%s", sv.log)
	}
	if st := sv.status(); st.Leased != 1 {
		t.Errorf("the lease went: %+v", st)
	}
	if leaked := sv.leak.Stop(); len(leaked) > 0 {
		t.Errorf("%d packets left the host with the guest's own address: %v", len(leaked), leaked)
	}
}

func (sv *survivor) backstop() datapath.Backstop {
	return datapath.Backstop{Prefix: sv.prefix, Uplink: sv.fab.Uplink,
		GuestCIDR: sv.cfg.GuestCIDR, SlotCIDR: sv.cfg.SlotCIDR}
}

// What slot traffic needs of the host's IPv4 settings, and nothing more,
// is reported and kept: the kernel forwards a packet by the setting of
// the device it came in on, the host veth, which netslotd sets itself.
//   - net.ipv4.ip_forward=0 alone (the host's default) stops nothing: no
//     problem reported, the guest's traffic flows.
//   - A write of 0 to it sets every device's forwarding off (the kernel
//     does that): netslotd sets its veths' back, logs the repair, and
//     leaves the host's own setting at 0.
//   - One veth's forwarding turned off: set back.
//   - Strict reverse-path filtering (conf.all.rp_filter=1) drops slot
//     traffic: reported as a problem, the operator's to change, and gone
//     from status once changed.
//
// The host is a namespace of the test's, so that the machine's own
// settings are never touched: netslotd runs in it (nsenter --net), with
// the uplink to the fabric there.
func TestForwardingIsWhatTheHostVethsNeed(t *testing.T) {
	testenv.RequireRoot(t)
	host := "h" + testutil.Prefix()[1:]
	hostPath := "/run/netns/" + host
	sysctl := func(kv string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", host, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", kv, host, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", host).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", host).Run() })
	exec.Command("ip", "-n", host, "link", "set", "lo", "up").Run()
	sysctl("net.ipv4.ip_forward=0")
	sysctl("net.ipv4.conf.all.rp_filter=0")
	p := newPool(t, 2)
	// Slot addresses of its own: the pinned datapaths of the machine's
	// other pools are visible from any network namespace.
	slotCIDR := netip.MustParsePrefix("100.71.0.0/24")
	fab, err := lab.NewFabricIn(p.prefix[1:], slotCIDR, hostPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fab.Remove)
	up := []string{"--uplink", fab.Uplink, "--underlay-ip", fab.Underlay.String(), "--uplink-gateway", fab.Gateway.String(),
		"--slot-cidr", slotCIDR.String()}
	// nsenter, not ip netns exec: the daemon's namespace pins must be in
	// the machine's mount namespace, where the test and the VMs see them.
	p.launchCmd(exec.Command("nsenter", append([]string{"--net=" + hostPath, filepath.Join(binDir, "netslotd")}, p.args(up...)...)...))
	p.waitReady()
	s, err := p.client().Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewGuestNS(t, p.prefix[1:], s.Netns, p.cfg)
	reaches := func(tries int) bool {
		for range tries {
			if exec.Command("ip", "netns", "exec", g.Name, "ping", "-c", "1", "-W", "1", fab.Outside.String()).Run() == nil {
				return true
			}
		}
		return false
	}
	healthy := func() bool {
		st := p.status()
		return st.Forwarding && len(st.Problems) == 0
	}
	repairs := func() int { return strings.Count(p.log.String(), "repaired: host veths' IPv4 forwarding") }
	veth := p.cfg.HostVeth(int(s.Index))
	vethForwarding := func() string {
		out, _ := exec.Command("ip", "netns", "exec", host, "sysctl", "-n", "net.ipv4.conf."+veth+".forwarding").Output()
		return strings.TrimSpace(string(out))
	}

	// ip_forward=0 from the start: the veths forward, nothing is wrong.
	if !reaches(3) {
		t.Fatalf("with net.ipv4.ip_forward=0 and the host veths forwarding, the guest does not reach the outside host:\n%s", p.log)
	}
	if !healthy() {
		t.Errorf("with net.ipv4.ip_forward=0 and the host veths forwarding, status reports a problem: %+v", p.status())
	}

	// A write to ip_forward sets every device's: the veths are set back.
	sysctl("net.ipv4.ip_forward=1")
	sysctl("net.ipv4.ip_forward=0")
	testutil.Eventually(t, "the host veths' forwarding set back after a write of net.ipv4.ip_forward=0", func() bool {
		return repairs() >= 1 && vethForwarding() == "1"
	})
	if !reaches(3) {
		t.Errorf("the guest's traffic did not come back after the veths were set back:\n%s", p.log)
	}
	if out, _ := exec.Command("ip", "netns", "exec", host, "sysctl", "-n", "net.ipv4.ip_forward").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Errorf("netslotd changed the host's net.ipv4.ip_forward: %s", out)
	}

	// One veth turned off: set back.
	before := repairs()
	sysctl("net.ipv4.conf." + veth + ".forwarding=0")
	testutil.Eventually(t, "the host veth's forwarding set back", func() bool { return repairs() > before && vethForwarding() == "1" })
	if !reaches(3) {
		t.Errorf("the guest's traffic did not come back after its veth was set back:\n%s", p.log)
	}
	if !healthy() {
		t.Errorf("status reports a problem once the veths are set back: %+v", p.status())
	}

	// Strict reverse-path filtering: the operator's, reported.
	sysctl("net.ipv4.conf.all.rp_filter=1")
	testutil.Eventually(t, "status reports strict rp_filter", func() bool {
		return strings.Contains(strings.Join(p.status().Problems, "; "), "rp_filter is 1 (strict)")
	})
	if reaches(2) {
		t.Error("the guest reached the outside host with strict rp_filter: the problem reported is not one")
	}
	sysctl("net.ipv4.conf.all.rp_filter=0")
	testutil.Eventually(t, "status healthy once rp_filter is not strict", healthy)
	if !reaches(3) {
		t.Errorf("the guest's traffic did not come back with rp_filter 0:\n%s", p.log)
	}
}
