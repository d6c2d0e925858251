package daemon_test

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
	tu "github.com/netslot/netslot/internal/testutil"
)

// tapOwner reads slot i's tap0 owner and group as netlink reports them
// (IFLA_TUN_OWNER, IFLA_TUN_GROUP).
func tapOwner(t *testing.T, cfg slot.Config, i int) slot.TapOwner {
	t.Helper()
	var o slot.TapOwner
	inSlot(t, cfg, i, func() error {
		l, err := netlink.LinkByName(slot.TapName)
		if err != nil {
			return err
		}
		tap, ok := l.(*netlink.Tuntap)
		if !ok {
			return errors.New("tap0 is no tuntap")
		}
		o = slot.TapOwner{UID: tap.Owner, GID: tap.Group}
		return nil
	})
	return o
}

// inSlot runs fn in slot i's namespace, failing t if it fails.
func inSlot(t *testing.T, cfg slot.Config, i int, fn func() error) {
	t.Helper()
	fd, err := netns.Open(cfg.NetnsPath(i))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := netns.Do(fd, fn); err != nil {
		t.Fatal(err)
	}
}

var root slot.TapOwner // uid 0, gid 0: a pooled slot's tap's

// A lease that gives tap0 to a jailed VMM's uid and gid: that VMM attaches
// as soon as Acquire returns, a process of another uid (or of the owner's
// uid in another group) is refused, and release gives the tap back to
// root: the last lease's VMM is refused, as is any but the next lease's.
func TestTapBelongsToTheLeasesVMM(t *testing.T) {
	p := tu.StartPool(t, 1)
	vmm := tu.NewJailedVMM(t)
	ctx := context.Background()
	nsPath := p.Config.NetnsPath(0)
	attach := func(uid, gid uint32) error { return vmm.Attach(nsPath, slot.TapName, uid, gid) }

	// Pooled: root's, and a process that is not root is refused.
	if o := tapOwner(t, p.Config, 0); o != root {
		t.Fatalf("pooled tap0 belongs to %v", o)
	}
	if err := attach(4242, 4243); !errors.Is(err, unix.EPERM) {
		t.Fatalf("a VMM of 4242:4243 attached to a pooled tap: %v, want EPERM", err)
	}

	owner := slot.TapOwner{UID: 4242, GID: 4243}
	req := daemon.AcquireRequest{Key: "vm-1", TapOwner: &owner}
	info, err := p.D.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if info.Lease.TapOwner == nil || *info.Lease.TapOwner != owner {
		t.Fatalf("lease tap owner %v, want %v", info.Lease.TapOwner, owner)
	}
	// Right after Acquire: the tap is given and let go (no EBUSY).
	if err := attach(4242, 4243); err != nil {
		t.Fatalf("the owner's VMM cannot attach: %v", err)
	}
	if o := tapOwner(t, p.Config, 0); o != owner {
		t.Fatalf("leased tap0 belongs to %v, want %v", o, owner)
	}
	for _, other := range []slot.TapOwner{{UID: 4244, GID: 4244}, {UID: 4244, GID: 4243}, {UID: 4242, GID: 4244}} {
		if err := attach(other.UID, other.GID); !errors.Is(err, unix.EPERM) {
			t.Errorf("a VMM of %v attached to %v's tap: %v, want EPERM", other, owner, err)
		}
	}
	// A retry with the key finds its lease; the key with another owner,
	// or with none, is another request.
	if again, err := p.D.Acquire(ctx, req); err != nil || again.Lease.ID != info.Lease.ID {
		t.Errorf("retry with the key: %+v, %v", again.Lease, err)
	}
	for _, o := range []*slot.TapOwner{{UID: 4242, GID: 4242}, nil} {
		if _, err := p.D.Acquire(ctx, daemon.AcquireRequest{Key: "vm-1", TapOwner: o}); !errors.Is(err, daemon.ErrKeyReused) {
			t.Errorf("the key with tap owner %v: %v, want ErrKeyReused", o, err)
		}
	}
	if got, _ := p.D.Get(info.ID); got.Lease == nil || got.Lease.TapOwner == nil || *got.Lease.TapOwner != owner {
		t.Errorf("get: lease %+v", got.Lease)
	}

	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	if o := tapOwner(t, p.Config, 0); o != root {
		t.Fatalf("released tap0 still belongs to %v", o)
	}
	if err := attach(4242, 4243); !errors.Is(err, unix.EPERM) {
		t.Errorf("the last lease's VMM attached to the released tap: %v, want EPERM", err)
	}
	next := slot.TapOwner{UID: 4343, GID: 4343}
	info, err = p.D.Acquire(ctx, daemon.AcquireRequest{TapOwner: &next})
	if err != nil {
		t.Fatal(err)
	}
	if err := attach(4242, 4243); !errors.Is(err, unix.EPERM) {
		t.Errorf("the last lease's VMM attached to the next lease's tap: %v, want EPERM", err)
	}
	if err := attach(4343, 4343); err != nil {
		t.Errorf("the next lease's VMM cannot attach: %v", err)
	}
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	// A lease with no tap owner leaves the tap as the pool has it.
	info, err = p.D.Acquire(ctx, daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if o := tapOwner(t, p.Config, 0); o != root || info.Lease.TapOwner != nil {
		t.Fatalf("a lease without a tap owner: tap0 belongs to %v, lease says %v", o, info.Lease.TapOwner)
	}
	if err := attach(4343, 4343); !errors.Is(err, unix.EPERM) {
		t.Errorf("the last lease's VMM attached to a lease without a tap owner: %v, want EPERM", err)
	}
	// Each release scrubbed the slot: none failed into a rebuild, which
	// would make a tap root's again whatever the scrub does.
	if n := reconciled(t, p, "repair"); n != 0 {
		t.Errorf("%v slots rebuilt, want none", n)
	}
}

// A release refused because the VMM still holds the tap changes its owner
// no more than anything else.
func TestRefusedReleaseKeepsTheTapOwner(t *testing.T) {
	p := tu.StartPool(t, 1)
	owner := slot.TapOwner{UID: 4242, GID: 4243}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{TapOwner: &owner})
	if err != nil {
		t.Fatal(err)
	}
	g, err := tu.AttachTap(p.Config.NetnsPath(0), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
		t.Fatalf("release with the tap held: %v", err)
	}
	if o := tapOwner(t, p.Config, 0); o != owner {
		t.Fatalf("a refused release changed the tap's owner to %v", o)
	}
	g.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	if o := tapOwner(t, p.Config, 0); o != root {
		t.Fatalf("released tap0 belongs to %v", o)
	}
}

