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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// jailedEnv turns a test binary into the jailed VMM of JailedVMM.Attach:
// its value is the tun device to open, the tap to attach to and the
// TapOps to run once attached (comma-separated, maybe none); jailerEnv
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
		f := append(strings.Fields(spec), "", "", "")
		var ops []string
		if f[2] != "" {
			ops = strings.Split(f[2], ",")
		}
		if err := jail(os.Getenv(jailerEnv)); err != nil {
			fmt.Printf("jailer %v\n", err)
			os.Exit(0)
		}
		jailedAttach(os.Stdout, f[0], f[1], ops)
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

// jailedProgFD is where a jailed VMM finds the eBPF program of the
// ebpf-filter and ebpf-steering ops: the first of cmd.ExtraFiles.
const jailedProgFD = 3

// TapOps are what a process attached to a tap may change on it with no
// capability, as its owner (drivers/net/tun.c, __tun_chr_ioctl), by name,
// each done the way a VMM could:
//   - tx-filter: TUNSETTXFILTER, frames only to 02:00:00:00:00:77;
//   - socket-filter: TUNATTACHFILTER, a classic BPF filter that drops all;
//   - ebpf-filter, ebpf-steering: TUNSETFILTEREBPF, TUNSETSTEERINGEBPF with
//     a socket filter program that returns 0 (drop), which root loaded
//     and handed over (a VMM cannot load one where
//     kernel.unprivileged_bpf_disabled is set, but can be given one);
//   - sndbuf: TUNSETSNDBUF 4096;
//   - offload: TUNSETOFFLOAD checksum, TSO and USO, as for a virtio-net
//     guest;
//   - vnet-hdr-size: TUNSETVNETHDRSZ 12 (virtio_net_hdr_v1, Firecracker's);
//   - vnet-le, vnet-be: TUNSETVNETLE 1, TUNSETVNETBE 1 (EINVAL where the
//     kernel has no CONFIG_TUN_VNET_CROSS_LE);
//   - debug: TUNSETDEBUG, message level NETIF_MSG_HW (0x20: tun logs
//     nothing under it, so the kernel log is left alone);
//   - carrier-off: TUNSETCARRIER 0;
//   - mac: SIOCSIFHWADDR through the tun descriptor, 02:00:00:00:00:99;
//   - owner: TUNSETOWNER and TUNSETGROUP 65534;
//   - no-persist: TUNSETPERSIST 0 (the tap goes when the VMM lets go);
//   - link-type: TUNSETLINK ARPHRD_NONE (refused while the tap is up).
var TapOps = map[string]func(fd int) syscall.Errno{
	"tx-filter": func(fd int) syscall.Errno {
		f := struct {
			flags, count uint16
			addr         [6]byte
		}{count: 1, addr: [6]byte{2, 0, 0, 0, 0, 0x77}}
		return ioctlPtr(fd, unix.TUNSETTXFILTER, unsafe.Pointer(&f))
	},
	"socket-filter": func(fd int) syscall.Errno {
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		p := unix.SockFprog{Len: 1, Filter: &drop[0]}
		return ioctlPtr(fd, unix.TUNATTACHFILTER, unsafe.Pointer(&p))
	},
	"ebpf-filter":   func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETFILTEREBPF, jailedProgFD) },
	"ebpf-steering": func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETSTEERINGEBPF, jailedProgFD) },
	"sndbuf":        func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETSNDBUF, 4096) },
	"offload": func(fd int) syscall.Errno {
		return ioctlVal(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6|unix.TUN_F_USO4|unix.TUN_F_USO6)
	},
	"vnet-hdr-size": func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETVNETHDRSZ, 12) },
	"vnet-le":       func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETVNETLE, 1) },
	"vnet-be":       func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETVNETBE, 1) },
	"debug":         func(fd int) syscall.Errno { return ioctlVal(fd, unix.TUNSETDEBUG, 0x20) },
	"carrier-off":   func(fd int) syscall.Errno { return ioctlInt(fd, unix.TUNSETCARRIER, 0) },
	"mac": func(fd int) syscall.Errno {
		req := struct { // an ifreq: the tap's name is not read
			name   [unix.IFNAMSIZ]byte
			family uint16
			addr   [14]byte
			_      [8]byte
		}{family: unix.ARPHRD_ETHER, addr: [14]byte{2, 0, 0, 0, 0, 0x99}}
		return ioctlPtr(fd, unix.SIOCSIFHWADDR, unsafe.Pointer(&req))
	},
	"owner": func(fd int) syscall.Errno {
		if e := ioctlVal(fd, unix.TUNSETOWNER, 65534); e != 0 {
			return e
		}
		return ioctlVal(fd, unix.TUNSETGROUP, 65534)
	},
	"no-persist": func(fd int) syscall.Errno { return ioctlVal(fd, unix.TUNSETPERSIST, 0) },
	"link-type":  func(fd int) syscall.Errno { return ioctlVal(fd, unix.TUNSETLINK, unix.ARPHRD_NONE) },
}

func ioctlVal(fd int, req uint, v uintptr) syscall.Errno {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), v)
	return e
}

func ioctlPtr(fd int, req uint, p unsafe.Pointer) syscall.Errno {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(p))
	return e
}

// ioctlInt passes v by address, as the ioctls that take an int do.
func ioctlInt(fd int, req uint, v int32) syscall.Errno { return ioctlPtr(fd, req, unsafe.Pointer(&v)) }

