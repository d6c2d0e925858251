package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/lab"
)

// DatapathOptions size the datapath benchmark.
type DatapathOptions struct {
	Slots      int           // pool size, and the baseline's rule count / 30
	Rounds     int           // measurements alternate between the designs this often
	Duration   time.Duration // of each throughput measurement
	RTTSamples int           // per guest and round
	Workers    int           // concurrent connections / requests in flight
	// FanOut is how many slots, spread over the pool, carry load at once
	// in the many-slots measurement (one load generator with one worker
	// each); 0 skips it.
	FanOut int
	// Loadgen is the command that runs one load generator inside a
	// guest's namespace: it gets "--mode M --dst A:P --duration D
	// --workers W --samples S" appended and prints a LoadResult as JSON
	// (netslot-bench loadgen). A separate process is the guest's
	// application, as in a VM, and keeps this process's threads out of
	// the guest's namespace.
	Loadgen []string
	Log     *slog.Logger
}

// DatapathResult is what the benchmark measured, per design.
type DatapathResult struct {
	Opts                      DatapathOptions
	OursCPS, BaseCPS          [2][]float64 // per round; [0]: slot 0, [1]: slot N-1
	OursPPS, BasePPS          []float64
	OursRTT, BaseRTT          [2][]time.Duration // [0]: slot 0, [1]: slot N-1, taking turns
	Slot0RTT                  [2][]time.Duration // [0]: netslot slot 0, [1]: baseline slot 0, taking turns
	OursFanCPS, BaseFanCPS    []float64          // per round, summed over FanOut slots at once
	OursFanPPS, BaseFanPPS    []float64
	OursRootRules, BaseRules  int
	OursConntrack, BaseCtrack int
}

