package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
)

// A VM launcher's hard cases against a real daemon, with one client kept
// across the daemon's restarts: readiness, acquires with a request key
// retried after a deadline and after a kill -9 mid-call, errors matched
// with errors.Is, an acquire that waits for a slot another caller
// releases, releases retried after timeouts, and draining.
func TestLauncherHardCases(t *testing.T) {
	const slots = 400
	p := newPool(t, slots)
	// One builder: a boot long enough to be seen. A long drain, ended by
	// a second signal: the test's calls while draining never race the stop.
	args := []string{"--boot-workers", "1", "--drain-grace", "60s"}
	p.launch(args...)
	c := p.client()

	// Booting: NOT_SERVING, acquires refused with NOT_READY; an acquire
	// that waits gets a slot once the pool is ready, and by then health
	// says SERVING.
	sawBooting := false
	for {
		serving, err := c.Serving(ctx(t))
		if err != nil {
			t.Fatalf("health: %v\n%s", err, p.log)
		}
		if serving {
			break
		}
		if !sawBooting {
			sawBooting = true
			// The boot may end between the health check and these calls:
			// then the acquire succeeds and status says ready.
			early, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{})
			switch st, serr := c.Status(ctx(t)); {
			case err == nil && (serr != nil || !st.Ready):
				t.Errorf("an acquire succeeded before status said ready: %v", serr)
			case err == nil:
				if err := c.Release(ctx(t), early.Id, early.Lease.LeaseId); err != nil {
					t.Fatal(err)
				}
			case !errors.Is(err, client.ErrNotReady) || !client.Retryable(err):
				t.Errorf("acquire while booting: %v, want ErrNotReady", err)
			}
			waited, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "early", Wait: true})
			if err != nil {
				t.Fatalf("an acquire that waits for the boot: %v", err)
			}
			if serving, err := c.Serving(ctx(t)); err != nil || !serving {
				t.Errorf("health after a waiting acquire got its slot: %t, %v", serving, err)
			}
			if err := c.Release(ctx(t), waited.Id, waited.Lease.LeaseId); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawBooting {
		t.Error("health said SERVING from the first answer: the boot was not seen")
	}
	if st, err := c.Status(ctx(t)); err != nil || !st.Ready {
		t.Fatalf("SERVING before status says ready: %v, %v", st, err)
	}

	// Keys retried after a deadline: each key ends with one lease.
	leases := map[string]string{} // key -> slot
	for k := range 20 {
		key := fmt.Sprintf("deadline-%d", k)
		req := &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key}
		short, cancel := context.WithTimeout(context.Background(), 150*time.Microsecond)
		_, err := c.Acquire(short, req)
		cancel()
		if err != nil && !client.Uncertain(err) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire %s with a 150 us deadline: %v", key, err)
		}
		s, err := c.Acquire(ctx(t), req)
		if err != nil {
			t.Fatalf("retry of %s: %v", key, err)
		}
		if s.Lease.RequestKey != key || s.Lease.Owner != "launcher" {
			t.Errorf("retry of %s answered lease %+v", key, s.Lease)
		}
		leases[key] = s.Id
	}
	own, err := c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil || len(own) != 20 {
		t.Fatalf("launcher's leases after 20 keys retried: %d, %v", len(own), err)
	}

	// Acquires in flight when the daemon is killed: retried with their
	// keys after the restart, each key has one lease.
	var mu sync.Mutex
	tried := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := range 40 { // paced: the kill falls among them
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				key := fmt.Sprintf("kill-%d-%d", w, n)
				mu.Lock()
				tried[key] = true
				mu.Unlock()
				call, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := c.Acquire(call, &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key})
				cancel()
				if err != nil {
					if !client.Uncertain(err) {
						t.Errorf("acquire %s while the daemon was killed: %v (certain)", key, err)
					}
					return
				}
			}
		})
	}
	time.Sleep(40 * time.Millisecond)
	p.kill()
	close(stop)
	wg.Wait()
	if len(tried) > slots-40 {
		t.Fatalf("%d keys tried: the pool is too small for the test", len(tried))
	}
	p.launch(args...)
	p.waitReady()
	restarted := time.Now()
	if _, err := c.Status(ctx(t)); err != nil {
		t.Fatalf("the client after the restart: %v", err)
	}
	t.Logf("the client's first call after the restart answered %v after status said ready", time.Since(restarted).Round(time.Millisecond))
	for key := range tried {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key})
		if err != nil {
			t.Fatalf("retry of %s after the restart: %v", key, err)
		}
		leases[key] = s.Id
	}
	own, err = c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil || len(own) != len(leases) {
		t.Fatalf("launcher's leases: %d for %d keys, %v", len(own), len(leases), err)
	}
	bySlot := map[string]string{}
	for key, id := range leases {
		if other, ok := bySlot[id]; ok {
			t.Errorf("keys %s and %s share slot %s", key, other, id)
		}
		bySlot[id] = key
	}
	t.Logf("%d acquires in flight or done when the daemon was killed: each key has one lease after the restart", len(tried))

	// Errors a program acts on.
	if _, err := c.Get(ctx(t), p.prefix+"-99999"); !errors.Is(err, client.ErrUnknownSlot) {
		t.Errorf("get of an unknown slot: %v", err)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{EgressAllow: []string{"garbage"}}); !errors.Is(err, client.ErrInvalid) || client.Retryable(err) {
		t.Errorf("acquire with a bad CIDR: %v", err)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "someone else", RequestKey: "deadline-0"}); !errors.Is(err, client.ErrKeyReused) {
		t.Errorf("a key reused by another request: %v", err)
	}
	first := own[0]
	if err := c.Release(ctx(t), first.Id, "0123456789abcdef0123456789abcdef"); !errors.Is(err, client.ErrLeaseMismatch) {
		t.Errorf("release with another lease id: %v", err)
	}

	// The pool emptied: ErrPoolEmpty at once, and an acquire that waits
	// gets the slot another caller releases.
	for {
		_, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "filler"})
		if errors.Is(err, client.ErrPoolEmpty) {
			break
		}
		if err != nil {
			t.Fatalf("filling the pool: %v", err)
		}
	}
	got := make(chan *netslotv1.Slot, 1)
	go func() {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "waiter", Wait: true})
		if err != nil {
			t.Errorf("the waiting acquire: %v", err)
		}
		got <- s
	}()
	time.Sleep(100 * time.Millisecond)
	if err := c.Release(ctx(t), first.Id, first.Lease.LeaseId); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s == nil || s.Id != first.Id || s.Lease.Owner != "waiter" {
		t.Fatalf("the waiter got %v, want %s", s, first.Id)
	}

	// Releases retried after timeouts: each ends its lease once.
	own, err = c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range own[:10] {
		short, cancel := context.WithTimeout(context.Background(), 100*time.Microsecond)
		err := c.Release(short, s.Id, s.Lease.LeaseId)
		cancel()
		if err != nil && !client.Uncertain(err) {
			t.Fatalf("release %s with a 100 us deadline: %v", s.Id, err)
		}
		for range 2 {
			if err := c.Release(ctx(t), s.Id, s.Lease.LeaseId); err != nil {
				t.Errorf("release %s retried: %v", s.Id, err)
			}
		}
	}
	if left, err := c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"}); err != nil || len(left) != len(own)-10 {
		t.Errorf("after 10 releases retried: %d of %d leases left, %v", len(left), len(own), err)
	}

	// Draining: SIGTERM; acquires refused, releases served, health and
	// status say so, then the daemon exits.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := c.Status(ctx(t))
		if err == nil && st.Draining {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never said draining: %v, %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{}); !errors.Is(err, client.ErrDraining) {
		t.Errorf("acquire while draining: %v", err)
	}
	if serving, err := c.Serving(ctx(t)); err != nil || serving {
		t.Errorf("health while draining: %t, %v", serving, err)
	}
	if err := c.Release(ctx(t), own[10].Id, own[10].Lease.LeaseId); err != nil {
		t.Errorf("release while draining: %v", err)
	}
	// A second signal ends the drain at once.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Errorf("netslotd did not stop at the second signal:\n%s", p.log)
	}
	p.cmd = nil
}
