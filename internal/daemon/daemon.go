// Package daemon is netslotd's core: it boots the pool (creating, adopting
// or repairing every slot), vends and scrubs slots, and tears a pool down.
// The API layer (package server) is a thin translation on top of it.
package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/metrics"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/state"
)

// Options configure a daemon.
type Options struct {
	Config   slot.Config
	StateDir string
	Uplink   string // root-namespace device slot traffic may leave through
	// UnderlayIP is the uplink's address Geneve leaves from and arrives
	// at; required with Uplink.
	UnderlayIP netip.Addr
	// UplinkGateway is the next hop on the uplink; invalid: destinations
	// are on the uplink's link.
	UplinkGateway netip.Addr
	Workers       int // parallel slot builders; 0 picks a default
	// Adopt lets a daemon whose store holds no pool take over the slots
	// of its prefix that exist (a store lost or removed): their leases are
	// unknown, and a slot whose tap a VMM holds stays out of the pool until
	// it lets go. Without it such a start is refused.
	Adopt bool
	// Deny are ranges of the operator's that no guest may send NATed
	// traffic to, whatever its lease's egress policy, besides
	// datapath.FixedDeny and the uplink's subnets.
	Deny []netip.Prefix
	// OnSlotReady, if set, is called as each slot of this boot becomes
	// ready: the n-th one (from 1), after elapsed since the boot began.
	// It runs on the boot's workers, so it must be quick (a progress bar,
	// the per-slot cost curve of a benchmark).
	OnSlotReady func(n int, elapsed time.Duration)
	// DNS are the DNS servers the pool's guests are given (acquire can
	// give a lease others; at most slot.MaxDNS).
	DNS []netip.Addr
	// NoDHCP: no DHCP answers on the slots' tap0 (guests configured by
	// their boot arguments, or by the operator's own DHCP server).
	NoDHCP bool
	// EventBuffer is the receive buffer, in bytes, of the sockets the
	// daemon hears the kernel's events on (0: DefaultEventBuffer).
	EventBuffer int
	Logger      *slog.Logger
}

// DefaultWorkers is the number of slot builders used when Options.Workers
// is 0 (see docs/design.md for the measurements behind it).
func DefaultWorkers() int { return max(2, runtime.NumCPU()) }

// LockDir holds the per-prefix locks that keep two daemons off one prefix.
const LockDir = "/run/netslot"

