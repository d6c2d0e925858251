package bench

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
)

// BootOptions size the boot scenario.
type BootOptions struct {
	Sizes []int         // pool sizes, booted one after the other
	Idle  time.Duration // idle window measured after each boot
	Log   *slog.Logger
}

// BootRun is one pool size's figures.
type BootRun struct {
	Round                   int
	Slots                   int
	Boot, Teardown          time.Duration
	FirstTenth, LastTenth   time.Duration // per slot
	Timeline                []time.Duration
	KernelKiBPerSlot        float64
	IdleCPUPercent          float64
	RootRules, ReplacedRule int
}

// RunBoot boots a fresh pool of each size (no uplink: this is about
// creating slots), with the state on tmpfs, after waiting for the kernel to
// finish dismantling earlier namespaces, and records its timeline, kernel
// memory, idle CPU and root rules, then tears it down.
func RunBoot(ctx context.Context, o BootOptions) ([]BootRun, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	var runs []BootRun
	for k, n := range o.Sizes {
		o.Log.Info("boot scenario", "slots", n, "run", k+1, "of", len(o.Sizes))
		r, err := bootOnce(ctx, k, n, o)
		if err != nil {
			return runs, fmt.Errorf("boot %d slots: %w", n, err)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

func bootOnce(ctx context.Context, run, n int, o BootOptions) (BootRun, error) {
	r := BootRun{Slots: n, ReplacedRule: n*RulesPerSlot + 3}
	settleNamespaces(o.Log)
	cfg := slot.DefaultConfig(fmt.Sprintf("nx%c%c", 'a'+os.Getpid()%26, 'a'+run%26), n)
	lab.ClaimPool(cfg.Prefix)
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench-boot")
	if err != nil {
		return r, err
	}
	before := kernelMemKiB()
	timeline := make([]atomic.Int64, n) // ns since the boot began, by readiness order
	d, err := daemon.New(daemon.Options{Config: cfg, StateDir: dir, Logger: o.Log, OnSlotReady: func(k int, at time.Duration) {
		if k <= len(timeline) {
			timeline[k-1].Store(int64(at))
		}
	}})
	if err != nil {
		os.RemoveAll(dir)
		return r, err
	}
	start := time.Now()
	err = d.Boot(ctx)
	r.Boot = time.Since(start)
	if err == nil {
		r.Timeline = make([]time.Duration, 0, n)
		for k := range timeline {
			if at := timeline[k].Load(); at > 0 {
				r.Timeline = append(r.Timeline, time.Duration(at))
			}
		}
		p := d.Progress()
		r.FirstTenth = time.Duration(p.FirstTenthMs * float64(time.Millisecond))
		r.LastTenth = time.Duration(p.LastTenthMs * float64(time.Millisecond))
		r.KernelKiBPerSlot = float64(kernelMemKiB()-before) / float64(n)
		r.RootRules = firewall.Root{Prefix: cfg.Prefix}.RuleCount()
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		time.Sleep(o.Idle)
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
		r.IdleCPUPercent = 100 * cpu.Seconds() / o.Idle.Seconds()
	}
	d.Close()
	took, terr := removePool(cfg.Prefix, dir, o.Log)
	r.Teardown = took
	if err == nil {
		err = terr
	}
	return r, err
}

// kernelMemKiB is the kernel's own memory (slab, stacks, page tables) from
// /proc/meminfo.
func kernelMemKiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "Slab:", "KernelStack:", "PageTables:":
			v, _ := strconv.ParseInt(fields[1], 10, 64)
			total += v
		}
	}
	return total
}

// settleNamespaces waits (up to a minute) until the kernel has finished
// dismantling namespaces of earlier runs: that background work would land
// in the next measurement.
func settleNamespaces(log *slog.Logger) {
	last, stable := -1, 0
	for i := 0; i < 120 && stable < 4; i++ {
		n := netnsObjects()
		if n == last {
			stable++
		} else {
			stable = 0
		}
		last = n
		time.Sleep(250 * time.Millisecond)
	}
	log.Debug("namespaces settled", "net_namespace_objects", last)
}

func netnsObjects() int {
	f, err := os.Open("/proc/slabinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && fields[0] == "net_namespace" {
			n, _ := strconv.Atoi(fields[1])
			return n
		}
	}
	return 0
}

// bootSizes lists the sizes booted, in order, with their runs.
func bootSizes(runs []BootRun) (sizes []int, by map[int][]BootRun) {
	by = map[int][]BootRun{}
	for _, r := range runs {
		if by[r.Slots] == nil {
			sizes = append(sizes, r.Slots)
		}
		by[r.Slots] = append(by[r.Slots], r)
	}
	return sizes, by
}

// medianBoots is, per size, the run with the median boot time.
func medianBoots(runs []BootRun) []BootRun {
	sizes, by := bootSizes(runs)
	var out []BootRun
	for _, n := range sizes {
		rs := slices.Clone(by[n])
		slices.SortFunc(rs, func(a, b BootRun) int { return cmp.Compare(a.Boot, b.Boot) })
		out = append(out, rs[len(rs)/2])
	}
	return out
}

// stat is the median and range of one figure over rounds.
type stat struct{ med, lo, hi float64 }

func statOf[T any](xs []T, f func(T) float64) stat {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	if len(v) == 0 {
		return stat{}
	}
	return stat{median(v), slices.Min(v), slices.Max(v)}
}

// fmt prints the median with its range when there is more than one round.
func (s stat) fmt(format string) string {
	m := fmt.Sprintf(format, s.med)
	if s.lo == s.hi {
		return m
	}
	return fmt.Sprintf("%s ("+format+"-"+format+")", m, s.lo, s.hi)
}

func (r BootRun) tenthRatio() float64 {
	return float64(r.LastTenth) / float64(max(1, r.FirstTenth))
}

// WriteBoot prints the boot runs as a markdown table, one row per size:
// medians over the rounds, ranges in brackets.
func WriteBoot(w io.Writer, runs []BootRun) {
	fmt.Fprintln(w, "| slots | rounds | ready in (s) | ms/slot first tenth | ms/slot last tenth | last/first | kernel KiB/slot | idle CPU % | root rules (netslot / replaced) | teardown (s) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	sizes, by := bootSizes(runs)
	for _, n := range sizes {
		rs := by[n]
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %s | %s | %s | %d / %d | %s |\n", n, len(rs),
			statOf(rs, func(r BootRun) float64 { return r.Boot.Seconds() }).fmt("%.2f"),
			statOf(rs, func(r BootRun) float64 { return ms(r.FirstTenth) }).fmt("%.3f"),
			statOf(rs, func(r BootRun) float64 { return ms(r.LastTenth) }).fmt("%.3f"),
			statOf(rs, BootRun.tenthRatio).fmt("%.2fx"),
			statOf(rs, func(r BootRun) float64 { return r.KernelKiBPerSlot }).fmt("%.0f"),
			statOf(rs, func(r BootRun) float64 { return r.IdleCPUPercent }).fmt("%.2f"),
			rs[0].RootRules, rs[0].ReplacedRule,
			statOf(rs, func(r BootRun) float64 { return r.Teardown.Seconds() }).fmt("%.1f"))
	}
}
