package lab

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/netns"
)

// TapNS is a namespace shaped like a slot's as the guest sees it, for a
// DHCP server of the user's own (no netslot): a persistent tap0 with the
// gateway address, up, and nothing else (no firewall, no veth).
type TapNS struct {
	Name string
}

// NetnsPath is the namespace's pin.
func (t *TapNS) NetnsPath() string { return "/run/netns/" + t.Name }

// NewTapNS makes namespace name with lo up and a persistent tap0 of MAC
// mac addressed gw/bits, up. The caller removes it.
func NewTapNS(name string, mac net.HardwareAddr, gw netip.Addr, bits int) (*TapNS, error) {
	if err := refuseRouted(netip.PrefixFrom(gw, bits).Masked()); err != nil {
		return nil, err
	}
	if err := netns.EnsureDir("/run/netns"); err != nil {
		return nil, err
	}
	t := &TapNS{Name: name}
	err := InNewNS(t.NetnsPath(), func() error {
		if err := netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			return err
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0", HardwareAddr: mac},
			Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("tap0: %w", err)
		}
		l, err := netlink.LinkByName("tap0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, addr(gw, bits)); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Remove()
		return nil, fmt.Errorf("namespace %s: %w", name, err)
	}
	return t, nil
}

// Remove deletes the namespace (its tap goes with it).
func (t *TapNS) Remove() { netns.Remove(t.NetnsPath()) }

// Dnsmasq is one dnsmasq process serving DHCP in a namespace, as a user
// without netslot runs one per VM network.
type Dnsmasq struct {
	NS   string
	Args []string // dnsmasq's arguments
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// DnsmasqDirPrefix starts the names of the run directories (NewDnsmasqDir)
// that hold the lab's dnsmasq instances' lease and pid files and the
// records SweepDnsmasq goes by.
const DnsmasqDirPrefix = "netslot-lab-dnsmasq-"

// Files of a run directory: who made it, and the instances it started.
const (
	dnsmasqOwnerFile     = "owner"
	dnsmasqInstancesFile = "instances"
)

// NewDnsmasqDir makes a run directory under parent for this process's
// dnsmasq instances, "<DnsmasqDirPrefix><pid>-<random>", with an owner
// record: this process as the kernel knows it (pid and start time, the
// boot and pid namespace they belong to). SweepDnsmasq removes it once
// that process is gone. The caller removes it when done.
func NewDnsmasqDir(parent string) (string, error) {
	self, err := procOf(os.Getpid())
	if err != nil {
		return "", err
	}
	host, err := hostOf()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(parent, DnsmasqDirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", err
	}
	// Written whole, then renamed into place: a directory is someone's
	// as soon as it has an owner, and never half of one.
	rec := fmt.Sprintf("%s\n%d %d\n", host, self.pid, self.start)
	tmp := filepath.Join(dir, dnsmasqOwnerFile+".tmp")
	if err := os.WriteFile(tmp, []byte(rec), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dnsmasqOwnerFile)); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// StartDnsmasq starts `ip netns exec ns dnsmasq args...` in the
// foreground (ip execs dnsmasq: the process is dnsmasq's) for the run
// directory dir (NewDnsmasqDir; its arguments name files in it), and
// records the process there for SweepDnsmasq. Its output goes to the
// caller's stderr only if it fails at start.
func StartDnsmasq(dir, ns string, args []string) (*Dnsmasq, error) {
	d := &Dnsmasq{NS: ns, Args: args, done: make(chan struct{})}
	d.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, "dnsmasq"}, args...)...)
	var out strings.Builder
	d.cmd.Stdout, d.cmd.Stderr = &out, &out
	// Killed with this process's thread if the harness dies first (until
	// dnsmasq drops its privileges, which clears it: SweepDnsmasq then).
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dnsmasq in %s: %w", ns, err)
	}
	go func() {
		err := d.cmd.Wait()
		if err != nil {
			d.err = fmt.Errorf("dnsmasq in %s: %w: %s", ns, err, strings.TrimSpace(out.String()))
		}
		close(d.done)
	}()
	if err := recordInstance(dir, d.Pid()); err != nil {
		d.Stop()
		return nil, fmt.Errorf("dnsmasq in %s: %w", ns, err)
	}
	return d, nil
}

// Pid is the dnsmasq process's id.
func (d *Dnsmasq) Pid() int { return d.cmd.Process.Pid }

// Listening reports whether dnsmasq has its DHCP socket (UDP port 67) in
// its namespace, or the error it exited with.
func (d *Dnsmasq) Listening() (bool, error) {
	select {
	case <-d.done:
		if d.err == nil {
			return false, fmt.Errorf("dnsmasq in %s exited", d.NS)
		}
		return false, d.err
	default:
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/udp", d.Pid()))
	if err != nil {
		return false, nil // not there yet, or exiting: the next look tells
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && strings.HasSuffix(fields[1], ":0043") {
			return true, nil
		}
	}
	return false, nil
}

// WaitListening polls Listening every poll until it is true or limit
// has passed.
func (d *Dnsmasq) WaitListening(poll, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := d.Listening()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dnsmasq in %s not listening on port 67 after %v", d.NS, limit)
		}
		time.Sleep(poll)
	}
}

