package bench

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// ReportOptions select the scenarios' sizes and where the report goes.
type ReportOptions struct {
	Dir       string
	Quick     bool // every scenario at small sizes (minutes, not hours)
	Rounds    int  // repeats of the boot and attach scenarios (0: 3, or 1 with Quick)
	Loadgen   []string
	CNIDir    string
	Log       *slog.Logger
	Datapath  DatapathOptions
	Attach    AttachOptions
	Boot      BootOptions
	Orderings OrderingOptions
	DHCP      DHCPOptions
	First     FirstPacketOptions
}

// defaults sets the scenarios' sizes: quick or full.
func (o *ReportOptions) defaults() {
	if o.Quick {
		o.Datapath = DatapathOptions{Slots: 50, Rounds: 1, Duration: time.Second, RTTSamples: 200, Workers: 4, FanOut: 8}
		o.Attach = AttachOptions{Slots: 16, Samples: 20}
		o.Boot = BootOptions{Sizes: []int{100, 400}, Idle: 2 * time.Second}
		o.Orderings = OrderingOptions{Slots: 50}
		o.DHCP = DHCPOptions{Slots: 5, Rounds: 20, BootRounds: 1}
		o.First = FirstPacketOptions{Rounds: 5, SlowARP: 100 * time.Millisecond}
		o.Rounds = max(o.Rounds, 1)
	} else {
		o.Datapath = DatapathOptions{Slots: 4000, Rounds: 5, Duration: 5 * time.Second, RTTSamples: 2000, Workers: 16, FanOut: 64}
		o.Attach = AttachOptions{Slots: 64, Samples: 200}
		o.Boot = BootOptions{Sizes: []int{100, 1000, 4000, 10000}, Idle: 10 * time.Second}
		o.Orderings = OrderingOptions{Slots: 500}
		o.DHCP = DHCPOptions{Slots: 50, Rounds: 200, BootRounds: 3, BootSlots: 1000}
		o.First = FirstPacketOptions{Rounds: 100, SlowARP: 100 * time.Millisecond}
		if o.Rounds <= 0 {
			o.Rounds = 3
		}
	}
	o.Boot.Log, o.Orderings.Log, o.DHCP.Log, o.First.Log = o.Log, o.Log, o.Log, o.Log
	o.Datapath.Loadgen, o.Datapath.Log = o.Loadgen, o.Log
	o.Attach.CNIDir, o.Attach.Log = o.CNIDir, o.Log
}

// progress logs each step of a report with the time elapsed and an
// estimate of the time left: the steps' estimated durations, scaled by how
// the finished ones compared with theirs.
type progress struct {
	log         *slog.Logger
	start       time.Time
	total, done float64 // estimated seconds
	n, i        int
}

func (p *progress) run(name string, est float64, fn func() error, attrs ...any) error {
	p.i++
	left := p.total - p.done
	if p.done > 0 {
		left *= time.Since(p.start).Seconds() / p.done
	}
	p.log.Info("bench step", append([]any{"step", fmt.Sprintf("%d/%d", p.i, p.n), "scenario", name}, append(attrs,
		"elapsed", time.Since(p.start).Round(time.Second), "eta", (time.Duration(left)*time.Second).Round(time.Second))...)...)
	if err := fn(); err != nil {
		return fmt.Errorf("%s scenario: %w", name, err)
	}
	p.done += est
	return nil
}

