package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/state"
)

type jobKind uint8

const (
	jobCreate jobKind = iota // nothing usable exists: build the slot
	jobAdopt                 // pin and host veth exist: verify, repair if needed
	jobRepair                // damaged: rebuild
	jobOrphan                // no lease, but a VMM holds its tap: kept out of the pool
)

type job struct {
	i    int
	kind jobKind
}

// Boot brings every slot of the pool to ready: slots found in the kernel
// are adopted after a check (and rebuilt if damaged), missing ones are
// created, objects of the prefix outside the pool are removed. Ready slots
// are vendable while the rest boot.
func (d *Daemon) Boot(ctx context.Context) error {
	defer close(d.bootDone)
	if err := d.loadLeases(); err != nil {
		return err
	}
	if err := netns.EnsureDir(slot.NetnsDir); err != nil {
		return err
	}
	rootFD, err := netns.Root()
	if err != nil {
		return err
	}
	// Opened from an unlocked goroutine, hence in the root namespace.
	if d.rootSys, err = links.OpenSysctlDir("ipv6/conf"); err != nil {
		return err
	}
	pins, err := d.scanPins()
	if err != nil {
		return err
	}
	veths, err := d.scanHostVeths(pins)
	if err != nil {
		return err
	}
	d.fresh = d.newStore && !slices.Contains(pins, true) && !slices.Contains(veths, true) && !datapath.Exists("", d.cfg.Prefix)
	if err := d.rootFirewall().Apply(); err != nil {
		return err
	}
	if err := d.setupDatapath(); err != nil {
		return err
	}

	stopProgress := d.logProgress()
	defer stopProgress()
	// First pass: adopt what exists, create what does not. Slots whose
	// firewall check fails come back for a second pass that rebuilds them.
	repairs, failures := d.runPass(ctx, rootFD, func(emit func(job)) {
		for i := 0; i < d.cfg.Count; i++ {
			kind := jobCreate
			if pins[i] && veths[i] {
				kind = jobAdopt
			}
			emit(job{i: i, kind: kind})
		}
	})
	if len(repairs) > 0 && ctx.Err() == nil {
		// Repair jobs report their failures as failures, never as repairs.
		_, more := d.runPass(ctx, rootFD, func(emit func(job)) {
			for _, i := range repairs {
				emit(job{i: i, kind: jobRepair})
			}
		})
		failures = append(failures, more...)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d slots failed to boot: %w", len(failures), d.cfg.Count, errors.Join(failures[:min(3, len(failures))]...))
	}
	stop := d.stop
	if len(d.orphanList()) > 0 {
		d.bg.Go(func() { d.watchOrphans(stop) })
	}
	// The pool is watched before it is vended: the kernel's events, the
	// pin directory and the mount table are followed, then what changed
	// since the slots were checked is looked at once.
	var watching sync.WaitGroup
	watching.Add(3)
	d.bg.Go(func() { d.monitor(stop, watching.Done) })
	d.bg.Go(func() { d.watchPins(stop, watching.Done) })
	d.bg.Go(func() { d.watchMounts(stop, watching.Done) })
	d.bg.Go(func() { d.rebuildDamaged(stop) })
	d.bg.Go(func() { d.runHolder(stop) })
	d.bg.Go(func() { d.runVethChecks(stop) })
	watching.Wait()
	d.checkHostVeths()
	for i := range d.cfg.Count {
		d.checkPin(i)
	}
	dur := time.Since(d.bootStart)
	d.bootDur.Store(int64(dur))
	d.becomeReady()
	d.Metrics.BootSeconds.Set(dur.Seconds())
	free, leased := d.pool.Counts()
	p := d.Progress()
	d.log.Info("pool ready", "slots", d.cfg.Count, "free", free, "leased", leased,
		"created", p.Created, "adopted", p.Adopted, "repaired", p.Repaired,
		"removed", d.removed.Load(), "seconds", fmt.Sprintf("%.2f", dur.Seconds()),
		"ms_per_slot_first_tenth", fmt.Sprintf("%.3f", p.FirstTenthMs),
		"ms_per_slot_last_tenth", fmt.Sprintf("%.3f", p.LastTenthMs))
	return nil
}

// leaseUnknown reports whether slot i's lease may have been lost: the
// daemon adopts slots its store does not know, or slot i's entry could
// not be read.
func (d *Daemon) leaseUnknown(i int) bool { return d.adopting || d.unreadable[i] }

