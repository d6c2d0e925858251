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
	Dir      string
	Quick    bool // every scenario at small sizes (minutes, not hours)
	Loadgen  []string
	CNIDir   string
	Log      *slog.Logger
	Datapath DatapathOptions
	Attach   AttachOptions
	Boot     BootOptions
}

// defaults sets the scenarios' sizes: quick or full.
func (o *ReportOptions) defaults() {
	if o.Quick {
		o.Datapath = DatapathOptions{Slots: 50, Rounds: 1, Duration: time.Second, RTTSamples: 200, Workers: 4}
		o.Attach = AttachOptions{Slots: 16, Samples: 20}
		o.Boot = BootOptions{Sizes: []int{100, 400}, Idle: 2 * time.Second}
	} else {
		o.Datapath = DatapathOptions{Slots: 4000, Rounds: 5, Duration: 5 * time.Second, RTTSamples: 2000, Workers: 16}
		o.Attach = AttachOptions{Slots: 64, Samples: 200}
		o.Boot = BootOptions{Sizes: []int{100, 1000, 4000, 10000}, Idle: 10 * time.Second}
	}
	o.Boot.Log = o.Log
	o.Datapath.Loadgen, o.Datapath.Log = o.Loadgen, o.Log
	o.Attach.CNIDir, o.Attach.Log = o.CNIDir, o.Log
}

