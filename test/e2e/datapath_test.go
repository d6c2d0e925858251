package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testutil"
)

// uplinkPool is a pool whose uplink leads to a fresh test fabric.
func uplinkPool(t *testing.T, slots int) (*pool, *testutil.Fabric, []string) {
	p := newPool(t, slots)
	fab := testutil.NewFabric(t, p.prefix[1:], p.cfg.SlotCIDR)
	args := []string{"--uplink", fab.Uplink, "--underlay-ip", fab.Underlay.String(), "--uplink-gateway", fab.Gateway.String()}
	return p, fab, args
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingFlood pings dst every 10 ms from namespace ns, count times, and
// returns a function that waits for it and reports sent and received.
func pingFlood(t *testing.T, ns string, dst netip.Addr, count int) func() (sent, got int) {
	cmd := exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(count), dst.String())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() (int, int) {
		cmd.Wait()
		m := pingSummary.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("ping %s: %s", dst, out.String())
		}
		s, _ := strconv.Atoi(m[1])
		g, _ := strconv.Atoi(m[2])
		return s, g
	}
}

// vpcLeaseWithGuest has p's running daemon lease a slot attached to a VPC
// (VNI 4242, a userspace VTEP in fab with the VPC host 10.9.0.1), puts a
// guest on its tap and warms the path up (the first packet to the VPC goes
// out as an ARP request).
func vpcLeaseWithGuest(t *testing.T, p *pool, fab *testutil.Fabric) (*netslotv1.Slot, *testutil.GuestNS, netip.Addr) {
	t.Helper()
	vpcHost := netip.MustParseAddr("10.9.0.1")
	testutil.StartVTEP(t, fab, 4242, vpcHost, net.HardwareAddr{0x02, 0x76, 0x70, 0x63, 0, 1})
	s, err := p.client().Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "vm", Vpc: &netslotv1.VpcAttachment{
		Vni: 4242, RemoteVtep: fab.VTEP.String(), VpcIp: "10.9.0.5", VpcCidrs: []string{"10.9.0.0/24"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewGuestNS(t, p.prefix[1:], s.Netns, p.cfg)
	exec.Command("ip", "netns", "exec", g.Name, "ping", "-c", "2", "-W", "1", vpcHost.String()).Run()
	return s, g, vpcHost
}

// TestDatapathKeepsForwardingThroughKill9 pings through a leased slot every
// 10 ms, to the outside host (NAT) and to a VPC host (Geneve), while the
// daemon is killed with -9 and restarted: the pinned datapath forwards
// throughout and not one echo is lost.
func TestDatapathKeepsForwardingThroughKill9(t *testing.T) {
	p, fab, up := uplinkPool(t, 200)
	p.start(up...)
	s, g, vpcHost := vpcLeaseWithGuest(t, p, fab)

	const count = 800 // 8 s at 10 ms
	nat := pingFlood(t, g.Name, fab.Outside, count)
	vpc := pingFlood(t, g.Name, vpcHost, count)
	time.Sleep(time.Second)
	before := p.kernelObjects()
	p.kill()
	killed := time.Now()
	p.start(up...)
	restart := time.Since(killed)
	natSent, natGot := nat()
	vpcSent, vpcGot := vpc()
	t.Logf("daemon down %v; NAT %d/%d echoes, Geneve %d/%d", restart.Round(time.Millisecond), natGot, natSent, vpcGot, vpcSent)
	if natSent != count || natGot != count {
		t.Errorf("NAT path lost %d of %d echoes across the restart", natSent-natGot, natSent)
	}
	if vpcSent != count || vpcGot != count {
		t.Errorf("Geneve path lost %d of %d echoes across the restart", vpcSent-vpcGot, vpcSent)
	}
	if after := p.kernelObjects(); after != before {
		t.Errorf("restart changed kernel objects: %+v -> %+v", before, after)
	}
	st := p.status()
	if st.Boot.Adopted != p.slots || st.Boot.Created != 0 || st.Leased != 1 {
		t.Errorf("after restart: %+v", st)
	}
	out, err := p.cli("show", s.Id)
	t.Logf("netslot show %s:\n%s", s.Id, out)
	if err != nil || !regexp.MustCompile(`vni\s+4242 \(attached\)`).MatchString(out) {
		t.Errorf("show after restart:\n%s%v", out, err)
	}
	// Counters survive the restart (they live in pinned maps).
	m := regexp.MustCompile(`tx \(guest to uplink\)\s+(\d+) packets, \d+ bytes, (\d+) encapsulated`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("show has no counters:\n%s", out)
	}
	if tx, _ := strconv.Atoi(m[1]); tx < 2*count {
		t.Errorf("tx counter %d after %d echo requests", tx, 2*count)
	}
	if enc, _ := strconv.Atoi(m[2]); enc < count {
		t.Errorf("encapsulated counter %d after %d echo requests to the VPC", enc, count)
	}
}

// TestBenchReportQuick runs the benchmark report at its quick sizes: the
// harness works end to end (CNI reference plugins included), writes its
// report, plots and samples, cleans up, and reports what the design
// promises. No timing is asserted: this machine is shared.
func TestBenchReportQuick(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	// The tables the bench may make: its pools' (prefixes na, nb, nx, nd,
	// nf) and
	// the replaced design's iptables tables. Other jobs' tables may come
	// and go meanwhile.
	benchTables := func() map[string]bool {
		out, err := run("nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) != 3 || f[0] != "table" {
				continue
			}
			if name := f[2]; benchPrefix(name) ||
				((f[1] == "ip" || f[1] == "ip6") && (name == "filter" || name == "nat")) {
				m[l] = true
			}
		}
		return m
	}
	tables := benchTables()
	defer func() {
		if after := benchTables(); !maps.Equal(after, tables) {
			t.Errorf("nftables tables the bench may make, before it:\n%v\nafter:\n%v", tables, after)
		}
	}()
	if out, err := run(filepath.Join(binDir, "netslot-bench"), "--quick", "--out", dir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	t.Log(report)
	for _, want := range []string{
		"| netslot acquire, in-process |", "| on-demand: build the slot at request time |",
		"| CNI ADD (ptp + tap), new namespace |", "| CNI DEL |",
		"| TCP connections/s, slot 0", "| UDP round trip, slot 49", "| root-namespace rules | 1503 | 5 |",
		"| 400 |", "| 5 / 12003 |",
		"## Summary: Lambda's before/after table, on this machine", "| root-namespace rules at 50 slots | > 125,000 | 144 | 5 | 1503 |",
		"## DHCP", "| netslot (eBPF on tap0) | DISCOVER -> OFFER |", "| dnsmasq --no-ping | REQUEST -> ACK |",
		"## The first packet to a VPC peer", "| peer unknown, ARP answered at once |",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if !regexp.MustCompile(`\| conntrack entries left by the run \| [1-9]\d* \| 0 \|`).MatchString(report) {
		t.Errorf("want conntrack entries for the replaced design and none for netslot")
	}
	for _, f := range []string{"attach_cdf.svg", "datapath_rtt_cdf.svg", "boot_per_slot.svg", "attach_samples.csv", "datapath_rtt.csv", "boot_timeline.csv"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() < 1000 {
			t.Errorf("%s: %v", f, err)
		}
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if benchPrefix(e.Name()) || strings.HasPrefix(e.Name(), "bq") || strings.HasPrefix(e.Name(), "ff") || strings.HasPrefix(e.Name(), "gf") {
			t.Errorf("bench left namespace %s", e.Name())
		}
	}
}

// benchPrefix reports whether name is one of the bench's pools' (prefixes
// na, nb, nx, nd and nf).
func benchPrefix(name string) bool {
	for _, p := range []string{"na", "nb", "nx", "nd", "nf"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// oldLayoutNetslotd builds netslotd with the datapath layout made for the
// upgrade test (-tags netslot_testlayout: its slot and tunnel entries carry
// a field the current layout does not have, which shifts every other).
func oldLayoutNetslotd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "netslotd-testlayout")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if out, err := exec.Command("go", "build", "-tags", "netslot_testlayout", "-o", bin, "../../cmd/netslotd").CombinedOutput(); err != nil {
		t.Fatalf("build the old-layout netslotd: %v\n%s", err, out)
	}
	return bin
}

// TestUpgradeMigratesLiveLeases upgrades a busy pool: a netslotd whose
// maps have an older layout runs a lease with a VPC; while its guest pings
// the outside host (NAT) and a VPC host (Geneve) every 10 ms, it is killed
// and the current netslotd starts on its pinned state. The current one
// migrates the changed maps (field by field, by name), swaps its programs
// in on the held links, and not one echo is lost; the lease, its VPC and
// its counters are kept.
func TestUpgradeMigratesLiveLeases(t *testing.T) {
	old := oldLayoutNetslotd(t)
	p, fab, up := uplinkPool(t, 50)
	p.launchCmd(exec.Command(old, p.args(up...)...))
	p.waitReady()
	s, g, vpcHost := vpcLeaseWithGuest(t, p, fab)
	c := p.client()
	cfg := p.cfg

	const count = 600 // 6 s at 10 ms
	nat := pingFlood(t, g.Name, fab.Outside, count)
	vpc := pingFlood(t, g.Name, vpcHost, count)
	time.Sleep(time.Second)
	p.kill()
	p.start(up...) // the current netslotd
	natSent, natGot := nat()
	vpcSent, vpcGot := vpc()
	t.Logf("upgrade: NAT %d/%d echoes, Geneve %d/%d", natGot, natSent, vpcGot, vpcSent)
	if natSent != count || natGot != count {
		t.Errorf("NAT path lost %d of %d echoes across the upgrade", natSent-natGot, natSent)
	}
	if vpcSent != count || vpcGot != count {
		t.Errorf("Geneve path lost %d of %d echoes across the upgrade", vpcSent-vpcGot, vpcSent)
	}
	if !strings.Contains(p.log.String(), "pinned maps migrated to this version's layout") ||
		!regexp.MustCompile(`maps=slots,tunnels`).MatchString(p.log.String()) {
		t.Errorf("no migration of slots and tunnels in the log:\n%s", p.log)
	}
	got, err := c.Get(ctx(t), s.Id)
	if err != nil || got.GetLease().GetLeaseId() != s.Lease.LeaseId || got.GetDatapath().GetVni() != 4242 || got.GetDatapath().GetTxPackets() < 2*count {
		t.Errorf("the lease after the upgrade: %v, %v", got, err)
	}
	// A new lease on the migrated maps works too.
	s2, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	g2 := testutil.NewGuestNS(t, p.prefix[1:]+"b", s2.Netns, cfg)
	if out, err := exec.Command("ip", "netns", "exec", g2.Name, "ping", "-c", "2", "-W", "1", fab.Outside.String()).CombinedOutput(); err != nil {
		t.Errorf("a new lease after the upgrade: %v\n%s", err, out)
	}
}

// A slot's answer carries what its guest configures itself with when no
// DHCP runs: the MTU its path carries (less the tunnel's overhead with a
// VPC once the uplink leaves no room for it), its DNS servers (the pool's,
// or the lease's) and the kernel's ip= argument; -o firecracker prints
// them as a Firecracker launcher uses them.
func TestGuestConfigInTheAnswer(t *testing.T) {
	p, fab, up := uplinkPool(t, 4)
	p.start(append(up, "--dns", "198.18.0.53,198.18.1.53")...)
	vpc := []string{"--vni", "4242", "--vtep", fab.VTEP.String(), "--vpc-ip", "10.9.0.5", "--vpc-cidr", "10.9.0.0/24"}
	acquire := func(args ...string) (cfg struct {
		NetworkInterface map[string]string `json:"network_interface"`
		BootArgs         string            `json:"boot_args"`
		MTU              int               `json:"mtu"`
		DNS              []string          `json:"dns"`
		JailerNetns      string            `json:"jailer_netns"`
	}) {
		t.Helper()
		out, err := p.cli(append([]string{"acquire", "-o", "firecracker"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return cfg
	}
	plain := acquire()
	ipArg := fmt.Sprintf("ip=%s::%s:255.255.255.252::eth0:off:", p.cfg.GuestIP(), p.cfg.GatewayIP())
	if plain.BootArgs != ipArg+"198.18.0.53:198.18.1.53" || plain.MTU != 1500 ||
		plain.NetworkInterface["host_dev_name"] != "tap0" || !strings.HasPrefix(plain.JailerNetns, "/run/netns/"+p.prefix+"-") {
		t.Errorf("a plain lease: %+v", plain)
	}
	own := acquire(append(vpc, "--dns", "198.18.5.53")...)
	if own.MTU != 1500 || len(own.DNS) != 1 || own.BootArgs != ipArg+"198.18.5.53" {
		t.Errorf("a VPC lease with its own DNS over a 9000-byte uplink: %+v", own)
	}
	// An uplink of 1500 bytes leaves no room for Geneve over 1500.
	if out, err := exec.Command("ip", "link", "set", fab.Uplink, "mtu", "1500").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	testutil.Eventually(t, "a VPC lease's MTU after the uplink's went to 1500", func() bool {
		out, err := p.cli("show", strings.TrimPrefix(own.JailerNetns, "/run/netns/"), "-o", "json")
		var s struct{ MTU int }
		return err == nil && json.Unmarshal([]byte(out), &s) == nil && s.MTU == 1500-50
	})
	if plain2 := acquire(); plain2.MTU != 1500 {
		t.Errorf("a plain lease over a 1500-byte uplink: MTU %d", plain2.MTU)
	}
}
