package server

import (
	"fmt"
	"strings"
	"testing"

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
	if err != nil || ar.VPC.VNI != 9 || len(ar.EgressAllow) != 1 || ar.Owner != "vm" {
		t.Fatalf("parseAcquire(ok) = %+v, %v", ar, err)
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
	}
	for _, tc := range bad {
		if _, err := parseAcquire(tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseAcquire(%v) = %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestStatusCodes(t *testing.T) {
	for err, code := range map[error]codes.Code{
		daemon.ErrUnknownID:                         codes.NotFound,
		fmt.Errorf("x: %w", daemon.ErrNotLeased):    codes.FailedPrecondition,
		fmt.Errorf("x: %w", daemon.ErrExhausted):    codes.ResourceExhausted,
		fmt.Errorf("x: %w", daemon.ErrInProgress):   codes.Aborted,
		fmt.Errorf("netlink: something went wrong"): codes.Internal,
	} {
		if got := status.Code(toStatus(err)); got != code {
			t.Errorf("toStatus(%v) = %s, want %s", err, got, code)
		}
	}
}
