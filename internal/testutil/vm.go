package testutil

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/testenv"
)

// GuestDir is where scripts/guest-image.sh keeps the guest image unless
// NETSLOT_GUEST_DIR names another directory.
const GuestDir = "/var/cache/netslot-guest"

// qemu's command line, without the kernel, its command line and the NIC.
// TCG only; -nodefaults and romfile= keep the firmware's work (and so the
// boot) short.
var qemuArgs = []string{
	"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
	"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256", "-no-reboot",
}

// Guest kernel command line before the script. cryptomgr.notests skips the
// crypto self-tests, about half a second of the boot under TCG.
const guestCmdline = "console=ttyS0 quiet panic=-1 cryptomgr.notests"

// maxCmdline is x86's COMMAND_LINE_SIZE less its terminating NUL.
const maxCmdline = 2047

// VMConfig describes one guest and where its NIC lives.
type VMConfig struct {
	Netns  string // path of the network namespace (e.g. /run/netns/x) the tap lives in; qemu runs inside it
	Tap    string // persistent tap device in that namespace, already created
	MAC    string // guest NIC MAC (qemu's default 52:54:00:12:34:56 if empty)
	Script string // shell script the guest's init runs (busybox sh; `ip` is iproute2's)
	// BootArgs are more kernel arguments, e.g. a slot's ip= (its init
	// applies it to eth0 before the script runs, as initramfs-tools does).
	BootArgs string
}

// VM is a qemu guest booted from the image of scripts/guest-image.sh.
// Its serial console is read line by line.
type VM struct {
	cmd   *exec.Cmd
	start time.Time
	done  chan struct{} // closed once qemu has exited and its output is read

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line and at exit
	exited  bool
	exitErr error
	boot    time.Duration // qemu start to NETSLOT-START
}

var image struct {
	once           sync.Once
	kernel, initrd string
	skip           string
	err            error
}

// GuestImage returns the guest kernel and initramfs, building them (and
// installing qemu) with scripts/guest-image.sh when needed. It skips tb only
// when qemu cannot be installed.
func GuestImage(tb testing.TB) (kernel, initrd string) {
	tb.Helper()
	testenv.RequireRoot(tb) // the image serves privileged tests only
	image.once.Do(buildImage)
	if image.skip != "" {
		tb.Skip(image.skip)
	}
	if image.err != nil {
		tb.Fatal(image.err)
	}
	return image.kernel, image.initrd
}

func buildImage() {
	root, err := repoRoot()
	if err != nil {
		image.err = err
		return
	}
	dir := os.Getenv("NETSLOT_GUEST_DIR")
	if dir == "" {
		dir = GuestDir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "guest-image.sh"), dir).CombinedOutput()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.ExitCode() == 77 {
		image.skip = "qemu-system-x86_64 is missing and cannot be installed: " + strings.TrimSpace(string(out))
		return
	}
	if err != nil {
		image.err = fmt.Errorf("scripts/guest-image.sh %s: %v\n%s", dir, err, out)
		return
	}
	image.kernel, image.initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz")
}

// repoRoot finds the module root: up from the working directory (a
// package directory under go test), else up from this source file.
func repoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && bytes.Contains(mod, []byte("module github.com/netslot/netslot\n")) {
				if _, err := os.Stat(filepath.Join(dir, "scripts", "guest-image.sh")); err == nil {
					return dir, nil
				}
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("cannot find the netslot repository (scripts/guest-image.sh) above %v", starts)
}

// kernelCmdline returns the guest's command line with script as base64, or
// as base64 of its gzip when that alone fits.
func kernelCmdline(script, bootArgs string) (string, error) {
	base := guestCmdline
	if bootArgs != "" {
		base += " " + bootArgs
	}
	line := base + " netslot.script=" + base64.StdEncoding.EncodeToString([]byte(script))
	if len(line) <= maxCmdline {
		return line, nil
	}
	var z bytes.Buffer
	w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	w.Write([]byte(script))
	w.Close()
	line = base + " netslot.scriptgz=" + base64.StdEncoding.EncodeToString(z.Bytes())
	if len(line) > maxCmdline {
		return "", fmt.Errorf("guest script too long: %d bytes of kernel command line even gzipped, at most %d", len(line), maxCmdline)
	}
	return line, nil
}

