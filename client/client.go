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
	"net"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// DefaultSocket is where netslotd listens unless told otherwise.
const DefaultSocket = "/run/netslot/netslot.sock"

// DefaultTimeout is the deadline of a call whose context has none, unless
// WithTimeout says otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultBackoff is how the client retries connecting to a daemon that is
// down or restarting: a restarted daemon is noticed within about 100 ms
// of listening (gRPC's own default waits 1 s and more).
var DefaultBackoff = backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// Client talks to one netslotd.
type Client struct {
	conn   *grpc.ClientConn
	api    netslotv1.SlotServiceClient
	health healthgrpc.HealthClient
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
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.WaitForReady(!o.failFast)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: o.backoff, MinConnectTimeout: time.Second}),
		grpc.WithChainUnaryInterceptor(deadlineAndErrors(o.timeout)),
	}
	conn, err := grpc.NewClient("passthrough:///netslotd", append(dial, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return &Client{conn: conn, api: netslotv1.NewSlotServiceClient(conn), health: healthgrpc.NewHealthClient(conn)}, nil
}

// deadlineAndErrors gives a call without a deadline the default one, and
// turns the errors of every call into *Error.
func deadlineAndErrors(timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return wrap(invoker(ctx, method, req, reply, cc, opts...))
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API is the generated client, for callers that want every field. Its
// calls get the client's default deadline and *Error errors too.
func (c *Client) API() netslotv1.SlotServiceClient { return c.api }

// Acquire leases a slot. Give req.RequestKey (the VM's id, say) so that a
// retry after an uncertain failure returns the same lease, and req.Wait
// to wait for a slot (until ctx's deadline) when the pool is empty or the
// daemon is booting.
func (c *Client) Acquire(ctx context.Context, req *netslotv1.AcquireRequest, opts ...grpc.CallOption) (*netslotv1.Slot, error) {
	resp, err := c.api.Acquire(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	return resp.GetSlot(), nil
}

// Release scrubs slot id and returns it to the pool if it is still held
// by leaseID (from the Acquire answer: Slot.Lease.LeaseId): a late or
// repeated release never frees a later tenant's slot. A release repeated
// after it ended its lease answers nil, or ErrLeaseMismatch once the slot
// has a newer lease: either way leaseID is over. While the VM still holds
// the slot's tap, it fails with ErrTapInUse and changes nothing.
func (c *Client) Release(ctx context.Context, id, leaseID string, opts ...grpc.CallOption) error {
	_, err := c.api.Release(ctx, &netslotv1.ReleaseRequest{Id: id, LeaseId: leaseID}, opts...)
	return err
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
	// ErrUnreachable: no answer from the daemon (it is not running, or the
	// connection broke); a call in flight may have taken effect.
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
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("netslotd: %s (%s)", e.Message, e.Reason)
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
		return e.Reason == "" && e.Code == codes.Unavailable
	}
	return false
}

// GRPCStatus is e's status, for status.FromError and status.Code.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// Uncertain reports whether the call that failed with err may have taken
// effect: its deadline passed or it was cancelled while the daemon worked
// on it, or the daemon was lost meanwhile. The daemon's own refusals,
// and ReasonDeadline (the daemon saw the deadline pass before it
// committed anything), are certain: nothing changed.
func Uncertain(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return err != nil
	}
	switch e.Code {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable, codes.Unknown:
		return e.Reason == ""
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
