package testutil

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/testenv"
)

// A test process killed mid-run (go test's -timeout, SIGKILL) runs no
// cleanup: what it made must go with the next run's first Prefix. The
// killed process here is this test binary run again: it boots a pool
// with an uplink on a fabric, puts a guest namespace on a slot's tap and
// a process in that namespace, says so, and waits to be killed.
func TestKilledRunIsSwept(t *testing.T) {
	if os.Getenv("NETSLOT_SWEEP_CHILD") != "" {
		sweepChild(t)
		return
	}
	testenv.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledRunIsSwept$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "NETSLOT_SWEEP_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	prefix, sleeper := "", 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "READY %s %d", &prefix, &sleeper); err == nil {
			break
		}
	}
	if prefix == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("the child never got ready")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	tag := prefix[1:]
	// What must survive: names like the child's that it never claimed,
	// and one it claimed that this live process claims too.
	controls := sweepControls(prefix)
	t.Cleanup(func() {
		for _, n := range controls {
			if l, err := netlink.LinkByName(n); err == nil {
				netlink.LinkDel(l)
			}
		}
	})
	lab.ClaimName(controls[len(controls)-1])
	// A dead claim of an older run's shape (a bare prefix, as the bench's
	// were): the pool of that prefix, not every name that has its letters
	// after the first (which made "nxla" sweep vxlan links).
	old := filepath.Join(lab.OwnerDir, "1-old")
	if err := os.WriteFile(old, []byte("x"+tag[:len(tag)-1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(old)
	isControl := func(n string) bool { return slices.Contains(controls, n) }
	left := func() []string {
		var names []string
		ents, _ := os.ReadDir("/run/netns")
		for _, e := range ents {
			if strings.Contains(e.Name(), tag) {
				names = append(names, "netns "+e.Name())
			}
		}
		ls, err := links.Links(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if strings.Contains(l.Attrs().Name, tag) && !isControl(l.Attrs().Name) {
				names = append(names, "link "+l.Attrs().Name)
			}
		}
		if datapath.Exists("", prefix) {
			names = append(names, "pinned datapath")
		}
		if _, err := os.Stat(filepath.Join(daemon.LockDir, prefix+".lock")); err == nil {
			names = append(names, "lock file")
		}
		return names
	}
	before := left()
	if len(before) < 5 {
		t.Fatalf("the killed child left too little to prove a sweep: %v", before)
	}
	if n := lab.SweepDead(Logger(t)); n < 1 {
		t.Errorf("swept %d claims, want the killed child's", n)
	}
	if !Wait(time.Minute, func() bool { return len(left()) == 0 }) {
		t.Errorf("after the sweep, left of the killed child's %v: %v", before, left())
	}
	if !Wait(10*time.Second, func() bool { return syscall.Kill(sleeper, 0) != nil }) {
		t.Errorf("the process the killed child left in its guest's namespace (pid %d) still runs", sleeper)
	}
	for _, n := range controls {
		if _, err := netlink.LinkByName(n); err != nil {
			t.Errorf("link %s, which the sweep must leave, is gone: %v", n, err)
		}
	}
	t.Logf("swept %d objects of the killed child: %v; left %v", len(before), before, controls)
}

// sweepControls names the links the child makes that a sweep must leave:
// one named like its pool's (prefix and a letter), one like its tag's
// names but for the tag's last letter, and one it claims by name, last,
// which the parent claims too.
func sweepControls(prefix string) []string {
	tag := prefix[1:]
	return []string{prefix + "x", "v" + tag[:len(tag)-1], "k" + tag}
}

// sweepChild makes what a test makes, then waits to be killed.
func sweepChild(t *testing.T) {
	cfg := NewConfig(3)
	fab := NewFabric(t, cfg.Prefix[1:], cfg.SlotCIDR)
	d, err := daemon.New(daemon.Options{Config: cfg, StateDir: t.TempDir(), Uplink: fab.Uplink,
		UnderlayIP: fab.Underlay, UplinkGateway: fab.Gateway, Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Boot(context.Background()); err != nil {
		t.Fatal(err)
	}
	info, err := d.Acquire(context.Background(), daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := lab.NewGuestNS(cfg.Prefix[1:], cfg.NetnsPath(info.Index), cfg)
	if err != nil {
		t.Fatal(err)
	}
	controls := sweepControls(cfg.Prefix)
	for _, n := range controls {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n}}); err != nil {
			t.Fatal(err)
		}
	}
	lab.ClaimName(controls[len(controls)-1])
	// A process left in the guest's namespace, as a DHCP client is.
	sleeper := exec.Command("ip", "netns", "exec", g.Name, "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %s %d\n", cfg.Prefix, sleeper.Process.Pid)
	time.Sleep(10 * time.Minute)
}