// A tap owner must be a uid and a gid that are neither root nor -1.
func TestAcquireRefusesABadTapOwner(t *testing.T) {
	p := tu.StartPool(t, 1)
	for _, o := range []slot.TapOwner{{UID: slot.NoID, GID: 4242}, {UID: 4242, GID: slot.NoID}, {UID: 0, GID: 4242}, {UID: 4242, GID: 0}} {
		if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{TapOwner: &o}); !errors.Is(err, daemon.ErrInvalid) {
			t.Errorf("tap owner %v: %v, want ErrInvalid", o, err)
		}
	}
	if st := p.D.Status(); st.Free != 1 {
		t.Fatalf("refused acquires changed the pool: %+v", st)
	}
}

// A free slot's tap that a process holds is not the pool's to give: the
// acquire fails, and the slot leaves the pool for a rebuild.
func TestAcquireWithATapOwnerRefusesAHeldTap(t *testing.T) {
	p := tu.StartPool(t, 1)
	g, err := tu.AttachTap(p.Config.NetnsPath(0), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	owner := slot.TapOwner{UID: 4242, GID: 4243}
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{TapOwner: &owner}); !errors.Is(err, links.ErrTapInUse) {
		t.Fatalf("acquire of a slot whose tap is held: %v, want ErrTapInUse", err)
	}
	if o := tapOwner(t, p.Config, 0); o == owner {
		t.Fatalf("the held tap was given to %v", o)
	}
	g.Close()
	tu.Eventually(t, "the slot rebuilt and back in the pool", func() bool { st := p.D.Status(); return st.Free == 1 && st.Damaged == 0 })
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{TapOwner: &owner}); err != nil {
		t.Fatalf("acquire after the rebuild: %v", err)
	}
}

