package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
)

// A slot is whole while its namespace pin is the namespace the daemon
// holds and its host veth is the one it made. The daemon holds every
// slot's namespace, so it puts back a removed pin (ip netns del) at once
// (inotify on the pin directory for unlinks, the mount table's changes
// for unmounts). A deleted host veth (a link event) makes the slot damaged: a free
// one leaves the pool and is rebuilt in the background, a leased one is
// reported (status, show, an ERROR, the slot_damaged metric) and rebuilt
// when it is released; its release still refuses while a VMM holds its
// tap, since the daemon enters the slot through the namespace it holds,
// not through the pin.

// repin puts slot i's pin back from the namespace the daemon holds. It
// holds d.mu throughout, so that a slot being rebuilt (which first lets go
// of its namespace under d.mu) never gets its old namespace pinned over
// its new one. It returns false if there was nothing to do.
func (d *Daemon) repin(i int) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.nsFDs[i]
	if h.fd < 0 || netns.PinnedAs(d.cfg.NetnsPath(i), h.fd) {
		return false, nil
	}
	return true, netns.Pin(h.fd, d.cfg.NetnsPath(i))
}

// checkPin puts slot i's pin back if it is not whole; a pin that cannot be
// put back makes the slot damaged.
func (d *Daemon) checkPin(i int) {
	did, err := d.repin(i)
	switch {
	case err != nil:
		d.markDamaged(i, fmt.Sprintf("namespace pin %s removed and not put back: %v", d.cfg.NetnsPath(i), err))
	case did:
		d.log.Warn("repaired: slot's namespace pin put back", "slot", d.cfg.ID(i), "path", d.cfg.NetnsPath(i))
		d.Metrics.ReconcileAction.WithLabelValues("netns_pin").Inc()
	}
}

// wholeForAcquire is the acquire's check of the slot it took: no damage
// known. It makes no system call: a stat of the pin, cheap alone (1.2 us),
// added 4 us to a 15 us acquire here. Pins and host veths are watched
// instead (watchPins, watchMounts, link events), and a slot is checked
// whole when it enters the pool (at boot, rebuild and release). A slot
// that fails leaves the pool for a rebuild.
func (d *Daemon) wholeForAcquire(i int) bool {
	if d.damage(i) == "" {
		return true
	}
	if d.pool.Withdraw(i, pool.Acquiring) == nil {
		d.pokeRebuilds()
	}
	return false
}

// markDamaged records slot i as damaged with why and, if it is free, takes
// it out of the pool for a rebuild.
func (d *Daemon) markDamaged(i int, why string) {
	d.mu.Lock()
	_, known := d.damaged[i]
	d.damaged[i] = why
	d.mu.Unlock()
	if !known {
		d.log.Error("slot damaged", "slot", d.cfg.ID(i), "state", d.pool.State(i).String(), "why", why)
		d.Metrics.ReconcileAction.WithLabelValues("slot_damaged").Inc()
	}
	if d.pool.Withdraw(i, pool.Free) == nil {
		d.pokeRebuilds()
	}
}

// damage reports why slot i is damaged ("" if it is not).
func (d *Daemon) damage(i int) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.damaged[i]
}

// DamagedSlots implements metrics.SlotHealth.
func (d *Daemon) DamagedSlots() int { return d.damagedCount() }

// OrphanedSlots implements metrics.SlotHealth.
func (d *Daemon) OrphanedSlots() int { return len(d.orphanList()) }

func (d *Daemon) damagedCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.damaged)
}

// hostVethGone handles the deletion of the link ifindex named name: if it
// was a slot's host veth as the daemon made it, the slot is damaged.
func (d *Daemon) hostVethGone(name string, ifindex int) {
	i, ok := d.cfg.IndexOfName(name, "")
	if !ok || i >= d.cfg.Count {
		return
	}
	d.mu.Lock()
	ours := d.hostIdx[i] == ifindex && ifindex != 0
	d.mu.Unlock()
	if ours {
		d.markDamaged(i, "host veth "+name+" deleted")
	}
}

func (d *Daemon) pokeRebuilds() {
	select {
	case d.rebuildWake <- struct{}{}:
	default:
	}
}

// rebuildRetry is how long a slot whose rebuild failed waits for another.
const rebuildRetry = 10 * time.Second

