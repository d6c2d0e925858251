package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
)

// DHCPOptions size the DHCP comparison.
type DHCPOptions struct {
	Slots      int // slots of the netslot pool, and dnsmasq instances per variant
	Rounds     int // steady-state exchanges (DISCOVER then REQUEST) per slot
	BootRounds int // boots of the pool with and without DHCP, alternating
	BootSlots  int // size of those pools (0: Slots)
	Log        *slog.Logger
}

// The exchanges measured, in the order of the sample arrays.
const (
	exOffer = iota // DISCOVER -> OFFER
	exAck          // REQUEST -> ACK
)

var exchangeNames = [2]string{"DISCOVER -> OFFER", "REQUEST -> ACK"}

// System names, as the table prints them.
const (
	sysNetslot       = "netslot (eBPF on tap0)"
	sysDnsmasq       = "dnsmasq, defaults (address probe)"
	sysDnsmasqNoPing = "dnsmasq --no-ping"
)

// DHCPRun is one system's figures.
type DHCPRun struct {
	System string
	// First are the fresh guests' first exchanges (one per slot), Steady
	// the Rounds repeats after them, by exchange.
	First, Steady [2][]time.Duration
	Unanswered    int // exchanges nothing answered within dhcpWait
	// dnsmasq: mean resident, proportional and private set size per
	// process (KiB).
	RSSKiB, PSSKiB, PrivateKiB float64
	// KernelKiBPerSlot is the kernel's memory (slab, stacks, page tables)
	// it added, per slot: dnsmasq from before its start to after the
	// steady state; netslot in DHCPResult (boot with against without).
	KernelKiBPerSlot float64
	// dnsmasq's start: from the first spawn until every instance had its
	// DHCP socket (Listening) and had answered a DISCOVER sent as soon
	// as it listened (Answered), all slots at once.
	Listening, Answered time.Duration
}

// DHCPResult is the comparison.
type DHCPResult struct {
	Opts           DHCPOptions
	DnsmasqVersion string
	Runs           []*DHCPRun // netslot first
	// The pool's dhcp map (one entry per slot): its value size, entries
	// and the kernel's memlock figure for it.
	MapValueSize, MapEntries uint32
	MapMemlock               uint64
	// Boot of a BootSlots pool with DHCP and without, per round, and the
	// kernel memory each added per slot (KiB).
	BootWith, BootWithout     []time.Duration
	KernelWith, KernelWithout []float64
}

// dhcpWait is how long an exchange waits for its answer (dnsmasq's address
// probe takes about a second).
const dhcpWait = 5 * time.Second

// The lease a guest gets, the same from netslot and dnsmasq (198.18.0.0/15:
// benchmark addresses, never used).
var (
	dhcpDNS = []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("198.18.0.54")}
	dhcpMTU = 1500
)

func dhcpHostname(i int) string { return "vm-" + strconv.Itoa(i) }