// RunReport runs the scenarios one after the other and writes report.md,
// the raw samples as CSV and the plots as SVG into o.Dir.
func RunReport(ctx context.Context, o ReportOptions) error {
	o.defaults()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	start := time.Now()
	o.Log.Info("scenario 1 of 3: boot", "sizes", o.Boot.Sizes)
	boots, err := RunBoot(ctx, o.Boot)
	if err != nil {
		return fmt.Errorf("boot scenario: %w", err)
	}
	o.Log.Info("scenario 2 of 3: attach latency", "slots", o.Attach.Slots, "samples", o.Attach.Samples,
		"elapsed", time.Since(start).Round(time.Second))
	att, err := RunAttach(ctx, o.Attach)
	if err != nil {
		return fmt.Errorf("attach scenario: %w", err)
	}
	o.Log.Info("scenario 3 of 3: datapath", "slots", o.Datapath.Slots, "rounds", o.Datapath.Rounds,
		"elapsed", time.Since(start).Round(time.Second))
	dp, err := RunDatapath(ctx, o.Datapath)
	if err != nil {
		return fmt.Errorf("datapath scenario: %w", err)
	}

	if err := writeAttachCSV(filepath.Join(o.Dir, "attach_samples.csv"), att); err != nil {
		return err
	}
	if err := writeBootCSV(filepath.Join(o.Dir, "boot_timeline.csv"), boots); err != nil {
		return err
	}
	if err := bootPlot(filepath.Join(o.Dir, "boot_per_slot.svg"), boots); err != nil {
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
	fmt.Fprintf(f, "# netslot bench report\n\n%s\n\nGenerated %s in %s by `netslot bench report%s`.\n\n",
		machine(), time.Now().UTC().Format(time.RFC3339), time.Since(start).Round(time.Second), map[bool]string{true: " --quick", false: ""}[o.Quick])
	writeSeedTable(f, boots, att, dp)
	fmt.Fprint(f, "\n## Boot\n\nA fresh pool of each size (no uplink, state on tmpfs), after the kernel has finished dismantling earlier namespaces.\n\n![per-slot cost](boot_per_slot.svg)\n\n")
	WriteBoot(f, boots)
	fmt.Fprint(f, "\n## Attach latency\n\n![CDF](attach_cdf.svg)\n\n")
	att.Write(f)
	fmt.Fprint(f, "\n## Datapath\n\n![CDF](datapath_rtt_cdf.svg)\n\n")
	dp.Write(f)
	fmt.Fprintln(f, "\nRaw samples: `boot_timeline.csv`, `attach_samples.csv`, `datapath_rtt.csv` (nanoseconds).")
	if err := f.Close(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	o.Log.Info("report written", "dir", o.Dir, "elapsed", time.Since(start).Round(time.Second))
	return nil
}

// machine describes where the figures come from.
func machine() string {
	var u unix.Utsname
	unix.Uname(&u)
	rel := strings.TrimRight(string(u.Release[:]), "\x00")
	return fmt.Sprintf("Machine: %d CPUs, Linux %s, %s.", runtime.NumCPU(), rel, runtime.Version())
}

func writeAttachCSV(path string, r *AttachResult) error {
	rows := [][]string{{"method", "ns"}}
	for _, m := range r.Methods {
		for _, d := range r.Samples[m] {
			rows = append(rows, []string{m, strconv.FormatInt(d.Nanoseconds(), 10)})
		}
	}
	return writeCSV(path, rows)
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
		pts := make(plotter.XYs, len(s))
		for k, d := range s {
			pts[k].X = max(float64(d.Nanoseconds())/1e3, 0.1)
			pts[k].Y = float64(k+1) / float64(len(s))
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
	rows := [][]string{{"slots", "ready_index", "ns_since_start"}}
	for _, r := range runs {
		for k, t := range r.Timeline {
			rows = append(rows, []string{strconv.Itoa(r.Slots), strconv.Itoa(k), strconv.FormatInt(t.Nanoseconds(), 10)})
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

// writeSeedTable opens the report with the seed's before/after table:
// what Lambda reported, and the closest figure measured here for netslot,
// the design it replaced and the CNI plugins, from this run.
func writeSeedTable(w io.Writer, boots []BootRun, att *AttachResult, dp *DatapathResult) {
	med := func(xs []time.Duration) time.Duration { return percentile(sortedCopy(xs), 0.5) }
	var b4k *BootRun
	for i := range boots {
		if b4k == nil || boots[i].Slots <= 4000 {
			b4k = &boots[i]
		}
	}
	last := dp.Opts.Slots - 1
	fmt.Fprint(w, "## Summary: the seed's table, on this machine\n\n")
	fmt.Fprintln(w, "| metric | Lambda before | Lambda after | netslot here | replaced design here | CNI plugins here | netslot's advantage over the replaced design |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	vpc, ondemand, cni := med(att.Samples[mAcquireVPC]), med(att.Samples[mOnDemand]), med(att.Samples[mCNINetnsAdd])
	fmt.Fprintf(w, "| tunnel/network ready for a VM (p50) | 150 ms (Geneve) | 200 us | %s (acquire + VPC flip) | %s (build the slot) | %s (netns + ADD) | %s |\n",
		fmtDur(vpc), fmtDur(ondemand), fmtDur(cni), ratio(float64(ondemand)/float64(vpc)))
	oc, bc := median(dp.OursCPS[0]), median(dp.BaseCPS[0])
	fmt.Fprintf(w, "| NAT: connections/s through slot 0 (median of %d rounds) | stateful, twice | stateless | %.0f | %.0f | | %s |\n",
		len(dp.OursCPS[0]), oc, bc, ratio(oc/bc))
	fmt.Fprintf(w, "| root-namespace rules at %d slots | > 125,000 | 144 | %d | %d | | |\n", dp.Opts.Slots, dp.OursRootRules, dp.BaseRules)
	o0, oN := med(dp.OursRTT[0]), med(dp.OursRTT[1])
	b0, bN := med(dp.BaseRTT[0]), med(dp.BaseRTT[1])
	fmt.Fprintf(w, "| per-packet cost, worst slot (round trip slot %d vs slot 0, p50) | up to ~1 ms | constant | %s vs %s | %s vs %s | | %s |\n",
		last, fmtDur(oN), fmtDur(o0), fmtDur(bN), fmtDur(b0), ratio(float64(bN)/float64(oN)))
	fmt.Fprintf(w, "| conntrack entries left by the run | (per flow, twice) | 0 | %d | %d | | |\n", dp.OursConntrack, dp.BaseCtrack)
	if b4k != nil {
		fmt.Fprintf(w, "| networks pre-created at boot | 200 | 4,000 in ~3 min | %d in %.1f s | (created on demand) | (created on demand) | |\n",
			b4k.Slots, b4k.Boot.Seconds())
	}
	if n := len(boots); n > 0 {
		big := boots[n-1]
		fmt.Fprintf(w, "| largest pool booted; per-slot cost last/first tenth | | 4,000 | %d in %.1f s; %.2fx | | | |\n",
			big.Slots, big.Boot.Seconds(), float64(big.LastTenth)/float64(max(1, big.FirstTenth)))
		fmt.Fprintf(w, "| daemon CPU when idle | background drain | none | %.2f %% of a core | | | |\n", big.IdleCPUPercent)
	}
	fmt.Fprintln(w, "\nLambda's figures are from the seed (All Things Distributed, 2026-04-22); every other figure is from this run, on this machine. The sections below give percentiles, spreads and how each was measured.")
}
