package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
)

// AcquireRequest is a validated acquire.
type AcquireRequest struct {
	VPC     *slot.Attachment
	Egress  slot.Egress
	Inbound []slot.InboundRule
	Owner   string
	// Key is the caller's idempotency key ("": none): while the lease it
	// made lives, an acquire with the same key returns that lease.
	Key string
	// Wait: with the pool empty or still booting, wait for a slot until
	// the context ends instead of failing at once.
	Wait bool
	// DNS are the guest's DNS servers (none: the pool's).
	DNS []netip.Addr
	// Hostname names the guest in its DHCP answers ("": nothing).
	Hostname string
	// TapOwner gives tap0 to the user and group a jailed VMM runs as
	// (nil: it stays root's, as in the pool: only root and CAP_NET_ADMIN
	// attach).
	TapOwner *slot.TapOwner
}

// SlotInfo describes a slot to API clients.
type SlotInfo struct {
	Index    int
	ID       string
	State    pool.State
	Lease    *slot.Lease
	Datapath *DatapathInfo // set by Get and Acquire
	Damaged  string        // why the slot is damaged ("": it is not)
}

// Acquire leases the free slot that has rested longest. Without req.Wait
// it does not wait: with no free slot it fails at once with ErrExhausted,
// before the pool is ready with ErrNotReady. A lease is committed only if
// ctx has not ended by then (else ErrDeadline, nothing leased); with
// req.Key, an acquire that finds its key's lease alive returns it.
func (d *Daemon) Acquire(ctx context.Context, req AcquireRequest) (SlotInfo, error) {
	start := time.Now()
	kind := "plain"
	if req.Egress.Restricted() {
		kind = "egress"
	}
	if req.VPC != nil {
		kind += "+vpc"
	}
	if req.TapOwner != nil {
		kind += "+tap_owner"
	}
	if req.VPC != nil && d.opts.Uplink == "" {
		d.Metrics.AcquireErrors.WithLabelValues("no_uplink").Inc()
		return SlotInfo{}, fmt.Errorf("%w: this pool has no uplink, so no tunnel can reach a VPC (start netslotd with --uplink and --underlay-ip)", ErrNoUplink)
	}
	if req.VPC != nil {
		if err := errors.Join(d.cfg.CheckAttachment(req.VPC, d.opts.UnderlayIP), d.checkVTEP(req.VPC.RemoteVTEP)); err != nil {
			d.Metrics.AcquireErrors.WithLabelValues("invalid").Inc()
			return SlotInfo{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	err := errors.Join(slot.CheckInbound(req.Inbound), slot.ValidateKey(req.Key), slot.CheckHostname(req.Hostname))
	if req.TapOwner != nil {
		err = errors.Join(err, slot.ValidateTapOwner(*req.TapOwner))
	}
	if err != nil {
		d.Metrics.AcquireErrors.WithLabelValues("invalid").Inc()
		return SlotInfo{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if req.Key != "" {
		info, done, err := d.claimKey(ctx, req)
		if err != nil || done == nil {
			return info, err
		}
		defer done()
	}
	i, err := d.takeFree(ctx, req.Wait)
	if err != nil {
		return SlotInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		d.pool.Untake(i)
		d.Metrics.AcquireErrors.WithLabelValues("deadline").Inc()
		return SlotInfo{}, fmt.Errorf("%w: %w", ErrDeadline, err)
	}
	l := &slot.Lease{ID: slot.NewLeaseID(), Owner: req.Owner, Key: req.Key, AcquiredNs: time.Now().UnixNano(), VPC: req.VPC,
		Egress: req.Egress, Inbound: req.Inbound, DNS: req.DNS, Hostname: req.Hostname, TapOwner: req.TapOwner}
	// Persist first: a crash after this point leaves the slot leased (never
	// vended twice); the tenant finds it with its key or with list, and
	// releases it.
	if err := d.store.PutLease(i, l); err != nil {
		d.pool.Untake(i)
		d.Metrics.AcquireErrors.WithLabelValues("store").Inc()
		return SlotInfo{}, fmt.Errorf("record lease: %w", err)
	}
	if req.Egress.Restricted() {
		if err := d.setEgress(i, req.Egress); err != nil {
			return SlotInfo{}, d.abortAcquire(i, l, "firewall", err, nil)
		}
	}
	// The flip from the dummy VNI: map updates only.
	if req.VPC != nil {
		if err := d.dp.Attach(i, req.VPC); err != nil {
			var undo error
			if req.Egress.Restricted() {
				undo = d.setEgress(i, slot.Egress{})
			}
			return SlotInfo{}, d.abortAcquire(i, l, "datapath", err, undo)
		}
	}
	// undo puts back what the acquire changed so far: the attachment and
	// the egress policy, and the tap's owner once owned.
	owned := false
	undo := func() error {
		var err error
		if req.VPC != nil {
			err = d.dp.Detach(i, req.VPC)
		}
		if req.Egress.Restricted() {
			err = errors.Join(err, d.setEgress(i, slot.Egress{}))
		}
		if owned {
			err = errors.Join(err, d.setTapOwner(i, nil))
		}
		return err
	}
	// The tap is the VMM's user's: attached, given, detached (see
	// links.SetTapOwner), so that the VMM attaches as soon as this returns.
	if req.TapOwner != nil {
		owned = true // a failure may have set the owner and not the group
		if err := d.setTapOwner(i, req.TapOwner); err != nil {
			return SlotInfo{}, d.abortAcquire(i, l, "tap_owner", err, undo())
		}
	}
	// The caller gave up meanwhile: the lease is undone, never committed.
	if err := ctx.Err(); err != nil {
		err = fmt.Errorf("%w: %w", ErrDeadline, err)
		return SlotInfo{}, d.abortAcquire(i, l, "deadline", err, undo())
	}
	// Last, the slot opens: its traffic flows from here on, under the
	// policy written above, and its DHCP answers are the lease's.
	d.writeDHCP(i, l)
	d.dp.OpenLease(i, req.Inbound)
	d.setLease(i, l)
	d.pool.CommitTake(i)
	d.Metrics.AcquireSeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	return SlotInfo{Index: i, ID: d.cfg.ID(i), State: pool.Leased, Lease: l, Datapath: d.leasedDatapath(i, l)}, nil
}

// leasedDatapath is what the datapath holds for slot i just leased with
// l, known without reading it back (the counters were zeroed by the last
// scrub).
func (d *Daemon) leasedDatapath(i int, l *slot.Lease) *DatapathInfo {
	dp := &DatapathInfo{VNI: uint32(slot.DummyVNIBase + i), Dummy: true, VPCMAC: d.cfg.VPCMAC(i).String()}
	if l.VPC != nil {
		dp.VNI, dp.Dummy = l.VPC.VNI, false
	}
	return dp
}

// takeWhole takes the oldest free slot that is whole (see
// wholeForAcquire); the others leave the pool for a rebuild.
func (d *Daemon) takeWhole() (int, error) {
	for {
		i, err := d.pool.Take()
		if err != nil || d.wholeForAcquire(i) {
			return i, err
		}
	}
}

// abortAcquire undoes the lease record of a failed acquire of slot i and
// returns the error to report; undo is what putting back the slot's policy
// and attachment failed with (nil: they are as the pool left them).
//   - The store cannot forget the lease: the slot stays leased (the store
//     says so), closed and without its key, until a release scrubs it; the
//     error does not claim that nothing was leased.
//   - The slot is not back as it was (undo): it leaves the pool for a
//     rebuild, never handed to the next tenant with the last one's policy.
//   - Else it goes back to the pool.
func (d *Daemon) abortAcquire(i int, l *slot.Lease, what string, err, undo error) error {
	d.Metrics.AcquireErrors.WithLabelValues(what).Inc()
	id := d.cfg.ID(i)
	if derr := d.store.DeleteLease(i); derr != nil {
		kept := *l
		kept.Key = "" // never returned to a retry: it never opened
		d.setLease(i, &kept)
		d.pool.CommitTake(i)
		return fmt.Errorf("slot %s: %v; it stays leased until released: %w", id, errors.Join(err, undo), derr)
	}
	if undo != nil {
		d.mu.Lock()
		d.damaged[i] = fmt.Sprintf("acquire undone, its policy not: %v", undo)
		d.mu.Unlock()
		d.log.Error("slot damaged", "slot", id, "why", "a failed acquire's policy could not be undone", "err", undo)
		d.Metrics.ReconcileAction.WithLabelValues("slot_damaged").Inc()
		if d.pool.Withdraw(i, pool.Acquiring) == nil {
			d.pokeRebuilds()
		}
		return fmt.Errorf("slot %s: %w; undoing it failed, the slot is rebuilt: %v", id, err, undo)
	}
	d.pool.Untake(i)
	return fmt.Errorf("slot %s: %w", id, err)
}

// setTapOwner gives slot i's tap0 to o (nil: back to root). A tap that a
// process holds is an error: a free slot's tap is nobody's to hold, and a
// VMM that got there before its lease was made has no business there.
func (d *Daemon) setTapOwner(i int, o *slot.TapOwner) error {
	return d.inSlot(i, func() error { return links.SetTapOwner(slot.TapName, o) })
}

func (d *Daemon) setEgress(i int, e slot.Egress) error {
	conn := d.fwConn(i)
	if conn == nil {
		return fmt.Errorf("slot %s has no firewall connection", d.cfg.ID(i))
	}
	return d.slotFirewall().SetEgress(conn, e)
}

// inSlot runs fn on a locked thread inside slot i's namespace.
func (d *Daemon) inSlot(i int, fn func() error) error {
	fd, err := d.nsFD(i)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return netns.Do(fd, fn)
}

func (d *Daemon) index(id string) (int, error) {
	i, err := d.cfg.ParseID(id)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnknownID, err)
	}
	return i, nil
}

// Release scrubs slot id and returns it to the pool, if it is still held
// by lease leaseID (from the acquire's answer): a late or repeated release
// never frees a later tenant's slot. Repeated once it ended leaseID (a
// retry after a lost answer), it succeeds and changes nothing, as long as
// the slot has no newer lease: then it is refused (ErrLeaseMismatch), as
// is any other lease id than the slot's (ErrLeaseMismatch, ErrNotLeased).
// A slot whose scrub fails is rebuilt;
// if even that fails it stays leased and the error says so. While a VMM
// still holds the slot's tap, the release is refused (ErrInUse) and
// changes nothing. While the daemon boots, a release of a slot not
// adopted yet waits for it (see ReleaseContext).
func (d *Daemon) Release(id, leaseID string) error {
	return d.ReleaseContext(context.Background(), id, leaseID)
}

// ReleaseContext is Release, waiting no longer than ctx for a slot that
// the booting daemon has not adopted yet: its lease is in the store, and
// the pool knows the slot leased only once it is adopted. When ctx ends
// first (or the boot does, failed), it fails with ErrNotReady and changes
// nothing.
func (d *Daemon) ReleaseContext(ctx context.Context, id, leaseID string) error {
	if leaseID == "" {
		return fmt.Errorf("release %s: %w: name the lease to end (its lease id), or force the release", id, ErrInvalid)
	}
	return d.release(ctx, id, leaseID)
}

// ForceRelease is Release of whatever lease holds slot id: for an
// operator cleaning up by hand, never for a VM launcher (a retried forced
// release can free the next tenant's slot). It is logged.
func (d *Daemon) ForceRelease(id string) error {
	return d.ForceReleaseContext(context.Background(), id)
}

// ForceReleaseContext is ForceRelease, waiting no longer than ctx for a
// slot not adopted yet (see ReleaseContext).
func (d *Daemon) ForceReleaseContext(ctx context.Context, id string) error {
	i, err := d.index(id)
	if err != nil {
		return err
	}
	if err := d.awaitAdoption(ctx, i); err != nil {
		return fmt.Errorf("release %s: %w", id, err)
	}
	l := d.lease(i)
	err = d.release(ctx, id, "")
	if l != nil {
		d.log.Warn("forced release", "slot", id, "lease", l.ID, "owner", l.Owner, "err", err)
	}
	return err
}

func (d *Daemon) release(ctx context.Context, id, leaseID string) error {
	start := time.Now()
	i, err := d.index(id)
	if err != nil {
		return err
	}
	if err := d.awaitAdoption(ctx, i); err != nil {
		return fmt.Errorf("release %s: %w", id, err)
	}
	err = d.pool.BeginRelease(i)
	if errors.Is(err, pool.ErrReleasing) && leaseID != "" {
		err = d.awaitRelease(i, leaseID)
	}
	switch {
	case err != nil && d.endedBy(i, leaseID) && !errors.Is(err, pool.ErrAcquiring):
		return nil // a retry: its lease is ended, and no other holds the slot
	case errors.Is(err, pool.ErrAlreadyFree):
		return fmt.Errorf("release %s: %w (already free)", id, ErrNotLeased)
	case errors.Is(err, pool.ErrReleasing), errors.Is(err, pool.ErrAcquiring):
		return fmt.Errorf("release %s: %w: %w", id, ErrInProgress, err)
	case err != nil:
		// The pool's error says the same and why ("is pending").
		return fmt.Errorf("release %s: %w (it is %s)", id, ErrNotLeased, d.pool.State(i))
	}
	l := d.lease(i)
	if leaseID != "" && (l == nil || l.ID != leaseID) {
		d.pool.EndRelease(i, false)
		return fmt.Errorf("release %s: %w than %s", id, ErrLeaseMismatch, leaseID)
	}
	if err := d.scrub(i); errors.Is(err, links.ErrTapInUse) {
		d.pool.EndRelease(i, false)
		return fmt.Errorf("release %s: %w: stop the VM first", id, ErrInUse)
	} else if err != nil {
		d.Metrics.ScrubFailures.Inc()
		d.log.Warn("scrub failed, rebuilding slot", "slot", id, "err", err)
		if rerr := d.rebuild(i); rerr != nil {
			d.pool.EndRelease(i, false)
			return fmt.Errorf("release %s: scrub: %w; rebuild: %w", id, err, rerr)
		}
	}
	if err := d.endLease(i, l); err != nil {
		d.pool.EndRelease(i, false)
		return fmt.Errorf("release %s: %w", id, err)
	}
	d.checkPin(i) // the scrub went through the held namespace, not the pin
	d.pool.EndRelease(i, true)
	d.Metrics.ReleaseSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// awaitAdoption waits while the daemon boots and slot i is pending: a
// slot leased before a restart is leased in the store from the boot's
// start, but in the pool only once it is adopted, and a release in
// between would find it "not leased". Once the slot is marked (free or
// leased) it returns nil; if ctx ends first, or the boot ends without
// the slot, it returns ErrNotReady: nothing changed, the caller retries.
// After the boot, a pending slot (orphaned, or out of the pool for a
// rebuild) has no lease to wait for: it returns nil at once.
func (d *Daemon) awaitAdoption(ctx context.Context, i int) error {
	// Give up a little before the caller's deadline: its client then
	// hears NOT_READY (retry later) rather than its own deadline passing.
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-min(time.Until(dl)/10, adoptionMargin)))
		defer cancel()
	}
	for {
		marked := d.pool.Marked() // before the look: no marking in between is missed
		if d.pool.State(i) != pool.Pending {
			return nil
		}
		select {
		case <-d.bootDone:
			select {
			case <-d.readyCh:
				return nil
			default:
			}
			return fmt.Errorf("%w: the boot ended before slot %s was adopted", ErrNotReady, d.cfg.ID(i))
		default:
		}
		select {
		case <-marked:
		case <-d.bootDone:
		case <-d.stop:
			return fmt.Errorf("%w: netslotd stopped before slot %s was adopted", ErrNotReady, d.cfg.ID(i))
		case <-ctx.Done():
			return fmt.Errorf("%w: slot %s is not adopted yet (%d of %d slots ready): %w", ErrNotReady, d.cfg.ID(i), d.ready.Load(), d.cfg.Count, ctx.Err())
		}
	}
}

// adoptionMargin is how long before a caller's deadline a wait for a
// slot's adoption gives up, at most (a tenth of the time left, if less).
const adoptionMargin = 100 * time.Millisecond

// releaseRetryWait bounds how long a release waits for another release
// of the same lease (a retry after a timeout) to end.
const releaseRetryWait = 10 * time.Second

// awaitRelease waits while slot i is being released from lease leaseID
// by another call (a retry made while the first is still scrubbing), then
// begins the release again: it then finds the lease ended (the first
// call succeeded) or still there (it failed, and this one tries anew).
func (d *Daemon) awaitRelease(i int, leaseID string) error {
	deadline := time.Now().Add(releaseRetryWait)
	for {
		err := d.pool.BeginRelease(i)
		if !errors.Is(err, pool.ErrReleasing) || time.Now().After(deadline) {
			return err
		}
		if l := d.lease(i); l == nil || l.ID != leaseID {
			return err // another lease's release: not this caller's to wait for
		}
		time.Sleep(time.Millisecond)
	}
}

// scrub takes slot i back from its tenant. First it attaches to the
// slot's tap itself: if a VMM still holds it (whatever its carrier says),
// that fails and nothing has changed (links.ErrTapInUse); else no VMM can
// attach until the scrub is done. Then the slot's traffic stops both ways
// (the datapath closes its lease), and what the tenant may have changed
// is reset: tap0's owner and group (root's) and what its VMM set through
// its descriptor (links.HeldTap.Reset), devices, neighbours, the
// datapath's entries and flows, the egress policy; the slot's firewall is
// verified and rewritten if it differs.
func (d *Daemon) scrub(i int) error {
	err := d.inSlot(i, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		tap, err := links.HoldTap(h, slot.TapName)
		if err != nil {
			return err
		}
		d.dp.CloseLease(i)
		d.dropHeld(i)
		// Back to root's, whatever the lease gave, and back to the
		// pooled settings, whatever its VMM set: on the descriptor held
		// anyway.
		if err := tap.Reset(); err != nil {
			return errors.Join(err, tap.Close())
		}
		return errors.Join(links.Scrub(h, d.cfg, i), tap.Close())
	})
	if err != nil {
		return err
	}
	if err := d.scrubDatapath(i, vpcOf(d.lease(i))); err != nil {
		return err
	}
	conn := d.fwConn(i)
	if conn == nil {
		return fmt.Errorf("slot %s has no firewall connection", d.cfg.ID(i))
	}
	fw := d.slotFirewall()
	if err := fw.SetEgress(conn, slot.Egress{}); err == nil {
		if err = fw.Verify(conn, slot.Egress{}); err == nil {
			return nil
		}
	}
	d.Metrics.ReconcileAction.WithLabelValues("firewall_rewrite").Inc()
	return fw.Apply(conn, slot.Egress{})
}

