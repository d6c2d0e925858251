package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/firewall"
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
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench-boot")
	if err != nil {
		return r, err
	}
	before := kernelMemKiB()
	d, err := daemon.New(daemon.Options{Config: cfg, StateDir: dir, Logger: o.Log})
	if err != nil {
		os.RemoveAll(dir)
		return r, err
	}
	start := time.Now()
	err = d.Boot(ctx)
	r.Boot = time.Since(start)
	if err == nil {
		r.Timeline = d.BootTimeline()
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

// WriteBoot prints the boot runs as a markdown table.
func WriteBoot(w io.Writer, runs []BootRun) {
	fmt.Fprintln(w, "| slots | ready in | ms/slot first tenth | ms/slot last tenth | last/first | kernel KiB/slot | idle CPU | root rules (netslot / replaced) | teardown |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range runs {
		ratio := 0.0
		if r.FirstTenth > 0 {
			ratio = float64(r.LastTenth) / float64(r.FirstTenth)
		}
		fmt.Fprintf(w, "| %d | %.2f s | %.3f | %.3f | %.2fx | %.0f | %.2f %% | %d / %d | %.1f s |\n", r.Slots, r.Boot.Seconds(),
			float64(r.FirstTenth.Microseconds())/1000, float64(r.LastTenth.Microseconds())/1000, ratio,
			r.KernelKiBPerSlot, r.IdleCPUPercent, r.RootRules, r.ReplacedRule, r.Teardown.Seconds())
	}
}