// jailedAttach attaches to tap through the tun device dev as Firecracker
// does (TUNSETIFF, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) and writes what it was
// and what came of it: its ids, capabilities and network namespace, then
// "attach 0" or "attach <errno>", then, attached, runs each of ops (see
// TapOps) and writes "op <name> <errno>". Exiting lets go of the tap.
func jailedAttach(w io.Writer, dev, tap string, ops []string) {
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
	errno := ioctlPtr(fd, unix.TUNSETIFF, unsafe.Pointer(&req))
	fmt.Fprintf(w, "attach %d\n", errno)
	if errno != 0 {
		return
	}
	for _, op := range ops {
		fmt.Fprintf(w, "op %s %d\n", op, TapOps[op](fd))
	}
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
	tb   testing.TB
	bin  string
	prog ebpf.ProgramID // the last program handed to a VMM (0: none)
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
	_, err := j.attach(nsPath, tap, uid, gid, "own")
	return err
}

// Set is Attach, then the process, attached, changes the tap with each of
// ops (names of TapOps), in order, before it exits. It returns the errno
// of each by name (0: done), or, with nothing done, the attach's error.
func (j *JailedVMM) Set(nsPath, tap string, uid, gid uint32, ops ...string) (map[string]syscall.Errno, error) {
	j.tb.Helper()
	return j.attach(nsPath, tap, uid, gid, "own", ops...)
}

// AttachHostTun is Attach through the host's /dev/net/tun, which the
// process opens as uid and gid: where that node is root's only (mode
// 0600), the open fails (EACCES), whoever owns the tap.
func (j *JailedVMM) AttachHostTun(nsPath, tap string, uid, gid uint32) error {
	j.tb.Helper()
	_, err := j.attach(nsPath, tap, uid, gid, "host")
	return err
}

func (j *JailedVMM) attach(nsPath, tap string, uid, gid uint32, node string, ops ...string) (map[string]syscall.Errno, error) {
	j.tb.Helper()
	cmd := exec.Command(j.bin)
	cmd.Dir = "/"
	cmd.Env = []string{jailedEnv + "=/dev/net/tun " + tap + " " + strings.Join(ops, ","), fmt.Sprintf("%s=%d %d %s", jailerEnv, uid, gid, node)}
	for _, op := range ops {
		if TapOps[op] == nil {
			j.tb.Fatalf("no tap op %q", op)
		}
		if strings.HasPrefix(op, "ebpf-") && cmd.ExtraFiles == nil {
			cmd.ExtraFiles = []*os.File{j.dropProgram()}
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if node == "own" {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	want, err := startInNetns(cmd, nsPath)
	for _, f := range cmd.ExtraFiles {
		f.Close() // the child has its own
	}
	if err != nil {
		j.tb.Fatalf("start a process as %d:%d in %s: %v", uid, gid, nsPath, err)
	}
	if err := cmd.Wait(); err != nil {
		j.tb.Fatalf("process as %d:%d: %v\n%s", uid, gid, err, out.String())
	}
	rep := map[string]string{}
	done := map[string]syscall.Errno{}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		rep[k] = v
		if op, e, ok := strings.Cut(v, " "); k == "op" && ok {
			n, err := strconv.Atoi(e)
			if err != nil {
				j.tb.Fatalf("process as %d:%d: %q", uid, gid, sc.Text())
			}
			done[op] = syscall.Errno(n)
		}
	}
	if rep["CapEff:"] != "0000000000000000" || rep["CapPrm:"] != "0000000000000000" ||
		rep["ids"] != fmt.Sprintf("%d %d 0", uid, gid) || rep["netns"] != want {
		j.tb.Fatalf("the process is not a jailed VMM of %d:%d in %s (%s):\n%s", uid, gid, nsPath, want, out.String())
	}
	if n, err := strconv.Atoi(rep["open"]); err == nil {
		return nil, fmt.Errorf("open /dev/net/tun (the %s node) as %d:%d: %w", node, uid, gid, syscall.Errno(n))
	}
	n, err := strconv.Atoi(rep["attach"])
	if err != nil {
		j.tb.Fatalf("process as %d:%d did not attach:\n%s", uid, gid, out.String())
	}
	if n != 0 {
		return nil, syscall.Errno(n)
	}
	if len(done) != len(ops) {
		j.tb.Fatalf("process as %d:%d did not run %v:\n%s", uid, gid, ops, out.String())
	}
	return done, nil
}

// dropProgram loads a socket filter program that drops every packet
// (returns 0) and returns a descriptor of it for a jailed VMM.
func (j *JailedVMM) dropProgram() *os.File {
	j.tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		j.tb.Fatalf("load a socket filter: %v", err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		j.tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		j.tb.Fatal("the kernel gives loaded programs no id")
	}
	j.prog = id
	fd, err := unix.Dup(prog.FD())
	if err != nil {
		j.tb.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "drop-all program")
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

// ProgramLoaded reports whether the last eBPF program handed to a VMM (by
// the ebpf-filter and ebpf-steering ops) is still loaded: once the VMM has
// exited, only what it attached the program to holds it.
func (j *JailedVMM) ProgramLoaded() bool {
	j.tb.Helper()
	prog, err := ebpf.NewProgramFromID(j.prog)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		j.tb.Fatalf("program %d: %v", j.prog, err)
	}
	prog.Close()
	return true
}