// Daemon is a running pool.
type Daemon struct {
	cfg     slot.Config
	opts    Options
	log     *slog.Logger
	store   *state.Store
	pool    *pool.Pool
	Metrics *metrics.Metrics
	locks   []*os.File
	rootSys links.SysctlDir // /proc/sys/net/ipv6/conf of the root namespace
	deny    []netip.Prefix  // the pool's deny set (see denySet)
	// onLink are the uplink's subnets on a flat underlay (no gateway),
	// where a VTEP must be: nil with a gateway.
	onLink []netip.Prefix
	// newStore: the store held no pool when this daemon opened it; fresh:
	// nor did the kernel (no pin, no host veth of the prefix), so that a
	// start that fails has nothing of anyone's to keep (see Fresh).
	newStore, fresh bool

	mu     sync.Mutex
	leases []*slot.Lease // by slot index; nil when not leased
	// fwConns holds one nftables socket per slot, opened in the slot's
	// namespace at boot and never closed while the daemon runs: a policy
	// change is then one transaction, without entering the namespace, and
	// no close waits for the kernel's deferred destroy work (closing a
	// socket flushes it under the namespace's commit mutex: 5-20 ms, which
	// a following transaction on that slot would wait for).
	fwConns []*nftables.Conn
	// nsFDs holds each slot's namespace (-1: none yet): the daemon enters
	// a slot through it, not through the pin, which it puts back from it
	// if someone removes it (ip netns del).
	nsFDs []nsHandle
	// damaged are slots found broken (a host veth deleted, a pin that
	// could not be put back) with why: a free one is out of the pool until
	// rebuilt; a leased one is reported, and rebuilt at its release.
	damaged     map[int]string
	rebuildWake chan struct{} // pokes rebuildDamaged
	dp          *datapath.Datapath
	hostIdx     []int       // ifindex of each slot's host veth (0: unknown)
	hostSlot    map[int]int // the slot of each known host veth ifindex
	// vethCheckWake asks runVethChecks for a check of the host veths.
	vethCheckWake chan struct{}
	// vethCheckMu keeps checks of the host veths from running at once.
	vethCheckMu sync.Mutex
	// orphans are slots with no lease whose tap a VMM holds: out of the
	// pool (pending), their traffic stopped, until the VMM lets go.
	orphans   map[int]bool
	stop      chan struct{} // closed by Close: background work ends
	held      holder        // frames to VPC peers not yet known (hold.go)
	dhcpMu    sync.Mutex    // orders the writes of the slots' DHCP settings
	closeOnce sync.Once
	bg        sync.WaitGroup // the background work, which Close waits for
	lost      lossReports    // losses of kernel events not yet logged
	// eventsDown counts the kernel event subscriptions that could not
	// be made: the periodic checks stand in for them meanwhile.
	eventsDown atomic.Int32
	// keys maps the request key of each live lease to its slot; keying
	// holds the keys whose acquire is under way (closed when it ends).
	keys   map[string]int
	keying map[string]chan struct{}
	// ended is, by slot, the id of the lease its last release ended.
	ended     []string
	uplinkMTU atomic.Int64  // the uplink's MTU at the last check (0: unknown)
	readyCh   chan struct{} // closed once the pool is ready
	bootDone  chan struct{} // closed when Boot returns, ready or not
	onReady   []func()      // run just before readyCh closes (WhenReady)
	draining  atomic.Bool
	drainCh   chan struct{} // closed by Drain
	// adopting: the store held no pool but the kernel does (Options.Adopt);
	// unreadable: slots whose stored lease could not be decoded. Either
	// way, boot checks those slots' taps for a VMM (see leaseUnknown).
	adopting   bool
	unreadable map[int]bool
	health     health // what the monitor saw last

	bootStart time.Time    // set in New, read-only after
	bootDur   atomic.Int64 // nanoseconds; 0 until boot completes
	created   atomic.Int64
	adopted   atomic.Int64
	repaired  atomic.Int64
	ready     atomic.Int64
	removed   atomic.Int64
	t10, t90  atomic.Int64 // boot time when a tenth / nine tenths were ready
}

// Errors the API maps to status codes.
var (
	ErrBusy       = errors.New("already in use")
	ErrBadConfig  = errors.New("configuration does not match")
	ErrUnknownID  = errors.New("unknown slot id")
	ErrNotLeased  = errors.New("slot is not leased")
	ErrExhausted  = errors.New("pool exhausted")
	ErrInProgress = errors.New("acquire or release in progress")
	ErrInUse      = errors.New("tap0 is still attached")
	ErrNoUplink   = errors.New("no uplink")
	ErrInvalid    = errors.New("invalid request")
	// ErrLeaseMismatch: the slot is held by another lease than the one
	// a release named.
	ErrLeaseMismatch = errors.New("slot is held by another lease")
	ErrNotReady      = errors.New("pool not ready: netslotd is booting")
	ErrDraining      = errors.New("netslotd is draining: it vends no slot")
	// ErrKeyReused: an acquire's request key names a live lease made by
	// another request.
	ErrKeyReused = errors.New("request key names another request's lease")
	// ErrDeadline: the acquire's context ended before its lease was
	// committed; nothing was leased.
	ErrDeadline = errors.New("deadline passed before the lease was committed")
	// ErrConflict: the VPC address is attached already on the VNI (by
	// another slot's lease).
	ErrConflict = datapath.ErrConflict
)

