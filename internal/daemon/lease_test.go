package daemon_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
	tu "github.com/netslot/netslot/internal/testutil"
)

// An acquire with a request key returns the key's lease while it lives,
// to retries made one after the other and at once; the same key with
// another request is refused; once the lease is released the key makes a
// new one.
func TestAcquireWithAKeyIsIdempotent(t *testing.T) {
	p := tu.StartPool(t, 3)
	ctx := context.Background()
	req := daemon.AcquireRequest{Owner: "vm-1", Key: "vm-1-boot-1", Egress: slot.Egress{DenyAll: true}}
	first, err := p.D.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]daemon.SlotInfo, 8)
	errs := make([]error, 8)
	for k := range got {
		wg.Go(func() { got[k], errs[k] = p.D.Acquire(ctx, req) })
	}
	wg.Wait()
	for k := range got {
		if errs[k] != nil || got[k].ID != first.ID || got[k].Lease.ID != first.Lease.ID {
			t.Errorf("retry %d: %s %+v, %v; want %s lease %s", k, got[k].ID, got[k].Lease, errs[k], first.ID, first.Lease.ID)
		}
	}
	if st := p.D.Status(); st.Leased != 1 {
		t.Errorf("leased %d, want 1", st.Leased)
	}
	other := req
	other.Egress = slot.Egress{}
	if _, err := p.D.Acquire(ctx, other); !errors.Is(err, daemon.ErrKeyReused) {
		t.Errorf("the key with another request: %v, want ErrKeyReused", err)
	}
	if l := p.D.List(daemon.ListFilter{Key: req.Key}); len(l) != 1 || l[0].ID != first.ID {
		t.Errorf("list by key: %+v", l)
	}
	if err := p.D.Release(first.ID, first.Lease.ID); err != nil {
		t.Fatal(err)
	}
	again, err := p.D.Acquire(ctx, req)
	if err != nil || again.Lease.ID == first.Lease.ID {
		t.Errorf("after the release, the key: %+v, %v; want a new lease", again.Lease, err)
	}
	if _, err := p.D.Acquire(ctx, daemon.AcquireRequest{Key: "has space"}); !errors.Is(err, daemon.ErrInvalid) {
		t.Errorf("a key with a space: %v", err)
	}
}

// A release repeated with the lease id it ended answers OK while the slot
// is free; once the slot has a newer lease it is refused (and leaves that
// lease alone), as is an id of another lease.
func TestReleaseIsIdempotent(t *testing.T) {
	p := tu.StartPool(t, 1)
	ctx := context.Background()
	a, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.D.Release(a.ID, a.Lease.ID); err != nil {
			t.Fatalf("release of a's lease: %v", err)
		}
	}
	b, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "b"})
	if err != nil || b.ID != a.ID {
		t.Fatalf("b: %+v, %v", b, err)
	}
	if err := p.D.Release(a.ID, a.Lease.ID); !errors.Is(err, daemon.ErrLeaseMismatch) {
		t.Errorf("a's release retried once b holds the slot: %v, want ErrLeaseMismatch", err)
	}
	if got, _ := p.D.Get(b.ID); got.Lease == nil || got.Lease.ID != b.Lease.ID {
		t.Fatalf("b's lease after a's retried release: %+v", got.Lease)
	}
	if err := p.D.Release(b.ID, "0123456789abcdef"); !errors.Is(err, daemon.ErrLeaseMismatch) {
		t.Errorf("release with another lease id: %v, want ErrLeaseMismatch", err)
	}
	if err := p.D.Release(b.ID, b.Lease.ID); err != nil {
		t.Fatal(err)
	}
	if err := p.D.Release(b.ID, a.Lease.ID); !errors.Is(err, daemon.ErrNotLeased) {
		t.Errorf("a lease older than the last one ended, on a free slot: %v, want ErrNotLeased", err)
	}
}

// An acquire whose context ended before its lease was committed leases
// nothing, with or without a VPC-less policy to undo.
func TestAcquirePastItsDeadlineLeasesNothing(t *testing.T) {
	p := tu.StartPool(t, 2)
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel()
	for _, req := range []daemon.AcquireRequest{{}, {Key: "k", Egress: slot.Egress{DenyAll: true}}} {
		if _, err := p.D.Acquire(ctx, req); !errors.Is(err, daemon.ErrDeadline) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("acquire %+v past its deadline: %v", req, err)
		}
	}
	if st := p.D.Status(); st.Leased != 0 || st.Free != 2 {
		t.Errorf("after acquires past their deadline: %+v", st)
	}
	if l := p.D.List(daemon.ListFilter{Key: "k"}); len(l) != 0 {
		t.Errorf("the key leased %+v", l)
	}
}

