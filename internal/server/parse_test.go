package server

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/daemon"
)

func TestParseAcquire(t *testing.T) {
	ok := &netslotv1.AcquireRequest{
		Vpc:         &netslotv1.VpcAttachment{Vni: 9, RemoteVtep: "198.18.0.9", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/16"}},
		EgressAllow: []string{"198.18.5.0/24"},
		Owner:       "vm",
	}
	ar, err := parseAcquire(ok)
	if err != nil || ar.VPC.VNI != 9 || len(ar.Egress.Allow) != 1 || ar.Owner != "vm" || ar.Egress.DenyAll {
		t.Fatalf("parseAcquire(ok) = %+v, %v", ar, err)
	}
	ar, err = parseAcquire(&netslotv1.AcquireRequest{EgressDenyAll: true, Inbound: []*netslotv1.InboundRule{
		{Protocol: "tcp", Port: 8080}, {Protocol: "udp", Port: 53, PortEnd: 54, SourceCidr: "198.18.0.0/15"}, {Protocol: "icmp"}}})
	if err != nil || !ar.Egress.DenyAll || len(ar.Inbound) != 3 || ar.Inbound[1].String() != "udp/53-54,198.18.0.0/15" {
		t.Fatalf("deny all with inbound rules: %+v, %v", ar, err)
	}
	bad := []struct {
		req  *netslotv1.AcquireRequest
		want string
	}{
		{&netslotv1.AcquireRequest{Vpc: &netslotv1.VpcAttachment{Vni: 0, RemoteVtep: "198.18.0.9", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/16"}}}, "invalid vni 0"},
		{&netslotv1.AcquireRequest{Vpc: &netslotv1.VpcAttachment{Vni: 1 << 24, RemoteVtep: "198.18.0.9", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/16"}}}, "invalid vni 16777216"},
		{&netslotv1.AcquireRequest{EgressAllow: []string{"10.0.0.0/40"}}, "invalid egress cidr"},
		{&netslotv1.AcquireRequest{EgressAllow: []string{"garbage"}}, "invalid egress cidr"},
		{&netslotv1.AcquireRequest{Owner: strings.Repeat("o", 300)}, "owner label too long"},
		{&netslotv1.AcquireRequest{EgressDenyAll: true, EgressAllow: []string{"10.0.0.0/8"}}, "choose one"},
		{&netslotv1.AcquireRequest{Inbound: []*netslotv1.InboundRule{{Protocol: "tcp"}}}, "invalid inbound ports"},
		{&netslotv1.AcquireRequest{Inbound: []*netslotv1.InboundRule{{Protocol: "gre"}}}, "invalid inbound protocol"},
		{&netslotv1.AcquireRequest{Inbound: []*netslotv1.InboundRule{{Protocol: "icmp", Port: 3}}}, "icmp has no ports"},
		{&netslotv1.AcquireRequest{Inbound: []*netslotv1.InboundRule{{Protocol: "udp", Port: 5, SourceCidr: "10.0.0.1/8"}}}, "host bits"},
		{&netslotv1.AcquireRequest{Inbound: make([]*netslotv1.InboundRule, 17)}, "invalid inbound protocol"},
	}
	for _, tc := range bad {
		if _, err := parseAcquire(tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseAcquire(%v) = %v, want %q", tc.req, err, tc.want)
		}
	}
}

// Every daemon error maps to a status code and a reason; a deadline the
// daemon saw pass is DEADLINE_EXCEEDED or CANCELLED with ReasonDeadline.
func TestStatusCodesAndReasons(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{daemon.ErrUnknownID, codes.NotFound, netslotv1.ReasonUnknownSlot},
		{fmt.Errorf("x: %w", daemon.ErrNotLeased), codes.FailedPrecondition, netslotv1.ReasonNotLeased},
		{fmt.Errorf("x: %w", daemon.ErrLeaseMismatch), codes.FailedPrecondition, netslotv1.ReasonLeaseMismatch},
		{fmt.Errorf("x: %w", daemon.ErrExhausted), codes.ResourceExhausted, netslotv1.ReasonPoolEmpty},
		{fmt.Errorf("x: %w", daemon.ErrNotReady), codes.Unavailable, netslotv1.ReasonNotReady},
		{fmt.Errorf("x: %w", daemon.ErrDraining), codes.Unavailable, netslotv1.ReasonDraining},
		{fmt.Errorf("x: %w", daemon.ErrInProgress), codes.Aborted, netslotv1.ReasonInProgress},
		{fmt.Errorf("x: %w", daemon.ErrInvalid), codes.InvalidArgument, netslotv1.ReasonInvalid},
		{fmt.Errorf("x: %w", daemon.ErrKeyReused), codes.InvalidArgument, netslotv1.ReasonKeyReused},
		{fmt.Errorf("x: %w", daemon.ErrInUse), codes.FailedPrecondition, netslotv1.ReasonTapInUse},
		{fmt.Errorf("x: %w", daemon.ErrNoUplink), codes.FailedPrecondition, netslotv1.ReasonNoUplink},
		{fmt.Errorf("x: %w", daemon.ErrConflict), codes.AlreadyExists, netslotv1.ReasonConflict},
		{fmt.Errorf("%w: %w", daemon.ErrDeadline, context.DeadlineExceeded), codes.DeadlineExceeded, netslotv1.ReasonDeadline},
		{fmt.Errorf("%w: %w", daemon.ErrDeadline, context.Canceled), codes.Canceled, netslotv1.ReasonDeadline},
		{fmt.Errorf("netlink: something went wrong"), codes.Internal, netslotv1.ReasonInternal},
	} {
		st := status.Convert(toStatus(tc.err))
		var reason string
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == netslotv1.ErrorDomain {
				reason = info.GetReason()
			}
		}
		if st.Code() != tc.code || reason != tc.reason || st.Message() != tc.err.Error() {
			t.Errorf("toStatus(%v) = %s %q %q, want %s %q", tc.err, st.Code(), reason, st.Message(), tc.code, tc.reason)
		}
	}
}

func TestParseAcquireDNS(t *testing.T) {
	ar, err := parseAcquire(&netslotv1.AcquireRequest{Dns: []string{"198.18.0.53", "198.18.1.53"}})
	if err != nil || len(ar.DNS) != 2 || ar.DNS[1].String() != "198.18.1.53" {
		t.Fatalf("dns: %+v, %v", ar.DNS, err)
	}
	for _, bad := range [][]string{{"dns.example"}, {"2001:db8::53"}, {"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}} {
		if _, err := parseAcquire(&netslotv1.AcquireRequest{Dns: bad}); err == nil {
			t.Errorf("dns %v accepted", bad)
		}
	}
}

// A tap owner is a uid and a gid, both given, neither root nor -1; a bad
// one is INVALID_ARGUMENT, as Acquire maps parseAcquire's errors.
func TestParseAcquireTapOwner(t *testing.T) {
	ar, err := parseAcquire(&netslotv1.AcquireRequest{TapOwner: &netslotv1.TapOwner{Uid: 4242, Gid: 4243}})
	if err != nil || ar.TapOwner == nil || ar.TapOwner.UID != 4242 || ar.TapOwner.GID != 4243 {
		t.Fatalf("tap owner: %+v, %v", ar.TapOwner, err)
	}
	if ar, err := parseAcquire(&netslotv1.AcquireRequest{}); err != nil || ar.TapOwner != nil {
		t.Fatalf("no tap owner: %+v, %v", ar.TapOwner, err)
	}
	for _, bad := range []*netslotv1.TapOwner{
		{Uid: 4294967295, Gid: 4242}, {Uid: 4242, Gid: 4294967295}, {Uid: 0, Gid: 4242}, {Uid: 4242, Gid: 0}, {},
	} {
		// Refused before the daemon is asked (the server has none here).
		_, err := (&Server{}).Acquire(context.Background(), &netslotv1.AcquireRequest{TapOwner: bad})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "invalid tap") {
			t.Errorf("tap owner %v: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
}