// RunDHCP measures DHCP answered on a slot's tap0 by netslot's tap program
// against dnsmasq run the way a user would without netslot (one instance
// per VM namespace, with its defaults and with --no-ping), at the tap: a
// fresh guest's first exchange and the steady state, memory per slot and
// what each adds to boot.
func RunDHCP(ctx context.Context, o DHCPOptions) (*DHCPResult, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Slots < 1 || o.Rounds < 1 {
		return nil, errors.New("the dhcp benchmark needs at least 1 slot and 1 round")
	}
	if o.BootSlots <= 0 {
		o.BootSlots = o.Slots
	}
	if n := lab.SweepDnsmasq(os.TempDir()); n > 0 {
		o.Log.Warn("killed dnsmasq processes left by an earlier run", "processes", n)
	}
	version, err := lab.DnsmasqVersion()
	if err != nil {
		return nil, fmt.Errorf("dnsmasq (apt-get install dnsmasq-base): %w", err)
	}
	tag := fmt.Sprintf("%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	prefix := "nd" + tag
	res := &DHCPResult{Opts: o, DnsmasqVersion: version}
	for r := 0; r < o.BootRounds && ctx.Err() == nil; r++ {
		for _, with := range []bool{r%2 == 1, r%2 == 0} {
			o.Log.Info("dhcp: boot", "slots", o.BootSlots, "dhcp", with, "round", r+1, "of", o.BootRounds)
			took, kib, err := bootDHCP(ctx, slot.DefaultConfig(prefix, o.BootSlots), !with, o.Log)
			if err != nil {
				return nil, err
			}
			if with {
				res.BootWith, res.KernelWith = append(res.BootWith, took), append(res.KernelWith, kib)
			} else {
				res.BootWithout, res.KernelWithout = append(res.BootWithout, took), append(res.KernelWithout, kib)
			}
		}
	}
	run, err := runNetslotDHCP(ctx, o, prefix, res)
	if err != nil {
		return nil, fmt.Errorf("netslot: %w", err)
	}
	res.Runs = append(res.Runs, run)
	for _, noPing := range []bool{false, true} {
		run, err := runDnsmasqDHCP(ctx, o, prefix, noPing)
		if err != nil {
			return nil, fmt.Errorf("dnsmasq: %w", err)
		}
		res.Runs = append(res.Runs, run)
	}
	return res, ctx.Err()
}

// bootDHCP boots a fresh pool of cfg (state on tmpfs) after the kernel
// has finished dismantling earlier namespaces, and returns how long the
// boot took and the kernel memory it added per slot; then tears it down.
func bootDHCP(ctx context.Context, cfg slot.Config, noDHCP bool, log *slog.Logger) (time.Duration, float64, error) {
	settleNamespaces(log)
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench-dhcp")
	if err != nil {
		return 0, 0, err
	}
	before := kernelMemKiB()
	d, err := daemon.New(daemon.Options{Config: cfg, StateDir: dir, Logger: log, NoDHCP: noDHCP})
	if err != nil {
		os.RemoveAll(dir)
		return 0, 0, err
	}
	start := time.Now()
	err = d.Boot(ctx)
	took := time.Since(start)
	kib := float64(kernelMemKiB()-before) / float64(cfg.Count)
	d.Close()
	if _, terr := removePool(cfg.Prefix, dir, log); err == nil {
		err = terr
	}
	return took, kib, err
}

// guestDHCP is a guest on one slot's tap0: its client and its next xid.
type guestDHCP struct {
	c         *lab.DHCPClient
	gw, guest netip.Addr
	xid       uint32
}

// exchange runs DISCOVER then REQUEST (selecting the offer) and adds the
// two latencies to into (what is unanswered is counted, not added).
func (g *guestDHCP) exchange(into *[2][]time.Duration, unanswered *int) error {
	g.xid += 2
	a, took, err := g.c.Exchange(g.c.Frame(lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: g.xid}), g.xid, dhcpWait)
	if errors.Is(err, lab.ErrNoAnswer) {
		*unanswered += 2 // no offer: no request either
		return nil
	}
	if err != nil {
		return err
	}
	if a.Type() != layers.DHCPMsgTypeOffer {
		return fmt.Errorf("DISCOVER answered with %s", a.Type())
	}
	into[exOffer] = append(into[exOffer], took)
	req := lab.DHCPMessage{Type: layers.DHCPMsgTypeRequest, Xid: g.xid + 1, Options: []layers.DHCPOption{
		layers.NewDHCPOption(layers.DHCPOptServerID, g.gw.AsSlice()), layers.NewDHCPOption(layers.DHCPOptRequestIP, g.guest.AsSlice())}}
	a, took, err = g.c.Exchange(g.c.Frame(req), req.Xid, dhcpWait)
	if errors.Is(err, lab.ErrNoAnswer) {
		*unanswered++
		return nil
	}
	if err != nil {
		return err
	}
	if a.Type() != layers.DHCPMsgTypeAck {
		return fmt.Errorf("REQUEST answered with %s", a.Type())
	}
	into[exAck] = append(into[exAck], took)
	return nil
}