// RunReport runs the scenarios one after the other and writes report.md,
// the raw samples as CSV and the plots as SVG into o.Dir.
func RunReport(ctx context.Context, o ReportOptions) error {
	o.defaults()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	// Estimated seconds per step, from runs on a 2-CPU VM; only their
	// proportions matter for the ETA.
	bootEst := func(n int) float64 { return 3 + 0.006*float64(n) }
	attachEst := 2 + 0.25*float64(o.Attach.Samples)
	dpEst := 20 + 0.004*float64(o.Datapath.Slots) + float64(o.Datapath.Rounds)*(10*o.Datapath.Duration.Seconds()+3)
	// dnsmasq's address probe holds each fresh guest's first OFFER for 3 s.
	dhcpEst := 3*float64(o.DHCP.Slots) + 0.0005*float64(o.DHCP.Slots*o.DHCP.Rounds) + 2*float64(o.DHCP.BootRounds)*bootEst(max(o.DHCP.BootSlots, o.DHCP.Slots))
	firstEst := 2 + float64(o.First.Rounds)*(0.01+o.First.SlowARP.Seconds()/3)
	p := &progress{log: o.Log, start: time.Now(), n: o.Rounds*(len(o.Boot.Sizes)+1) + 4}
	for _, n := range o.Boot.Sizes {
		p.total += float64(o.Rounds) * bootEst(n)
	}
	p.total += float64(o.Rounds)*attachEst + 0.01*float64(o.Orderings.Slots) + dpEst + dhcpEst + firstEst

	var boots []BootRun
	var atts []*AttachResult
	for r := 0; r < o.Rounds; r++ {
		for _, n := range o.Boot.Sizes {
			bo := o.Boot
			bo.Sizes = []int{n}
			err := p.run("boot", bootEst(n), func() error {
				runs, err := RunBoot(ctx, bo)
				for k := range runs {
					runs[k].Round = r
				}
				boots = append(boots, runs...)
				return err
			}, "slots", n, "round", r+1)
			if err != nil {
				return err
			}
		}
		err := p.run("attach latency", attachEst, func() error {
			a, err := RunAttach(ctx, o.Attach)
			atts = append(atts, a)
			return err
		}, "slots", o.Attach.Slots, "samples", o.Attach.Samples, "round", r+1)
		if err != nil {
			return err
		}
	}
	var ord *OrderingResult
	err := p.run("device-creation orderings", 0.01*float64(o.Orderings.Slots), func() (err error) {
		ord, err = RunOrderings(ctx, o.Orderings)
		return err
	}, "slots", o.Orderings.Slots)
	if err != nil {
		return err
	}
	var dp *DatapathResult
	err = p.run("datapath", dpEst, func() (err error) {
		dp, err = RunDatapath(ctx, o.Datapath)
		return err
	}, "slots", o.Datapath.Slots, "rounds", o.Datapath.Rounds, "fan_out", o.Datapath.FanOut)
	if err != nil {
		return err
	}
	var dhcp *DHCPResult
	err = p.run("dhcp", dhcpEst, func() (err error) {
		dhcp, err = RunDHCP(ctx, o.DHCP)
		return err
	}, "slots", o.DHCP.Slots, "rounds", o.DHCP.Rounds)
	if err != nil {
		return err
	}
	var first *FirstPacketResult
	err = p.run("firstpacket", firstEst, func() (err error) {
		first, err = RunFirstPacket(ctx, o.First)
		return err
	}, "rounds", o.First.Rounds)
	if err != nil {
		return err
	}
	att := pooled(atts)

	if err := writeAttachCSV(filepath.Join(o.Dir, "attach_samples.csv"), atts); err != nil {
		return err
	}
	if err := writeBootCSV(filepath.Join(o.Dir, "boot_timeline.csv"), boots); err != nil {
		return err
	}
	if err := bootPlot(filepath.Join(o.Dir, "boot_per_slot.svg"), medianBoots(boots)); err != nil {
		return err
	}
	if err := writeRTTCSV(filepath.Join(o.Dir, "datapath_rtt.csv"), dp); err != nil {
		return err
	}
	if err := cdfPlot(filepath.Join(o.Dir, "attach_cdf.svg"), "Time to give a VM its network", att.Methods, att.Samples); err != nil {
		return err
	}
	last := fmt.Sprintf("slot %d", dp.Opts.Slots-1)
	rtts := map[string][]time.Duration{
		"netslot, slot 0": dp.OursRTT[0], "netslot, " + last: dp.OursRTT[1],
		"replaced design, slot 0": dp.BaseRTT[0], "replaced design, " + last: dp.BaseRTT[1],
	}
	order := []string{"netslot, slot 0", "netslot, " + last, "replaced design, slot 0", "replaced design, " + last}
	if err := cdfPlot(filepath.Join(o.Dir, "datapath_rtt_cdf.svg"), "UDP round trip through a slot", order, rtts); err != nil {
		return err
	}

	f, err := os.Create(filepath.Join(o.Dir, "report.md"))
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer f.Close()
	fmt.Fprintf(f, "# netslot bench report\n\n%s\n\nGenerated %s in %s by `netslot-bench%s` (%d rounds of the boot and attach scenarios).\n\n",
		machine(), time.Now().UTC().Format(time.RFC3339), time.Since(p.start).Round(time.Second),
		map[bool]string{true: " --quick", false: ""}[o.Quick], o.Rounds)
	writeSeedTable(f, boots, atts, dp)
	fmt.Fprint(f, "\n## Boot\n\nA fresh pool of each size (no uplink, state on tmpfs), after the kernel has finished dismantling earlier namespaces; median of the rounds, range in brackets. The plot shows the median round of each size.\n\n![per-slot cost](boot_per_slot.svg)\n\n")
	WriteBoot(f, boots)
	fmt.Fprint(f, "\n### Device-creation orderings\n\n")
	ord.Write(f)
	fmt.Fprint(f, "\n## Attach latency\n\n![CDF](attach_cdf.svg)\n\nAll rounds' samples together:\n\n")
	att.Write(f)
	fmt.Fprint(f, "\nPer round (median of the rounds, range in brackets):\n\n")
	writeAttachRounds(f, atts)
	fmt.Fprint(f, "\n## Datapath\n\n![CDF](datapath_rtt_cdf.svg)\n\n")
	dp.Write(f)
	fmt.Fprint(f, "\n## DHCP\n\n")
	dhcp.Write(f)
	fmt.Fprint(f, "\n## The first packet to a VPC peer\n\n")
	first.Write(f)
	fmt.Fprintln(f, "\nRaw samples: `boot_timeline.csv`, `attach_samples.csv`, `datapath_rtt.csv` (nanoseconds).")
	if err := f.Close(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	o.Log.Info("report written", "dir", o.Dir, "elapsed", time.Since(p.start).Round(time.Second))
	return nil
}

// machine describes where the figures come from.
func machine() string {
	var u unix.Utsname
	unix.Uname(&u)
	rel := strings.TrimRight(string(u.Release[:]), "\x00")
	return fmt.Sprintf("Machine: %d CPUs, Linux %s, %s.", runtime.NumCPU(), rel, runtime.Version())
}

func writeAttachCSV(path string, atts []*AttachResult) error {
	rows := [][]string{{"round", "method", "ns"}}
	for k, r := range atts {
		for _, m := range r.Methods {
			for _, d := range r.Samples[m] {
				rows = append(rows, []string{strconv.Itoa(k + 1), m, strconv.FormatInt(d.Nanoseconds(), 10)})
			}
		}
	}
	return writeCSV(path, rows)
}

// pooled is every round's samples together.
func pooled(atts []*AttachResult) *AttachResult {
	p := &AttachResult{Opts: atts[0].Opts, Methods: atts[0].Methods, Samples: map[string][]time.Duration{}}
	for _, r := range atts {
		for m, s := range r.Samples {
			p.Samples[m] = append(p.Samples[m], s...)
		}
	}
	return p
}

// attachStat is, over rounds, the p-th percentile of method m, or (with
// over set) its ratio to the same percentile of method over in the same
// round.
func attachStat(atts []*AttachResult, m string, p float64, over string) stat {
	return statOf(atts, func(r *AttachResult) float64 {
		v := float64(percentile(sortedCopy(r.Samples[m]), p))
		if over != "" {
			v /= float64(max(1, percentile(sortedCopy(r.Samples[over]), p)))
		}
		return v
	})
}

// durStat prints a stat of nanoseconds as durations.
func durStat(s stat) string {
	d := func(f float64) string { return fmtDur(time.Duration(f)) }
	if s.lo == s.hi {
		return d(s.med)
	}
	return fmt.Sprintf("%s (%s-%s)", d(s.med), d(s.lo), d(s.hi))
}

// ratioStat prints a stat of ratios.
func ratioStat(s stat) string {
	if s.lo == s.hi {
		return ratio(s.med)
	}
	return fmt.Sprintf("%s (%s-%s)", ratio(s.med), ratio(s.lo), ratio(s.hi))
}

// writeAttachRounds prints each method's p50 and p99 and their ratios to
// netslot's in-process acquire, as medians over the rounds.
func writeAttachRounds(w io.Writer, atts []*AttachResult) {
	fmt.Fprintln(w, "| method | p50 | p99 | p50 / netslot acquire | p99 / netslot acquire |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, m := range atts[0].Methods {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", m,
			durStat(attachStat(atts, m, 0.5, "")), durStat(attachStat(atts, m, 0.99, "")),
			ratioStat(attachStat(atts, m, 0.5, mAcquire)), ratioStat(attachStat(atts, m, 0.99, mAcquire)))
	}
}

