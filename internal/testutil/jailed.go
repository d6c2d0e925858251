package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// jailedEnv turns a test binary into the jailed VMM of JailedVMM.Attach:
// its value is the tun device to open and the tap to attach to.
const jailedEnv = "NETSLOT_TEST_JAILED_ATTACH"

// A test binary started with jailedEnv set is the jailed VMM: it attaches,
// reports and exits before any test runs (testutil is linked into test
// binaries only).
func init() {
	if spec := os.Getenv(jailedEnv); spec != "" {
		dev, tap, _ := strings.Cut(spec, " ")
		jailedAttach(os.Stdout, dev, tap)
		os.Exit(0)
	}
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
// through a tun device node the jailer made for them.
type JailedVMM struct {
	tb  testing.TB
	dir string // world-readable: the binary and the tun node
	bin string
	tun string
}

// NewJailedVMM copies the test binary where a dropped process can run it
// and makes a tun device node (the jailer's /dev/net/tun) any uid can
// open; both go with the test.
func NewJailedVMM(tb testing.TB) *JailedVMM {
	tb.Helper()
	dir, err := os.MkdirTemp("", "netslot-jailed-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	bin := filepath.Join(dir, "vmm")
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		tb.Fatal(err)
	}
	if err := out.Close(); err != nil {
		tb.Fatal(err)
	}
	tun := filepath.Join(dir, "tun")
	if err := unix.Mknod(tun, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		tb.Fatalf("mknod %s: %v", tun, err)
	}
	if err := os.Chmod(tun, 0o666); err != nil { // past the umask
		tb.Fatal(err)
	}
	return &JailedVMM{tb: tb, dir: dir, bin: bin, tun: tun}
}

// Attach runs a process in the namespace at nsPath as uid and gid, with
// no supplementary groups and no capabilities, that attaches to tap and
// exits (letting go of it): nil if it attached, else the errno of its
// TUNSETIFF (EPERM: refused). It fails tb if the process was not what it
// must be (capabilities left, another namespace, other ids).
func (j *JailedVMM) Attach(nsPath, tap string, uid, gid uint32) error {
	j.tb.Helper()
	cmd := exec.Command(j.bin)
	cmd.Dir = "/"
	cmd.Env = []string{jailedEnv + "=" + j.tun + " " + tap}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
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
