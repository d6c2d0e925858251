package client

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/testutil"
)

// script is a daemon that answers each call with the next of its
// errors (nil: success), then succeeds, or with always if set.
type script struct {
	netslotv1.UnimplementedSlotServiceServer
	mu       sync.Mutex
	answers  []error
	always   error
	acquires []*netslotv1.AcquireRequest
	releases []*netslotv1.ReleaseRequest
}

func (s *script) next() error {
	if len(s.answers) == 0 {
		return s.always
	}
	err := s.answers[0]
	s.answers = s.answers[1:]
	return err
}

func (s *script) Acquire(_ context.Context, req *netslotv1.AcquireRequest) (*netslotv1.AcquireResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acquires = append(s.acquires, req)
	if err := s.next(); err != nil {
		return nil, err
	}
	return &netslotv1.AcquireResponse{Slot: &netslotv1.Slot{Id: "x-0", Lease: &netslotv1.Lease{LeaseId: "l1", RequestKey: req.RequestKey}}}, nil
}

func (s *script) Release(_ context.Context, req *netslotv1.ReleaseRequest) (*netslotv1.ReleaseResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releases = append(s.releases, req)
	if err := s.next(); err != nil {
		return nil, err
	}
	return &netslotv1.ReleaseResponse{}, nil
}

func (s *script) calls() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acquires), len(s.releases)
}

// serve serves s on socket until the returned stop is called (which
// removes the socket, as netslotd does when it exits).
func serve(t *testing.T, socket string, s *script) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	netslotv1.RegisterSlotServiceServer(g, s)
	go g.Serve(ln)
	var once sync.Once
	stop = func() { once.Do(func() { g.Stop(); os.Remove(socket) }) }
	t.Cleanup(stop)
	return stop
}

// quick is a backoff for tests: the tries a few milliseconds apart.
var quick = WithBackoff(backoff.Config{BaseDelay: time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: 20 * time.Millisecond})

