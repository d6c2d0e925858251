// Package testutil starts real pools for privileged tests and benchmarks
// and guarantees their teardown.
package testutil

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
)

// Wait polls cond every 10 ms until it holds (true) or limit, stretched
// by how busy the machine is (Patient), passes (false), for a caller that
// says itself what went wrong.
func Wait(limit time.Duration, cond func() bool) bool {
	return waitUntil(time.Now().Add(Patient(limit)), cond)
}

func waitUntil(deadline time.Time, cond func() bool) bool {
	for ; ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// Eventually polls cond (see Wait) for up to 5 s, more on a busy machine
// (Patient), and fails tb if it never holds: for what the kernel or the
// daemon finishes after the call that caused it returned (a link detached
// when its last pin goes, a namespace dismantled, a repair).
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	limit := Patient(5 * time.Second)
	if !waitUntil(time.Now().Add(limit), cond) {
		tb.Fatalf("not within %v: %s", limit.Round(100*time.Millisecond), what)
	}
}

// Patient stretches a wait for work on this machine by how busy it is:
// by the load average over the CPUs when that is above 1 (other jobs, the
// kernel dismantling another pool's namespaces), up to 6 times. A test
// waits for a condition; how long it may take is what this machine
// gives it now, not what an idle one would.
func Patient(d time.Duration) time.Duration {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return d
	}
	var load float64
	if _, err := fmt.Sscanf(string(b), "%g", &load); err != nil {
		return d
	}
	return time.Duration(float64(d) * min(6, max(1, load/float64(runtime.NumCPU()))))
}

var seq atomic.Int32

// Prefix returns a pool prefix unique to this process and call, short
// enough for interface names of pools up to 999,999 slots. It is claimed
// for this process (lab.ClaimPool, lab.ClaimTag), and the first call takes back what test
// processes that were killed left behind (lab.SweepDead).
func Prefix() string {
	sweepOnce()
	for {
		n := seq.Add(1)
		p := fmt.Sprintf("t%d%c%c", os.Getpid()%1000, 'a'+rune(n/26%26), 'a'+rune(n%26))
		// Another live test process whose pid is this one's modulo 1,000
		// may have it: take the next.
		if lab.ClaimPool(p) && lab.ClaimTag(p[1:]) {
			return p
		}
	}
}

// sweepOnce sweeps what dead test processes left, once per process.
var sweepOnce = sync.OnceFunc(func() {
	if testenv.Privileged() {
		lab.SweepDead(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
})

// Logger returns a logger that writes to tb only when -v is on.
func Logger(tb testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Pool is a booted daemon whose teardown is registered with tb.
type Pool struct {
	D        *daemon.Daemon
	Config   slot.Config
	StateDir string
}

// NewConfig returns a config of n slots with a fresh prefix, and the
// default addressing unless another pool on the host has it (see
// lab.FreeAddressing): tests run beside `make demo` and a user's pools.
func NewConfig(n int) slot.Config {
	c := slot.DefaultConfig(Prefix(), n)
	if sc, gc, err := lab.FreeAddressing(n); err == nil {
		c.SlotCIDR, c.GuestCIDR = sc, gc
	}
	return c
}

// StartPool boots a pool of n slots and registers its teardown.
func StartPool(tb testing.TB, n int) *Pool {
	tb.Helper()
	return StartPoolWith(tb, NewConfig(n), tb.TempDir(), "")
}

// StartPoolWith boots a pool of cfg in stateDir and registers its teardown.
func StartPoolWith(tb testing.TB, cfg slot.Config, stateDir, uplink string) *Pool {
	tb.Helper()
	testenv.RequireRoot(tb)
	tb.Cleanup(func() { Teardown(tb, cfg.Prefix, stateDir) })
	d, err := daemon.New(daemon.Options{Config: cfg, StateDir: stateDir, Uplink: uplink, Logger: Logger(tb)})
	if err != nil {
		tb.Fatalf("new daemon: %v", err)
	}
	tb.Cleanup(func() { d.Close() })
	if err := d.Boot(context.Background()); err != nil {
		tb.Fatalf("boot: %v", err)
	}
	return &Pool{D: d, Config: cfg, StateDir: stateDir}
}

// StartPoolOpts boots a pool with opts (Config and StateDir must be set;
// Logger is filled in) and registers its teardown.
func StartPoolOpts(tb testing.TB, opts daemon.Options) *Pool {
	tb.Helper()
	testenv.RequireRoot(tb)
	tb.Cleanup(func() { Teardown(tb, opts.Config.Prefix, opts.StateDir) })
	if opts.Logger == nil {
		opts.Logger = Logger(tb)
	}
	d, err := daemon.New(opts)
	if err != nil {
		tb.Fatalf("new daemon: %v", err)
	}
	tb.Cleanup(func() { d.Close() })
	if err := d.Boot(context.Background()); err != nil {
		tb.Fatalf("boot: %v", err)
	}
	return &Pool{D: d, Config: opts.Config, StateDir: opts.StateDir}
}

// Teardown removes every object of prefix, failing tb if it cannot.
func Teardown(tb testing.TB, prefix, stateDir string) {
	tb.Helper()
	if err := daemon.Teardown(prefix, stateDir, 60*time.Second, Logger(tb)); err != nil {
		tb.Errorf("teardown %s: %v", prefix, err)
	}
	RemoveLock(prefix)
}

// RemoveLock removes the prefix lock file that teardown leaves (it never
// unlinks a lock a daemon could hold); a test knows no daemon is left.
func RemoveLock(prefix string) {
	os.Remove(filepath.Join(daemon.LockDir, prefix+".lock"))
}
