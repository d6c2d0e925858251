package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestSleeperProcess is not a test: it is the process the sweep tests
// start (their stand-in for dnsmasq and for a harness), which sleeps until
// it is killed or a minute has passed.
func TestSleeperProcess(t *testing.T) {
	if os.Getenv("NETSLOT_LAB_SLEEPER") != "1" {
		t.Skip("started by the sweep tests only")
	}
	time.Sleep(time.Minute)
}

// sleeper starts this test binary as a sleeping process whose command
// line is name (a link to the binary in bin) and args: a dnsmasq as the
// sweep sees one. It is killed when t ends.
func sleeper(t *testing.T, bin, name string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(bin, name)
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(exe, link); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(link, append([]string{"-test.run=^TestSleeperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "NETSLOT_LAB_SLEEPER=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return cmd
}

// exited reports whether cmd has ended (killed by the sweep), waiting up
// to limit for it.
func exited(cmd *exec.Cmd, limit time.Duration) bool {
	p, err := procOf(cmd.Process.Pid)
	if err != nil {
		return true
	}
	for deadline := time.Now().Add(limit); ; time.Sleep(10 * time.Millisecond) {
		if !p.running() || zombie(p.pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// zombie reports whether pid has exited and waits for its parent.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	for k := len(b) - 1; k >= 0; k-- {
		if b[k] == ')' {
			return k+2 < len(b) && b[k+2] == 'Z'
		}
	}
	return false
}

// writeRun makes a run directory under parent named for pid, owned by
// owner (nil: no owner record), with instances recorded.
func writeRun(t *testing.T, parent string, pid int, suffix string, owner *proc, instances ...proc) string {
	t.Helper()
	dir := filepath.Join(parent, DnsmasqDirPrefix+strconv.Itoa(pid)+"-"+suffix)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if owner != nil {
		host, err := hostOf()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dnsmasqOwnerFile), fmt.Appendf(nil, "%s\n%d %d\n", host, owner.pid, owner.start), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var rec []byte
	for _, p := range instances {
		rec = fmt.Appendf(rec, "%d %d\n", p.pid, p.start)
	}
	if err := os.WriteFile(filepath.Join(dir, dnsmasqInstancesFile), rec, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mustProc(t *testing.T, pid int) proc {
	t.Helper()
	p, err := procOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The sweep kills what a gone harness recorded, and only that: not a
// running harness's instances, not a dnsmasq of this lab's naming that no
// run recorded (another job's), not a process that took a recorded pid
// since; and a harness whose pid another process took since counts as
// gone. No root: the processes are the test's own.
func TestSweepDnsmasqKillsOnlyItsOwn(t *testing.T) {
	parent, bin := t.TempDir(), t.TempDir()
	// A harness that is gone: started, its start time taken, killed.
	h := sleeper(t, bin, "harness")
	gone := mustProc(t, h.Process.Pid)
	h.Process.Kill()
	if !exited(h, 10*time.Second) {
		t.Fatal("the stand-in harness did not exit")
	}
	self := mustProc(t, os.Getpid())
	dnsmasq := func(dir string) (*exec.Cmd, proc) {
		c := sleeper(t, bin, "dnsmasq", "--pid-file="+filepath.Join(dir, "x.pid"), "--dhcp-leasefile="+filepath.Join(dir, "x.leases"))
		return c, mustProc(t, c.Process.Pid)
	}

	// Orphans of the gone harness: swept.
	orphanDir := filepath.Join(parent, DnsmasqDirPrefix+strconv.Itoa(gone.pid)+"-a")
	orphan, orphanProc := dnsmasq(orphanDir)
	writeRun(t, parent, gone.pid, "a", &gone, orphanProc)
	// A running harness's (this test's, by its own record): kept.
	liveDir, err := NewDnsmasqDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	live, _ := dnsmasq(liveDir)
	if err := recordInstance(liveDir, live.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Another job's dnsmasq under this lab's naming, its harness's pid
	// gone, but no run of this lab's recorded it: kept.
	otherDir := filepath.Join(parent, DnsmasqDirPrefix+strconv.Itoa(gone.pid)+"-other")
	if err := os.Mkdir(otherDir, 0o755); err != nil {
		t.Fatal(err)
	}
	other, _ := dnsmasq(otherDir)
	// A recorded pid that another process holds now (its start time is
	// not the recorded one): kept.
	recycledDir := filepath.Join(parent, DnsmasqDirPrefix+strconv.Itoa(gone.pid)+"-r")
	recycled, rp := dnsmasq(recycledDir)
	writeRun(t, parent, gone.pid, "r", &gone, proc{pid: rp.pid, start: rp.start + 1})
	// A harness whose pid another process took since (this test's pid,
	// another start time): gone, its orphan swept.
	reusedDir := filepath.Join(parent, DnsmasqDirPrefix+strconv.Itoa(self.pid)+"-u")
	reusedOrphan, rop := dnsmasq(reusedDir)
	writeRun(t, parent, self.pid, "u", &proc{pid: self.pid, start: self.start + 1}, rop)

	if n := SweepDnsmasq(parent); n != 2 {
		t.Errorf("swept %d processes, want 2", n)
	}
	for what, c := range map[string]*exec.Cmd{"the gone harness's orphan": orphan, "the orphan of a harness whose pid was reused": reusedOrphan} {
		if !exited(c, 10*time.Second) {
			t.Errorf("%s still runs", what)
		}
	}
	for what, c := range map[string]*exec.Cmd{"a running harness's instance": live, "another job's dnsmasq": other, "a process on a recycled pid": recycled} {
		if exited(c, 0) {
			t.Errorf("%s was killed", what)
		}
	}
	for dir, want := range map[string]bool{orphanDir: false, reusedDir: false, recycledDir: false, liveDir: true, otherDir: true} {
		if _, err := os.Stat(dir); (err == nil) != want {
			t.Errorf("%s: exists %t, want %t", filepath.Base(dir), err == nil, want)
		}
	}
}