// Memory is a process's memory from /proc/PID/smaps_rollup, in KiB:
// resident, proportional (shared pages divided among their sharers) and
// private (what one more such process adds).
type Memory struct{ RSS, PSS, Private float64 }

// Memory reads dnsmasq's resident and proportional set sizes.
func (d *Dnsmasq) Memory() (Memory, error) { return ProcessMemory(d.Pid()) }

// ProcessMemory reads pid's resident and proportional set sizes.
func ProcessMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("memory of %d: %w", pid, err)
	}
	var m Memory
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Rss:":
			m.RSS = v
		case "Pss:":
			m.PSS = v
		case "Private_Clean:", "Private_Dirty:":
			m.Private += v
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("memory of %d: no Rss in smaps_rollup", pid)
	}
	return m, nil
}

// Stop kills dnsmasq and waits for it.
func (d *Dnsmasq) Stop() {
	d.cmd.Process.Kill()
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
	}
}

// DnsmasqVersion is the installed dnsmasq's version ("2.90").
func DnsmasqVersion() (string, error) {
	out, err := exec.Command("dnsmasq", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("dnsmasq --version: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) < 3 || f[0] != "Dnsmasq" || f[1] != "version" {
		return "", fmt.Errorf("dnsmasq --version: unexpected %q", strings.SplitN(string(out), "\n", 2)[0])
	}
	return f[2], nil
}

// DnsmasqNetnsSuffix marks, in a dnsmasq directory, a namespace made for
// its instances ("<name>.netns", written before the namespace is made):
// SweepDnsmasq removes the namespace with the directory.
const DnsmasqNetnsSuffix = ".netns"

// SweepDnsmasq removes the run directories under dir (NewDnsmasqDir) of
// harnesses that are gone (killed before they could stop their
// instances: dnsmasq drops its privileges, which clears the death signal
// StartDnsmasq asks for): it kills the dnsmasq processes each recorded,
// removes the namespaces it marked and the directory. It returns how many
// processes it killed.
//
// Only what a run recorded is touched, and only when it is still what
// was recorded: a directory whose owner record is missing, of another
// boot or pid namespace, or whose owner still runs (the same pid and
// start time: a pid the kernel gave to another process since does not
// count) is left alone; a recorded instance is killed through a pidfd,
// only if that process has the recorded start time and names the
// directory in its command line. Another job's dnsmasq, even one of this
// lab's naming, is never killed.
func SweepDnsmasq(dir string) int {
	host, err := hostOf()
	if err != nil {
		return 0
	}
	killed := 0
	dirs, _ := filepath.Glob(filepath.Join(dir, DnsmasqDirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, dnsmasqOwnerFile))
		if err != nil {
			continue // not (yet) a run's: nobody to ask
		}
		ownerHost, rest, _ := strings.Cut(string(b), "\n")
		owners := parseProcs(rest)
		if ownerHost != host || len(owners) != 1 || owners[0].running() {
			continue
		}
		b, _ = os.ReadFile(filepath.Join(d, dnsmasqInstancesFile))
		for _, p := range parseProcs(string(b)) {
			if p.kill(d) {
				killed++
			}
		}
		marks, _ := filepath.Glob(filepath.Join(d, "*"+DnsmasqNetnsSuffix))
		for _, m := range marks {
			netns.Remove("/run/netns/" + strings.TrimSuffix(filepath.Base(m), DnsmasqNetnsSuffix))
		}
		os.RemoveAll(d)
	}
	return killed
}

// proc is a process as the kernel tells one from a later holder of its
// pid: its pid and start time (clock ticks after boot).
type proc struct {
	pid   int
	start uint64
}

// procOf reads pid's start time: the 22nd field of /proc/PID/stat (the
// 20th after the command's name, which may hold spaces and parentheses).
func procOf(pid int) (proc, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, err
	}
	k := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[k+1:]))
	if k < 0 || len(f) < 20 {
		return proc{}, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return proc{}, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return proc{pid: pid, start: start}, nil
}

// running reports whether p still runs (not a later process of its pid).
func (p proc) running() bool {
	now, err := procOf(p.pid)
	return err == nil && now.start == p.start
}

// kill kills p if it is still the process recorded and names dir in its
// command line, through a pidfd: what is checked is what is killed.
func (p proc) kill(dir string) bool {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	// The pidfd holds the process the pid named when it was opened: if
	// that one is p, the signal goes to p, whatever the pid means later.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid))
	if err != nil || !p.running() || !strings.Contains(string(cmdline), dir+"/") {
		return false
	}
	return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}

// parseProcs reads "pid start" lines.
func parseProcs(s string) []proc {
	var out []proc
	for _, l := range strings.Split(s, "\n") {
		var p proc
		if _, err := fmt.Sscanf(l, "%d %d", &p.pid, &p.start); err == nil && p.pid > 0 {
			out = append(out, p)
		}
	}
	return out
}

// recordInstance appends pid, as the kernel knows it now, to dir's
// instances.
func recordInstance(dir string, pid int) error {
	p, err := procOf(pid)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, dnsmasqInstancesFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d %d\n", p.pid, p.start)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// hostOf names this boot and pid namespace: pids and start times are
// only comparable within them.
func hostOf() (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	pidns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return "", err
	}
	return "boot " + strings.TrimSpace(string(boot)) + " " + pidns, nil
}
