package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
	tu "github.com/netslot/netslot/internal/testutil"
)

// reconciled reads netslot_reconcile_actions_total{action=action}.
func reconciled(t *testing.T, p *tu.Pool, action string) float64 {
	t.Helper()
	mfs, err := p.D.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "netslot_reconcile_actions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "action" && lp.GetValue() == action {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no reconcile action %q exported", action)
	return 0
}

// whole reports whether slot i's pin opens as a namespace holding tap0
// and its host veth is there.
func whole(cfg slot.Config, i int) error {
	fd, err := netns.Open(cfg.NetnsPath(i))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := netns.Do(fd, func() error { _, err := netlink.LinkByName(slot.TapName); return err }); err != nil {
		return err
	}
	_, err = netlink.LinkByName(cfg.HostVeth(i))
	return err
}

// leasedWithVMM starts a pool of 3 slots and leases one, whose tap a VMM
// (the returned guest) then holds.
func leasedWithVMM(t *testing.T) (*tu.Pool, daemon.SlotInfo, *tu.Guest) {
	t.Helper()
	p := tu.StartPool(t, 3)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	vmm, err := tu.AttachTap(p.Config.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	return p, info, vmm
}

// deleteHostVeth deletes slot i's host veth.
func deleteHostVeth(t *testing.T, cfg slot.Config, i int) {
	t.Helper()
	l, err := netlink.LinkByName(cfg.HostVeth(i))
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
}

// A slot's namespace pin removed (ip netns del, or unmounted), leased or
// free: the daemon, which holds every slot's namespace, pins it again. A release
// right after the removal, while a VMM holds the tap, is still refused:
// the daemon enters the slot through the namespace it holds.
func TestSlotPinsArePutBack(t *testing.T) {
	p, info, vmm := leasedWithVMM(t)
	defer vmm.Close()
	free := (info.Index + 1) % 3
	for _, i := range []int{info.Index, free} {
		if out, err := exec.Command("ip", "netns", "del", p.Config.ID(i)).CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v: %s", err, out)
		}
		if i == info.Index {
			if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
				t.Fatalf("release with the pin removed and a VMM on the tap: %v, want ErrInUse", err)
			}
		}
	}
	// Unmounted, the file left in place: no inotify event, a mount table
	// change.
	other := (info.Index + 2) % 3
	if err := unix.Unmount(p.Config.NetnsPath(other), unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{info.Index, free, other} {
		var last error
		ok := tu.Wait(10*time.Second, func() bool { last = whole(p.Config, i); return last == nil })
		if !ok {
			got, _ := p.D.Get(p.Config.ID(i))
			t.Fatalf("pin of %s not put back within 10 s: %v; slot state %s, damaged %q", p.Config.ID(i), last, got.State, got.Damaged)
		}
	}
	if n := reconciled(t, p, "netns_pin"); n < 3 {
		t.Errorf("netns_pin repairs counted: %v, want 3", n)
	}
	if got, _ := p.D.Get(info.ID); got.Lease == nil || got.Lease.ID != info.Lease.ID || got.Damaged != "" {
		t.Errorf("the leased slot after its pin came back: %+v", got)
	}
	// The VMM's tap is the one in the pinned namespace: its carrier shows.
	vmm.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if err := whole(p.Config, s.Index); err != nil {
			t.Errorf("acquired %s: %v", s.ID, err)
		}
	}
}