// orphanRecheck is how often orphaned slots are looked at again.
const orphanRecheck = 2 * time.Second

func (d *Daemon) orphanList() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]int, 0, len(d.orphans))
	for i := range d.orphans {
		out = append(out, i)
	}
	return out
}

// watchOrphans looks at the orphaned slots every orphanRecheck until stop
// is closed or none is left: one whose VMM let go is scrubbed as a release
// does and joins the pool. The work is in the number of orphans.
func (d *Daemon) watchOrphans(stop <-chan struct{}) {
	t := time.NewTicker(orphanRecheck)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		left := d.orphanList()
		for _, i := range left {
			err := d.scrub(i)
			if errors.Is(err, links.ErrTapInUse) {
				continue
			}
			if err != nil {
				d.log.Warn("scrubbing an orphaned slot failed, rebuilding it", "slot", d.cfg.ID(i), "err", err)
				if err := d.rebuild(i); err != nil {
					d.log.Error("orphaned slot cannot be rebuilt; it stays out of the pool", "slot", d.cfg.ID(i), "err", err)
					continue
				}
			}
			d.mu.Lock()
			delete(d.orphans, i)
			d.mu.Unlock()
			d.log.Info("orphaned slot let go by its VMM: scrubbed, back in the pool", "slot", d.cfg.ID(i))
			d.Metrics.ReconcileAction.WithLabelValues("orphan_reclaimed").Inc()
			d.markReady(i)
		}
		if len(d.orphanList()) == 0 {
			return
		}
	}
}

// loadLeases reads the store. Leases from an earlier boot of the host refer
// to VMs that died with it and are dropped.
func (d *Daemon) loadLeases() error {
	boot, err := state.CurrentBootID()
	if err != nil {
		return err
	}
	stored, err := d.store.BootID()
	if err != nil {
		return err
	}
	if stored != boot {
		if stored != "" {
			d.log.Warn("host rebooted since the leases were written; dropping them")
			d.Metrics.ReconcileAction.WithLabelValues("drop_stale_leases").Inc()
		}
		if err := d.store.DeleteAllLeases(); err != nil {
			return fmt.Errorf("drop stale leases: %w", err)
		}
		if err := d.store.SetBootID(boot); err != nil {
			return err
		}
	}
	leases, bad, err := d.store.Leases()
	if err != nil {
		return fmt.Errorf("load leases: %w", err)
	}
	for _, k := range bad {
		if i, err := strconv.Atoi(k); err == nil && i >= 0 && i < d.cfg.Count {
			d.unreadable[i] = true // checked for a VMM at adoption
		}
		d.log.Warn("dropping undecodable lease", "key", k)
		d.Metrics.ReconcileAction.WithLabelValues("drop_bad_lease").Inc()
		if err := d.store.DeleteLeaseKey(k); err != nil {
			return err
		}
	}
	for i, l := range leases {
		if i >= d.cfg.Count {
			d.log.Warn("dropping lease outside the pool", "index", i)
			d.Metrics.ReconcileAction.WithLabelValues("drop_bad_lease").Inc()
			if err := d.store.DeleteLease(i); err != nil {
				return err
			}
			continue
		}
		d.setLease(i, l)
	}
	ended, err := d.store.EndedLeases()
	if err != nil {
		return fmt.Errorf("load ended leases: %w", err)
	}
	for i, id := range ended {
		if i < d.cfg.Count {
			d.ended[i] = id
		}
	}
	return nil
}

// scanPins lists the namespace pins of our prefix and removes those that
// are not slots of this pool.
func (d *Daemon) scanPins() ([]bool, error) {
	have := make([]bool, d.cfg.Count)
	pins, err := pinsOf(d.cfg)
	if err != nil {
		return nil, err
	}
	for name, i := range pins {
		if i < d.cfg.Count {
			have[i] = true
			continue
		}
		d.log.Info("removing namespace outside the pool", "netns", name)
		if err := netns.Remove(filepath.Join(slot.NetnsDir, name)); err != nil {
			return nil, err
		}
		d.removed.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("remove_netns").Inc()
	}
	return have, nil
}