// StartVM boots a guest whose NIC is cfg.Tap, running cfg.Script, and kills
// it when tb ends (logging its console if tb failed).
func StartVM(tb testing.TB, cfg VMConfig) *VM {
	tb.Helper()
	kernel, initrd := GuestImage(tb)
	cmdline, err := kernelCmdline(cfg.Script, cfg.BootArgs)
	if err != nil {
		tb.Fatal(err)
	}
	nic := "virtio-net-pci,netdev=n0,romfile="
	if cfg.MAC != "" {
		nic += ",mac=" + cfg.MAC
	}
	args := append(append([]string(nil), qemuArgs...),
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-netdev", "tap,id=n0,ifname="+cfg.Tap+",script=no,downscript=no,vhost=off",
		"-device", nic)
	cmd := exec.Command("qemu-system-x86_64", args...)
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w // stdin stays /dev/null
	// qemu dies with the thread that started it, which is kept for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	nsfd, err := netns.Open(cfg.Netns)
	if err != nil {
		r.Close()
		w.Close()
		tb.Fatal(err)
	}
	v := &VM{cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// qemu must start inside the namespace, and Pdeathsig fires when the
		// thread that forked it exits: so the thread stays locked, in that
		// namespace, until qemu is gone, and is then retired with this
		// goroutine (it never unlocks).
		runtime.LockOSThread()
		defer close(v.done)
		err := netns.Enter(nsfd)
		unix.Close(nsfd)
		if err == nil {
			// qemu would create a missing tap rather than fail.
			if _, ierr := netlink.LinkByName(cfg.Tap); ierr != nil {
				err = fmt.Errorf("tap %s: %w", cfg.Tap, ierr)
			}
		}
		if err == nil {
			v.start = time.Now()
			err = cmd.Start()
		}
		w.Close()
		started <- err
		if err != nil {
			r.Close()
			return
		}
		v.read(r)
		err = cmd.Wait()
		v.mu.Lock()
		v.exited, v.exitErr = true, err
		v.notify()
		v.mu.Unlock()
	}()
	if err := <-started; err != nil {
		tb.Fatalf("start qemu in %s: %v", cfg.Netns, err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-v.done:
		case <-time.After(30 * time.Second):
			tb.Errorf("qemu (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
		if tb.Failed() {
			tb.Logf("console of the guest on %s:\n%s", cfg.Tap, v.Output())
		}
	})
	return v
}

func (v *VM) read(r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			s = strings.TrimRight(s, "\r\n")
			v.mu.Lock()
			if v.boot == 0 && strings.HasPrefix(s, "NETSLOT-START") {
				v.boot = time.Since(v.start)
			}
			v.lines = append(v.lines, s)
			v.notify()
			v.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// notify wakes the waiters; v.mu is held.
func (v *VM) notify() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// waitFor returns the first console line for which match is true, waiting
// for it until ctx ends or qemu exits.
func (v *VM) waitFor(ctx context.Context, what string, match func(string) bool) (string, error) {
	seen := 0
	for {
		v.mu.Lock()
		for ; seen < len(v.lines); seen++ {
			if match(v.lines[seen]) {
				l := v.lines[seen]
				v.mu.Unlock()
				return l, nil
			}
		}
		exited, exitErr, changed := v.exited, v.exitErr, v.changed
		v.mu.Unlock()
		if exited {
			return "", fmt.Errorf("qemu exited (%v) before %s", exitErr, what)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
	}
}

// WaitLine waits until a console line contains substr and returns it.
func (v *VM) WaitLine(ctx context.Context, substr string) (string, error) {
	return v.waitFor(ctx, fmt.Sprintf("a console line with %q", substr), func(l string) bool {
		return strings.Contains(l, substr)
	})
}

// Wait waits until the guest's script has ended and returns the console
// output so far and the script's exit status.
func (v *VM) Wait(ctx context.Context) (output string, exitStatus int, err error) {
	l, err := v.waitFor(ctx, "NETSLOT-EXIT", func(l string) bool {
		return strings.HasPrefix(l, "NETSLOT-EXIT ")
	})
	if err != nil {
		return v.Output(), -1, err
	}
	st, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(l, "NETSLOT-EXIT ")))
	if err != nil {
		return v.Output(), -1, fmt.Errorf("bad exit line %q", l)
	}
	return v.Output(), st, nil
}

// Output returns the console output so far (qemu's own messages included).
func (v *VM) Output() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.lines) == 0 {
		return ""
	}
	return strings.Join(v.lines, "\n") + "\n"
}

// BootTime returns the time from qemu's start to the guest's script
// starting (its NETSLOT-START line), or 0 before that.
func (v *VM) BootTime() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.boot
}