// A slot's host veth deleted: a free slot leaves the pool and is rebuilt
// (never vended broken); a leased one is reported damaged (status, show),
// its release still refused while a VMM holds the tap, and rebuilt when
// released.
func TestDamagedSlots(t *testing.T) {
	p, info, vmm := leasedWithVMM(t)
	defer vmm.Close()
	deleteHostVeth(t, p.Config, info.Index)
	tu.Eventually(t, "the leased slot reported damaged", func() bool { return p.D.Status().Damaged == 1 })
	if got, _ := p.D.Get(info.ID); !strings.Contains(got.Damaged, "host veth") || got.State != pool.Leased {
		t.Errorf("show of the damaged slot: %+v", got)
	}
	if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
		t.Fatalf("release of a damaged slot whose tap a VMM holds: %v, want ErrInUse", err)
	}
	if got, _ := p.D.Get(info.ID); got.Lease == nil || got.Lease.ID != info.Lease.ID {
		t.Fatalf("lease after the refused release: %+v", got)
	}

	// A free slot's host veth deleted, then every free slot acquired at
	// once: none is handed out broken.
	free := (info.Index + 1) % 3
	deleteHostVeth(t, p.Config, free)
	var got []daemon.SlotInfo
	for {
		s, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
		if errors.Is(err, daemon.ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
		if err := whole(p.Config, s.Index); err != nil {
			t.Errorf("acquired %s broken: %v", s.ID, err)
		}
	}
	for _, s := range got {
		if err := p.D.Release(s.ID, s.Lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	tu.Eventually(t, "the free slot rebuilt", func() bool {
		return p.D.Status().Damaged == 1 && p.D.Status().Free == 2 && whole(p.Config, free) == nil
	})
	vmm.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatalf("release of the damaged slot once its VMM let go: %v", err)
	}
	if st := p.D.Status(); st.Damaged != 0 || st.Free != 3 {
		t.Errorf("after its release: %+v", st)
	}
	if err := whole(p.Config, info.Index); err != nil {
		t.Errorf("the released slot: %v", err)
	}
	if n := reconciled(t, p, "slot_damaged"); n != 2 {
		t.Errorf("slot_damaged counted %v, want 2", n)
	}
}

// Kernel events lost: with a receive buffer of the kernel's minimum, a
// burst of link events overflows it (ENOBUFS), and the kernel ends the
// subscription. The daemon subscribes again and checks what the lost
// events could have told: a host veth deleted amid the burst makes its
// slot damaged whether or not its event came through, and one deleted
// after the burst is noticed from its own event.
func TestLostEventsAreResynced(t *testing.T) {
	p := tu.StartPoolOpts(t, daemon.Options{Config: tu.NewConfig(3), StateDir: t.TempDir(), EventBuffer: 1})
	burst := tu.Prefix() // the burst's links are not the pool's
	t.Cleanup(func() {
		for i := range 200 {
			if l, err := netlink.LinkByName(fmt.Sprintf("%sa%d", burst, i)); err == nil {
				netlink.LinkDel(l)
			}
		}
	})
	batch := func(mid string) string {
		var b strings.Builder
		for i := range 200 {
			fmt.Fprintf(&b, "link add name %sa%d type veth peer name %sb%d\n", burst, i, burst, i)
			if i == 100 && mid != "" {
				b.WriteString(mid)
			}
		}
		for i := range 200 {
			fmt.Fprintf(&b, "link del %sa%d\n", burst, i)
		}
		return b.String()
	}
	fdsBefore := openFDs(t)
	checksBefore, start := reconciled(t, p, "veth_check"), time.Now()
	mid := fmt.Sprintf("link del %s\n", p.Config.HostVeth(0))
	for round := 0; reconciled(t, p, "events_lost") == 0; round++ {
		if round == 5 {
			t.Fatal("5 bursts of 800 link events did not overflow a minimal buffer")
		}
		cmd := exec.Command("ip", "-batch", "-")
		cmd.Stdin = strings.NewReader(batch(mid))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch: %v: %s", err, out)
		}
		mid = ""
	}
	tu.Eventually(t, "the slot whose host veth went amid the burst damaged", func() bool {
		return p.D.Status().Damaged >= 1 || whole(p.Config, 0) == nil && reconciled(t, p, "slot_damaged") >= 1
	})
	// After the loss: the link events are followed again.
	before := reconciled(t, p, "slot_damaged")
	deleteHostVeth(t, p.Config, 1)
	tu.Eventually(t, "the host veth deleted after the burst noticed", func() bool { return reconciled(t, p, "slot_damaged") > before })
	tu.Eventually(t, "both slots rebuilt", func() bool {
		st := p.D.Status()
		return st.Damaged == 0 && st.Free == 3 && whole(p.Config, 0) == nil && whole(p.Config, 1) == nil
	})
	// However many losses, the host veths were checked at most once a
	// second (and once at once): the cost of a storm is bounded by time,
	// not by the number of losses (before: one dump of every root link
	// per loss, each on a goroutine of its own).
	lost := reconciled(t, p, "events_lost")
	checks, most := reconciled(t, p, "veth_check")-checksBefore, 2+time.Since(start).Seconds()/daemon.VethCheckEvery.Seconds()
	if checks > most {
		t.Errorf("%v checks of the host veths for %v losses in %v: want at most %.0f", checks, lost, time.Since(start).Round(time.Millisecond), most)
	}
	t.Logf("%v checks of the host veths for %v losses in %v", checks, lost, time.Since(start).Round(time.Millisecond))
	// Each loss ends a subscription; its socket goes with it, not when the
	// daemon stops.
	if grew := openFDs(t) - fdsBefore; float64(grew) > 4+lost/4 {
		t.Errorf("%d more descriptors after %v lost subscriptions: their sockets stay open", grew, lost)
	}
	t.Logf("%v losses, descriptors %+d", lost, openFDs(t)-fdsBefore)
}

// A host veth's IPv4 forwarding is what the pool set it to, and is set
// back when something changes it: off in a pool without an uplink (the
// root namespace must not route slot traffic anywhere), which a write of
// net.ipv4.ip_forward=1 (Docker's start does it) would turn on on every
// device. The write is made to the test's own veth only, never to the
// machine's net.ipv4.ip_forward.
func TestHostVethForwardingIsSetBack(t *testing.T) {
	p := tu.StartPool(t, 2)
	path := "/proc/sys/net/ipv4/conf/" + p.Config.HostVeth(1) + "/forwarding"
	read := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if v := read(); v != "0" {
		t.Fatalf("a pool without an uplink has host veth forwarding %s, want 0", v)
	}
	before := reconciled(t, p, "host_forwarding")
	if err := os.WriteFile(path, []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	tu.Eventually(t, "the host veth's forwarding set back to 0", func() bool {
		return read() == "0" && reconciled(t, p, "host_forwarding") > before
	})
	if st := p.D.Status(); !st.Health.Forwarding || len(st.Health.Problems) > 0 {
		t.Errorf("health after the repair: %+v", st.Health)
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