// New validates opts, takes the state directory and prefix locks, and opens
// the store. It changes nothing in the kernel: a refused start leaves any
// running daemon untouched.
func New(opts Options) (*Daemon, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.StateDir == "" {
		return nil, errors.New("state dir must be set")
	}
	if opts.Uplink != "" && (len(opts.Uplink) > 15 || strings.ContainsAny(opts.Uplink, "/ \t")) {
		return nil, fmt.Errorf("invalid uplink name %q", opts.Uplink)
	}
	if err := checkUplink(opts); err != nil {
		return nil, err
	}
	deny, err := denySet(opts)
	if err != nil {
		return nil, err
	}
	onLink, err := flatSubnets(opts)
	if err != nil {
		return nil, err
	}
	if err := checkSlotCIDRUnrouted(opts.Config.SlotCIDR); err != nil {
		return nil, err
	}
	if err := checkPrefixFree(opts.Config); err != nil {
		return nil, err
	}
	if err := checkNeighbours(opts); err != nil {
		return nil, err
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	d := &Daemon{cfg: opts.Config, opts: opts, log: opts.Logger, rootSys: links.NoSysctlDir, deny: deny, onLink: onLink, bootStart: time.Now()}
	if err := d.lock(); err != nil {
		return nil, err
	}
	st, err := state.Open(opts.StateDir)
	if err != nil {
		d.unlock()
		return nil, err
	}
	d.store = st
	if err := d.checkStoredConfig(); err != nil {
		d.Close()
		return nil, err
	}
	d.unreadable = map[int]bool{}
	if d.newStore {
		n, err := poolObjects(d.cfg)
		d.adopting = n > 0 && opts.Adopt
		if err != nil || (n > 0 && !opts.Adopt) {
			d.Close()
			os.Remove(filepath.Join(opts.StateDir, state.FileName)) // made by this start
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("state dir %s holds no pool, but %d slots of prefix %q exist (a lost or removed store?): their leases are unknown; "+
				"start with --adopt to take them over (a slot whose tap a VM still holds stays out of the pool until it lets go), or run 'netslotd teardown --prefix %s' first",
				opts.StateDir, n, d.cfg.Prefix, d.cfg.Prefix)
		}
	}
	d.pool = pool.New(d.cfg.Count)
	d.leases = make([]*slot.Lease, d.cfg.Count)
	d.keys = map[string]int{}
	d.keying = map[string]chan struct{}{}
	d.ended = make([]string, d.cfg.Count)
	d.readyCh = make(chan struct{})
	d.bootDone = make(chan struct{})
	d.drainCh = make(chan struct{})
	d.fwConns = make([]*nftables.Conn, d.cfg.Count)
	d.hostIdx = make([]int, d.cfg.Count)
	d.hostSlot = make(map[int]int, d.cfg.Count)
	d.vethCheckWake = make(chan struct{}, 1)
	d.nsFDs = make([]nsHandle, d.cfg.Count)
	for i := range d.nsFDs {
		d.nsFDs[i].fd = -1
	}
	d.orphans = map[int]bool{}
	d.damaged = map[int]string{}
	d.rebuildWake = make(chan struct{}, 1)
	d.stop = make(chan struct{})
	d.health.Forwarding = true                                           // until the monitor sees otherwise
	if err := raiseFileLimit(2*uint64(d.cfg.Count) + 4096); err != nil { // a socket and a namespace per slot
		d.Close()
		return nil, err
	}
	d.Metrics = metrics.New(d)
	d.held.init(d.cfg.Count, monotonicNow, func(i int) uint32 { return d.dp.LeaseWord(i) },
		func(outcome string, n int) { d.Metrics.HeldFrames.WithLabelValues(outcome).Add(float64(n)) })
	return d, nil
}

// checkSlotCIDRUnrouted refuses a slot CIDR that overlaps a route of the
// root namespace (other than a default route): slot addresses there would
// shadow, or be shadowed by, the host's own networks.
func checkSlotCIDRUnrouted(p netip.Prefix) error {
	rp, _, found, err := links.RoutedOverlap(p)
	if err != nil {
		return err
	}
	if found {
		return fmt.Errorf("slot cidr %s overlaps the host's route to %s: choose a range the host does not use", p, rp)
	}
	return nil
}

// poolObjects counts the slots of cfg's prefix the kernel holds (namespace
// pins), and counts a pinned datapath as one more.
func poolObjects(cfg slot.Config) (int, error) {
	pins, err := pinsOf(cfg)
	if err != nil {
		return 0, err
	}
	n := len(pins)
	if datapath.Exists("", cfg.Prefix) {
		n++
	}
	return n, nil
}

// checkNeighbours refuses a pool that would clash with another pool on the
// host (its uplink, or its slot addresses), before anything is made.
func checkNeighbours(opts Options) error {
	uplink := 0
	if opts.Uplink != "" {
		l, err := netlink.LinkByName(opts.Uplink)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", opts.Uplink, err)
		}
		uplink = l.Attrs().Index
	}
	if err := datapath.CheckNeighbours("", opts.Config, uplink); err != nil {
		return fmt.Errorf("%s: %w", opts.Uplink, err)
	}
	return nil
}

