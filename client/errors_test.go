package client

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

func withReason(code codes.Code, reason string) error {
	st, err := status.New(code, "the daemon's message").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: netslotv1.ErrorDomain})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestErrorsMatchTheirReason(t *testing.T) {
	for reason, want := range byReason {
		err := wrap(withReason(codes.FailedPrecondition, reason))
		if !errors.Is(err, want) {
			t.Errorf("%s: errors.Is(%v, %v) = false", reason, err, want)
		}
		for other, sentinel := range byReason {
			if other != reason && errors.Is(err, sentinel) {
				t.Errorf("%s also matches %s", reason, other)
			}
		}
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: status %s, message %q", reason, status.Code(err), err)
		}
	}
	cases := []struct {
		err                  error
		is                   error
		uncertain, retryable bool
	}{
		{wrap(withReason(codes.ResourceExhausted, netslotv1.ReasonPoolEmpty)), ErrPoolEmpty, false, true},
		{wrap(withReason(codes.FailedPrecondition, netslotv1.ReasonTapInUse)), ErrTapInUse, false, true},
		{wrap(withReason(codes.FailedPrecondition, netslotv1.ReasonLeaseMismatch)), ErrLeaseMismatch, false, false},
		{wrap(withReason(codes.DeadlineExceeded, netslotv1.ReasonDeadline)), context.DeadlineExceeded, false, false},
		{wrap(status.Error(codes.DeadlineExceeded, "context deadline exceeded")), context.DeadlineExceeded, true, false},
		{wrap(context.Canceled), context.Canceled, true, false},
		{wrap(status.Error(codes.Unavailable, "connection refused")), ErrUnreachable, true, true},
		{wrap(withReason(codes.Unavailable, netslotv1.ReasonDraining)), ErrDraining, false, true},
		// Never sent, for want of a daemon: nothing changed.
		{&Error{Code: codes.Unavailable, Message: "no daemon", notSent: true}, ErrUnreachable, false, true},
		{&Error{Code: codes.DeadlineExceeded, Message: "no daemon", notSent: true}, context.DeadlineExceeded, false, true},
	}
	for _, tc := range cases {
		if !errors.Is(tc.err, tc.is) || Uncertain(tc.err) != tc.uncertain || Retryable(tc.err) != tc.retryable {
			t.Errorf("%v: is %v %t, uncertain %t (want %t), retryable %t (want %t)", tc.err, tc.is, errors.Is(tc.err, tc.is),
				Uncertain(tc.err), tc.uncertain, Retryable(tc.err), tc.retryable)
		}
	}
	if errors.Is(wrap(withReason(codes.Unavailable, netslotv1.ReasonDraining)), ErrUnreachable) {
		t.Error("a daemon that answered DRAINING counted as unreachable")
	}
}

// Every reason the API declares has its sentinel error here.
func TestEveryReasonHasAnError(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "../api/netslot/v1/reasons.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			if !strings.HasPrefix(vs.Names[0].Name, "Reason") {
				continue
			}
			n++
			reason, _ := strconv.Unquote(vs.Values[0].(*ast.BasicLit).Value)
			if _, ok := byReason[reason]; !ok && reason != netslotv1.ReasonDeadline {
				t.Errorf("%s (%s) has no error in the client", vs.Names[0].Name, reason)
			}
		}
	}
	if n < 14 {
		t.Errorf("found %d reasons in reasons.go", n)
	}
}

// A call to a daemon that is not there waits for it (the default) until
// the client's default deadline, or fails at once with WithFailFast; the
// options given are applied.
func TestDialOptions(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	dialled := false
	c, err := Dial(missing, WithTimeout(100*time.Millisecond), WithBackoff(backoff.Config{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}),
		WithDialOptions(grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			dialled = true
			return invoker(ctx, method, req, reply, cc, opts...)
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Status(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) || Uncertain(err) || !dialled {
		t.Errorf("a call waiting for a missing daemon: %v, uncertain %t, want certain: it was never sent (interceptor ran: %t)", err, Uncertain(err), dialled)
	}
	ff, err := Dial(missing, WithFailFast())
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	if _, err := ff.Status(context.Background()); !errors.Is(err, ErrUnreachable) || !Retryable(err) {
		t.Errorf("a fail-fast call to a missing daemon: %v", err)
	}
}