// RunDatapath boots a pool of o.Slots slots with its uplink on a test
// fabric, builds the baseline beside it (rules for o.Slots slots, real
// namespaces for slots 0 and N-1), attaches a real-stack guest to slot 0
// and N-1 of each, and measures both in alternating rounds.
func RunDatapath(ctx context.Context, o DatapathOptions) (res *DatapathResult, err error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Slots < 2 {
		return nil, errors.New("the datapath benchmark needs at least 2 slots")
	}
	tag := fmt.Sprintf("%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	cfg := uplinkConfig("nb"+tag, o.Slots)
	last := o.Slots - 1
	cleanup := []func(){}
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()

	fab, err := lab.NewFabric(tag, cfg.SlotCIDR)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, fab.Remove)
	srv, err := startServers(fab)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, srv.close)

	d, stopPool, err := startPool(ctx, cfg, fab, o.Log)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, stopPool)
	// Every slot is leased, as on a full host: a pooled slot's traffic is
	// dropped.
	for range o.Slots {
		if _, err := d.Acquire(context.Background(), daemon.AcquireRequest{Owner: "bench"}); err != nil {
			return nil, fmt.Errorf("lease the pool's slots: %w", err)
		}
	}

	fan := fanOutSlots(o.Slots, o.FanOut)
	base := &Baseline{Tag: "q" + tag, Uplink: fab.Uplink, Gateway: fab.Gateway, Slots: o.Slots,
		Real: slices.Compact(slices.Sorted(slices.Values(append([]int{0, last}, fan...)))), Table: 0x6e620000 | os.Getpid()&0xffff}
	cleanup = append(cleanup, func() {
		if err := base.Remove(); err != nil {
			o.Log.Error("remove baseline", "err", err)
		}
	})
	o.Log.Info("building the baseline", "slots", o.Slots, "root_rules", base.RootRules())
	if err := base.Create(cfg.GuestCIDR); err != nil {
		return nil, err
	}

	guests := map[string]*lab.GuestNS{}
	for name, ns := range map[string]string{
		"a": cfg.NetnsPath(0), "b": cfg.NetnsPath(last), "c": base.NetnsPath(0), "d": base.NetnsPath(last),
	} {
		g, err := lab.NewGuestNS(tag+name, ns, cfg)
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, g.Close)
		guests[name] = g
	}
	var oursFan, theirsFan []*lab.GuestNS
	for _, i := range fan {
		// Slots 0 and N-1 already have their guest.
		switch i {
		case 0:
			oursFan, theirsFan = append(oursFan, guests["a"]), append(theirsFan, guests["c"])
			continue
		case last:
			oursFan, theirsFan = append(oursFan, guests["b"]), append(theirsFan, guests["d"])
			continue
		}
		for _, side := range []struct {
			name, ns string
			out      *[]*lab.GuestNS
		}{{fmt.Sprintf("%sfo%d", tag, i), cfg.NetnsPath(i), &oursFan}, {fmt.Sprintf("%sfb%d", tag, i), base.NetnsPath(i), &theirsFan}} {
			g, err := lab.NewGuestNS(side.name, side.ns, cfg)
			if err != nil {
				return nil, err
			}
			cleanup = append(cleanup, g.Close)
			*side.out = append(*side.out, g)
		}
	}
	ours := [2]*lab.GuestNS{guests["a"], guests["b"]}
	theirs := [2]*lab.GuestNS{guests["c"], guests["d"]}
	echo := netip.AddrPortFrom(fab.Outside, udpEchoPort)
	web := netip.AddrPortFrom(fab.Outside, tcpPort)

	res = &DatapathResult{Opts: o}
	for r := 0; r < o.Rounds; r++ {
		o.Log.Info("round", "n", r+1, "of", o.Rounds)
		// Slot 0 and slot N-1 of one design take turns; the designs run
		// one after the other (a slow round trip of one design would
		// otherwise cool the CPU for whoever comes next).
		for _, d := range []struct {
			g   [2]*lab.GuestNS
			out *[2][]time.Duration
		}{{ours, &res.OursRTT}, {theirs, &res.BaseRTT}, {[2]*lab.GuestNS{ours[0], theirs[0]}, &res.Slot0RTT}} {
			rt, err := PairedRTT([]string{d.g[0].NetnsPath(), d.g[1].NetnsPath()}, echo, o.RTTSamples)
			if err != nil {
				return nil, err
			}
			d.out[0] = append(d.out[0], rt[0]...)
			d.out[1] = append(d.out[1], rt[1]...)
		}
		for _, m := range []struct {
			mode string
			dst  netip.AddrPort
			runs []struct {
				g   *lab.GuestNS
				out *[]float64
			}
		}{
			{"cps", web, []struct {
				g   *lab.GuestNS
				out *[]float64
			}{{ours[0], &res.OursCPS[0]}, {theirs[0], &res.BaseCPS[0]}, {ours[1], &res.OursCPS[1]}, {theirs[1], &res.BaseCPS[1]}}},
			{"pps", echo, []struct {
				g   *lab.GuestNS
				out *[]float64
			}{{ours[0], &res.OursPPS}, {theirs[0], &res.BasePPS}}},
		} {
			for k := range m.runs {
				x := m.runs[(k+r)%len(m.runs)]
				lr, err := runLoad(ctx, o, x.g, m.mode, m.dst, o.RTTSamples)
				if err != nil {
					return nil, err
				}
				*x.out = append(*x.out, lr.Rate)
			}
		}
		if len(fan) == 0 {
			continue
		}
		// Many slots at once: the designs take turns, in alternating
		// order from round to round.
		for _, m := range []struct {
			mode string
			dst  netip.AddrPort
			outs [2]*[]float64
		}{{"cps", web, [2]*[]float64{&res.OursFanCPS, &res.BaseFanCPS}}, {"pps", echo, [2]*[]float64{&res.OursFanPPS, &res.BaseFanPPS}}} {
			for k := range 2 {
				side := (k + r) % 2
				gs := [2][]*lab.GuestNS{oursFan, theirsFan}[side]
				rate, err := fanLoad(ctx, o, gs, m.mode, m.dst)
				if err != nil {
					return nil, err
				}
				*m.outs[side] = append(*m.outs[side], rate)
			}
		}
	}

	res.OursRootRules = firewall.Root{Prefix: cfg.Prefix, Uplink: fab.Uplink}.RuleCount()
	res.BaseRules = base.RootRules()
	ourAddrs := []netip.Addr{cfg.GuestIP(), cfg.SlotIP(0), cfg.SlotIP(last)}
	for _, ns := range []string{"", cfg.NetnsPath(0), cfg.NetnsPath(last)} {
		n, err := lab.ConntrackEntriesFor(ns, ourAddrs...)
		if err != nil {
			return nil, err
		}
		res.OursConntrack += n
	}
	r0, _, _ := subnet(0)
	rl, _, _ := subnet(last)
	for _, ns := range []string{"", base.NetnsPath(0), base.NetnsPath(last)} {
		n, err := lab.ConntrackEntriesFor(ns, cfg.GuestIP(), r0.Next(), rl.Next(), fab.Underlay)
		if err != nil {
			return nil, err
		}
		res.BaseCtrack += n
	}
	return res, nil
}

// fanOutSlots spreads n slot indexes evenly over a pool of size slots,
// first and last included.
func fanOutSlots(slots, n int) []int {
	n = min(n, slots)
	if n < 2 {
		return nil
	}
	out := make([]int, n)
	for k := range n {
		out[k] = k * (slots - 1) / (n - 1)
	}
	return out
}

