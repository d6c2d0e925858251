// Package e2e runs the real binaries as root against the real kernel: a
// daemon process, the CLI, kill -9 and restarts. Every test uses its own
// prefix, state dir and socket and tears its pool down even when it fails.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/datapath"
	nslinks "github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testutil"
)

var binDir string

func TestMain(m *testing.M) {
	if !testenv.Privileged() {
		// Every test here runs the binaries as root against the kernel.
		fmt.Println("e2e: skipped, needs root")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "netslot-e2e-bin")
	if err != nil {
		panic(err)
	}
	out, err := exec.Command("go", "build", "-o", dir, "../../cmd/netslotd", "../../cmd/netslot", "../../cmd/netslot-bench").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(2)
	}
	os.Chmod(dir, 0o755) // other users may run the CLI (the daemon refuses them)
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pool is one daemon's worth of names, and the daemon process if running.
type pool struct {
	t        *testing.T
	prefix   string
	stateDir string
	socket   string
	slots    int
	// cfg is the pool's configuration: a free prefix, and addressing no
	// other pool on the host has (testutil.NewConfig).
	cfg    slot.Config
	cmd    *exec.Cmd
	log    *bytes.Buffer
	exited chan struct{}
}

func newPool(t *testing.T, slots int) *pool {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	cfg := testutil.NewConfig(slots)
	p := &pool{t: t, prefix: cfg.Prefix, stateDir: filepath.Join(dir, "state"),
		socket: filepath.Join(dir, "netslot.sock"), slots: slots, cfg: cfg}
	t.Cleanup(func() {
		p.kill()
		if out, err := p.netslotd("teardown", "--prefix", p.prefix, "--state-dir", p.stateDir); err != nil {
			t.Errorf("teardown: %v\n%s", err, out)
		}
		testutil.RemoveLock(p.prefix)
		if n := p.kernelObjects(); n != (objects{}) {
			t.Errorf("left behind after teardown: %+v", n)
		}
	})
	return p
}

func (p *pool) args(extra ...string) []string {
	return append([]string{"--slots", fmt.Sprint(p.slots), "--prefix", p.prefix, "--state-dir", p.stateDir,
		"--socket", p.socket, "--metrics-addr", "", "--slot-cidr", p.cfg.SlotCIDR.String(), "--guest-cidr", p.cfg.GuestCIDR.String()}, extra...)
}

// start runs the daemon and waits until its pool is ready.
func (p *pool) start(extra ...string) {
	p.t.Helper()
	p.launch(extra...)
	p.waitReady()
}

// launch runs the daemon without waiting for it.
func (p *pool) launch(extra ...string) {
	p.t.Helper()
	p.launchCmd(exec.Command(filepath.Join(binDir, "netslotd"), p.args(extra...)...))
}

// launchCmd runs cmd, which runs the pool's daemon, without waiting.
func (p *pool) launchCmd(cmd *exec.Cmd) {
	p.t.Helper()
	p.cmd = cmd
	// The daemon dies with the test process, however it ends; what it
	// leaves is swept by the next run (testutil.Prefix).
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p.log = &bytes.Buffer{}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { c.Wait(); close(ch) }(p.cmd, p.exited)
}

// waitReady waits until the launched daemon's pool is ready.
func (p *pool) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			p.t.Fatalf("netslotd exited during boot:\n%s", p.log)
		default:
		}
		var st struct{ Ready bool }
		if out, err := p.cli("status", "-o", "json"); err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Ready {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("pool not ready in time:\n%s", p.log)
}

// kill sends SIGKILL and waits for the process to go.
func (p *pool) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.cmd = nil
}

func run(name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	// Bounded: a daemon that wrongly starts must not hang the test.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if err != nil {
		return out.String() + errb.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (p *pool) cli(args ...string) (string, error) {
	return run(filepath.Join(binDir, "netslot"), append([]string{"--socket", p.socket}, args...)...)
}

// teardownCmd is netslotd teardown for the pool, not started.
func (p *pool) teardownCmd() *exec.Cmd {
	return exec.Command(filepath.Join(binDir, "netslotd"), "teardown", "--prefix", p.prefix, "--state-dir", p.stateDir)
}

func (p *pool) netslotd(args ...string) (string, error) {
	return run(filepath.Join(binDir, "netslotd"), args...)
}

func (p *pool) client() *client.Client {
	c, err := client.Dial(p.socket)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// objects counts the kernel objects of a prefix.
type objects struct {
	Pins, HostVeths, RootTables int
	BPFPinDirs, RouteRules      int
	TableRoutes, Backstops      int // routes of the pool's table; tc filters on any device
}

func (p *pool) kernelObjects() objects {
	cfg := slot.Config{Prefix: p.prefix}
	var o objects
	ents, _ := os.ReadDir(slot.NetnsDir)
	for _, e := range ents {
		if _, ok := cfg.IndexOfName(e.Name(), "-"); ok {
			o.Pins++
		}
	}
	links, err := nslinks.Links(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, p.prefix) {
			o.HostVeths++
			continue
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS} {
			fs, _ := netlink.FilterList(l, parent)
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "netslot:"+p.prefix+":") {
					o.Backstops++
				}
			}
		}
	}
	routes, err := nslinks.Routes(nil, unix.AF_INET, &netlink.Route{Table: nslinks.RouteTable(p.prefix)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		p.t.Fatal(err)
	}
	o.TableRoutes = len(routes)
	conn, err := nftables.New()
	if err != nil {
		p.t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	conn.CloseLasting()
	if err != nil {
		p.t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == p.prefix {
			o.RootTables++
		}
	}
	if datapath.Exists("", p.prefix) {
		o.BPFPinDirs++
	}
	rules, err := nslinks.Rules(nil, unix.AF_INET)
	if err != nil {
		p.t.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == nslinks.RouteTable(p.prefix) {
			o.RouteRules++
		}
	}
	return o
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}