// checkPrefixFree refuses a prefix that names root-namespace devices other
// than this pool's host veths: the root table matches slot devices by name
// prefix ("en" would match the host's enp0s3), and boot deletes veths of
// the prefix it does not know.
func checkPrefixFree(c slot.Config) error {
	all, err := links.Links(nil)
	if err != nil {
		return err
	}
	for _, l := range all {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, c.Prefix) {
			continue
		}
		if _, ok := c.IndexOfName(name, ""); ok && l.Type() == "veth" {
			continue // ours, or a stray of ours that boot removes
		}
		return fmt.Errorf("prefix %q also matches the host device %s: choose another prefix", c.Prefix, name)
	}
	return nil
}

// lockFile takes an exclusive, non-blocking flock on path and writes our
// pid into it. who names the lock in errors.
func lockFile(path, who string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is held by another netslotd (pid %s): %w", who, strings.TrimSpace(string(b)), ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func (d *Daemon) lock() error {
	f, err := lockFile(filepath.Join(d.opts.StateDir, "lock"), "state dir "+d.opts.StateDir)
	if err != nil {
		return err
	}
	g, err := lockFile(filepath.Join(LockDir, d.cfg.Prefix+".lock"), "prefix "+strconv.Quote(d.cfg.Prefix))
	if err != nil {
		f.Close()
		return err
	}
	d.locks = []*os.File{f, g}
	return nil
}

func (d *Daemon) unlock() {
	for _, f := range d.locks {
		f.Close()
	}
	d.locks = nil
}

func (d *Daemon) checkStoredConfig() error {
	stored, ok, err := d.store.Config()
	if err != nil {
		return err
	}
	if !ok {
		d.newStore = true
		return d.store.SetConfig(d.cfg)
	}
	if diff := configDiff(stored, d.cfg); diff != "" {
		return fmt.Errorf("state dir %s holds a pool with %s: %w; start with the same settings or run 'netslotd teardown --prefix %s --state-dir %s' first",
			d.opts.StateDir, diff, ErrBadConfig, stored.Prefix, d.opts.StateDir)
	}
	return nil
}

func configDiff(a, b slot.Config) string {
	var d []string
	if a.Prefix != b.Prefix {
		d = append(d, fmt.Sprintf("prefix %q (asked %q)", a.Prefix, b.Prefix))
	}
	if a.Count != b.Count {
		d = append(d, fmt.Sprintf("%d slots (asked %d)", a.Count, b.Count))
	}
	if a.SlotCIDR != b.SlotCIDR {
		d = append(d, fmt.Sprintf("slot cidr %s (asked %s)", a.SlotCIDR, b.SlotCIDR))
	}
	if a.GuestCIDR != b.GuestCIDR || a.GuestMAC.String() != b.GuestMAC.String() || a.TapMAC.String() != b.TapMAC.String() {
		d = append(d, "other guest addressing")
	}
	return strings.Join(d, ", ")
}

// Close releases the store and the locks. Kernel objects stay: a restarted
// daemon adopts them.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() {
		if d.stop != nil { // nil: New failed before making it
			close(d.stop)
			d.bg.Wait()
		}
	})
	if d.store != nil {
		err = d.store.Close()
		d.store = nil
	}
	for i, c := range d.fwConns {
		if c != nil {
			c.CloseLasting()
			d.fwConns[i] = nil
		}
	}
	for i := range d.nsFDs {
		d.setNsFD(i, -1)
	}
	if d.dp != nil {
		d.dp.Close() // pinned: the datapath keeps forwarding
		d.dp = nil
	}
	d.rootSys.Close()
	d.rootSys = links.NoSysctlDir
	d.unlock()
	return err
}

// Fresh reports whether this daemon found neither a stored pool nor any
// kernel object of its prefix when it booted: a boot that fails then made
// everything there is of the pool, and a teardown takes back all of it.
func (d *Daemon) Fresh() bool { return d.fresh }

// Config is the pool's configuration.
func (d *Daemon) Config() slot.Config { return d.cfg }

// Counts implements metrics.Gauges.
func (d *Daemon) Counts() (total, free, leased int) {
	f, l := d.pool.Counts()
	return d.cfg.Count, f, l
}

func (d *Daemon) rootFirewall() firewall.Root {
	return firewall.Root{Prefix: d.cfg.Prefix, Uplink: d.opts.Uplink}
}

