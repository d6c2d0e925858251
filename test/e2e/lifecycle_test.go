package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

type slotJSON struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Netns       string `json:"netns"`
	Tap         string `json:"tap"`
	GuestIP     string `json:"guest_ip"`
	GatewayIP   string `json:"gateway_ip"`
	GuestMAC    string `json:"guest_mac"`
	SlotIP      string `json:"slot_ip"`
	Firecracker struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
		GuestMAC    string `json:"guest_mac"`
	} `json:"firecracker"`
	Lease struct {
		LeaseID string `json:"lease_id"`
	} `json:"lease"`
}

type statusJSON struct {
	Total, Free, Leased int
	Ready               bool
	BootSeconds         float64 `json:"boot_seconds"`
	RootRules           int     `json:"root_rules"`
	Boot                struct{ Created, Adopted, Repaired int }
	Problems            []string
	Forwarding          bool
}

func (p *pool) status() statusJSON {
	p.t.Helper()
	out, err := p.cli("status", "-o", "json")
	if err != nil {
		p.t.Fatal(err)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		p.t.Fatalf("status json %q: %v", out, err)
	}
	return st
}

func (p *pool) acquireJSON(args ...string) slotJSON {
	p.t.Helper()
	out, err := p.cli(append([]string{"acquire", "-o", "json"}, args...)...)
	if err != nil {
		p.t.Fatal(err)
	}
	var s slotJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		p.t.Fatalf("acquire json %q: %v", out, err)
	}
	return s
}