// With wait, an acquire on an empty pool gets the slot another caller
// releases; without, it fails at once; a waiter whose deadline passes
// gets ErrDeadline; Drain ends the waiting with ErrDraining and refuses
// new acquires, while releases go on.
func TestAcquireWaitsForASlot(t *testing.T) {
	p := tu.StartPool(t, 1)
	ctx := context.Background()
	held, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "first"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.D.Acquire(ctx, daemon.AcquireRequest{}); !errors.Is(err, daemon.ErrExhausted) {
		t.Fatalf("acquire on an empty pool: %v, want ErrExhausted", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.D.Acquire(short, daemon.AcquireRequest{Wait: true}); !errors.Is(err, daemon.ErrDeadline) {
		t.Errorf("a wait whose deadline passed: %v, want ErrDeadline", err)
	}
	type result struct {
		info daemon.SlotInfo
		err  error
	}
	got := make(chan result, 1)
	go func() {
		info, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "second", Wait: true})
		got <- result{info, err}
	}()
	time.Sleep(50 * time.Millisecond)
	if len(got) != 0 {
		t.Fatalf("the waiter did not wait: %+v", <-got)
	}
	if err := p.D.Release(held.ID, held.Lease.ID); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || r.info.ID != held.ID || r.info.Lease.Owner != "second" {
		t.Fatalf("the waiter got %+v, %v", r.info, r.err)
	}
	go func() {
		_, err := p.D.Acquire(ctx, daemon.AcquireRequest{Wait: true})
		got <- result{err: err}
	}()
	time.Sleep(50 * time.Millisecond)
	p.D.Drain()
	if r := <-got; !errors.Is(r.err, daemon.ErrDraining) {
		t.Errorf("a waiter when the daemon drains: %v, want ErrDraining", r.err)
	}
	if _, err := p.D.Acquire(ctx, daemon.AcquireRequest{}); !errors.Is(err, daemon.ErrDraining) {
		t.Errorf("acquire while draining: %v", err)
	}
	if !p.D.Status().Draining {
		t.Error("status does not say draining")
	}
	if err := p.D.Release(r.info.ID, r.info.Lease.ID); err != nil {
		t.Errorf("release while draining: %v", err)
	}
}

// A release made while a restarted daemon boots, before the slot is
// adopted (its lease is in the store; the pool knows it leased only once
// the boot reaches it), waits for the adoption and ends the lease, where
// it answered NOT_LEASED, which a launcher takes for final: the lease
// leaked. One whose deadline passes first fails with ErrNotReady, which
// the client retries, and changes nothing. netslotd serves its socket
// from before the boot, so both are made before it starts.
func TestReleaseWaitsForTheSlotsAdoption(t *testing.T) {
	cfg := tu.NewConfig(3)
	dir := t.TempDir()
	p := tu.StartPoolWith(t, cfg, dir, "")
	ctx := context.Background()
	a, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: "b"})
	if err != nil {
		t.Fatal(err)
	}
	p.D.Close()

	q, err := daemon.New(daemon.Options{Config: cfg, StateDir: dir, Logger: tu.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := q.ReleaseContext(expired, b.ID, b.Lease.ID); !errors.Is(err, daemon.ErrNotReady) {
		t.Errorf("a release whose deadline passed before the adoption: %v, want ErrNotReady", err)
	}
	booted := make(chan error, 1)
	go func() { booted <- q.Boot(ctx) }()
	if err := q.Release(a.ID, a.Lease.ID); err != nil {
		t.Errorf("a release while the daemon boots: %v, want it to wait for the adoption", err)
	}
	if err := <-booted; err != nil {
		t.Fatalf("boot: %v", err)
	}
	if got, _ := q.Get(a.ID); got.State != pool.Free || got.Lease != nil {
		t.Errorf("after the release during the boot, %s is %s with lease %+v", a.ID, got.State, got.Lease)
	}
	if got, _ := q.Get(b.ID); got.State != pool.Leased || got.Lease == nil || got.Lease.ID != b.Lease.ID {
		t.Errorf("the release that gave up changed %s: %s, lease %+v", b.ID, got.State, got.Lease)
	}
	if err := q.Release(b.ID, b.Lease.ID); err != nil {
		t.Errorf("the release retried after the boot: %v", err)
	}
	if st := q.Status(); st.Leased != 0 || st.Free != cfg.Count {
		t.Errorf("after both releases: %d leased, %d free", st.Leased, st.Free)
	}
}

// List filters by owner, state and key on the daemon's side.
func TestListFilters(t *testing.T) {
	p := tu.StartPool(t, 4)
	ctx := context.Background()
	for _, o := range []string{"a", "a", "b"} {
		if _, err := p.D.Acquire(ctx, daemon.AcquireRequest{Owner: o}); err != nil {
			t.Fatal(err)
		}
	}
	free := pool.Free
	for _, tc := range []struct {
		f    daemon.ListFilter
		want int
	}{{daemon.ListFilter{}, 4}, {daemon.ListFilter{Owner: "a"}, 2}, {daemon.ListFilter{Owner: "b"}, 1},
		{daemon.ListFilter{State: &free}, 1}, {daemon.ListFilter{Owner: "a", State: &free}, 0}, {daemon.ListFilter{Owner: "c"}, 0}} {
		if got := p.D.List(tc.f); len(got) != tc.want {
			t.Errorf("list %+v: %d slots, want %d", tc.f, len(got), tc.want)
		}
	}
}