// lease returns slot i's lease (nil if none).
func (d *Daemon) lease(i int) *slot.Lease {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leases[i]
}

// setLease makes l slot i's lease (nil: none), and keeps the request
// keys' index.
func (d *Daemon) setLease(i int, l *slot.Lease) {
	d.mu.Lock()
	d.setLeaseLocked(i, l)
	d.mu.Unlock()
}

func (d *Daemon) setLeaseLocked(i int, l *slot.Lease) {
	if old := d.leases[i]; old != nil && old.Key != "" && d.keys[old.Key] == i {
		delete(d.keys, old.Key)
	}
	d.leases[i] = l
	if l != nil && l.Key != "" {
		d.keys[l.Key] = i
	}
}

// fwConn returns slot i's nftables socket.
func (d *Daemon) fwConn(i int) *nftables.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fwConns[i]
}

// setFwConn installs slot i's nftables socket, closing a previous one.
func (d *Daemon) setFwConn(i int, c *nftables.Conn) {
	d.mu.Lock()
	old := d.fwConns[i]
	d.fwConns[i] = c
	d.mu.Unlock()
	if old != nil {
		firewall.CloseInBackground(old)
	}
}

// nsHandle is a slot's namespace as the daemon holds it: a descriptor
// (-1: none) and the namespace's identity, which its pin must show.
type nsHandle struct {
	fd       int
	dev, ino uint64
}

// setNsFD keeps fd as slot i's namespace (-1: none), closing the one it
// replaces: a held namespace stays alive, so a slot that is removed or
// rebuilt lets go of its old one.
func (d *Daemon) setNsFD(i, fd int) {
	if d.nsFDs == nil {
		return
	}
	h := nsHandle{fd: fd}
	var st unix.Stat_t
	if fd >= 0 && unix.Fstat(fd, &st) == nil {
		h.dev, h.ino = st.Dev, st.Ino
	}
	d.mu.Lock()
	old := d.nsFDs[i]
	d.nsFDs[i] = h
	d.mu.Unlock()
	if old.fd >= 0 {
		unix.Close(old.fd)
	}
}

// nsFD returns a descriptor of slot i's namespace for the caller to close:
// a duplicate of the one the daemon holds, or, if it holds none, one
// opened from the pin.
func (d *Daemon) nsFD(i int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nsFDs != nil && d.nsFDs[i].fd >= 0 {
		fd, err := unix.FcntlInt(uintptr(d.nsFDs[i].fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("dup netns of slot %s: %w", d.cfg.ID(i), err)
		}
		return fd, nil
	}
	return netns.Open(d.cfg.NetnsPath(i))
}

// raiseFileLimit makes room for one socket per slot besides the usual
// descriptors.
func raiseFileLimit(need uint64) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	lim.Cur = need
	lim.Max = max(lim.Max, need)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise open file limit to %d: %w", need, err)
	}
	return nil
}

func vpcOf(l *slot.Lease) *slot.Attachment {
	if l == nil {
		return nil
	}
	return l.VPC
}

func egressOf(l *slot.Lease) slot.Egress {
	if l == nil {
		return slot.Egress{}
	}
	return l.Egress
}

// denySet is where no guest of the pool may send NATed traffic, whatever
// its lease says: datapath.FixedDeny, the uplink's own subnets (the
// underlay, which guests reach only through netslot's encapsulation; with
// /32 addressing, only the host's own address) and the operator's ranges
// (Options.Deny).
func denySet(opts Options) ([]netip.Prefix, error) {
	deny := slices.Clone(datapath.FixedDeny)
	for _, p := range opts.Deny {
		if !p.Addr().Is4() || p != p.Masked() {
			return nil, fmt.Errorf("invalid deny cidr %s: want an IPv4 network", p)
		}
		deny = append(deny, p)
	}
	if opts.Uplink != "" {
		subnets, err := links.UplinkAddrs(opts.Uplink)
		if err != nil {
			return nil, fmt.Errorf("uplink: %w", err)
		}
		for _, p := range subnets {
			deny = append(deny, p.Masked())
		}
	}
	return deny, nil
}

// slotFirewall is the firewall of every slot of the pool.
func (d *Daemon) slotFirewall() firewall.Slot { return firewall.Slot{Config: d.cfg} }

// DenySet is the pool's deny set (see denySet).
func (d *Daemon) DenySet() []netip.Prefix { return slices.Clone(d.deny) }
