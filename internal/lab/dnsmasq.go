package lab

import (
	"bufio"
	"errors"
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

// DnsmasqDirPrefix starts the names of the directories that hold the
// lease and pid files of the lab's dnsmasq instances; the directory of a
// process that is gone is "<prefix><its pid>-...". See SweepDnsmasq.
const DnsmasqDirPrefix = "netslot-lab-dnsmasq-"

// StartDnsmasq starts `ip netns exec ns dnsmasq args...` in the
// foreground (ip execs dnsmasq: the process is dnsmasq's). Its output
// goes to the caller's stderr only if it fails at start.
func StartDnsmasq(ns string, args []string) (*Dnsmasq, error) {
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

// SweepDnsmasq kills the lab's dnsmasq processes whose harness is gone
// (killed before it could stop them: dnsmasq drops its privileges, which
// clears the death signal StartDnsmasq asks for) and removes their
// directories under dir, with the namespaces they mark. It returns how
// many processes it killed.
func SweepDnsmasq(dir string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	killed := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "dnsmasq" {
			continue
		}
		for _, a := range args {
			owner, ok := dnsmasqOwner(a, dir)
			if !ok || processAlive(owner) {
				continue
			}
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
			break
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(dir, DnsmasqDirPrefix+"*"))
	for _, d := range dirs {
		if owner, ok := dnsmasqOwner("--pid-file="+d+"/", dir); ok && !processAlive(owner) {
			marks, _ := filepath.Glob(filepath.Join(d, "*"+DnsmasqNetnsSuffix))
			for _, m := range marks {
				netns.Remove("/run/netns/" + strings.TrimSuffix(filepath.Base(m), DnsmasqNetnsSuffix))
			}
			os.RemoveAll(d)
		}
	}
	return killed
}

// dnsmasqOwner reads the harness's pid out of a --pid-file= or
// --dhcp-leasefile= argument naming a file under dir/DnsmasqDirPrefix<pid>-.
func dnsmasqOwner(arg, dir string) (int, bool) {
	_, path, ok := strings.Cut(arg, "=")
	if !ok || !strings.HasPrefix(arg, "--") {
		return 0, false
	}
	rest, ok := strings.CutPrefix(path, filepath.Join(dir, DnsmasqDirPrefix))
	if !ok {
		return 0, false
	}
	pid, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(pid)
	return n, err == nil && n > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
