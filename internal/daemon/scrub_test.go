package daemon_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// dump is what a tenant could change in a slot, as the kernel lists it.
func dump(t *testing.T, ns string) string {
	return strings.Join([]string{
		testutil.Exec(t, ns, "ip", "-d", "link", "show", "tap0"),
		testutil.Exec(t, ns, "ip", "addr"),
		testutil.Exec(t, ns, "ip", "route"),
		testutil.Exec(t, ns, "ip", "neigh"),
		testutil.Exec(t, ns, "nft", "list", "ruleset"),
	}, "\n")
}

var peerIndex = regexp.MustCompile(`@if[0-9]+`)

func TestReleaseScrubsWhatTheTenantLeft(t *testing.T) {
	p := testutil.StartPool(t, 3)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}},
		TapOwner: &slot.TapOwner{UID: 4242, GID: 4243}})
	if err != nil {
		t.Fatal(err)
	}
	ns := p.Config.ID(info.Index)
	// A fresh slot of the same pool is the reference (minus per-slot names).
	other := p.Config.ID((info.Index + 1) % 3)
	fresh := dump(t, other)

	testutil.Exec(t, ns, "ip", "neigh", "add", p.Config.GuestIP().String(), "lladdr", "02:00:00:00:00:01", "dev", "tap0")
	testutil.Exec(t, ns, "ip", "neigh", "add", p.Config.GuestIP().Next().String(), "lladdr", "02:00:00:00:00:02", "dev", "tap0", "nud", "permanent")
	testutil.Exec(t, ns, "ip", "link", "set", "tap0", "address", "02:00:00:00:00:99", "mtu", "1400", "txqueuelen", "10")
	testutil.Exec(t, ns, "ip", "link", "set", "tap0", "down")
	norm := func(s string, i int) string {
		s = strings.ReplaceAll(s, p.Config.SlotIP(i).String(), "SLOTIP")
		s = strings.ReplaceAll(s, p.Config.HostVethMAC(i).String(), "HOSTMAC")
		s = strings.ReplaceAll(s, p.Config.SlotVethMAC(i).String(), "SLOTMAC")
		return peerIndex.ReplaceAllString(s, "@ifN")
	}
	want := norm(fresh, (info.Index+1)%3)
	if d := norm(dump(t, ns), info.Index); d == want {
		t.Fatal("dirtying the slot changed nothing")
	}
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	got := dump(t, ns)
	if a, b := norm(got, info.Index), want; a != b {
		t.Fatalf("released slot differs from a fresh one:\n--- released\n%s\n--- fresh\n%s", a, b)
	}
}

func TestReleaseRebuildsASlotItCannotScrub(t *testing.T) {
	p := testutil.StartPool(t, 2)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ns := p.Config.ID(info.Index)
	testutil.Exec(t, ns, "ip", "link", "del", "tap0")
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatalf("release of a damaged slot: %v", err)
	}
	if out := testutil.Exec(t, ns, "ip", "-br", "link", "show", "tap0"); !strings.Contains(out, "tap0") {
		t.Fatalf("tap0 not rebuilt: %q", out)
	}
	if out := testutil.Exec(t, ns, "nft", "list", "table", "netdev", p.Config.Prefix); !strings.Contains(out, "tap-ingress") {
		t.Fatalf("rebuilt slot has no firewall: %q", out)
	}
	if st := p.D.Status(); st.Free != 2 || st.Leased != 0 {
		t.Fatalf("pool after rebuild: %+v", st)
	}
	// The rebuilt slot is vendable and its firewall works.
	for range 2 {
		if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}}}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReleaseRefusedWhileTheVMHoldsTheTap(t *testing.T) {
	p := testutil.StartPool(t, 2)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := testutil.AttachTap(p.Config.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
		g.Close()
		t.Fatalf("release with the tap attached: %v", err)
	}
	if st := p.D.Status(); st.Leased != 1 {
		t.Fatalf("slot not leased after the refused release: %+v", st)
	}
	g.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatalf("release after the VM let go: %v", err)
	}
}

// A VMM may keep its tap descriptor and turn the carrier off: the tap
// looks unused, but the VMM can turn the carrier back on and send under
// the next tenant's lease, and the next VMM cannot attach. The release is
// refused and changes nothing.
func TestReleaseRefusedWhileAVMMHoldsTheTapWithCarrierOff(t *testing.T) {
	p := testutil.StartPool(t, 2)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	ns := p.Config.ID(info.Index)
	g, err := testutil.AttachTap(p.Config.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.SetCarrier(false); err != nil {
		t.Fatal(err)
	}
	if out := testutil.Exec(t, ns, "ip", "-br", "link", "show", slot.TapName); strings.Contains(out, "LOWER_UP") {
		t.Fatalf("carrier still on: %s", out)
	}
	before := slotState(t, p, info.Index)
	if err := p.D.Release(info.ID, info.Lease.ID); !errors.Is(err, daemon.ErrInUse) {
		t.Fatalf("release while a VMM holds the tap with its carrier off: %v, want ErrInUse", err)
	}
	if got, _ := p.D.Get(info.ID); got.Lease == nil || got.Lease.ID != info.Lease.ID {
		t.Fatalf("slot after the refused release: %+v", got)
	}
	if after := slotState(t, p, info.Index); after != before {
		t.Errorf("the refused release changed the slot:\n%s", lineDiff(after, before))
	}
	// The holder still has its tap and can turn the carrier back on.
	if err := g.SetCarrier(true); err != nil {
		t.Fatal(err)
	}
	g.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatalf("release after the VMM let go: %v", err)
	}
	// And the next VMM can attach.
	g2, err := testutil.AttachTap(p.Config.NetnsPath(info.Index), slot.TapName)
	if err != nil {
		t.Fatalf("next VMM cannot attach: %v", err)
	}
	g2.Close()
}