func TestLifecycleThroughCLI(t *testing.T) {
	p, _, up := uplinkPool(t, 300)
	p.start(up...)
	if o := p.kernelObjects(); o.Pins != 300 || o.HostVeths != 300 || o.RootTables != 1 {
		t.Fatalf("kernel objects after boot: %+v", o)
	}
	st := p.status()
	if st.Total != 300 || st.Free != 300 || st.Leased != 0 || !st.Ready || st.BootSeconds <= 0 || st.Boot.Created != 300 {
		t.Fatalf("status after boot: %+v", st)
	}
	if fi, err := os.Stat(p.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// A client that is not root is refused even when the socket's mode
	// would let it connect (the daemon checks SO_PEERCRED).
	asNobody := func() error {
		c := exec.Command(filepath.Join(binDir, "netslot"), "--socket", p.socket, "--timeout", "2s", "status")
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return c.Run()
	}
	// The socket lives in a test directory; only that directory and the
	// socket are opened up, for the length of this check.
	open := filepath.Dir(p.socket)
	for d := open; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	os.Chmod(p.socket, 0o666)
	if err := asNobody(); err == nil {
		t.Fatal("non-root client served")
	}
	os.Chmod(p.socket, 0o600)
	if _, err := p.cli("status"); err != nil {
		t.Fatalf("root client after the refusal: %v", err)
	}

	a := p.acquireJSON("--owner", "vm-a")
	b := p.acquireJSON("--vni", "4242", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16")
	if a.ID == b.ID {
		t.Fatalf("one slot vended twice: %s", a.ID)
	}
	for _, s := range []slotJSON{a, b} {
		if !strings.HasPrefix(s.Netns, "/run/netns/"+p.prefix+"-") || s.Tap != "tap0" || s.GuestIP != p.cfg.GuestIP().String() ||
			s.GatewayIP != p.cfg.GatewayIP().String() || s.GuestMAC != "06:00:ac:10:00:02" || s.SlotIP == "" || s.State != "leased" ||
			s.Firecracker.IfaceID != "eth0" || s.Firecracker.HostDevName != "tap0" || s.Firecracker.GuestMAC != s.GuestMAC {
			t.Fatalf("acquire answer incomplete: %+v", s)
		}
		if _, err := os.Stat(s.Netns); err != nil {
			t.Fatalf("netns of acquired slot: %v", err)
		}
	}
	if st := p.status(); st.Free != 298 || st.Leased != 2 {
		t.Fatalf("status with two leases: %+v", st)
	}
	out, err := p.cli("list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list []slotJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 300 {
		t.Fatalf("list: %d slots, %v", len(list), err)
	}
	leased := 0
	for _, s := range list {
		if s.State == "leased" {
			leased++
		} else if s.State != "free" {
			t.Fatalf("slot %s state %q", s.ID, s.State)
		}
	}
	if leased != 2 {
		t.Fatalf("list shows %d leased", leased)
	}
	if out, err := p.cli("show", a.ID, "-o", "json"); err != nil || !strings.Contains(out, `"lease_id":"`) {
		t.Fatalf("show %s has no lease id: %s %v", a.ID, out, err)
	}
	out, err = p.cli("show", b.ID, "-o", "json")
	if err != nil || !strings.Contains(out, `"vni":4242`) || !strings.Contains(out, `"remote_vtep":"198.18.0.9"`) {
		t.Fatalf("show %s: %s %v", b.ID, out, err)
	}
	for _, human := range [][]string{{"status"}, {"list"}, {"show", a.ID}} {
		if out, err := p.cli(human...); err != nil || out == "" || strings.HasPrefix(out, "{") {
			t.Fatalf("netslot %v: %q %v", human, out, err)
		}
	}
	// A VM launcher releases the lease it got; by hand, without a lease
	// id, the release is forced, and the daemon logs it.
	if _, err := p.cli("release", a.ID, "--lease", "0000000000000000"); err == nil || !strings.Contains(err.Error(), "held by another lease") {
		t.Fatalf("release with another lease id: %v", err)
	}
	if _, err := p.cli("release", a.ID, "--lease", a.Lease.LeaseID); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(p.log.String(), "forced release") {
		t.Fatalf("a release by lease id was logged as forced:\n%s", p.log)
	}
	if _, err := p.cli("release", b.ID); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.log.String(), "forced release") || !strings.Contains(p.log.String(), b.ID) {
		t.Errorf("the forced release of %s is not in the daemon's log:\n%s", b.ID, p.log)
	}
	if st := p.status(); st.Free != 300 || st.Leased != 0 {
		t.Fatalf("status after release: %+v", st)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	p := newPool(t, 20)
	p.start()
	held := p.acquireJSON()
	before := p.kernelObjects()
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"acquire", "--vni", "0", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16"}, "invalid vni 0"},
		{[]string{"acquire", "--vni", "16777216", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16"}, "invalid vni"},
		{[]string{"acquire", "--vni", "7", "--vtep", "198.18.0", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16"}, "invalid remote vtep"},
		{[]string{"acquire", "--vni", "7", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.500", "--vpc-cidr", "10.1.0.0/16"}, "invalid vpc ip"},
		{[]string{"acquire", "--vni", "7", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/99"}, "invalid vpc cidr"},
		{[]string{"acquire", "--vni", "15728640", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16"}, "reserved for pooled slots"},
		{[]string{"acquire", "--vni", "7", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16", "--peer-mac", "01:00:5e:00:00:01"}, "invalid peer mac"},
		{[]string{"acquire", "--vni", "7", "--vtep", "198.18.0.9", "--vpc-ip", "10.1.0.5", "--vpc-cidr", "10.1.0.0/16"}, "no uplink"},
		{[]string{"acquire", "--allow", "10.0.0.0"}, "invalid egress cidr"},
		{[]string{"acquire", "--allow", "10.0.0.1/8"}, "host bits"},
		{[]string{"acquire", "--allow", "10.0.0.0/8", "--deny-all"}, "choose one"},
		{[]string{"acquire", "--inbound", "tcp"}, "want PROTO/PORT"},
		{[]string{"acquire", "--inbound", "tcp/0"}, "invalid inbound ports"},
		{[]string{"acquire", "--inbound", "sctp/80"}, "invalid inbound protocol"},
		{[]string{"acquire", "--inbound", "udp/53,10.0.0.1/8"}, "host bits"},
		{[]string{"release", p.prefix + "-999"}, "unknown slot id"},
		{[]string{"release", "nonsense"}, "unknown slot id"},
		{[]string{"show", p.prefix + "-20"}, "unknown slot id"},
		{[]string{"release", otherThan(p, held.ID)}, "not leased"},
	}
	for _, tc := range bad {
		out, err := p.cli(tc.args...)
		if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("netslot %v: exit %d, %v, output %q; want error %q", tc.args, exitCode(err), err, out, tc.want)
		}
	}
	if _, err := p.cli("release", held.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli("release", held.ID); err == nil || !strings.Contains(err.Error(), "not leased") {
		t.Errorf("double release: %v", err)
	}
	if st := p.status(); st.Free != 20 || st.Leased != 0 {
		t.Errorf("bad input changed the pool: %+v", st)
	}
	if after := p.kernelObjects(); after != before {
		t.Errorf("bad input changed the kernel: %+v -> %+v", before, after)
	}

	// An empty pool answers at once with RESOURCE_EXHAUSTED.
	c := p.client()
	for range 20 {
		if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("acquire on empty pool: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("acquire on empty pool waited %v", d) // a hang, not a timing assertion
	}
	if _, err := p.cli("acquire"); err == nil || !strings.Contains(err.Error(), "(resourceexhausted, POOL_EMPTY)") {
		t.Fatalf("cli acquire on empty pool: %v", err)
	}
}

// otherThan returns a slot id of p other than id.
func otherThan(p *pool, id string) string {
	if id == p.prefix+"-0" {
		return p.prefix + "-1"
	}
	return p.prefix + "-0"
}

func TestDaemonRefusesBadStart(t *testing.T) {
	p := newPool(t, 10)
	// A range the host routes is refused: give the host such a route.
	if out, err := exec.Command("ip", "route", "add", "blackhole", "198.51.100.0/24").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "route", "del", "blackhole", "198.51.100.0/24").Run()
	// A slot count the slot CIDR cannot hold: refused, nothing created.
	if out, err := p.netslotd(p.args("--slot-cidr", "100.99.0.0/29")...); err == nil || !strings.Contains(out, "holds 6 slot addresses") {
		t.Fatalf("too many slots for the cidr: %v\n%s", err, out)
	}
	// An uplink that is not there: refused, with its name.
	if out, err := p.netslotd(p.args("--uplink", "nsnouplink0", "--underlay-ip", "198.18.0.2")...); err == nil || !strings.Contains(out, "nsnouplink0: Link not found") {
		t.Fatalf("missing uplink: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		p.args("--metrics-addr", "0.0.0.0:9464"),
		p.args("--prefix", "Bad"),
		p.args("--uplink", "a/b"),
		p.args("--slot-cidr", "198.51.100.0/25"), // routed by the host (below)
		p.args("--slot-cidr", "127.0.0.0/8"),
		p.args("--prefix", "lo"), // would match the host's lo in the root table
	} {
		if out, err := p.netslotd(args...); err == nil {
			t.Fatalf("netslotd %v started:\n%s", args, out)
		}
	}
	if o := p.kernelObjects(); o != (objects{}) {
		t.Fatalf("refused start left objects: %+v", o)
	}

	p.start()
	before := p.kernelObjects()
	second := newPool(t, 10)
	cases := map[string][]string{
		"same socket":    append(second.args(), "--socket", p.socket),
		"same prefix":    append(second.args(), "--prefix", p.prefix),
		"same state dir": append(second.args(), "--state-dir", p.stateDir),
	}
	for name, args := range cases {
		out, err := p.netslotd(args...)
		if err == nil || !strings.Contains(out, "another") {
			t.Errorf("%s: second daemon not refused: %v\n%s", name, err, out)
		}
	}
	if _, err := p.netslotd("teardown", "--prefix", p.prefix, "--state-dir", p.stateDir); err == nil {
		t.Error("teardown of a running pool was not refused")
	}
	if after := p.kernelObjects(); after != before {
		t.Errorf("refused starts changed the first pool: %+v -> %+v", before, after)
	}
	if st := p.status(); st.Total != 10 || st.Free != 10 {
		t.Errorf("first daemon after refused starts: %+v", st)
	}
	// A start with other settings on the same state dir is refused too.
	p.kill()
	p.slots = 11
	if out, err := p.netslotd(p.args()...); err == nil || !strings.Contains(out, "holds a pool with 10 slots") {
		t.Errorf("restart with another size: %v\n%s", err, out)
	}
	p.slots = 10
}