func writeRTTCSV(path string, r *DatapathResult) error {
	rows := [][]string{{"design", "slot", "ns"}}
	for k, slotIdx := range []int{0, r.Opts.Slots - 1} {
		for _, d := range r.OursRTT[k] {
			rows = append(rows, []string{"netslot", strconv.Itoa(slotIdx), strconv.FormatInt(d.Nanoseconds(), 10)})
		}
		for _, d := range r.BaseRTT[k] {
			rows = append(rows, []string{"replaced", strconv.Itoa(slotIdx), strconv.FormatInt(d.Nanoseconds(), 10)})
		}
	}
	return writeCSV(path, rows)
}

func writeCSV(path string, rows [][]string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("csv: %w", err)
	}
	w := csv.NewWriter(f)
	w.WriteAll(rows)
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("csv %s: %w", path, err)
	}
	return f.Close()
}

const cdfPoints = 500

// cdfPlot draws the cumulative distribution of each series (log time
// axis) as SVG.
func cdfPlot(path, title string, order []string, series map[string][]time.Duration) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "microseconds (log)"
	p.Y.Label.Text = "fraction of samples"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top = false
	p.Legend.Left = false
	for i, name := range order {
		s := slices.Clone(series[name])
		if len(s) == 0 {
			continue
		}
		slices.Sort(s)
		// At most cdfPoints points a line (the tails kept): the SVG
		// stays small whatever the sample count.
		step := max(1, len(s)/cdfPoints)
		var pts plotter.XYs
		for k := 0; k < len(s); k++ {
			if k%step != 0 && k < len(s)-step {
				continue
			}
			pts = append(pts, plotter.XY{X: max(float64(s[k].Nanoseconds())/1e3, 0.1), Y: float64(k+1) / float64(len(s))})
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i / 7)
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(name, line)
	}
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