// fanLoad runs one load generator with one worker in every guest at once
// and returns the sum of their rates.
func fanLoad(ctx context.Context, o DatapathOptions, gs []*lab.GuestNS, mode string, dst netip.AddrPort) (float64, error) {
	one := o
	one.Workers = 1
	rates := make([]float64, len(gs))
	errs := make([]error, len(gs))
	var wg sync.WaitGroup
	for k, g := range gs {
		wg.Go(func() {
			lr, err := runLoad(ctx, one, g, mode, dst, 0)
			rates[k], errs[k] = lr.Rate, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	total := 0.0
	for _, r := range rates {
		total += r
	}
	return total, nil
}

// runLoad runs the load generator in g's namespace and decodes its result.
func runLoad(ctx context.Context, o DatapathOptions, g *lab.GuestNS, mode string, dst netip.AddrPort, samples int) (LoadResult, error) {
	var r LoadResult
	if len(o.Loadgen) == 0 {
		return r, errors.New("no load generator command")
	}
	args := append([]string{"netns", "exec", g.Name}, o.Loadgen...)
	args = append(args, "--mode", mode, "--dst", dst.String(), "--duration", o.Duration.String(),
		"--workers", strconv.Itoa(o.Workers), "--samples", strconv.Itoa(samples))
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("load generator %s in %s to %s: %w: %s", mode, g.Name, dst, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("load generator output %q: %w", out, err)
	}
	return r, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func spread(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f-%.0f", slices.Min(xs), slices.Max(xs))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f us", float64(d.Nanoseconds())/1000) }

// Write prints the result as a markdown table.
func (r *DatapathResult) Write(w io.Writer) {
	o := r.Opts
	fmt.Fprintf(w, "netslot datapath vs the replaced design (MASQUERADE in the slot and again in the root namespace, conntrack on, %d root rules per slot)\n", RulesPerSlot)
	fmt.Fprintf(w, "%d slots, %d rounds alternating the designs, %v per throughput run, %d workers, %d round trips per guest and round (slot 0 and slot N-1 of a design take turns, one request each)\n\n",
		o.Slots, o.Rounds, o.Duration, o.Workers, o.RTTSamples)
	fmt.Fprintln(w, "| metric | replaced design | netslot (eBPF) | netslot / replaced |")
	fmt.Fprintln(w, "|---|---|---|---|")
	names := [2]string{"slot 0", fmt.Sprintf("slot %d", o.Slots-1)}
	for k := 0; k < 2; k++ {
		oc, bc := median(r.OursCPS[k]), median(r.BaseCPS[k])
		fmt.Fprintf(w, "| TCP connections/s, %s (median; range) | %.0f (%s) | %.0f (%s) | %.2fx |\n", names[k], bc, spread(r.BaseCPS[k]), oc, spread(r.OursCPS[k]), oc/bc)
	}
	op, bp := median(r.OursPPS), median(r.BasePPS)
	fmt.Fprintf(w, "| UDP requests/s answered, slot 0 (2 packets each) | %.0f (%s) | %.0f (%s) | %.2fx |\n", bp, spread(r.BasePPS), op, spread(r.OursPPS), op/bp)
	if len(r.OursFanCPS) > 0 {
		oc, bc := median(r.OursFanCPS), median(r.BaseFanCPS)
		fmt.Fprintf(w, "| TCP connections/s, %d slots at once (sum) | %.0f (%s) | %.0f (%s) | %.2fx |\n", o.FanOut, bc, spread(r.BaseFanCPS), oc, spread(r.OursFanCPS), oc/bc)
		op, bp := median(r.OursFanPPS), median(r.BaseFanPPS)
		fmt.Fprintf(w, "| UDP requests/s answered, %d slots at once (sum) | %.0f (%s) | %.0f (%s) | %.2fx |\n", o.FanOut, bp, spread(r.BaseFanPPS), op, spread(r.OursFanPPS), op/bp)
	}
	row := func(name string, base, ours []time.Duration) {
		b, a := sortedCopy(base), sortedCopy(ours)
		fmt.Fprintf(w, "| UDP round trip, %s: p50 / p99 | %s / %s | %s / %s | %.3gx |\n", name,
			us(percentile(b, 0.5)), us(percentile(b, 0.99)), us(percentile(a, 0.5)), us(percentile(a, 0.99)),
			float64(percentile(a, 0.5))/float64(percentile(b, 0.5)))
	}
	row("slot 0 (the designs taking turns)", r.Slot0RTT[1], r.Slot0RTT[0])
	row("slot 0 (with slot N-1 of its design taking turns)", r.BaseRTT[0], r.OursRTT[0])
	row(names[1]+" (with slot 0 taking turns)", r.BaseRTT[1], r.OursRTT[1])
	skew := func(x [2][]time.Duration) float64 {
		return 100 * (float64(percentile(sortedCopy(x[1]), 0.5))/float64(percentile(sortedCopy(x[0]), 0.5)) - 1)
	}
	fmt.Fprintf(w, "| %s vs slot 0, p50 round trip | %+.1f %% | %+.1f %% | |\n", names[1], skew(r.BaseRTT), skew(r.OursRTT))
	fmt.Fprintf(w, "| root-namespace rules | %d | %d | |\n", r.BaseRules, r.OursRootRules)
	fmt.Fprintf(w, "| conntrack entries left by the run | %d | %d | |\n", r.BaseCtrack, r.OursConntrack)
	fmt.Fprintln(w)
	fmt.Fprintln(w, strings.TrimSpace(`Each guest is a namespace with a kernel network stack wired to the slot's tap by a
userspace copy loop (as a VMM's virtio device is); the outside host is a namespace on the fabric.`))
}