// scanHostVeths lists root-namespace devices named like our host veths and
// deletes those that are not veths of this pool. It reports which slots
// have their host veth, up; pinned says which slots have their namespace.
func (d *Daemon) scanHostVeths(pinned []bool) ([]bool, error) {
	have := make([]bool, d.cfg.Count)
	found := make([]bool, d.cfg.Count)
	veths, err := hostVeths(d.cfg)
	if err != nil {
		return nil, err
	}
	record := func(i int, l netlink.Link) {
		// A host veth that is down is damaged: rebuild the slot.
		found[i], have[i] = true, l.Attrs().Flags&net.FlagUp != 0
		d.setHostIndex(i, l.Attrs().Index)
	}
	for _, l := range veths {
		i, _ := d.cfg.IndexOfName(l.Attrs().Name, "")
		if i < d.cfg.Count {
			record(i, l)
			continue
		}
		d.log.Info("removing host veth outside the pool", "link", l.Attrs().Name)
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("delete %s: %w", l.Attrs().Name, err)
		}
		d.removed.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("remove_link").Inc()
	}
	// The dump of a root namespace whose links never hold still may lack
	// a veth that was there all along (see links.Links): a slot whose
	// namespace exists is asked for by name before it is taken for
	// damaged, which would rebuild it under its tenant.
	for i := range d.cfg.Count {
		if found[i] || !pinned[i] {
			continue
		}
		if l, err := netlink.LinkByName(d.cfg.HostVeth(i)); err == nil && l.Type() == "veth" {
			record(i, l)
		}
	}
	return have, nil
}

// runPass runs the jobs that gen emits on Options.Workers locked threads.
// The kernel-device part of a job runs on the worker's thread; its
// nftables part runs afterwards on an ordinary goroutine, so that the
// worker goes on with the next slot instead of parking a locked thread on
// every netlink round trip of the nftables library (measured: runtime
// thread hand-offs were a quarter of boot CPU). It returns the slots whose
// adoption found a damaged firewall, and the failures.
func (d *Daemon) runPass(ctx context.Context, rootFD int, gen func(emit func(job))) (repairs []int, failures []error) {
	var (
		mu      sync.Mutex
		workers sync.WaitGroup
		steps   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	jobs := make(chan job, d.opts.Workers)
	var alive atomic.Int32
	alive.Store(int32(d.opts.Workers))
	for w := 0; w < d.opts.Workers; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			d.worker(rootFD, jobs, &alive, fail, func(j job, step func() error) {
				steps.Add(1)
				go func() {
					defer steps.Done()
					if err := step(); err != nil {
						if j.kind == jobAdopt {
							d.log.Warn("repairing slot with a damaged firewall", "slot", d.cfg.ID(j.i), "reason", err)
							mu.Lock()
							repairs = append(repairs, j.i)
							mu.Unlock()
							return
						}
						d.log.Error("slot failed", "slot", d.cfg.ID(j.i), "err", err)
						fail(fmt.Errorf("slot %s: %w", d.cfg.ID(j.i), errors.Join(err, d.removeSlotObjectsFromRoot(j.i))))
						return
					}
					d.jobDone(j)
				}()
			})
		}()
	}
	gen(func(j job) {
		if ctx.Err() == nil {
			jobs <- j
		}
	})
	close(jobs)
	workers.Wait()
	steps.Wait()
	return repairs, failures
}

// worker runs the kernel-device part of jobs on one locked OS thread and
// hands the nftables part to next. If the thread cannot get back to the
// root namespace it is retired (never unlocked) and the worker stops.
//
// A worker that dies leaves its jobs to the others; the last one to die
// takes the remaining jobs as failures, so that the pass always ends.
func (d *Daemon) worker(rootFD int, jobs <-chan job, alive *atomic.Int32, fail func(error), next func(job, func() error)) {
	died := func(err error) {
		fail(err)
		if alive.Add(-1) == 0 {
			for j := range jobs {
				fail(fmt.Errorf("slot %s: no worker left", d.cfg.ID(j.i)))
			}
		}
	}
	runtime.LockOSThread()
	root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		runtime.UnlockOSThread()
		died(fmt.Errorf("netlink: %w", err))
		return
	}
	defer root.Close()
	for j := range jobs {
		j, step, err := d.runJob(root, rootFD, j)
		if rerr := netns.Enter(rootFD); rerr != nil {
			// The thread stays locked: it is retired with the goroutine.
			died(fmt.Errorf("slot %s: return to root netns: %w", d.cfg.ID(j.i), rerr))
			return
		}
		if err != nil {
			d.log.Error("slot failed", "slot", d.cfg.ID(j.i), "err", err)
			fail(fmt.Errorf("slot %s: %w", d.cfg.ID(j.i), err))
			continue
		}
		next(j, step)
	}
	runtime.UnlockOSThread()
}

