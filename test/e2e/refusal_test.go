package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/state"
)

// secondUplink makes a veth pair, name in the root namespace with addr
// (an address of 198.18.77.0/24, which the fabric does not use) and its
// peer in a namespace of its own, removed when t ends.
func secondUplink(t *testing.T, name, addr string) {
	t.Helper()
	ns := "n" + name
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"addr", "add", addr + "/24", "dev", name},
		{"link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", name).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
}

// A start that clashes with another pool, or names an unreachable
// gateway, is refused with a clear error and leaves nothing behind: no
// pin, veth, root table, policy rule, pinned datapath, nor a saved
// configuration that would block a corrected start.
func TestRefusedStartsLeaveNothing(t *testing.T) {
	a, fab, up := uplinkPool(t, 10)
	a.start(up...)
	b := newPool(t, 10)
	other := "u" + b.prefix[1:] + "x"
	secondUplink(t, other, "198.18.77.2")
	for _, tc := range []struct {
		what string
		args []string
		want string
	}{
		{"the same uplink as another pool", append(b.args(), up...), "already carries pool"},
		{"an unreachable uplink gateway", b.args("--uplink", fab.Uplink, "--underlay-ip", fab.Underlay.String(), "--uplink-gateway", "198.51.99.1"),
			"198.51.99.1 is not on"},
		{"another uplink, slot addresses overlapping another pool's", b.args("--uplink", other, "--underlay-ip", "198.18.77.2", "--slot-cidr", a.cfg.SlotCIDR.String()),
			"overlap pool"},
		// Refused only once its root table, policy route and datapath were
		// made (its guest network is already routed by the other pool's
		// table): the start takes them back.
		{"another uplink, the same guest network as another pool", b.args("--uplink", other, "--underlay-ip", "198.18.77.2", "--guest-cidr", a.cfg.GuestCIDR.String()),
			"already routed by table"},
		// No device of the root namespace may start with the prefix, the
		// uplink included (README, netslotd --help).
		{"a prefix the uplink's name starts with", b.args("--prefix", other[:len(other)-1], "--uplink", other, "--underlay-ip", "198.18.77.2"),
			"also matches the host device " + other},
	} {
		out, err := b.netslotd(tc.args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %v, want a refusal with %q:\n%s", tc.what, err, tc.want, out)
		}
		if o := b.kernelObjects(); o != (objects{}) {
			t.Errorf("%s: the refused start left %+v", tc.what, o)
		}
		if _, err := os.Stat(filepath.Join(b.stateDir, state.FileName)); err == nil {
			if s, err := state.Open(b.stateDir); err == nil {
				_, ok, _ := s.Config()
				s.Close()
				if ok {
					t.Errorf("%s: the refused start left a saved configuration", tc.what)
				}
			}
		}
	}
	// The first pool was not touched, and a corrected start works.
	if st := a.status(); !st.Ready || st.Free != 10 {
		t.Errorf("first pool after the refused starts: %+v", st)
	}
	// b's own addressing (newPool, after a started) is apart from a's.
	b.start("--uplink", other, "--underlay-ip", "198.18.77.2")
}

// SIGHUP is not the end of the daemon: it says it reloads nothing and
// serves on.
func TestSIGHUPIsIgnored(t *testing.T) {
	p := newPool(t, 4)
	p.start()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-p.exited:
		t.Fatalf("netslotd exited on SIGHUP:\n%s", p.log)
	default:
	}
	if st := p.status(); !st.Ready || st.Free != 4 {
		t.Errorf("status after SIGHUP: %+v", st)
	}
	if !strings.Contains(p.log.String(), "SIGHUP ignored") {
		t.Errorf("no word of the SIGHUP in the log:\n%s", p.log)
	}
}