// attachGuests attaches a DHCP client of cfg's guest MAC to tap0 of each
// namespace, as a VMM does, and waits for each tap's queue to start.
func attachGuests(paths []string, cfg slot.Config) ([]*guestDHCP, func(), error) {
	var gs []*guestDHCP
	closeAll := func() {
		for _, g := range gs {
			g.c.Close()
		}
	}
	for k, p := range paths {
		c, err := lab.NewDHCPClient(p, slot.TapName, cfg.GuestMAC)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("attach to %s: %w", p, err)
		}
		gs = append(gs, &guestDHCP{c: c, gw: cfg.GatewayIP(), guest: cfg.GuestIP(), xid: uint32(k) << 20})
	}
	return gs, closeAll, nil // each client waited for its tap's queue to start
}

// measure runs each guest's first exchange, one slot after the other,
// then rounds of exchanges over every slot.
func measure(ctx context.Context, run *DHCPRun, gs []*guestDHCP, rounds int, log *slog.Logger) error {
	log.Info("dhcp: first exchanges", "system", run.System, "slots", len(gs))
	for _, g := range gs {
		if err := g.exchange(&run.First, &run.Unanswered); err != nil {
			return err
		}
	}
	log.Info("dhcp: steady state", "system", run.System, "rounds", rounds)
	for r := 0; r < rounds && ctx.Err() == nil; r++ {
		start := time.Now()
		for _, g := range gs {
			if err := g.exchange(&run.Steady, &run.Unanswered); err != nil {
				return err
			}
		}
		// Each round asks every slot twice: at the slot's answer rate
		// (dpconst.DHCPIntervalNs) at most, which netslot enforces; every
		// system's rounds alike.
		time.Sleep(dhcpRound - time.Since(start))
	}
	return ctx.Err()
}

// dhcpRound is the shortest steady-state round: two answers per slot at
// the rate a slot's DHCP answers are bounded to.
const dhcpRound = 2 * dpconst.DHCPIntervalNs * time.Nanosecond