// An acquire with wait rides out a daemon that drains, one that is gone,
// and the next one's boot, until it gets its slot, with its request key
// every time; without wait, DRAINING comes back at once.
func TestAcquireWithWaitCarriesOverToTheNextDaemon(t *testing.T) {
	for _, opts := range [][]Option{{quick}, {quick, WithFailFast()}} {
		socket := filepath.Join(t.TempDir(), "s.sock")
		draining := &script{always: withReason(codes.Unavailable, netslotv1.ReasonDraining)}
		stopOld := serve(t, socket, draining)
		c, err := Dial(socket, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Acquire(context.Background(), &netslotv1.AcquireRequest{RequestKey: "vm-1"}); !errors.Is(err, ErrDraining) {
			t.Fatalf("an acquire without wait on a draining daemon: %v, want ErrDraining at once", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		type result struct {
			s   *netslotv1.Slot
			err error
		}
		got := make(chan result, 1)
		go func() {
			s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{RequestKey: "vm-1", Wait: true})
			got <- result{s, err}
		}()
		// The draining daemon answers DRAINING, then stops; its socket is
		// gone a while; the next daemon boots (NOT_READY), then serves.
		waitFor(t, "the draining daemon answered the waiting acquire twice", func() bool {
			select {
			case r := <-got:
				t.Fatalf("the waiting acquire gave up on the draining daemon: %v, %v", r.s, r.err)
			default:
			}
			n, _ := draining.calls()
			return n >= 3
		})
		stopOld()
		next := &script{answers: []error{withReason(codes.Unavailable, netslotv1.ReasonNotReady)}}
		waitFor(t, "the client found no daemon", func() bool { c.dialMu.Lock(); defer c.dialMu.Unlock(); return c.dialErr != nil })
		serve(t, socket, next)
		r := <-got
		if r.err != nil || r.s.GetLease().GetRequestKey() != "vm-1" {
			t.Fatalf("the waiting acquire: %v, %v; want the next daemon's lease", r.s, r.err)
		}
		for _, req := range append(draining.acquires[1:], next.acquires...) {
			if req.RequestKey != "vm-1" || !req.Wait {
				t.Errorf("a try sent %v, want the same request", req)
			}
		}
		if n, _ := next.calls(); n != 2 {
			t.Errorf("the next daemon got %d tries, want 2 (NOT_READY, then the slot)", n)
		}
	}
}

// Tries are spaced by the backoff: exponential, capped, with jitter, and
// end at the deadline with the last error.
func TestRetriesBackOffUntilTheDeadline(t *testing.T) {
	b := backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: 100 * time.Millisecond}
	for n, want := range []time.Duration{10, 20, 40, 80, 100, 100, 100} {
		want *= time.Millisecond
		lo, hi := time.Duration(float64(want)*0.8), time.Duration(float64(want)*1.2)
		seen := map[time.Duration]bool{}
		for range 50 {
			d := delay(b, n)
			if d < lo || d > hi {
				t.Fatalf("delay before try %d: %v, want %v to %v", n+2, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("delay before try %d: no jitter (%v)", n+2, seen)
		}
	}

	socket := filepath.Join(t.TempDir(), "s.sock")
	forever := &script{}
	for range 1000 {
		forever.answers = append(forever.answers, withReason(codes.Unavailable, netslotv1.ReasonDraining))
	}
	serve(t, socket, forever)
	c, err := Dial(socket, WithBackoff(b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// The last answer, DRAINING; or, on a machine so busy that a try was
	// still out when the deadline passed, that try's DEADLINE_EXCEEDED.
	if _, err := c.Acquire(ctx, &netslotv1.AcquireRequest{RequestKey: "k", Wait: true}); !errors.Is(err, ErrDraining) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an acquire past its deadline on a daemon that drains: %v, want the last answer, DRAINING", err)
	}
	// 10+20+40+80+100+100+... ms: about 8 tries in 500 ms, not hundreds.
	if n, _ := forever.calls(); n < 2 || n > 12 {
		t.Errorf("%d tries in 500 ms with a backoff of 10 ms doubling to 100 ms", n)
	}
}

// What is tried again, and what is not: an acquire with wait retries a
// failure that may have taken effect only with a request key; a release
// retries one that may have taken effect, a slot not adopted yet and a
// busy slot, never a refusal.
func TestWhatIsTriedAgain(t *testing.T) {
	lost := status.Error(codes.Unavailable, "connection reset") // sent, no reason: uncertain
	for _, tc := range []struct {
		name    string
		answers []error
		call    func(*Client) error
		tries   int
		want    error // nil: success
	}{
		{"keyed acquire, uncertain", []error{lost}, func(c *Client) error {
			_, err := c.Acquire(context.Background(), &netslotv1.AcquireRequest{RequestKey: "k", Wait: true})
			return err
		}, 2, nil},
		{"keyless acquire, uncertain", []error{lost}, func(c *Client) error {
			_, err := c.Acquire(context.Background(), &netslotv1.AcquireRequest{Wait: true})
			return err
		}, 1, ErrUnreachable},
		{"acquire, invalid", []error{withReason(codes.InvalidArgument, netslotv1.ReasonInvalid)}, func(c *Client) error {
			_, err := c.Acquire(context.Background(), &netslotv1.AcquireRequest{RequestKey: "k", Wait: true})
			return err
		}, 1, ErrInvalid},
		{"release, uncertain then not adopted yet then busy", []error{lost, withReason(codes.Unavailable, netslotv1.ReasonNotReady), withReason(codes.Aborted, netslotv1.ReasonInProgress)},
			func(c *Client) error { return c.Release(context.Background(), "x-0", "l1") }, 4, nil},
		{"release, tap in use", []error{withReason(codes.FailedPrecondition, netslotv1.ReasonTapInUse)},
			func(c *Client) error { return c.Release(context.Background(), "x-0", "l1") }, 1, ErrTapInUse},
		{"release, lease mismatch", []error{withReason(codes.FailedPrecondition, netslotv1.ReasonLeaseMismatch)},
			func(c *Client) error { return c.Release(context.Background(), "x-0", "l1") }, 1, ErrLeaseMismatch},
		{"forced release, uncertain", []error{lost},
			func(c *Client) error { return c.ForceRelease(context.Background(), "x-0") }, 1, ErrUnreachable},
	} {
		s := &script{answers: tc.answers}
		socket := filepath.Join(t.TempDir(), "s.sock")
		stop := serve(t, socket, s)
		c, err := Dial(socket, quick)
		if err != nil {
			t.Fatal(err)
		}
		err = tc.call(c)
		acq, rel := s.calls()
		if tries := acq + rel; tries != tc.tries || (tc.want == nil) != (err == nil) || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %d tries, %v; want %d tries, %v", tc.name, tries, err, tc.tries, tc.want)
		}
		for _, r := range s.releases {
			if r.Id != "x-0" || r.LeaseId != "l1" && !r.Force {
				t.Errorf("%s: a try sent %v", tc.name, r)
			}
		}
		c.Close()
		stop()
	}
}

// A call to a daemon that is not there says so, with the socket and why,
// whether it waited for it until its deadline or failed at once; it was
// never sent, so it is unreachable and retryable.
func TestNoDaemonSaysSo(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.sock")
	refusing := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", refusing)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nothing listens: connection refused
	for _, tc := range []struct {
		socket, why string
	}{{missing, "no such socket (netslotd is not running, or listens on another --socket)"}, {refusing, "connection refused (netslotd is not running)"}} {
		for _, failFast := range []bool{false, true} {
			opts := []Option{WithTimeout(300 * time.Millisecond), quick}
			if failFast {
				opts = append(opts, WithFailFast())
			}
			c, err := Dial(tc.socket, opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Status(context.Background())
			c.Close()
			want := "netslotd is not reachable on " + tc.socket + ": " + tc.why
			if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrUnreachable) || !Retryable(err) {
				t.Errorf("a call to %s (fail fast %t): %v; want %q, unreachable and retryable", tc.socket, failFast, err, want)
			}
			if strings.Contains(err.Error(), "balancer") {
				t.Errorf("the message speaks of gRPC's balancer: %v", err)
			}
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !testutil.Wait(30*time.Second, cond) {
		t.Fatalf("not within 30 s: %s", what)
	}
}
