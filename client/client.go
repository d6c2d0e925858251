// Package client is the Go client of netslotd, for the services (VM
// launchers) that acquire and release network slots. See the package
// examples for a launcher's cycle: acquire with a request key, boot the
// VM, release with the lease id, and what to do with each error.
//
// A Client is safe for concurrent use by any number of goroutines; a
// process needs one per daemon. It reconnects by itself: a call made while
// the daemon restarts waits for it (until the call's deadline) unless the
// client was dialled WithFailFast.
//
// Acquire with req.Wait and Release are a launcher's calls as they are:
// they try again, until the call's deadline, whatever the daemon goes
// through (booting, draining, restarting, gone for a while), with capped
// exponential backoff and jitter, and only where trying again is safe: the
// same request key, the same lease id.
//
// Which failed calls may have taken effect: Get, List and Status change
// nothing. A failed Acquire or Release for which Uncertain reports true
// (its deadline passed, it was cancelled, or the connection broke while it
// was in flight) may have taken effect: retry an acquire with the same
// request key, which returns the lease it made, and a release with the
// same lease id, which answers OK once that lease is ended (or
// ErrLeaseMismatch once the slot has a newer lease). Any other error
// changed nothing.
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// DefaultSocket is where netslotd listens unless told otherwise.
const DefaultSocket = "/run/netslot/netslot.sock"

// DefaultTimeout is the deadline of a call whose context has none, unless
// WithTimeout says otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultBackoff is how the client retries connecting to a daemon that is
// down or restarting, and how Acquire with wait and Release space their
// tries: a restarted daemon is noticed within about 100 ms of listening
// (gRPC's own default waits 1 s and more).
var DefaultBackoff = backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// Client talks to one netslotd.
type Client struct {
	conn    *grpc.ClientConn
	api     netslotv1.SlotServiceClient
	health  healthgrpc.HealthClient
	socket  string
	timeout time.Duration
	backoff backoff.Config
	// dialErr is why the last connection attempt failed (nil: it did
	// not), for the message of a call that found no daemon.
	dialMu  sync.Mutex
	dialErr error
}

// Option configures Dial.
type Option func(*options)

type options struct {
	timeout  time.Duration
	backoff  backoff.Config
	failFast bool
	dial     []grpc.DialOption
}

// WithTimeout sets the deadline of calls whose context has none (0: none;
// default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithBackoff sets how the client retries connecting (default
// DefaultBackoff).
func WithBackoff(b backoff.Config) Option { return func(o *options) { o.backoff = b } }

// WithFailFast makes calls fail at once (Unavailable) while the daemon is
// unreachable, instead of waiting for it until their deadline.
func WithFailFast() Option { return func(o *options) { o.failFast = true } }

// WithDialOptions adds gRPC dial options (interceptors, stats handlers),
// applied after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// Dial returns a client of the daemon listening on the unix socket path.
// It connects lazily: an unreachable daemon shows on the first call.
func Dial(socket string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, backoff: DefaultBackoff}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{socket: socket, timeout: o.timeout, backoff: o.backoff}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.WaitForReady(!o.failFast)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", socket)
			c.dialMu.Lock()
			c.dialErr = err
			c.dialMu.Unlock()
			return conn, err
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: o.backoff, MinConnectTimeout: time.Second}),
		grpc.WithStatsHandler(sentHandler{}),
		grpc.WithChainUnaryInterceptor(c.deadlineAndErrors),
	}
	conn, err := grpc.NewClient("passthrough:///netslotd", append(dial, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	c.conn, c.api, c.health = conn, netslotv1.NewSlotServiceClient(conn), healthgrpc.NewHealthClient(conn)
	return c, nil
}

// withDeadline gives ctx the client's default deadline if it has none.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return ctx, func() {}
}