func writeBootCSV(path string, runs []BootRun) error {
	rows := [][]string{{"round", "slots", "ready_index", "ns_since_start"}}
	for _, r := range runs {
		for k, t := range r.Timeline {
			rows = append(rows, []string{strconv.Itoa(r.Round + 1), strconv.Itoa(r.Slots), strconv.Itoa(k), strconv.FormatInt(t.Nanoseconds(), 10)})
		}
	}
	return writeCSV(path, rows)
}

// bootPlot draws milliseconds per slot over the course of each boot
// (windows of 1/50 of the pool): a flat line is constant work.
func bootPlot(path string, runs []BootRun) error {
	p := plot.New()
	p.Title.Text = "Boot: wall time per slot as the pool fills"
	p.X.Label.Text = "fraction of the pool ready"
	p.Y.Label.Text = "ms per slot"
	p.Y.Min = 0
	p.Legend.Top = true
	for i, r := range runs {
		n := len(r.Timeline)
		if n < 50 {
			continue
		}
		w := n / 50
		var pts plotter.XYs
		for k := w; k < n; k += w {
			ms := float64((r.Timeline[k] - r.Timeline[k-w]).Microseconds()) / 1000 / float64(w)
			pts = append(pts, plotter.XY{X: float64(k) / float64(n), Y: ms})
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%d slots", r.Slots), line)
	}
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// writeSeedTable opens the report with Lambda's before/after table:
// what Lambda reported, and the closest figure measured here for netslot,
// the design it replaced and the CNI plugins, from this run (medians over
// rounds, ranges in brackets).
func writeSeedTable(w io.Writer, boots []BootRun, atts []*AttachResult, dp *DatapathResult) {
	med := func(xs []time.Duration) time.Duration { return percentile(sortedCopy(xs), 0.5) }
	last := dp.Opts.Slots - 1
	fmt.Fprint(w, "## Summary: Lambda's before/after table, on this machine\n\n")
	fmt.Fprintln(w, "| metric | Lambda before | Lambda after | netslot here | replaced design here | CNI plugins here | netslot's advantage |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p99", 0.99}} {
		fmt.Fprintf(w, "| tunnel/network ready for a VM (%s) | 150 ms (Geneve) | 200 us | %s (acquire + VPC flip); %s (acquire) | %s (build the slot) | %s (ADD alone) | acquire is %s faster than building, %s than the ADD |\n",
			p.name, durStat(attachStat(atts, mAcquireVPC, p.q, "")), durStat(attachStat(atts, mAcquire, p.q, "")),
			durStat(attachStat(atts, mOnDemand, p.q, "")), durStat(attachStat(atts, mCNIAdd, p.q, "")),
			ratioStat(attachStat(atts, mOnDemand, p.q, mAcquire)), ratioStat(attachStat(atts, mCNIAdd, p.q, mAcquire)))
	}
	oc, bc := median(dp.OursCPS[0]), median(dp.BaseCPS[0])
	fmt.Fprintf(w, "| NAT: connections/s through slot 0 (median of %d rounds) | stateful, twice | stateless | %.0f | %.0f | | %s |\n",
		len(dp.OursCPS[0]), oc, bc, ratio(oc/bc))
	if len(dp.OursFanCPS) > 0 {
		oc, bc := median(dp.OursFanCPS), median(dp.BaseFanCPS)
		fmt.Fprintf(w, "| NAT: connections/s through %d slots at once | | | %.0f | %.0f | | %s |\n", dp.Opts.FanOut, oc, bc, ratio(oc/bc))
	}
	fmt.Fprintf(w, "| root-namespace rules at %d slots | > 125,000 | 144 | %d | %d | | |\n", dp.Opts.Slots, dp.OursRootRules, dp.BaseRules)
	o0, oN := med(dp.OursRTT[0]), med(dp.OursRTT[1])
	b0, bN := med(dp.BaseRTT[0]), med(dp.BaseRTT[1])
	fmt.Fprintf(w, "| per-packet cost, worst slot (round trip slot %d vs slot 0, p50) | up to ~1 ms | constant | %s vs %s | %s vs %s | | %s |\n",
		last, fmtDur(oN), fmtDur(o0), fmtDur(bN), fmtDur(b0), ratio(float64(bN)/float64(oN)))
	fmt.Fprintf(w, "| conntrack entries left by the run | (per flow, twice) | 0 | %d | %d | | |\n", dp.OursConntrack, dp.BaseCtrack)
	sizes, by := bootSizes(boots)
	for _, n := range sizes {
		if n != 4000 && n != sizes[len(sizes)-1] {
			continue
		}
		rs := by[n]
		fmt.Fprintf(w, "| networks pre-created at boot: %d | 200 | 4,000 in ~3 min | %s s; per-slot cost last/first tenth %s | (created on demand) | (created on demand) | |\n",
			n, statOf(rs, func(r BootRun) float64 { return r.Boot.Seconds() }).fmt("%.1f"), statOf(rs, BootRun.tenthRatio).fmt("%.2fx"))
	}
	if len(sizes) > 0 {
		rs := by[sizes[len(sizes)-1]]
		fmt.Fprintf(w, "| daemon CPU when idle, %d slots | background drain | none | %s %% of a core | | | |\n",
			sizes[len(sizes)-1], statOf(rs, func(r BootRun) float64 { return r.IdleCPUPercent }).fmt("%.2f"))
	}
	fmt.Fprintln(w, "\nLambda's figures are from its description of the design (All Things Distributed, 2026-04-22); every other figure is from this run, on this machine. The sections below give percentiles, spreads and how each was measured.")
}
