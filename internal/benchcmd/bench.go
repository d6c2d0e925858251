// Package benchcmd is netslot-bench: the lab benchmarks (boot, datapath,
// attach, orderings, the report) and the lab tools the demo uses. It is the
// harness, apart from the product's commands.
package benchcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/netslot/netslot/internal/bench"
	"github.com/netslot/netslot/internal/lab"
)

// Command returns the netslot-bench command.
func Command() *cobra.Command {
	o := bench.ReportOptions{}
	cmd := &cobra.Command{
		Use:   "netslot-bench",
		Short: "Measure netslot against the design it replaces and the CNI plugins, and write a report (report.md, SVG plots, CSV samples)",
		Long: `netslot-bench builds its own lab (run as root; no daemon needed) and runs,
one after the other, with progress and an estimate of the time left:
  - boot: pools of 100, 1,000, 4,000 and 10,000 slots (time to ready,
    per-slot cost against slot index, kernel memory, idle CPU, root rules
    against the replaced design, teardown);
  - device-creation orderings: created in the final namespace vs created in
    the root namespace and moved;
  - attach latency: netslot acquire (with and without a VPC, in-process
    and through the API) vs building the slot at request time (the design
    netslot replaced) vs a CNI ADD and DEL of the reference plugins;
  - datapath: the eBPF NAT vs the replaced design's double NAT with
    conntrack: connections and requests per second through one slot and
    through 64 slots at once, round trips at slot 0 and slot N-1;
  - dhcp: DHCP answered by the slots' tap program against dnsmasq, one
    instance per slot namespace (see netslot-bench dhcp --help).
Boot and attach run --rounds times; the report gives medians and ranges.
It writes --out/report.md (opening with the before/after table), SVG plots
and the raw samples as CSV, and removes everything it made. --quick runs
every scenario at small sizes in under two minutes (CI runs it to prove the
harness; no timing is asserted). Its subcommands run one scenario each.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		// What a bench or test run that was killed left (its pools,
		// fabrics, guests) goes first; what runs goes on.
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if os.Geteuid() == 0 {
				lab.SweepDead(benchLog(cmd))
			}
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			var err error
			if o.Loadgen, err = loadgenArgv(); err != nil {
				return err
			}
			return bench.RunReport(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Dir, "out", "bench-report", "report directory")
	fl.BoolVar(&o.Quick, "quick", false, "every scenario at small sizes")
	fl.IntVar(&o.Rounds, "rounds", 0, "repeats of the boot and attach scenarios (0: 3, or 1 with --quick)")
	cniDirFlag(fl, &o.CNIDir)
	cmd.AddCommand(benchDatapathCmd(), benchAttachCmd(), benchOrderingsCmd(), benchDHCPCmd(), benchFirstPacketCmd(), loadgenCmd(), labCmd())
	return cmd
}

func benchOrderingsCmd() *cobra.Command {
	o := bench.OrderingOptions{}
	cmd := &cobra.Command{
		Use:   "orderings",
		Short: "Time a slot's devices created in their final namespace against created in the root namespace and moved",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			return printResult(cmd, func() (*bench.OrderingResult, error) { return bench.RunOrderings(cmd.Context(), o) })
		},
	}
	cmd.Flags().IntVar(&o.Slots, "slots", 500, "namespaces per ordering")
	return cmd
}

func benchDHCPCmd() *cobra.Command {
	o := bench.DHCPOptions{}
	cmd := &cobra.Command{
		Use:   "dhcp",
		Short: "Measure DHCP answered by netslot's tap program against dnsmasq, one instance per slot namespace, side by side",
		Long: `dhcp builds its own lab (run as root; no daemon needed; dnsmasq installed):
  - netslot: a pool of --slots slots, every slot leased with DNS servers and
    a hostname, DHCP answered by the program on each slot's tap0; and pools
    of --boot-slots slots booted with and without DHCP, --boot-rounds times
    each, alternating, for what DHCP adds to boot;
  - dnsmasq, as a user runs it without netslot: --slots namespaces with a
    persistent tap0 at the slot's gateway address, one dnsmasq per
    namespace (--interface=tap0 --bind-interfaces, the same lease), with its
    defaults (it probes the address with a ping before a fresh guest's
    first OFFER) and with --no-ping; the time to start them all and have
    each answer its first DISCOVER.
A guest's DISCOVER and REQUEST are written into tap0 as a VMM would and
timed until the answer is read: a fresh guest's first exchange in every
slot, then --rounds exchanges per slot (two answers per slot every 20 ms
at most: a slot's DHCP answer rate). It prints p50, p99 and max per
exchange, memory per slot and what each adds to boot (carried to 4,000
slots: measured, or extrapolated from 400 slots or more, else "not
measured"), and removes everything it made (namespaces, dnsmasq processes,
pools), also on Ctrl-C; a killed run's dnsmasq instances, and only those,
are killed by the next run. No timing is asserted anywhere: it reports
against the target (netslot p99 <= 50 us).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return printResult(cmd, func() (*bench.DHCPResult, error) { return bench.RunDHCP(ctx, o) })
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Slots, "slots", 50, "netslot slots, and dnsmasq instances per variant")
	fl.IntVar(&o.Rounds, "rounds", 200, "steady-state exchanges per slot")
	fl.IntVar(&o.BootRounds, "boot-rounds", 3, "boots of the pool with DHCP and without, each")
	fl.IntVar(&o.BootSlots, "boot-slots", 0, "size of those pools (0: --slots)")
	return cmd
}

func benchFirstPacketCmd() *cobra.Command {
	o := bench.FirstPacketOptions{}
	cmd := &cobra.Command{
		Use:   "firstpacket",
		Short: "Measure a guest's first datagram to its VPC right after acquire: peer MAC given, unknown with a fast ARP answer, unknown with a slow one",
		Long: `firstpacket builds its own lab (run as root; no daemon needed): a one-slot
pool on a test fabric, a userspace VPC host behind a VTEP, and a guest
namespace on the slot's tap. Each round acquires the slot attached to the
VPC, sends one UDP datagram from the guest at once and times its echo, then
releases the slot (the peer is forgotten): with the peer's MAC given at
acquire, and unknown with a peer that answers ARP at once or after
--slow-arp. It prints p50, p99, max and the datagrams never answered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return printResult(cmd, func() (*bench.FirstPacketResult, error) { return bench.RunFirstPacket(ctx, o) })
		},
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 100, "acquires per case")
	cmd.Flags().DurationVar(&o.SlowARP, "slow-arp", 100*time.Millisecond, "the slow peer's ARP answer delay")
	return cmd
}

func benchAttachCmd() *cobra.Command {
	o := bench.AttachOptions{}
	cmd := &cobra.Command{
		Use:   "attach",
		Short: "Measure the time to give a VM its network: netslot acquire vs building a slot on demand vs a CNI ADD",
		Long: `attach builds its own lab (run as root; no daemon needed): a netslot pool of
--slots slots with an uplink on a test fabric, served in-process and
through its gRPC API. It times netslot's acquire (with and without a VPC
attachment) and release, building a slot at request time (the design a
pre-built pool replaces), and a CNI ADD and DEL of the reference plugins (ptp with
host-local, then tap; installed into --cni-dir with go install) for a new
namespace through libcni, the way firecracker-go-sdk does it. It prints
percentiles and removes everything it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			return printResult(cmd, func() (*bench.AttachResult, error) { return bench.RunAttach(cmd.Context(), o) })
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Slots, "slots", 64, "pool size")
	fl.IntVar(&o.Samples, "samples", 200, "measurements per method")
	cniDirFlag(fl, &o.CNIDir)
	return cmd
}