// runNetslotDHCP boots a pool of o.Slots slots, leases every slot (DNS
// servers and a hostname) and measures the answers of the tap's program.
func runNetslotDHCP(ctx context.Context, o DHCPOptions, prefix string, res *DHCPResult) (*DHCPRun, error) {
	cfg := slot.DefaultConfig(prefix, o.Slots)
	d, stop, err := startPool(ctx, cfg, nil, o.Log)
	if err != nil {
		return nil, err
	}
	defer stop()
	m, err := ebpf.LoadPinnedMap(filepath.Join(datapath.PinDir(datapath.DefaultPinRoot, prefix), "dhcp"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("the dhcp map: %w", err)
	}
	res.MapValueSize, res.MapEntries = m.ValueSize(), m.MaxEntries()
	if info, err := m.Info(); err == nil {
		res.MapMemlock, _ = info.Memlock()
	}
	m.Close()
	paths := make([]string, 0, o.Slots)
	for range o.Slots {
		info, err := d.Acquire(ctx, daemon.AcquireRequest{DNS: dhcpDNS, Hostname: dhcpHostname(len(paths))})
		if err != nil {
			return nil, fmt.Errorf("acquire: %w", err)
		}
		paths = append(paths, cfg.NetnsPath(info.Index))
	}
	gs, closeAll, err := attachGuests(paths, cfg)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	run := &DHCPRun{System: sysNetslot}
	return run, measure(ctx, run, gs, o.Rounds, o.Log)
}

// dnsmasqArgs is how a user serves one VM network's DHCP with dnsmasq (no
// DNS: --port=0), giving what netslot's lease gives.
func dnsmasqArgs(cfg slot.Config, dir, ns string, i int, noPing bool) []string {
	gw, guest := cfg.GatewayIP(), cfg.GuestIP()
	mask := netip.MustParseAddr("255.255.255.255").As4()
	bits := cfg.GuestCIDR.Bits()
	for b := bits; b < 32; b++ {
		mask[b/8] &^= 0x80 >> (b % 8)
	}
	args := []string{"--keep-in-foreground", "--no-resolv", "--port=0", "--interface=" + slot.TapName, "--bind-interfaces",
		fmt.Sprintf("--dhcp-range=%s,%s,%s,12h", guest, guest, netip.AddrFrom4(mask)),
		"--dhcp-option=option:router," + gw.String(),
		"--dhcp-option=option:dns-server," + dhcpDNS[0].String() + "," + dhcpDNS[1].String(),
		"--dhcp-option=option:mtu," + strconv.Itoa(dhcpMTU),
		"--dhcp-host=" + cfg.GuestMAC.String() + "," + dhcpHostname(i),
		"--dhcp-leasefile=" + filepath.Join(dir, ns+".leases"), "--pid-file=" + filepath.Join(dir, ns+".pid")}
	if noPing {
		args = append(args, "--no-ping")
	}
	return args
}

// dnsmasqLab is N namespaces shaped like slots, each with a dnsmasq.
type dnsmasqLab struct {
	nss   []*lab.TapNS
	procs []*lab.Dnsmasq
}

func (l *dnsmasqLab) paths() []string {
	ps := make([]string, len(l.nss))
	for k, ns := range l.nss {
		ps[k] = ns.NetnsPath()
	}
	return ps
}

// start spawns one dnsmasq per namespace, one after the other.
func (l *dnsmasqLab) start(cfg slot.Config, dir string, noPing bool) error {
	for k, ns := range l.nss {
		p, err := lab.StartDnsmasq(dir, ns.Name, dnsmasqArgs(cfg, dir, ns.Name, k, noPing))
		if err != nil {
			return err
		}
		l.procs = append(l.procs, p)
	}
	return nil
}

func (l *dnsmasqLab) stop() {
	for _, p := range l.procs {
		p.Stop()
	}
	l.procs = nil
}

func (l *dnsmasqLab) remove() {
	l.stop()
	for _, ns := range l.nss {
		ns.Remove()
	}
	l.nss = nil
}

// newDnsmasqLab makes n namespaces named "<name>-<k>", each marked in dir
// first (see lab.SweepDnsmasq).
func newDnsmasqLab(name string, n int, cfg slot.Config, dir string) (*dnsmasqLab, error) {
	l := &dnsmasqLab{}
	for k := range n {
		nsName := fmt.Sprintf("%s-%d", name, k)
		if err := os.WriteFile(filepath.Join(dir, nsName+lab.DnsmasqNetnsSuffix), nil, 0o644); err != nil {
			l.remove()
			return nil, err
		}
		ns, err := lab.NewTapNS(nsName, cfg.TapMAC, cfg.GatewayIP(), cfg.GuestCIDR.Bits())
		if err != nil {
			l.remove()
			return nil, err
		}
		l.nss = append(l.nss, ns)
	}
	return l, nil
}

// runDnsmasqDHCP measures one dnsmasq variant in two labs of o.Slots
// namespaces: the first for its start (every instance started, then each
// slot's guest sends its first DISCOVER as soon as its instance listens,
// all slots at once), the second, fresh, for the latencies (first
// exchanges one slot after the other once every instance listens, then
// the steady state) and memory.
func runDnsmasqDHCP(ctx context.Context, o DHCPOptions, prefix string, noPing bool) (*DHCPRun, error) {
	run := &DHCPRun{System: sysDnsmasq}
	bootName, latName := prefix+"e", prefix+"d"
	if noPing {
		run.System, bootName, latName = sysDnsmasqNoPing, prefix+"o", prefix+"n"
	}
	cfg := slot.DefaultConfig(prefix, o.Slots)
	dir, err := lab.NewDnsmasqDir(os.TempDir())
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	o.Log.Info("dhcp: dnsmasq start", "system", run.System, "instances", o.Slots)
	l, err := newDnsmasqLab(bootName, o.Slots, cfg, dir)
	if err != nil {
		return nil, err
	}
	defer l.remove()
	gs, closeAll, err := attachGuests(l.paths(), cfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := l.start(cfg, dir, noPing); err != nil {
		closeAll()
		return nil, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for k, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.procs[k].WaitListening(time.Millisecond, 30*time.Second)
			listening := time.Since(start)
			var lat [2][]time.Duration
			unanswered := 0
			if err == nil {
				err = g.exchange(&lat, &unanswered)
			}
			answered := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && unanswered > 0 {
				err = fmt.Errorf("dnsmasq in %s answered no DISCOVER within %v", l.nss[k].Name, dhcpWait)
			}
			if err != nil {
				errs = append(errs, err)
			}
			run.Listening, run.Answered = max(run.Listening, listening), max(run.Answered, answered)
		}()
	}
	wg.Wait()
	closeAll()
	l.remove()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	o.Log.Info("dhcp: dnsmasq latency", "system", run.System, "instances", o.Slots)
	if l, err = newDnsmasqLab(latName, o.Slots, cfg, dir); err != nil {
		return nil, err
	}
	defer l.remove()
	gs, closeAll, err = attachGuests(l.paths(), cfg)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	before := kernelMemKiB()
	if err := l.start(cfg, dir, noPing); err != nil {
		return nil, err
	}
	for _, p := range l.procs {
		if err := p.WaitListening(time.Millisecond, 30*time.Second); err != nil {
			return nil, err
		}
	}
	if err := measure(ctx, run, gs, o.Rounds, o.Log); err != nil {
		return nil, err
	}
	run.KernelKiBPerSlot = float64(kernelMemKiB()-before) / float64(o.Slots)
	for _, p := range l.procs {
		m, err := p.Memory()
		if err != nil {
			return nil, err
		}
		run.RSSKiB += m.RSS / float64(o.Slots)
		run.PSSKiB += m.PSS / float64(o.Slots)
		run.PrivateKiB += m.Private / float64(o.Slots)
	}
	return run, nil
}

// dhcpTarget is issue 15's target for netslot: p99 per exchange, the
// first exchange included.
const dhcpTarget = 50 * time.Microsecond

// extrapolatedSlots is the pool size the boot and memory figures are
// carried to.
const extrapolatedSlots = 4000

// minExtrapolated is the smallest sample a measured difference (what DHCP
// adds to a boot, or to the kernel's memory) or a start time is carried to
// extrapolatedSlots from: a tenth of them. A boot's fixed costs and its
// jitter (tens of milliseconds on a shared 2-core machine) are spread
// over the sample's slots, and the multiplication makes them the figure:
// from 16-slot rounds, +3,481 s in one run, -51 s in another. From 400
// slots up the factor is 10 at most; below, the figure is not measured.
const minExtrapolated = extrapolatedSlots / 10

// carried is the 4,000-slot figure of v, measured over n slots: measured
// (n is 4,000), extrapolated (n is large enough) or not measured.
func carried(v float64, n int, format func(float64) string, how string) string {
	switch {
	case n == extrapolatedSlots:
		return format(v) + " (measured)"
	case n >= minExtrapolated:
		return format(v*extrapolatedSlots/float64(n)) + " (extrapolated: " + how + ")"
	}
	return fmt.Sprintf("not measured (from %d slots: carried to 4,000 from %d or more only)", n, minExtrapolated)
}

// Write prints the latency, memory and boot tables.
func (r *DHCPResult) Write(w io.Writer) {
	n := r.Opts.Slots
	fmt.Fprintf(w, "DHCP answered on a slot's tap0: netslot's tap program (a pool of %d leased slots, DNS servers and hostname set) against dnsmasq %s run the way a user would without netslot (one instance per slot namespace: %d namespaces with a persistent tap0 at %s, up), with its defaults and with --no-ping. A fresh guest's first exchange in each slot (%d per exchange), then %d rounds over every slot (%d per exchange); each time from the frame written into tap0 to the answer read from it, as a VMM sees it.\n\n",
		n, r.DnsmasqVersion, n, slot.DefaultConfig("x", 1).GatewayIP(), n, r.Opts.Rounds, n*r.Opts.Rounds)
	fmt.Fprintln(w, "| system | exchange | first p50 | first p99 | first max | steady p50 | steady p99 | steady max | unanswered |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, run := range r.Runs {
		for ex, name := range exchangeNames {
			f, s := sortedCopy(run.First[ex]), sortedCopy(run.Steady[ex])
			un := ""
			if ex == exOffer {
				un = strconv.Itoa(run.Unanswered)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", run.System, name,
				fmtDur(percentile(f, 0.5)), fmtDur(percentile(f, 0.99)), fmtDur(percentile(f, 1)),
				fmtDur(percentile(s, 0.5)), fmtDur(percentile(s, 0.99)), fmtDur(percentile(s, 1)), un)
		}
	}
	if len(r.Runs) > 0 {
		ns := r.Runs[0]
		var worst time.Duration
		var overs []string
		for ex, name := range exchangeNames {
			worst = max(worst, percentile(sortedCopy(ns.First[ex]), 0.99), percentile(sortedCopy(ns.Steady[ex]), 0.99))
			overs = append(overs, fmt.Sprintf("%s %d of %d first, %d of %d steady", name,
				over(ns.First[ex], dhcpTarget), len(ns.First[ex]), over(ns.Steady[ex], dhcpTarget), len(ns.Steady[ex])))
		}
		verdict := "met"
		if worst > dhcpTarget || ns.Unanswered > 0 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "\nTarget, netslot p99 <= %s per exchange, the first exchange included: worst p99 above %s: %s. Exchanges over %s: %s.\n",
			fmtDur(dhcpTarget), fmtDur(worst), verdict, fmtDur(dhcpTarget), strings.Join(overs, "; "))
	}

	fmt.Fprintf(w, "\nMemory per slot (%d slots; the last column multiplies by %d, extrapolated):\n\n", n, extrapolatedSlots)
	fmt.Fprintln(w, "| system | per slot | x 4,000 slots | how it is measured |")
	fmt.Fprintln(w, "|---|---|---|---|")
	if r.MapEntries > 0 {
		entry := float64(r.MapValueSize) * float64(r.MapEntries) / float64(n)
		fmt.Fprintf(w, "| %s: the dhcp map's entry | %.0f B | %s | value size %d B x %d entries / %d slots |\n",
			sysNetslot, entry, kib(entry*extrapolatedSlots/1024), r.MapValueSize, r.MapEntries, n)
		if r.MapMemlock > 0 {
			m := float64(r.MapMemlock) / float64(n)
			fmt.Fprintf(w, "| %s: the dhcp map as allocated | %.0f B | | the kernel's memlock for the map (%d B, rounded up to pages) / %d slots |\n",
				sysNetslot, m, r.MapMemlock, n)
		}
	}
	if len(r.KernelWith) > 0 {
		d := medianOf(r.KernelWith) - medianOf(r.KernelWithout)
		fmt.Fprintf(w, "| %s: tap0's clsact qdisc and cls_bpf filter | %s (estimate: with %.1f, without %.1f KiB/slot) | %s | not directly measurable: kernel memory (/proc/meminfo Slab + KernelStack + PageTables) added per slot by a %d-slot boot with DHCP less one without, medians of %d rounds; other jobs on the host move it |\n",
			sysNetslot, kernelKiB(d), medianOf(r.KernelWith), medianOf(r.KernelWithout), kernelAt(d, r.Opts.BootSlots), r.Opts.BootSlots, len(r.KernelWith))
	}
	fmt.Fprintf(w, "| %s: process | none | none | the answers are made in the kernel, by the program already loaded for the pool |\n", sysNetslot)
	for _, run := range r.Runs[min(1, len(r.Runs)):] {
		fmt.Fprintf(w, "| %s: process | private %.0f KiB; PSS %.0f KiB; RSS %.0f KiB | private %s | /proc/PID/smaps_rollup of each instance after the steady state, mean (private: Private_Clean + Private_Dirty, what one more instance adds; PSS shares the binary's and libraries' pages among the %d) |\n",
			run.System, run.PrivateKiB, run.PSSKiB, run.RSSKiB, kib(run.PrivateKiB*extrapolatedSlots), n)
		fmt.Fprintf(w, "| %s: kernel | %s | %s | kernel memory (as above) from before the instances' start to after the steady state, per instance; noisy |\n",
			run.System, kernelKiB(run.KernelKiBPerSlot), kernelAt(run.KernelKiBPerSlot, n))
	}

	fmt.Fprintln(w, "\nWhat DHCP adds to boot:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| system | measured | per slot | at 4,000 slots |")
	fmt.Fprintln(w, "|---|---|---|---|")
	if len(r.BootWith) > 0 {
		with, without := medianDur(r.BootWith), medianDur(r.BootWithout)
		d := with - without
		per := d / time.Duration(r.Opts.BootSlots)
		at := carried(float64(d), r.Opts.BootSlots, func(v float64) string { return fmtSec(time.Duration(v)) }, "per slot x 4,000")
		fmt.Fprintf(w, "| %s | a %d-slot pool boots in %s with DHCP, %s without (medians of %d rounds each, alternating; with: %s s, without: %s s): %s | %s | %s |\n",
			sysNetslot, r.Opts.BootSlots, fmtSec(with), fmtSec(without), len(r.BootWith), secs(r.BootWith), secs(r.BootWithout), fmtSigned(d), fmtSigned(per), at)
	}
	for _, run := range r.Runs[min(1, len(r.Runs)):] {
		per := run.Listening / time.Duration(n)
		wait := run.Answered - run.Listening
		at := carried(float64(run.Listening), n, func(v float64) string { return fmtSec(time.Duration(v) + wait) },
			"time to listening per instance x 4,000, plus the last answer's wait")
		fmt.Fprintf(w, "| %s | %d instances started one after the other: all listening after %s, each had answered its guest's first DISCOVER (sent as soon as it listened, all slots at once) after %s | %s | %s |\n",
			run.System, n, fmtSec(run.Listening), fmtSec(run.Answered), fmtDur(per), at)
	}
}

