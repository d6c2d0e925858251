package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/slot"
)

// What a VM launcher can rely on around a lease: a request key that makes
// an acquire idempotent, a release repeated after its lease ended that
// answers OK, readiness, draining, and an acquire that waits for a slot.

// claimKey settles an acquire with request key req.Key. If the key's lease
// is alive, it returns that slot (done nil), or ErrKeyReused if the lease
// was made by another request. If another acquire with the key is under
// way, it waits for it (until ctx ends) and looks again. Else the key is
// the caller's until it calls done, which it must, after the lease is
// recorded or the acquire failed.
func (d *Daemon) claimKey(ctx context.Context, req AcquireRequest) (info SlotInfo, done func(), err error) {
	for {
		d.mu.Lock()
		if i, ok := d.keys[req.Key]; ok {
			l := d.leases[i]
			d.mu.Unlock()
			if !req.matches(l) {
				d.Metrics.AcquireErrors.WithLabelValues("invalid").Inc()
				return SlotInfo{}, nil, fmt.Errorf("%w: key %q leased %s with another request (lease %s)", ErrKeyReused, req.Key, d.cfg.ID(i), l.ID)
			}
			// From the lease seen under the lock: a release racing with
			// this retry cannot make it answer another lease.
			return SlotInfo{Index: i, ID: d.cfg.ID(i), State: d.pool.State(i), Lease: l, Datapath: d.datapathInfo(i), Damaged: d.damage(i)}, nil, nil
		}
		if ch, ok := d.keying[req.Key]; ok {
			d.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				d.Metrics.AcquireErrors.WithLabelValues("deadline").Inc()
				return SlotInfo{}, nil, fmt.Errorf("%w: waiting for the acquire with the same key: %w", ErrDeadline, ctx.Err())
			}
		}
		ch := make(chan struct{})
		d.keying[req.Key] = ch
		d.mu.Unlock()
		return SlotInfo{}, func() {
			d.mu.Lock()
			delete(d.keying, req.Key)
			d.mu.Unlock()
			close(ch)
		}, nil
	}
}

// matches reports whether l is the lease req would make (its id and time
// aside).
func (req AcquireRequest) matches(l *slot.Lease) bool {
	if l == nil || req.Owner != l.Owner || req.Egress.DenyAll != l.Egress.DenyAll ||
		!slices.Equal(req.Egress.Allow, l.Egress.Allow) || !slices.Equal(req.Inbound, l.Inbound) || !slices.Equal(req.DNS, l.DNS) || req.Hostname != l.Hostname ||
		(req.TapOwner == nil) != (l.TapOwner == nil) || req.TapOwner != nil && *req.TapOwner != *l.TapOwner {
		return false
	}
	a, b := req.VPC, l.VPC
	if a == nil || b == nil {
		return a == b
	}
	return a.VNI == b.VNI && a.RemoteVTEP == b.RemoteVTEP && a.VPCIP == b.VPCIP &&
		slices.Equal(a.VPCCIDRs, b.VPCCIDRs) && bytes.Equal(a.PeerMAC, b.PeerMAC)
}

