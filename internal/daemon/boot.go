package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
	d.bootStart = time.Now()
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
	veths, err := d.scanHostVeths()
	if err != nil {
		return err
	}
	if err := d.rootFirewall().Apply(); err != nil {
		return err
	}

	jobs := make(chan job, d.opts.Workers)
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		failures []error
	)
	for w := 0; w < d.opts.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for err := range d.worker(rootFD, jobs) {
				errMu.Lock()
				failures = append(failures, err)
				errMu.Unlock()
			}
		}()
	}
	stopProgress := d.logProgress()
	canceled := false
	for i := 0; i < d.cfg.Count; i++ {
		if ctx.Err() != nil {
			canceled = true
			break
		}
		kind := jobCreate
		if pins[i] && veths[i] {
			kind = jobAdopt
		}
		jobs <- job{i: i, kind: kind}
	}
	close(jobs)
	wg.Wait()
	stopProgress()
	if canceled {
		return ctx.Err()
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d slots failed to boot: %w", len(failures), d.cfg.Count, errors.Join(failures[:min(3, len(failures))]...))
	}
	dur := time.Since(d.bootStart)
	d.bootDur.Store(int64(dur))
	d.Metrics.BootSeconds.Set(dur.Seconds())
	free, leased := d.pool.Counts()
	d.log.Info("pool ready", "slots", d.cfg.Count, "free", free, "leased", leased,
		"created", d.created.Load(), "adopted", d.adopted.Load(), "repaired", d.repaired.Load(),
		"removed", d.removed.Load(), "seconds", fmt.Sprintf("%.2f", dur.Seconds()))
	return nil
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
		d.leases[i] = l
	}
	return nil
}

// scanPins lists the namespace pins of our prefix and removes those that
// are not slots of this pool.
func (d *Daemon) scanPins() ([]bool, error) {
	have := make([]bool, d.cfg.Count)
	ents, err := os.ReadDir(slot.NetnsDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", slot.NetnsDir, err)
	}
	for _, e := range ents {
		i, ok := d.cfg.IndexOfName(e.Name(), "-")
		if !ok {
			continue
		}
		if i < d.cfg.Count {
			have[i] = true
			continue
		}
		d.log.Info("removing namespace outside the pool", "netns", e.Name())
		if err := netns.Remove(slot.NetnsDir + "/" + e.Name()); err != nil {
			return nil, err
		}
		d.removed.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("remove_netns").Inc()
	}
	return have, nil
}

// scanHostVeths lists root-namespace devices named like our host veths and
// deletes those that are not veths of this pool.
func (d *Daemon) scanHostVeths() ([]bool, error) {
	have := make([]bool, d.cfg.Count)
	all, err := links.RootLinks()
	if err != nil {
		return nil, fmt.Errorf("list root links: %w", err)
	}
	for _, l := range all {
		i, ok := d.cfg.IndexOfName(l.Attrs().Name, "")
		if !ok {
			continue
		}
		if i < d.cfg.Count && l.Type() == "veth" {
			// A host veth that is down is damaged: rebuild the slot.
			have[i] = l.Attrs().Flags&net.FlagUp != 0
			continue
		}
		if l.Type() != "veth" {
			continue // not ours: we only ever create veths under this name
		}
		d.log.Info("removing host veth outside the pool", "link", l.Attrs().Name)
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("delete %s: %w", l.Attrs().Name, err)
		}
		d.removed.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("remove_link").Inc()
	}
	return have, nil
}

// worker runs slot jobs on one locked OS thread and reports failures on the
// returned channel, which is closed when jobs is drained. If the thread
// cannot get back to the root namespace it is retired (never unlocked) and
// the worker stops.
func (d *Daemon) worker(rootFD int, jobs <-chan job) <-chan error {
	out := make(chan error, 1)
	go func() {
		defer close(out)
		runtime.LockOSThread()
		root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			out <- fmt.Errorf("netlink: %w", err)
			runtime.UnlockOSThread()
			for range jobs {
			}
			return
		}
		defer root.Close()
		for j := range jobs {
			err := d.runJob(root, rootFD, j)
			if rerr := netns.Enter(rootFD); rerr != nil {
				out <- fmt.Errorf("slot %d: return to root netns: %w", j.i, rerr)
				for range jobs {
				}
				return // thread stays locked: retired with the goroutine
			}
			if err != nil {
				d.log.Error("slot failed", "slot", d.cfg.ID(j.i), "err", err)
				out <- fmt.Errorf("slot %s: %w", d.cfg.ID(j.i), err)
				continue
			}
			d.markReady(j.i)
		}
		runtime.UnlockOSThread()
	}()
	return out
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
	d.Metrics.SlotsReady.Set(float64(d.ready.Add(1)))
}