// deadlineAndErrors gives a call without a deadline the default one, and
// turns the errors of every call into *Error; one that never reached a
// daemon says so, with the socket and why.
func (c *Client) deadlineAndErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	sent := new(atomic.Bool)
	err := wrap(invoker(context.WithValue(ctx, sentKey{}, sent), method, req, reply, cc, opts...))
	var e *Error
	if errors.As(err, &e) && e.Reason == "" && !sent.Load() {
		c.dialMu.Lock()
		derr := c.dialErr
		c.dialMu.Unlock()
		if derr != nil { // not sent, for want of a daemon
			e.notSent = true
			e.Message = unreachable(c.socket, derr)
		}
	}
	return err
}

// unreachable says why no daemon answers on socket, from the error of
// the last connection attempt.
func unreachable(socket string, err error) string {
	why := err.Error()
	switch {
	case errors.Is(err, os.ErrNotExist):
		why = "no such socket (netslotd is not running, or listens on another --socket)"
	case errors.Is(err, syscall.ECONNREFUSED):
		why = "connection refused (netslotd is not running)"
	case errors.Is(err, os.ErrPermission):
		why = "permission denied (the API is root's)"
	}
	return fmt.Sprintf("netslotd is not reachable on %s: %s", socket, why)
}

// sentKey marks a call's context with the flag sentHandler sets once the
// call is on a connection to the daemon.
type sentKey struct{}

// sentHandler sets a call's sent flag when its headers are queued on a
// connection: a call that fails before that never reached a daemon.
type sentHandler struct{}