func (d *Daemon) jobDone(j job) {
	switch j.kind {
	case jobAdopt:
		d.adopted.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("adopt").Inc()
	case jobRepair:
		d.repaired.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("repair").Inc()
	case jobOrphan:
		d.log.Error("slot has no lease but a VMM holds its tap (a lost or unreadable lease?): its traffic is stopped and it stays out of the pool until the VMM lets go",
			"slot", d.cfg.ID(j.i))
		d.Metrics.ReconcileAction.WithLabelValues("orphan").Inc()
		d.mu.Lock()
		d.orphans[j.i] = true
		d.mu.Unlock()
		return
	default:
		d.created.Add(1)
	}
	d.markReady(j.i)
}

func (d *Daemon) markReady(i int) {
	var err error
	if d.lease(i) != nil {
		err = d.pool.MarkLeased(i)
	} else {
		err = d.pool.MarkFree(i)
	}
	if err != nil {
		d.log.Error("pool state", "slot", d.cfg.ID(i), "err", err)
		return
	}
	n := d.ready.Add(1)
	if d.opts.OnSlotReady != nil {
		d.opts.OnSlotReady(int(n), time.Since(d.bootStart))
	}
	d.Metrics.SlotsReady.Set(float64(n))
	// Marks for the per-slot cost of the first and the last tenth of boot.
	tenth := int64(max(1, d.cfg.Count/10))
	switch n {
	case tenth:
		d.t10.Store(int64(time.Since(d.bootStart)))
	case int64(d.cfg.Count) - tenth:
		d.t90.Store(int64(time.Since(d.bootStart)))
	}
}

// runJob does the kernel-device part of j on the calling locked thread and
// returns its nftables part and what the job turned out to be: a slot whose
// devices fail the adoption check is rebuilt at once (a repair).
func (d *Daemon) runJob(root *netlink.Handle, rootFD int, j job) (job, func() error, error) {
	if j.kind == jobAdopt {
		step, err := d.checkSlot(j.i)
		if errors.Is(err, errOrphaned) {
			j.kind = jobOrphan
			return j, step, nil
		}
		// Only damage is repaired; a failed netlink call is retried.
		for try := 0; err != nil && !errors.Is(err, links.ErrDamaged) && try < 3; try++ {
			if rerr := netns.Enter(rootFD); rerr != nil {
				return j, nil, rerr
			}
			step, err = d.checkSlot(j.i)
		}
		if err == nil {
			return j, step, nil
		}
		if !errors.Is(err, links.ErrDamaged) {
			return j, nil, err
		}
		if d.lease(j.i) != nil {
			d.log.Error("rebuilding a damaged leased slot: its VM must reattach to tap0", "slot", d.cfg.ID(j.i), "reason", err)
		} else {
			d.log.Warn("repairing damaged slot", "slot", d.cfg.ID(j.i), "reason", err)
		}
		if rerr := netns.Enter(rootFD); rerr != nil {
			return j, nil, rerr
		}
		j.kind = jobRepair
	}
	step, err := d.buildSlot(root, rootFD, j.i, d.lease(j.i))
	return j, step, err
}

// checkSlot enters slot i's namespace on the calling (locked) thread and
// verifies its devices; it returns the check of its firewall, to be run on
// any goroutine. The thread is left inside.
func (d *Daemon) checkSlot(i int) (func() error, error) {
	d.mu.Lock()
	host := d.hostIdx[i]
	d.mu.Unlock()
	if err := links.VerifyHost(d.rootSys, d.cfg, i, host, d.opts.Uplink != ""); err != nil {
		return nil, err
	}
	fd, err := netns.Open(d.cfg.NetnsPath(i))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", links.ErrDamaged, err)
	}
	if err := netns.Enter(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	d.setNsFD(i, fd)
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	// Where its lease may have been lost (a store adopted, an undecodable
	// entry), a slot with no lease whose tap a VMM still holds is not the
	// pool's to vend: its traffic is stopped and it waits, untouched, for
	// the VMM to go.
	if d.lease(i) == nil && d.leaseUnknown(i) {
		if held, err := links.TapHeld(h, slot.TapName); err == nil && held {
			conn, err := firewall.Dial()
			if err != nil {
				return nil, err
			}
			return d.fwStep(i, conn, orphanLease, d.adoptFirewall(i)), errOrphaned
		}
	}
	if err := d.adoptDevices(h, i); err != nil {
		return nil, err
	}
	conn, err := firewall.Dial() // the socket belongs to this namespace
	if err != nil {
		return nil, err
	}
	return d.fwStep(i, conn, d.lease(i), d.adoptFirewall(i)), nil
}