func (d *Daemon) runJob(root *netlink.Handle, rootFD int, j job) error {
	if j.kind == jobAdopt {
		err := d.checkSlot(j.i)
		if err == nil {
			d.adopted.Add(1)
			d.Metrics.ReconcileAction.WithLabelValues("adopt").Inc()
			return nil
		}
		d.log.Warn("repairing damaged slot", "slot", d.cfg.ID(j.i), "reason", err)
		if rerr := netns.Enter(rootFD); rerr != nil {
			return rerr
		}
		if err := d.buildSlot(root, rootFD, j.i); err != nil {
			return err
		}
		d.repaired.Add(1)
		d.Metrics.ReconcileAction.WithLabelValues("repair").Inc()
		return nil
	}
	if err := d.buildSlot(root, rootFD, j.i); err != nil {
		return err
	}
	d.created.Add(1)
	return nil
}

// checkSlot enters slot i's namespace on the calling (locked) thread and
// verifies devices, sysctls and firewall. The thread is left inside.
func (d *Daemon) checkSlot(i int) error {
	if err := links.VerifyHost(d.rootSys, d.cfg, i); err != nil {
		return err
	}
	fd, err := netns.Open(d.cfg.NetnsPath(i))
	if err != nil {
		return err
	}
	err = netns.Enter(fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if err := links.Verify(h, d.cfg, i); err != nil {
		return err
	}
	conn, err := firewall.Dial()
	if err != nil {
		return err
	}
	defer firewall.Close(conn)
	return firewall.Slot{Config: d.cfg}.Verify(conn, egressOf(d.lease(i)))
}

// buildSlot removes whatever is left of slot i and builds it afresh, on the
// calling locked thread, which must be in the root namespace and is back
// there when buildSlot returns (unless it returns an error from setns).
func (d *Daemon) buildSlot(root *netlink.Handle, rootFD, i int) error {
	if err := d.removeSlotObjects(root, i); err != nil {
		return err
	}
	if err := netns.CreateHere(d.cfg.NetnsPath(i)); err != nil {
		return err
	}
	err := d.fillSlot(rootFD, i)
	if rerr := netns.Enter(rootFD); rerr != nil {
		return errors.Join(err, rerr)
	}
	if err == nil {
		err = links.FinishHost(root, d.rootSys, d.cfg, i)
	}
	if err != nil {
		return errors.Join(err, d.removeSlotObjects(root, i))
	}
	return nil
}

func (d *Daemon) fillSlot(rootFD, i int) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if err := links.Build(h, rootFD, d.cfg, i); err != nil {
		return err
	}
	conn, err := firewall.Dial()
	if err != nil {
		return err
	}
	defer firewall.Close(conn)
	return firewall.Slot{Config: d.cfg}.Create(conn, egressOf(d.lease(i)))
}

// removeSlotObjects unpins slot i's namespace and deletes its host veth
// (which takes the slot end with it) so that its names are free at once,
// without waiting for the kernel to dismantle the namespace.
func (d *Daemon) removeSlotObjects(root *netlink.Handle, i int) error {
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
					"rate_per_s", fmt.Sprintf("%.0f", p.Rate), "eta_s", fmt.Sprintf("%.1f", p.ETA))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// Progress is a snapshot of boot progress.
type Progress struct {
	Ready, Created, Adopted, Repaired int
	Rate, ETA, Elapsed                float64 // slots/s, seconds, seconds
	Done                              bool
	BootSeconds                       float64
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
	if dur := d.bootDur.Load(); dur > 0 {
		p.Done = true
		p.BootSeconds = time.Duration(dur).Seconds()
		p.Elapsed = p.BootSeconds
	} else {
		p.Elapsed = time.Since(d.bootStart).Seconds()
	}
	if p.Elapsed > 0 {
		p.Rate = float64(p.Ready) / p.Elapsed
	}
	if p.Rate > 0 && !p.Done {
		p.ETA = float64(d.cfg.Count-p.Ready) / p.Rate
	}
	return p
}