func (sentHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (sentHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (sentHandler) HandleConn(context.Context, stats.ConnStats) {}
func (sentHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutHeader); ok {
		if sent, ok := ctx.Value(sentKey{}).(*atomic.Bool); ok {
			sent.Store(true)
		}
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API is the generated client, for callers that want every field. Its
// calls get the client's default deadline and *Error errors too.
func (c *Client) API() netslotv1.SlotServiceClient { return c.api }

// Acquire leases a slot. Give req.RequestKey (the VM's id, say) so that a
// retry after an uncertain failure returns the same lease.
//
// With req.Wait it waits for a slot until ctx's deadline (the client's
// default one if ctx has none), whatever the daemon goes through: the
// daemon waits for its pool to be ready and a slot to come free, and
// Acquire tries again, the same request, when the daemon answered
// ErrDraining or ErrNotReady or was not reachable (ErrUnreachable: the
// call was not sent), so that a rolling restart carries the wait over to
// the next daemon; and, with a request key, after a failure that may
// have taken effect (Uncertain), which the key makes safe. Tries are
// spaced by the client's backoff (DefaultBackoff: capped exponential,
// with jitter). It returns the first other error, or the last one when
// the deadline passes.
//
// Without req.Wait it makes one call: ErrPoolEmpty and ErrNotReady come
// back at once.
func (c *Client) Acquire(ctx context.Context, req *netslotv1.AcquireRequest, opts ...grpc.CallOption) (*netslotv1.Slot, error) {
	if !req.GetWait() {
		resp, err := c.api.Acquire(ctx, req, opts...)
		return resp.GetSlot(), err
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	keyed := req.GetRequestKey() != ""
	var resp *netslotv1.AcquireResponse
	err := c.retry(ctx, func() (err error) {
		resp, err = c.api.Acquire(ctx, req, opts...)
		return err
	}, func(err error) bool {
		return errors.Is(err, ErrDraining) || errors.Is(err, ErrNotReady) || notSent(err) || keyed && Uncertain(err)
	})
	return resp.GetSlot(), err
}

// Release scrubs slot id and returns it to the pool if it is still held
// by leaseID (from the Acquire answer: Slot.Lease.LeaseId): a late or
// repeated release never frees a later tenant's slot. A release repeated
// after it ended its lease answers nil, or ErrLeaseMismatch once the slot
// has a newer lease: either way leaseID is over. While the VM still holds
// the slot's tap, it fails with ErrTapInUse and changes nothing.
//
// Naming the lease makes a release safe to repeat, and Release repeats
// it until ctx's deadline (the client's default one if ctx has none),
// spaced by the client's backoff, after a failure that may have taken
// effect (Uncertain), a daemon that was not reachable, one that has not
// adopted the slot yet after a restart (ErrNotReady) and a slot busy
// with another call (ErrInProgress). It returns the first other error, or
// the last one when the deadline passes.
func (c *Client) Release(ctx context.Context, id, leaseID string, opts ...grpc.CallOption) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	return c.retry(ctx, func() error {
		_, err := c.api.Release(ctx, &netslotv1.ReleaseRequest{Id: id, LeaseId: leaseID}, opts...)
		return err
	}, func(err error) bool {
		return Uncertain(err) || notSent(err) || errors.Is(err, ErrNotReady) || errors.Is(err, ErrInProgress)
	})
}

// retry makes call until it succeeds, fails with an error again refuses,
// or ctx ends; the tries are spaced by c's backoff, with its jitter.
func (c *Client) retry(ctx context.Context, call func() error, again func(error) bool) error {
	for n := 0; ; n++ {
		err := call()
		if err == nil || !again(err) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(delay(c.backoff, n))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// delay is how long b waits before try n+1 (from 0): BaseDelay times
// Multiplier to the n, at most MaxDelay, give or take Jitter of it.
func delay(b backoff.Config, n int) time.Duration {
	d := float64(b.BaseDelay)
	for ; n > 0 && d < float64(b.MaxDelay); n-- {
		d *= b.Multiplier
	}
	d = min(d, float64(b.MaxDelay))
	d *= 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(max(d, 0))
}

// ForceRelease releases slot id whatever lease holds it, for an operator
// cleaning up by hand; the daemon logs it. Never retry it from a VM
// launcher: by the time a retry arrives, the slot may be the next
// tenant's.
func (c *Client) ForceRelease(ctx context.Context, id string, opts ...grpc.CallOption) error {
	_, err := c.api.Release(ctx, &netslotv1.ReleaseRequest{Id: id, Force: true}, opts...)
	return err
}

// Get describes one slot.
func (c *Client) Get(ctx context.Context, id string, opts ...grpc.CallOption) (*netslotv1.Slot, error) {
	return c.api.Get(ctx, &netslotv1.GetRequest{Id: id}, opts...)
}

// List describes the slots that match filter (nil or empty: every slot),
// filtered by the daemon.
func (c *Client) List(ctx context.Context, filter *netslotv1.ListRequest, opts ...grpc.CallOption) ([]*netslotv1.Slot, error) {
	if filter == nil {
		filter = &netslotv1.ListRequest{}
	}
	resp, err := c.api.List(ctx, filter, opts...)
	if err != nil {
		return nil, err
	}
	return resp.GetSlots(), nil
}

// Status reports the pool's state.
func (c *Client) Status(ctx context.Context, opts ...grpc.CallOption) (*netslotv1.StatusResponse, error) {
	return c.api.Status(ctx, &netslotv1.StatusRequest{}, opts...)
}

// Serving reports whether the daemon's health service says SERVING: its
// pool is ready and it is not draining.
func (c *Client) Serving(ctx context.Context, opts ...grpc.CallOption) (bool, error) {
	resp, err := c.health.Check(ctx, &healthgrpc.HealthCheckRequest{Service: netslotv1.SlotService_ServiceDesc.ServiceName}, opts...)
	if err != nil {
		return false, err
	}
	return resp.GetStatus() == healthgrpc.HealthCheckResponse_SERVING, nil
}

// Errors by reason, for errors.Is: every error a call returns is an
// *Error, which matches the one of its reason (see netslotv1.Reason*).
var (
	ErrPoolEmpty     = errors.New("pool empty")
	ErrNotReady      = errors.New("daemon booting")
	ErrDraining      = errors.New("daemon draining")
	ErrInvalid       = errors.New("invalid request")
	ErrKeyReused     = errors.New("request key names another request's lease")
	ErrUnknownSlot   = errors.New("unknown slot")
	ErrNotLeased     = errors.New("slot not leased")
	ErrLeaseMismatch = errors.New("slot held by another lease")
	ErrTapInUse      = errors.New("tap still attached")
	ErrInProgress    = errors.New("acquire or release in progress")
	ErrNoUplink      = errors.New("pool has no uplink")
	ErrConflict      = errors.New("vpc attachment conflict")
	ErrInternal      = errors.New("daemon failure")
	// ErrUnreachable: no answer from the daemon: it is not running (the
	// call was not sent, and its message says why: no socket, connection
	// refused), or the connection broke, and then a call in flight may
	// have taken effect (Uncertain).
	ErrUnreachable = errors.New("daemon unreachable")
)

var byReason = map[string]error{
	netslotv1.ReasonPoolEmpty:     ErrPoolEmpty,
	netslotv1.ReasonNotReady:      ErrNotReady,
	netslotv1.ReasonDraining:      ErrDraining,
	netslotv1.ReasonInvalid:       ErrInvalid,
	netslotv1.ReasonKeyReused:     ErrKeyReused,
	netslotv1.ReasonUnknownSlot:   ErrUnknownSlot,
	netslotv1.ReasonNotLeased:     ErrNotLeased,
	netslotv1.ReasonLeaseMismatch: ErrLeaseMismatch,
	netslotv1.ReasonTapInUse:      ErrTapInUse,
	netslotv1.ReasonInProgress:    ErrInProgress,
	netslotv1.ReasonNoUplink:      ErrNoUplink,
	netslotv1.ReasonConflict:      ErrConflict,
	netslotv1.ReasonInternal:      ErrInternal,
}

// Error is an error of a call: its gRPC status and, when the daemon gave
// one, its reason (netslotv1.Reason*). errors.Is matches it against the
// Err* of its reason, context.DeadlineExceeded and context.Canceled for
// its code, and status.FromError sees its status.
type Error struct {
	Code    codes.Code
	Reason  string // "" when the daemon gave none (it was not reached)
	Message string
	st      *status.Status
	notSent bool // the call was not sent: no daemon could be reached
}

func (e *Error) Error() string {
	switch {
	case e.Reason != "":
		return fmt.Sprintf("netslotd: %s (%s)", e.Message, e.Reason)
	case e.notSent:
		return fmt.Sprintf("%s (%s)", e.Message, e.Code)
	}
	return fmt.Sprintf("netslotd: %s: %s", e.Code, e.Message)
}

// Is matches the sentinel of e's reason or code.
func (e *Error) Is(target error) bool {
	switch {
	case target == byReason[e.Reason] && target != nil:
		return true
	case target == context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case target == context.Canceled:
		return e.Code == codes.Canceled
	case target == ErrUnreachable:
		return e.Reason == "" && (e.Code == codes.Unavailable || e.notSent)
	}
	return false
}

// notSent reports whether err is a call's that was not sent because no
// daemon could be reached (at once, or until the call's deadline): it
// changed nothing.
func notSent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.notSent
}

// GRPCStatus is e's status, for status.FromError and status.Code.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// Uncertain reports whether the call that failed with err may have taken
// effect: its deadline passed or it was cancelled while the daemon worked
// on it, or the daemon was lost meanwhile: DEADLINE_EXCEEDED, CANCELLED,
// UNAVAILABLE or UNKNOWN with no reason from the daemon. The daemon's own
// refusals, ReasonDeadline (the daemon saw the deadline pass before it
// committed anything) and a call never sent (no daemon could be reached)
// are certain: nothing changed.
func Uncertain(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return err != nil
	}
	switch e.Code {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable, codes.Unknown:
		return e.Reason == "" && !e.notSent
	}
	return false
}

// Retryable reports whether the same call may succeed if made again
// later: the pool was empty or not ready, the daemon was draining or
// unreachable, the slot was busy, or its VM still held the tap.
func Retryable(err error) bool {
	for _, target := range []error{ErrPoolEmpty, ErrNotReady, ErrDraining, ErrInProgress, ErrTapInUse, ErrUnreachable} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// wrap turns a call's error into *Error.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	e := &Error{Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == netslotv1.ErrorDomain {
			e.Reason = info.GetReason()
		}
	}
	return e
}