// adoptDevices verifies slot i's devices (links.Adopt) from inside its
// namespace, on the calling locked thread. A tap0 that belongs to another
// user or group than slot i's lease gave it (a pooled slot's belongs to
// root) is given back in place, as a firewall that differs is rewritten:
// a crash between recording a lease and giving its tap leaves that, and
// nothing else. A tap that cannot be given back, because a process holds
// it, is damage: the slot is rebuilt.
func (d *Daemon) adoptDevices(h *netlink.Handle, i int) error {
	owner := tapOwnerOf(d.lease(i))
	err := links.Adopt(h, d.cfg, i, d.tapProgram(), owner)
	if !errors.Is(err, links.ErrTapOwner) {
		return err
	}
	if serr := links.SetTapOwner(slot.TapName, owner); serr != nil {
		return fmt.Errorf("%w; giving it back: %w", err, serr)
	}
	who := "root"
	if owner != nil {
		who = owner.String()
	}
	d.log.Warn("repaired: slot's tap0 given back to its lease's owner", "slot", d.cfg.ID(i), "reason", err, "owner", who)
	d.Metrics.ReconcileAction.WithLabelValues("tap_owner").Inc()
	return links.Adopt(h, d.cfg, i, d.tapProgram(), owner)
}

// tapOwnerOf is who l gives tap0 to (nil: root; l nil: no lease).
func tapOwnerOf(l *slot.Lease) *slot.TapOwner {
	if l == nil {
		return nil
	}
	return l.TapOwner
}

// errOrphaned: a slot with no lease whose tap a VMM holds.
var errOrphaned = errors.New("no lease, but a VMM holds its tap")

// orphanLease is what an orphaned slot is held to: no egress, no traffic
// (fwStep registers it closed).
var orphanLease = &slot.Lease{ID: "orphaned", Egress: slot.Egress{DenyAll: true}}

// adoptFirewall returns the firewall step of adopting slot i: a table that
// differs from what this daemon writes (tampered with, or written by a
// version with another rule set or deny set) is rewritten in place, in
// one transaction; the slot, and a tenant's VM on it, stay. Only if that
// fails is the slot repaired (rebuilt).
func (d *Daemon) adoptFirewall(i int) func(firewall.Slot, *nftables.Conn, slot.Egress) error {
	return func(fw firewall.Slot, conn *nftables.Conn, e slot.Egress) error {
		err := fw.Verify(conn, e)
		if err == nil {
			return nil
		}
		d.log.Warn("slot firewall differs from what this daemon writes; rewriting it", "slot", d.cfg.ID(i), "reason", err)
		d.Metrics.ReconcileAction.WithLabelValues("firewall_rewrite").Inc()
		return fw.Apply(conn, e)
	}
}

// fwStep returns the nftables and datapath part of a job on slot i: op on
// conn with the egress policy of l (nil: a slot with no lease), after which
// the slot keeps conn (or, on failure, conn is closed), then the slot's
// datapath entries: attached to l's VPC if it has one, open under l's
// inbound rules if there is a lease, closed if not.
func (d *Daemon) fwStep(i int, conn *nftables.Conn, l *slot.Lease, op func(firewall.Slot, *nftables.Conn, slot.Egress) error) func() error {
	return func() error {
		if err := op(d.slotFirewall(), conn, egressOf(l)); err != nil {
			firewall.CloseInBackground(conn)
			return err
		}
		d.setFwConn(i, conn)
		if l == orphanLease {
			return d.registerDatapath(i, nil) // closed: nothing in or out
		}
		return d.registerDatapath(i, l)
	}
}