// A restart keeps a held lease's tap owner, and puts back one that
// differs from what the store says: a leased slot whose tap is still
// root's (a crash between recording the lease and giving the tap) is
// given to the lease's owner, a free slot whose tap is another's is given
// back to root, both in place; a free slot whose tap is another's and
// held is rebuilt.
func TestRestartPutsTheTapOwnerBack(t *testing.T) {
	cfg := tu.NewConfig(4)
	dir := t.TempDir()
	p := tu.StartPoolWith(t, cfg, dir, "")
	ctx := context.Background()
	owner := slot.TapOwner{UID: 4242, GID: 4243}
	kept, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "kept", TapOwner: &owner})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "lost", TapOwner: &owner})
	if err != nil {
		t.Fatal(err)
	}
	p.D.Close()
	free := []int{}
	for i := range cfg.Count {
		if i != kept.Index && i != lost.Index {
			free = append(free, i)
		}
	}
	stray := slot.TapOwner{UID: 4444, GID: 4444}
	set := func(i int, o *slot.TapOwner) {
		inSlot(t, cfg, i, func() error { return links.SetTapOwner(slot.TapName, o) })
	}
	set(lost.Index, nil)
	set(free[0], &stray)
	set(free[1], &stray)
	holder, err := tu.AttachTap(cfg.NetnsPath(free[1]), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	for i, want := range map[int]slot.TapOwner{kept.Index: owner, lost.Index: root, free[0]: stray, free[1]: stray} {
		if o := tapOwner(t, cfg, i); o != want {
			t.Fatalf("before the restart, slot %d's tap belongs to %v, want %v", i, o, want)
		}
	}

	q := tu.StartPoolWith(t, cfg, dir, "")
	st := q.D.Status()
	if st.Leased != 2 || st.Free != 2 || st.Progress.Adopted != 3 || st.Progress.Repaired != 1 {
		t.Fatalf("after the restart: %+v, want 2 leased, 2 free, 3 adopted and 1 repaired", st)
	}
	if n := reconciled(t, q, "tap_owner"); n != 2 {
		t.Errorf("tap owners put back: %v, want 2", n)
	}
	for i, want := range map[int]slot.TapOwner{kept.Index: owner, lost.Index: owner, free[0]: root, free[1]: root} {
		if o := tapOwner(t, cfg, i); o != want {
			t.Errorf("after the restart, slot %d's tap belongs to %v, want %v", i, o, want)
		}
	}
	for _, s := range []daemon.SlotInfo{kept, lost} {
		if got, _ := q.D.Get(s.ID); got.Lease == nil || got.Lease.ID != s.Lease.ID || got.Lease.TapOwner == nil || *got.Lease.TapOwner != owner {
			t.Errorf("after the restart, %s's lease: %+v", s.ID, got.Lease)
		}
	}
	vmm := tu.NewJailedVMM(t)
	if err := vmm.Attach(cfg.NetnsPath(lost.Index), slot.TapName, owner.UID, owner.GID); err != nil {
		t.Errorf("the owner's VMM cannot attach after the restart: %v", err)
	}
	if err := vmm.Attach(cfg.NetnsPath(kept.Index), slot.TapName, stray.UID, stray.GID); !errors.Is(err, unix.EPERM) {
		t.Errorf("another uid attached after the restart: %v, want EPERM", err)
	}
}