// printResult runs a lab scenario and prints its table.
func printResult[R interface{ Write(io.Writer) }](cmd *cobra.Command, run func() (R, error)) error {
	res, err := run()
	if err != nil {
		return err
	}
	res.Write(cmd.OutOrStdout())
	return nil
}

// benchLog is the progress log of the lab benchmarks (on stderr).
func benchLog(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
}

// loadgenArgv is how the benchmarks start a load generator in a guest.
func loadgenArgv() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return []string{exe, "loadgen"}, nil
}

func cniDirFlag(fl *pflag.FlagSet, dir *string) {
	fl.StringVar(dir, "cni-dir", "/var/cache/netslot-cni/bin", "where the CNI plugins are (installed there if missing)")
}

// loadgenCmd is the guest-side load generator of bench datapath, run in a
// guest's namespace.
func loadgenCmd() *cobra.Command {
	var mode, dst string
	var d time.Duration
	var workers, samples int
	cmd := &cobra.Command{
		Use:    "loadgen",
		Short:  "Generate load from the current network namespace (used by bench datapath)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			to, err := netip.ParseAddrPort(dst)
			if err != nil {
				return fmt.Errorf("invalid --dst %q: %w", dst, err)
			}
			r, err := bench.Load(cmd.Context(), mode, to, d, workers, samples)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&mode, "mode", "rtt", "cps, pps or rtt")
	fl.StringVar(&dst, "dst", "", "server address:port")
	fl.DurationVar(&d, "duration", 5*time.Second, "length of a cps or pps run")
	fl.IntVar(&workers, "workers", 16, "concurrency")
	fl.IntVar(&samples, "samples", 1000, "round trips of an rtt run")
	return cmd
}

func benchDatapathCmd() *cobra.Command {
	o := bench.DatapathOptions{}
	cmd := &cobra.Command{
		Use:   "datapath",
		Short: "Measure the eBPF datapath against the replaced design (double NAT, conntrack, per-slot root rules), side by side",
		Long: `datapath builds its own lab (run as root; no daemon needed): a test fabric
namespace behind an uplink veth, a netslot pool of --slots slots on it, and
the replaced design beside it (MASQUERADE in the slot and again in the root
namespace with conntrack, 30 root iptables rules per slot, written for
--slots slots). Guests with a real network stack sit on slot 0 and slot N-1
of each. It measures TCP connections per second, UDP request rate and round
trips, in rounds that alternate the designs, prints a table and removes
everything it made. Traffic stays inside namespaces it created.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = benchLog(cmd)
			var err error
			if o.Loadgen, err = loadgenArgv(); err != nil {
				return err
			}
			return printResult(cmd, func() (*bench.DatapathResult, error) { return bench.RunDatapath(cmd.Context(), o) })
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Slots, "slots", 4000, "pool size (and the replaced design's rule count / 30)")
	fl.IntVar(&o.Rounds, "rounds", 3, "measurement rounds, alternating the designs")
	fl.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each throughput measurement")
	fl.IntVar(&o.RTTSamples, "rtt-samples", 1000, "round trips per guest and round")
	fl.IntVar(&o.Workers, "workers", 16, "concurrent connections or requests in flight")
	return cmd
}