// RebuildFree takes the free slot that has rested longest, rebuilds it
// from scratch (namespace, devices, firewall, datapath entries: what boot
// does for one slot) and returns it to the pool. It is what creating a slot
// at request time costs, the design a pre-built pool replaces; the benchmark times
// it. It is safe at any time: the slot is out of the pool meanwhile.
func (d *Daemon) RebuildFree() (string, error) {
	i, err := d.pool.Take()
	if err != nil {
		return "", fmt.Errorf("%w: no free slot to rebuild", ErrExhausted)
	}
	defer d.pool.Untake(i)
	if err := d.rebuild(i); err != nil {
		return "", fmt.Errorf("rebuild %s: %w", d.cfg.ID(i), err)
	}
	return d.cfg.ID(i), nil
}

// rebuild recreates slot i from scratch (with no lease policy).
func (d *Daemon) rebuild(i int) error {
	rootFD, err := netns.Root()
	if err != nil {
		return err
	}
	err = netns.Do(rootFD, func() error {
		root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer root.Close()
		step, err := d.buildSlot(root, rootFD, i, nil)
		if err != nil {
			return err
		}
		if err := step(); err != nil {
			return err
		}
		// The new slot has the dummy VNI; what the old lease attached
		// (its inbound key, long CIDR lists) and counted goes too.
		return d.scrubDatapath(i, vpcOf(d.lease(i)))
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.damaged, i)
	d.mu.Unlock()
	d.Metrics.ReconcileAction.WithLabelValues("repair").Inc()
	return nil
}

// Get describes slot id.
func (d *Daemon) Get(id string) (SlotInfo, error) {
	i, err := d.index(id)
	if err != nil {
		return SlotInfo{}, err
	}
	return d.info(i), nil
}

func (d *Daemon) info(i int) SlotInfo {
	return SlotInfo{Index: i, ID: d.cfg.ID(i), State: d.pool.State(i), Lease: d.lease(i), Datapath: d.datapathInfo(i), Damaged: d.damage(i)}
}

// ListFilter selects slots: each set field must match.
type ListFilter struct {
	Owner string      // leased with this owner
	Key   string      // leased with this request key
	State *pool.State // in this state
}

func (f ListFilter) match(s pool.State, l *slot.Lease) bool {
	if f.State != nil && s != *f.State {
		return false
	}
	if f.Owner != "" && (l == nil || l.Owner != f.Owner) {
		return false
	}
	return f.Key == "" || l != nil && l.Key == f.Key
}

// List describes the slots that match f, in index order.
func (d *Daemon) List(f ListFilter) []SlotInfo {
	states := d.pool.States()
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []SlotInfo
	for i, s := range states {
		if f.match(s, d.leases[i]) {
			out = append(out, SlotInfo{Index: i, ID: d.cfg.ID(i), State: s, Lease: d.leases[i], Damaged: d.damaged[i]})
		}
	}
	return out
}

// Status summarises the pool.
type Status struct {
	Total, Free, Leased int
	Orphaned            int // out of the pool: no lease, a VMM holds the tap
	Damaged             int // found broken: leased, or out of the pool until rebuilt
	Health              Health
	Progress            Progress
	Uplink              string
	UnderlayIP          netip.Addr
	RootRules           int
	UnattributedDrops   map[string]uint64
	Draining            bool // see Drain
}

// countRootRules counts the rules of the pool's root-namespace table as
// the kernel holds them now (0 if the table is gone).
func (d *Daemon) countRootRules() int {
	n, err := firewall.CountRules(d.cfg.Prefix)
	if err != nil {
		d.log.Warn("counting the root table's rules", "err", err)
	}
	return n
}

// Status reports the pool's size, occupancy and boot progress.
func (d *Daemon) Status() Status {
	free, leased := d.pool.Counts()
	return Status{
		Total: d.cfg.Count, Free: free, Leased: leased, Orphaned: len(d.orphanList()), Damaged: d.damagedCount(), Health: d.Health(),
		Progress: d.Progress(), Uplink: d.opts.Uplink, UnderlayIP: d.opts.UnderlayIP,
		RootRules:         d.countRootRules(),
		UnattributedDrops: d.UnattributedDrops(),
		Draining:          d.Draining(),
	}
}