// What a jailed VMM changes on its tap as its owner, with no capability
// (each of testutil.TapOps, one lease each), does not reach the next
// tenant. Before the release, what the next VMM would find is checked to
// be there (testutil.TapState differs, or the eBPF program is still held),
// and what blinds a guest is checked to blind the tenant's own next VMM
// (its DHCP DISCOVER gets nothing), so that the test can fail. After it,
// the tap reads back as the pooled one did before any lease, the slot was
// scrubbed in place (not rebuilt, which would hide a setting scrub leaves,
// except when the tap is gone), and the next tenant's DISCOVER gets its
// OFFER on the tap.
func TestTapSettingsDoNotReachTheNextTenant(t *testing.T) {
	p := tu.StartPool(t, 1)
	vmm := tu.NewJailedVMM(t)
	ctx := context.Background()
	nsPath := p.Config.NetnsPath(0)
	state := func() string { return tu.TapState(t, nsPath, slot.TapName, p.Config.GuestMAC) }
	pooled := state()
	owner := slot.TapOwner{UID: 4242, GID: 4243}
	discover := lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 7}
	for _, tc := range []struct {
		op    string
		errno syscall.Errno // what the kernel answers the VMM
		seen  bool          // the next VMM would find it, were it not reset
		blind bool          // the guest gets nothing, DHCP answers included
		prog  bool          // the tap holds the VMM's eBPF program
		gone  bool          // the tap is gone when the VMM lets go: rebuilt
	}{
		{op: "tx-filter", seen: true, blind: true},
		// The kernel keeps the filter's length and address in the VMM's
		// memory (TUNGETFILTER reads them), and attaches it again, read
		// from that address in the next VMM's memory, to a VMM that
		// attaches without IFF_NO_PI (the same bit as IFF_NOFILTER).
		{op: "socket-filter", seen: true},
		{op: "ebpf-filter", seen: true, blind: true, prog: true},
		// One queue: the next VMM cannot tell a steering program is there.
		{op: "ebpf-steering", prog: true},
		{op: "offload", seen: true},
		{op: "vnet-hdr-size", seen: true},
		{op: "vnet-le", seen: true},
		{op: "vnet-be", seen: true},
		{op: "debug", seen: true},
		{op: "mac", seen: true},
		{op: "owner", seen: true},
		// The kernel keeps a send buffer size for the descriptors attached
		// when it is set only, and turns the carrier off when the last one
		// lets go.
		{op: "sndbuf"},
		{op: "carrier-off"},
		// Refused while the tap is up, which a tenant cannot change.
		{op: "link-type", errno: unix.EBUSY},
		{op: "no-persist", seen: true, gone: true},
	} {
		t.Run(tc.op, func(t *testing.T) {
			// Each case starts from a pooled tap, whatever the last left.
			if state() != pooled {
				if _, err := p.D.RebuildFree(); err != nil {
					t.Fatal(err)
				}
			}
			repaired := reconciled(t, p, "repair")
			info, err := p.D.Acquire(ctx, daemon.AcquireRequest{TapOwner: &owner})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.D.ForceRelease(info.ID) })
			before := state()
			done, err := vmm.Set(nsPath, slot.TapName, owner.UID, owner.GID, tc.op)
			if err != nil {
				t.Fatalf("the lease's VMM cannot attach: %v", err)
			}
			if e := done[tc.op]; tc.op == "vnet-be" && e == unix.EINVAL {
				t.Skip("this kernel has no CONFIG_TUN_VNET_CROSS_LE: no big-endian vnet headers to set")
			} else if e != tc.errno {
				t.Fatalf("%s as the tap's owner: %v, want %v", tc.op, e, tc.errno)
			}
			if after := state(); (after != before) != tc.seen {
				t.Fatalf("what the next VMM would find after %s (changed: %t, want %t):\n%s", tc.op, after != before, tc.seen, lineDiff(after, before))
			}
			if tc.prog && !vmm.ProgramLoaded() {
				t.Fatal("the VMM's program is not held by the tap")
			}
			if tc.blind {
				c := dhcpClient(t, p, 0)
				noAnswer(t, c, discover)
				c.Close()
			}

			if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
				t.Fatal(err)
			}
			if got := state(); got != pooled {
				t.Errorf("released tap differs from the pooled one:\n%s", lineDiff(got, pooled))
			}
			if tc.prog {
				tu.Eventually(t, "the VMM's program let go by the tap", func() bool { return !vmm.ProgramLoaded() })
			}
			if n, want := reconciled(t, p, "repair")-repaired, map[bool]float64{false: 0, true: 1}[tc.gone]; n != want {
				t.Errorf("%v slots rebuilt, want %v", n, want)
			}
			next, err := p.D.Acquire(ctx, daemon.AcquireRequest{})
			if err != nil {
				t.Fatal(err)
			}
			c := dhcpClient(t, p, 0)
			if offer := answer(t, c, discover); offer.Type() != layers.DHCPMsgTypeOffer {
				t.Errorf("the next tenant's DISCOVER: %s", offer.Type())
			}
			c.Close()
			if err := p.D.Release(next.ID, next.Lease.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}