// buildSlot removes whatever is left of slot i and builds its devices
// afresh, on the calling locked thread, which must be in the root namespace
// and is back there when buildSlot returns (unless it returns an error from
// setns). It returns the creation of the slot's firewall, to be run on any
// goroutine; the slot is ready once that succeeds.
func (d *Daemon) buildSlot(root *netlink.Handle, rootFD, i int, l *slot.Lease) (func() error, error) {
	// The old namespace's nftables socket would keep it alive and take
	// policy changes meant for the new one.
	d.setFwConn(i, nil)
	if err := d.removeSlotObjects(root, i); err != nil {
		return nil, err
	}
	if err := netns.CreateHere(d.cfg.NetnsPath(i)); err != nil {
		return nil, err
	}
	nsFD, err := netns.Current()
	if err == nil {
		d.setNsFD(i, nsFD)
	}
	var conn *nftables.Conn
	var hostIndex int
	if err == nil {
		conn, hostIndex, err = d.fillSlot(rootFD, i, tapOwnerOf(l))
	}
	if rerr := netns.Enter(rootFD); rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	if err == nil {
		err = links.FinishHost(root, d.rootSys, d.cfg, i, hostIndex, d.opts.Uplink != "")
	}
	if err == nil {
		d.setHostIndex(i, hostIndex)
	}
	if err != nil {
		if conn != nil {
			firewall.CloseInBackground(conn)
		}
		return nil, errors.Join(err, d.removeSlotObjects(root, i))
	}
	return d.fwStep(i, conn, l, firewall.Slot.Create), nil
}

// fillSlot builds slot i's devices from inside its new namespace, tap0
// given to owner, and opens an nftables connection there. It returns the
// host veth's ifindex.
func (d *Daemon) fillSlot(rootFD, i int, owner *slot.TapOwner) (*nftables.Conn, int, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, 0, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	hostIndex, err := links.Build(h, rootFD, d.cfg, i, d.tapProgram(), owner)
	if err != nil {
		return nil, 0, err
	}
	conn, err := firewall.Dial()
	return conn, hostIndex, err
}

// removeSlotObjectsFromRoot is removeSlotObjects for an ordinary goroutine
// (which is in the root namespace).
func (d *Daemon) removeSlotObjectsFromRoot(i int) error {
	root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer root.Close()
	return d.removeSlotObjects(root, i)
}

// removeSlotObjects unpins slot i's namespace and deletes its host veth
// (which takes the slot end with it) so that its names are free at once,
// without waiting for the kernel to dismantle the namespace.
func (d *Daemon) removeSlotObjects(root *netlink.Handle, i int) error {
	d.setNsFD(i, -1)
	d.setHostIndex(i, 0) // its deletion below is not damage
	if err := netns.Remove(d.cfg.NetnsPath(i)); err != nil {
		return err
	}
	l, err := root.LinkByName(d.cfg.HostVeth(i))
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", d.cfg.HostVeth(i), err)
	}
	if err := root.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", d.cfg.HostVeth(i), err)
	}
	return nil
}

// logProgress logs boot progress every second until the returned func is
// called.
func (d *Daemon) logProgress() func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p := d.Progress()
				d.log.Info("boot progress", "ready", p.Ready, "total", d.cfg.Count,
					"rate_per_s", fmt.Sprintf("%.0f", p.SlotsPerSecond), "eta_s", fmt.Sprintf("%.1f", p.ETASeconds))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// Progress is a snapshot of boot progress.
type Progress struct {
	Ready, Created, Adopted, Repaired int
	SlotsPerSecond, ETASeconds        float64
	ElapsedSeconds                    float64
	Done                              bool
	BootSeconds                       float64
	// Wall time per slot over the first and the last tenth of the slots,
	// in milliseconds (0 until known): flat boot means equal figures.
	FirstTenthMs, LastTenthMs float64
}

// Progress reports how far boot has come.
func (d *Daemon) Progress() Progress {
	p := Progress{
		Ready: int(d.ready.Load()), Created: int(d.created.Load()),
		Adopted: int(d.adopted.Load()), Repaired: int(d.repaired.Load()),
	}
	if d.bootStart.IsZero() {
		return p
	}
	tenth := float64(max(1, d.cfg.Count/10))
	if t := d.t10.Load(); t > 0 {
		p.FirstTenthMs = time.Duration(t).Seconds() * 1000 / tenth
	}
	if dur := d.bootDur.Load(); dur > 0 {
		p.Done = true
		p.BootSeconds = time.Duration(dur).Seconds()
		p.ElapsedSeconds = p.BootSeconds
		if t := d.t90.Load(); t > 0 && d.cfg.Count >= 20 {
			p.LastTenthMs = time.Duration(dur-t).Seconds() * 1000 / tenth
		}
	} else {
		p.ElapsedSeconds = time.Since(d.bootStart).Seconds()
	}
	if p.ElapsedSeconds > 0 {
		p.SlotsPerSecond = float64(p.Ready) / p.ElapsedSeconds
	}
	if p.SlotsPerSecond > 0 && !p.Done {
		p.ETASeconds = float64(d.cfg.Count-p.Ready) / p.SlotsPerSecond
	}
	return p
}