// takeFree takes a whole free slot once the pool is ready. Without wait it
// fails at once (ErrNotReady, ErrExhausted); with it, it waits for the
// pool to be ready and a slot to be free until ctx ends (ErrDeadline).
// A draining daemon vends nothing (ErrDraining), waiting or not.
func (d *Daemon) takeFree(ctx context.Context, wait bool) (int, error) {
	fail := func(reason string, err error) (int, error) {
		d.Metrics.AcquireErrors.WithLabelValues(reason).Inc()
		return 0, err
	}
	for {
		if d.draining.Load() {
			return fail("draining", ErrDraining)
		}
		var freed <-chan struct{}
		select {
		case <-d.readyCh:
			if wait {
				freed = d.pool.Freed() // before the take: no slot freed in between is missed
			}
			i, err := d.takeWhole()
			if err == nil {
				return i, nil
			}
			if !wait {
				free, leased := d.pool.Counts()
				return fail("exhausted", fmt.Errorf("%w: %d slots, %d leased, %d free (%d damaged)", ErrExhausted, d.cfg.Count, leased, free, d.damagedCount()))
			}
		default:
			if !wait {
				return fail("not_ready", fmt.Errorf("%w: %d of %d slots ready", ErrNotReady, d.ready.Load(), d.cfg.Count))
			}
			freed = d.readyCh
		}
		select {
		case <-freed:
		case <-d.drainCh:
		case <-d.stop:
			return fail("draining", ErrDraining)
		case <-ctx.Done():
			return fail("deadline", fmt.Errorf("%w: no slot came free while it waited: %w", ErrDeadline, ctx.Err()))
		}
	}
}

// endedBy reports whether leaseID names the lease slot i's last release
// ended: a release repeated with it is done already.
func (d *Daemon) endedBy(i int, leaseID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return leaseID != "" && d.ended[i] == leaseID
}

// endLease forgets slot i's lease l, in the store and here, and remembers
// it as the one the slot's last release ended.
func (d *Daemon) endLease(i int, l *slot.Lease) error {
	id := ""
	if l != nil {
		id = l.ID
	}
	if err := d.store.EndLease(i, id); err != nil {
		return err
	}
	// One critical section: a retried release sees the lease either held
	// or ended, never neither.
	d.mu.Lock()
	d.setLeaseLocked(i, nil)
	d.ended[i] = id
	d.mu.Unlock()
	return nil
}

// GuestConfig is what slot i's guest configures its network with: the
// MTU its path carries (the tap's, less the tunnel's overhead with a VPC
// when the uplink leaves no room for it), its DNS servers (its lease's,
// else the pool's) and the kernel argument that sets both up with no
// DHCP (the kernel's ip= takes no MTU: a guest sets it itself).
func (d *Daemon) GuestConfig(l *slot.Lease) (mtu int, dns []netip.Addr, bootArgs string) {
	mtu = slot.GuestMTU
	if up := int(d.uplinkMTU.Load()); up > 0 {
		if l != nil && l.VPC != nil {
			up -= datapath.EncapOverhead
		}
		mtu = min(mtu, up)
	}
	dns = d.opts.DNS
	if l != nil && len(l.DNS) > 0 {
		dns = l.DNS
	}
	return mtu, dns, d.cfg.BootArgs(dns)
}

// Drain stops the daemon vending slots, for a daemon about to stop:
// acquires fail with ErrDraining (those waiting too), and the rest of the
// API (releases first) is served as before.
func (d *Daemon) Drain() {
	if d.draining.CompareAndSwap(false, true) {
		close(d.drainCh)
		d.log.Info("draining: no slot is vended from now on; releases are served until netslotd stops")
	}
}

// Draining reports whether Drain was called.
func (d *Daemon) Draining() bool { return d.draining.Load() }

// Ready returns a channel closed once every slot of the pool is ready.
func (d *Daemon) Ready() <-chan struct{} { return d.readyCh }

// WhenReady runs fn once the pool is ready: at once if it is, else just
// before the first acquire can be served (so that what fn reports, the
// health service's SERVING, is never behind the pool).
func (d *Daemon) WhenReady(fn func()) {
	d.mu.Lock()
	select {
	case <-d.readyCh:
		d.mu.Unlock()
		fn()
		return
	default:
	}
	d.onReady = append(d.onReady, fn)
	d.mu.Unlock()
}

// becomeReady runs the WhenReady callbacks, then lets acquires through.
func (d *Daemon) becomeReady() {
	d.mu.Lock()
	fns := d.onReady
	d.onReady = nil
	for _, fn := range fns {
		fn()
	}
	close(d.readyCh)
	d.mu.Unlock()
}
