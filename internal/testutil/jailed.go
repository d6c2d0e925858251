package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// jailedEnv turns a test binary into the jailed VMM of JailedVMM.Attach:
// its value is the tun device to open and the tap to attach to; jailerEnv
// is what the jailer does first: "uid gid node", node "own" (a tun node
// of the VMM's own) or "host" (none: the host's /dev/net/tun).
const (
	jailedEnv = "NETSLOT_TEST_JAILED_ATTACH"
	jailerEnv = "NETSLOT_TEST_JAILER"
)

// A test binary started with jailedEnv set is the jailer, then the jailed
// VMM: it attaches, reports and exits before any test runs (testutil is
// linked into test binaries only).
func init() {
	if spec := os.Getenv(jailedEnv); spec != "" {
		dev, tap, _ := strings.Cut(spec, " ")
		if err := jail(os.Getenv(jailerEnv)); err != nil {
			fmt.Printf("jailer %v\n", err)
			os.Exit(0)
		}
		jailedAttach(os.Stdout, dev, tap)
		os.Exit(0)
	}
}

// jail does what Firecracker's jailer does before it execs the VMM, in
// the process it was started as (root, in the slot's namespace, in a
// mount namespace of its own): with node "own", a /dev of its own that
// holds only net/tun, a character device 10:200 of mode 0600 owned by
// uid and gid (the jailer's chroot has the same node); then it drops to
// uid and gid, with no supplementary groups and no capabilities.
func jail(spec string) error {
	var uid, gid int
	var node string
	if _, err := fmt.Sscanf(spec, "%d %d %s", &uid, &gid, &node); err != nil {
		return fmt.Errorf("spec %q: %w", spec, err)
	}
	if node == "own" {
		// Nothing done here reaches the host's mounts.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make the mounts private: %w", err)
		}
		if err := unix.Mount("jail", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755"); err != nil {
			return fmt.Errorf("mount a /dev of its own: %w", err)
		}
		if err := os.Mkdir("/dev/net", 0o755); err != nil {
			return err
		}
		if err := unix.Mknod("/dev/net/tun", unix.S_IFCHR|0o600, int(unix.Mkdev(10, 200))); err != nil {
			return fmt.Errorf("mknod /dev/net/tun: %w", err)
		}
		if err := os.Chown("/dev/net/tun", uid, gid); err != nil {
			return err
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return nil
}

// jailedAttach attaches to tap through the tun device dev as Firecracker
// does (TUNSETIFF, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) and writes what it was
// and what came of it: its ids, capabilities and network namespace, then
// "attach 0" or "attach <errno>". Exiting lets go of the tap.
func jailedAttach(w io.Writer, dev, tap string) {
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "CapEff:") || strings.HasPrefix(l, "CapPrm:") {
			fmt.Fprintln(w, strings.Join(strings.Fields(l), " "))
		}
	}
	ns, _ := os.Readlink("/proc/self/ns/net")
	fmt.Fprintf(w, "ids %d %d %d\nnetns %s\n", os.Geteuid(), os.Getegid(), len(mustGroups()), ns)
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(w, "open %d\n", err.(syscall.Errno))
		return
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:unix.IFNAMSIZ-1], tap)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req)))
	fmt.Fprintf(w, "attach %d\n", errno)
}

func mustGroups() []int {
	g, _ := os.Getgroups()
	return g
}

// JailedVMM starts processes that do what Firecracker's jailer leaves a
// VMM to do: enter a slot's namespace as root, drop to a uid and gid with
// no supplementary groups and no capabilities, then attach to the tap
// through /dev/net/tun: a node the jailer made for them, in a mount
// namespace of their own (Attach), or the host's (AttachHostTun).
type JailedVMM struct {
	tb  testing.TB
	bin string
}

// NewJailedVMM returns a JailedVMM of tb's.
func NewJailedVMM(tb testing.TB) *JailedVMM {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	return &JailedVMM{tb: tb, bin: self}
}

// Attach runs a process in the namespace at nsPath as uid and gid, with
// no supplementary groups and no capabilities, that attaches to tap
// through the tun node its jailer made it (owned by uid and gid, in a
// mount namespace of its own) and exits (letting go of it): nil if it
// attached, else the errno of its TUNSETIFF (EPERM: refused). It fails tb
// if the process was not what it must be (capabilities left, another
// namespace, other ids).
func (j *JailedVMM) Attach(nsPath, tap string, uid, gid uint32) error {
	j.tb.Helper()
	return j.attach(nsPath, tap, uid, gid, "own")
}

// AttachHostTun is Attach through the host's /dev/net/tun, which the
// process opens as uid and gid: where that node is root's only (mode
// 0600), the open fails (EACCES), whoever owns the tap.
func (j *JailedVMM) AttachHostTun(nsPath, tap string, uid, gid uint32) error {
	j.tb.Helper()
	return j.attach(nsPath, tap, uid, gid, "host")
}

func (j *JailedVMM) attach(nsPath, tap string, uid, gid uint32, node string) error {
	j.tb.Helper()
	cmd := exec.Command(j.bin)
	cmd.Dir = "/"
	cmd.Env = []string{jailedEnv + "=/dev/net/tun " + tap, fmt.Sprintf("%s=%d %d %s", jailerEnv, uid, gid, node)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if node == "own" {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	want, err := startInNetns(cmd, nsPath)
	if err != nil {
		j.tb.Fatalf("start a process as %d:%d in %s: %v", uid, gid, nsPath, err)
	}
	if err := cmd.Wait(); err != nil {
		j.tb.Fatalf("process as %d:%d: %v\n%s", uid, gid, err, out.String())
	}
	rep := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		rep[k] = v
	}
	if rep["CapEff:"] != "0000000000000000" || rep["CapPrm:"] != "0000000000000000" ||
		rep["ids"] != fmt.Sprintf("%d %d 0", uid, gid) || rep["netns"] != want {
		j.tb.Fatalf("the process is not a jailed VMM of %d:%d in %s (%s):\n%s", uid, gid, nsPath, want, out.String())
	}
	if n, err := strconv.Atoi(rep["open"]); err == nil {
		return fmt.Errorf("open /dev/net/tun (the %s node) as %d:%d: %w", node, uid, gid, syscall.Errno(n))
	}
	n, err := strconv.Atoi(rep["attach"])
	if err != nil {
		j.tb.Fatalf("process as %d:%d did not attach:\n%s", uid, gid, out.String())
	}
	if n == 0 {
		return nil
	}
	return syscall.Errno(n)
}

// startInNetns starts cmd from a thread inside the namespace at nsPath,
// which the child inherits (a clone takes its caller thread's namespace),
// and returns that namespace as /proc/*/ns/net names it. The thread goes
// back to its own namespace; if it cannot, it is never unlocked and dies
// with its goroutine.
func startInNetns(cmd *exec.Cmd, nsPath string) (string, error) {
	type result struct {
		ns  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		ns, _ := os.Readlink("/proc/thread-self/ns/net")
		err = cmd.Start()
		if rerr := unix.Setns(self, unix.CLONE_NEWNET); rerr != nil {
			done <- result{err: errors.Join(err, fmt.Errorf("back to own netns: %w", rerr))}
			return // locked for good: the thread is retired
		}
		runtime.UnlockOSThread()
		done <- result{ns: ns, err: err}
	}()
	r := <-done
	return r.ns, r.err
}