// A release names the lease it ends; an operator's forced release frees
// whatever lease holds the slot.
func TestReleaseNeedsTheLeaseUnlessForced(t *testing.T) {
	p := testutil.StartPool(t, 1)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.D.Release(info.ID, ""); !errors.Is(err, daemon.ErrInvalid) {
		t.Fatalf("release without a lease id: %v, want ErrInvalid", err)
	}
	if st := p.D.Status(); st.Leased != 1 {
		t.Fatalf("release without a lease id freed the slot: %+v", st)
	}
	if err := p.D.ForceRelease(info.ID); err != nil {
		t.Fatalf("forced release: %v", err)
	}
	if st := p.D.Status(); st.Free != 1 {
		t.Fatalf("after the forced release: %+v", st)
	}
	if err := p.D.ForceRelease(info.ID); !errors.Is(err, daemon.ErrNotLeased) {
		t.Fatalf("forced release of a free slot: %v", err)
	}
}

func TestStaleReleaseNeverFreesTheNextTenant(t *testing.T) {
	p := testutil.StartPool(t, 1)
	first, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.D.Release(first.ID, first.Lease.ID); err != nil {
		t.Fatal(err)
	}
	second, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-2"})
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != first.ID || second.Lease.ID == first.Lease.ID {
		t.Fatalf("leases %+v and %+v", first.Lease, second.Lease)
	}
	// vm-1's launcher retries its release: refused, vm-2 keeps the slot.
	if err := p.D.Release(first.ID, first.Lease.ID); !errors.Is(err, daemon.ErrLeaseMismatch) {
		t.Fatalf("stale release: %v", err)
	}
	if st := p.D.Status(); st.Leased != 1 {
		t.Fatalf("stale release freed the slot: %+v", st)
	}
	if err := p.D.Release(second.ID, second.Lease.ID); err != nil {
		t.Fatal(err)
	}
}

// The store is lost (its leases with it) while a VM holds a slot's tap. A
// restart without --adopt is refused; with it, that slot stays out of the
// pool, with its traffic stopped, until the VM lets go: it is never
// handed to a second tenant.
func TestLostStoreNeverHandsAnAttachedSlotToASecondTenant(t *testing.T) {
	cfg := testutil.NewConfig(2)
	dir := t.TempDir()
	p := testutil.StartPoolWith(t, cfg, dir, "")
	held, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := testutil.AttachTap(cfg.NetnsPath(held.Index), slot.TapName)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	vm.SetCarrier(false) // whatever the carrier says
	p.D.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	// Without --adopt: refused, and the state dir gets no store.
	if d, err := daemon.New(daemon.Options{Config: cfg, StateDir: dir, Logger: testutil.Logger(t)}); err == nil {
		d.Close()
		t.Fatal("a daemon whose store was lost started over slots that exist")
	} else if !strings.Contains(err.Error(), "--adopt") {
		t.Fatalf("refusal: %v, want it to name --adopt", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "netslot.db")); err == nil {
		t.Error("the refused start left a store behind")
	}
	testutil.RemoveLock(cfg.Prefix)

	q := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: dir, Adopt: true})
	st := q.D.Status()
	if st.Free != 1 || st.Orphaned != 1 {
		t.Fatalf("after adopting: %+v, want 1 free and 1 orphaned", st)
	}
	other, err := q.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-2"})
	if err != nil || other.Index == held.Index {
		t.Fatalf("acquire after adopting: %+v, %v; want the other slot", other, err)
	}
	if _, err := q.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-3"}); !errors.Is(err, daemon.ErrExhausted) {
		t.Fatalf("second acquire: %v, want the pool exhausted (the orphan is not vendable)", err)
	}
	// The VM goes: the slot is scrubbed and rejoins the pool.
	vm.Close()
	deadline := time.Now().Add(10 * time.Second)
	for q.D.Status().Orphaned != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if st := q.D.Status(); st.Orphaned != 0 || st.Free != 1 {
		t.Fatalf("after the VM let go: %+v, want the orphan free again", st)
	}
	again, err := q.D.Acquire(context.Background(), daemon.AcquireRequest{Owner: "vm-3"})
	if err != nil || again.Index != held.Index {
		t.Fatalf("acquire after the orphan was reclaimed: %+v, %v", again, err)
	}
}