// rebuildDamaged rebuilds the damaged slots that are out of the pool, when
// poked and every rebuildRetry, until stop is closed; each rebuilt slot
// joins the pool. The work is in the number of damaged slots.
func (d *Daemon) rebuildDamaged(stop <-chan struct{}) {
	t := time.NewTicker(rebuildRetry)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-d.rebuildWake:
		case <-t.C:
		}
		d.mu.Lock()
		var todo []int
		for i := range d.damaged {
			todo = append(todo, i)
		}
		d.mu.Unlock()
		slices.Sort(todo)
		for _, i := range todo {
			if d.pool.State(i) != pool.Pending || d.isOrphan(i) {
				continue // leased: rebuilt at its release
			}
			if err := d.rebuild(i); err != nil {
				d.log.Error("damaged slot cannot be rebuilt; it stays out of the pool", "slot", d.cfg.ID(i), "err", err)
				continue
			}
			if err := d.pool.MarkFree(i); err != nil {
				d.log.Error("rebuilt slot", "slot", d.cfg.ID(i), "err", err)
				continue
			}
			d.log.Warn("repaired: damaged slot rebuilt, back in the pool", "slot", d.cfg.ID(i))
		}
	}
}

func (d *Daemon) isOrphan(i int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.orphans[i]
}

const pinEvents = unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_DELETE_SELF

// watchPins puts back the pool's namespace pins as they are removed
// (inotify on the pin directory), and checks them all when events were
// lost, until stop is closed. It calls watching once it watches (or
// cannot).
func (d *Daemon) watchPins(stop <-chan struct{}, watching func()) {
	watching = sync.OnceFunc(watching)
	defer watching()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		d.log.Warn("no namespace pin events; pins are checked at acquire only", "err", err)
		return
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a Read
	if _, err := unix.InotifyAddWatch(fd, slot.NetnsDir, pinEvents); err != nil {
		f.Close()
		d.log.Warn("no namespace pin events; pins are checked at acquire only", "dir", slot.NetnsDir, "err", err)
		return
	}
	go func() {
		<-stop
		f.Close()
	}()
	watching()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				d.log.Warn("namespace pin events ended", "err", err)
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_IGNORED != 0 { // the directory itself went
				if err := netns.EnsureDir(slot.NetnsDir); err == nil {
					_, err = unix.InotifyAddWatch(fd, slot.NetnsDir, pinEvents)
				}
				if err != nil {
					d.log.Error("namespace pin directory gone and not made again", "dir", slot.NetnsDir, "err", err)
				}
			}
			if ev.Mask&(unix.IN_Q_OVERFLOW|unix.IN_IGNORED) != 0 {
				for i := range d.cfg.Count {
					d.checkPin(i)
				}
				continue
			}
			if i, ok := d.cfg.IndexOfName(string(bytes.TrimRight(name, "\x00")), "-"); ok && i < d.cfg.Count {
				d.checkPin(i)
			}
		}
	}
}

// watchMounts checks every pin of the pool when the mount table changes
// (a pin unmounted but not unlinked is no inotify event), until stop is
// closed, calling watching once it watches (or cannot). The check is a
// stat per slot: some ms for thousands. The mount table itself is never
// read: polling it is what tells of a change (the kernel notes, in the
// poll, that the change was seen), and reading it costs what the host
// holds (thousands of namespace pins of other pools: 10 ms a read here).
// A burst of changes is one check, and a storm of them (another pool
// booting or torn down, namespaces made and removed all the time) one
// every eventCheckEvery.
func (d *Daemon) watchMounts(stop <-chan struct{}, watching func()) {
	watching = sync.OnceFunc(watching)
	defer watching()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		d.log.Warn("no mount table events; unmounted pins are noticed at release only", "err", err)
		return
	}
	defer f.Close()
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
	watching()
	sweep := func() {
		for i := range d.cfg.Count {
			d.checkPin(i)
		}
	}
	// A second sweep a second after each: a change made while a sweep ran
	// is caught even if its event was taken by the poll before it.
	var last, again time.Time
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			d.log.Warn("mount table events ended", "err", err)
			return
		}
		if n == 0 || fds[0].Revents&(unix.POLLPRI|unix.POLLERR) == 0 {
			if !again.IsZero() && time.Now().After(again) {
				again = time.Time{}
				sweep()
			}
			continue
		}
		time.Sleep(max(eventSettle, eventCheckEvery-time.Since(last)))
		unix.Poll(fds, 0) // the changes made meanwhile are this sweep's
		sweep()
		last = time.Now()
		again = last.Add(time.Second)
	}
}
