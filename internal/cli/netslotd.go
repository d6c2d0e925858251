package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/metrics"
	"github.com/netslot/netslot/internal/server"
	"github.com/netslot/netslot/internal/slot"
)

// Defaults of netslotd's flags.
const (
	DefaultSlots       = 4000
	DefaultPrefix      = "nslot"
	DefaultStateDir    = "/run/netslot/state"
	DefaultMetricsAddr = "127.0.0.1:9464"
)

type daemonFlags struct {
	slots               int
	prefix, stateDir    string
	socket, metricsAddr string
	slotCIDR, guestCIDR string
	guestMAC, uplink    string
	underlayIP, gateway string
	workers             int
	logJSON             bool
	deny, dns           []string
	adopt, dhcp         bool
	drainGrace          time.Duration
}

// Netslotd returns the netslotd command.
func Netslotd() *cobra.Command {
	f := &daemonFlags{}
	root := &cobra.Command{
		Use:   "netslotd",
		Short: "Pre-create a pool of network slots and vend them over a unix socket",
		Long: `netslotd creates every network slot of the host at start (namespace, tap,
veth, firewall), serves Acquire/Release/Get/List/Status over gRPC on a unix
socket, and keeps the slots when it stops: a restarted daemon adopts them.
'netslotd teardown' removes them.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return runDaemon(cmd.Context(), f) },
	}
	fl := root.Flags()
	fl.IntVar(&f.slots, "slots", DefaultSlots, "number of slots to pre-create")
	fl.StringVar(&f.prefix, "prefix", DefaultPrefix, "names every namespace, device and nftables table of the pool; no other root-namespace device may start with it, the uplink included (such a start is refused)")
	fl.StringVar(&f.stateDir, "state-dir", DefaultStateDir, "directory of the lease store (best on tmpfs: leases live as long as the host boot)")
	fl.StringVar(&f.socket, "socket", client.DefaultSocket, "unix socket of the API (mode 0600)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", DefaultMetricsAddr, "loopback address of the Prometheus endpoint (empty: off)")
	fl.StringVar(&f.slotCIDR, "slot-cidr", slot.DefaultSlotCIDR.String(), "IPv4 range of the unique slot addresses")
	fl.StringVar(&f.guestCIDR, "guest-cidr", slot.DefaultGuestCIDR.String(), "guest-facing network, the same in every slot (gateway .1, guest .2)")
	fl.StringVar(&f.guestMAC, "guest-mac", slot.DefaultGuestMAC.String(), "guest MAC, the same in every slot")
	fl.StringVar(&f.uplink, "uplink", "", "root-namespace device slot traffic leaves through, NATed or in Geneve (empty: it does not leave the host)")
	fl.StringVar(&f.underlayIP, "underlay-ip", "", "the uplink's IPv4 address that Geneve tunnels leave from (required with --uplink)")
	fl.StringVar(&f.gateway, "uplink-gateway", "", "next hop on the uplink for slot traffic (empty: destinations are on the uplink's link)")
	fl.IntVar(&f.workers, "boot-workers", 0, "parallel slot builders at boot (0: one per CPU, at least 2)")
	fl.DurationVar(&f.drainGrace, "drain-grace", 2*time.Second, "on SIGTERM or SIGINT, how long netslotd drains before it stops: it refuses acquires (UNAVAILABLE, DRAINING), health says NOT_SERVING, releases are served; a second signal stops it at once")
	fl.BoolVar(&f.adopt, "adopt", false, "take over the slots of the prefix when the state dir holds no pool (a lost store): their leases are unknown, and a slot whose tap a VM still holds stays out of the pool until it lets go")
	fl.StringSliceVar(&f.dns, "dns", nil, "the guests' DNS servers, IPv4 (comma-separated or repeated, at most 3): in each slot's answer, its boot arguments and its DHCP; acquire --dns overrides them per lease")
	fl.BoolVar(&f.dhcp, "dhcp", true, "answer the guests' DHCP on every slot's tap0, in eBPF (--dhcp=false: guests are configured by their boot arguments or another DHCP server)")
	fl.StringArrayVar(&f.deny, "deny", nil, "an IPv4 CIDR no guest may send to, whatever its lease allows (repeatable; on top of link-local, multicast, reserved ranges and the uplink's subnets)")
	fl.BoolVar(&f.logJSON, "log-json", false, "log JSON instead of text")
	root.AddCommand(teardownCmd())
	return root
}

func (f *daemonFlags) config() (slot.Config, error) {
	return slot.ParseConfig(f.prefix, f.slots, f.slotCIDR, f.guestCIDR, f.guestMAC)
}

func parseOptionalAddr(flag, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("invalid %s %q: want an IPv4 address", flag, s)
	}
	return a, nil
}

func newLogger(jsonOut bool) *slog.Logger {
	if jsonOut {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func runDaemon(parent context.Context, f *daemonFlags) error {
	log := newLogger(f.logJSON)
	cfg, err := f.config()
	if err != nil {
		return err
	}
	if f.metricsAddr != "" {
		if err := metrics.CheckLoopback(f.metricsAddr); err != nil {
			return err
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("netslotd must run as root (it creates namespaces and devices)")
	}
	if os.Getenv("GOGC") == "" {
		// The live heap is a few MB; the default would collect every few
		// release cycles (measured: 660 collections per 6,000 cycles).
		debug.SetGCPercent(400)
	}
	// Refuse before touching anything when another daemon serves the socket.
	if err := server.CheckSocketFree(f.socket); err != nil {
		return err
	}
	opts := daemon.Options{Config: cfg, StateDir: f.stateDir, Uplink: f.uplink, Workers: f.workers, Adopt: f.adopt, NoDHCP: !f.dhcp, Logger: log}
	if opts.UnderlayIP, err = parseOptionalAddr("--underlay-ip", f.underlayIP); err != nil {
		return err
	}
	if opts.UplinkGateway, err = parseOptionalAddr("--uplink-gateway", f.gateway); err != nil {
		return err
	}
	if opts.DNS, err = slot.ParseDNS(f.dns); err != nil {
		return fmt.Errorf("--dns: %w", err)
	}
	if opts.Deny, err = slot.ParseCIDRs("--deny cidr", f.deny); err != nil {
		return err
	}
	d, err := daemon.New(opts)
	if err != nil {
		return err
	}
	defer d.Close()
	ln, err := server.Listen(f.socket)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// SIGHUP would end the process without a word (its default action):
	// netslotd has nothing to reload, so it says so and serves on.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Warn("SIGHUP ignored: netslotd reloads nothing; restart it to change its flags (its slots and leases stay)")
		}
	}()
	if f.metricsAddr != "" {
		addr, err := d.Metrics.Serve(ctx, f.metricsAddr, log)
		if err != nil {
			ln.Close()
			return err
		}
		log.Info("metrics", "addr", "http://"+addr.String()+"/metrics")
	}
	srv := server.New(d)
	g := srv.GRPC()
	served := make(chan error, 1)
	go func() { served <- g.Serve(server.RootOnly(ln)) }()
	defer os.Remove(f.socket)
	go keepSocket(ctx, g, f.socket, d, log)
	log.Info("netslotd starting", "slots", cfg.Count, "prefix", cfg.Prefix, "socket", f.socket,
		"state_dir", f.stateDir, "slot_cidr", cfg.SlotCIDR, "uplink", f.uplink)

	if err := d.Boot(ctx); err != nil {
		g.Stop()
		if errors.Is(err, context.Canceled) {
			log.Info("stopped during boot; slots made so far stay and are adopted at the next start")
			return nil
		}
		if d.Fresh() {
			// Everything of the pool is this start's: a refused start
			// leaves nothing behind to block a corrected one.
			d.Close()
			if terr := daemon.Teardown(cfg.Prefix, f.stateDir, 60*time.Second, log); terr != nil {
				log.Error("removing what the failed start made", "err", terr)
			}
		}
		return fmt.Errorf("boot: %w", err)
	}
	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("api server: %w", err)
	}
	drain(srv, f.drainGrace, log)
	log.Info("stopping; slots stay in place for the next start ('netslotd teardown' removes them)")
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	return nil
}

// drain has srv vend no more slots for grace, while it serves the rest,
// unless a second SIGTERM or SIGINT cuts it short.
func drain(srv *server.Server, grace time.Duration, log *slog.Logger) {
	srv.Drain()
	if grace <= 0 {
		return
	}
	log.Info("draining before stopping", "grace", grace)
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(again)
	select {
	case <-again:
	case <-time.After(grace):
	}
}

// keepSocket makes the API reachable again when its socket file is
// removed (a cleanup of /run, an operator's mistake): the daemon listens
// anew on the same path, served by the same server, until ctx ends.
func keepSocket(ctx context.Context, g *grpc.Server, path string, d *daemon.Daemon, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		ln, err := server.Listen(path)
		if err != nil {
			log.Error("the API socket was removed and cannot be made again", "socket", path, "err", err)
			continue
		}
		log.Warn("repaired: the API socket was removed; listening on it again", "socket", path)
		d.Metrics.ReconcileAction.WithLabelValues("socket").Inc()
		go g.Serve(server.RootOnly(ln))
	}
}

func teardownCmd() *cobra.Command {
	var prefix, stateDir string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Remove every namespace, device, nftables table and state of a pool",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("teardown must run as root")
			}
			return daemon.Teardown(prefix, stateDir, wait, newLogger(false))
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", DefaultPrefix, "prefix of the pool to remove")
	cmd.Flags().StringVar(&stateDir, "state-dir", DefaultStateDir, "state directory of the pool")
	cmd.Flags().DurationVar(&wait, "wait", 60*time.Second, "how long to wait for the kernel to dismantle the namespaces")
	return cmd
}