// medianDur is the median of xs (of an even count, the mean of the middle
// two).
func medianDur(xs []time.Duration) time.Duration {
	f := make([]float64, len(xs))
	for k, x := range xs {
		f[k] = float64(x)
	}
	return time.Duration(medianOf(f))
}

// medianOf is the median of xs (of an even count, the mean of the middle
// two).
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// secs lists durations in seconds.
func secs(xs []time.Duration) string {
	out := make([]string, len(xs))
	for k, x := range xs {
		out[k] = fmt.Sprintf("%.2f", x.Seconds())
	}
	return strings.Join(out, ", ")
}

// over counts the samples above limit.
func over(xs []time.Duration, limit time.Duration) int {
	n := 0
	for _, x := range xs {
		if x > limit {
			n++
		}
	}
	return n
}

func fmtSec(d time.Duration) string {
	if d < time.Second && d > -time.Second {
		return fmtDur(d)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// fmtSigned prints a difference with its sign.
func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "-" + fmtSec(-d)
	}
	return "+" + fmtSec(d)
}

// kernelKiB prints a kernel memory delta per slot: one that is not above
// 0 is lost in what else the kernel did meanwhile (small runs).
func kernelKiB(k float64) string {
	if k <= 0 {
		return fmt.Sprintf("below the noise (%.1f KiB)", k)
	}
	return fmt.Sprintf("%.1f KiB", k)
}

// kernelAt carries a kernel memory delta per slot, measured over n
// slots, to 4,000 slots.
func kernelAt(k float64, n int) string {
	if k <= 0 {
		return ""
	}
	return carried(k*float64(n), n, kib, "per slot x 4,000")
}

// kib prints a size given in KiB.
func kib(k float64) string {
	switch {
	case k >= 1024*1024 || k <= -1024*1024:
		return fmt.Sprintf("%.2f GiB", k/1024/1024)
	case k >= 1024 || k <= -1024:
		return fmt.Sprintf("%.1f MiB", k/1024)
	default:
		return fmt.Sprintf("%.1f KiB", k)
	}
}
