package server

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/slot"
)

// FuzzAcquireRequest decodes arbitrary bytes as an AcquireRequest, as the
// gRPC server does with what a client sends, and validates it. Whatever
// the bytes, parseAcquire answers; what it accepts is a request the daemon
// can apply as is: a VNI outside the pooled slots' range, IPv4 addresses,
// masked IPv4 CIDRs, a unicast peer MAC, an egress policy that is either
// an allow-list or deny-all, at most 16 valid inbound rules, and a
// bounded, valid UTF-8 owner.
func FuzzAcquireRequest(f *testing.F) {
	for _, r := range []*netslotv1.AcquireRequest{
		{},
		{Owner: "vm-1", EgressAllow: []string{"198.18.5.0/24", "0.0.0.0/0"}},
		{Vpc: &netslotv1.VpcAttachment{Vni: 9, RemoteVtep: "198.18.0.9", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/16"}, PeerMac: "02:00:00:00:00:09"}},
		{Vpc: &netslotv1.VpcAttachment{Vni: slot.DummyVNIBase, RemoteVtep: "198.18.0.9", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/16"}}},
		{Vpc: &netslotv1.VpcAttachment{Vni: 7, RemoteVtep: "fd00::1", VpcIp: "10.1.0.5", VpcCidrs: []string{"10.1.0.0/33"}}},
		{EgressAllow: []string{"10.0.0.1/8", "::/0", ""}, Owner: strings.Repeat("o", 300)},
		{EgressDenyAll: true, Inbound: []*netslotv1.InboundRule{{Protocol: "tcp", Port: 8080}, {Protocol: "udp", Port: 53, PortEnd: 60, SourceCidr: "198.18.0.0/15"}, {Protocol: "icmp"}}},
		{EgressDenyAll: true, EgressAllow: []string{"10.0.0.0/8"}, Inbound: []*netslotv1.InboundRule{{Protocol: "tcp", Port: 70000}, {Protocol: "icmp", Port: 1}}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req netslotv1.AcquireRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			return // gRPC answers InvalidArgument before the handler runs
		}
		ar, err := parseAcquire(&req)
		if err != nil {
			return
		}
		if a := ar.VPC; a != nil {
			if a.VNI == 0 || a.VNI > slot.MaxAttachVNI || !a.RemoteVTEP.Is4() || !a.VPCIP.Is4() || len(a.VPCCIDRs) == 0 {
				t.Fatalf("accepted attachment %+v", a)
			}
			for _, p := range a.VPCCIDRs {
				if !p.Addr().Is4() || p != p.Masked() {
					t.Fatalf("accepted vpc cidr %s", p)
				}
			}
			if m := a.PeerMAC; m != nil && (len(m) != 6 || m[0]&1 != 0) {
				t.Fatalf("accepted peer mac %s", m)
			}
		}
		for _, p := range ar.Egress.Allow {
			if !p.Addr().Is4() || p != p.Masked() {
				t.Fatalf("accepted egress cidr %s", p)
			}
		}
		if ar.Egress.DenyAll && len(ar.Egress.Allow) > 0 {
			t.Fatalf("accepted deny-all with an allow-list")
		}
		if len(ar.Inbound) > slot.MaxInboundRules {
			t.Fatalf("accepted %d inbound rules", len(ar.Inbound))
		}
		for _, r := range ar.Inbound {
			if back, err := slot.ParseInboundSpec(r.String()); err != nil || back != r {
				t.Fatalf("accepted inbound rule %+v, which does not read back (%v)", r, err)
			}
		}
		if len(ar.Owner) > 256 || !utf8.ValidString(ar.Owner) {
			t.Fatalf("accepted owner %q", ar.Owner)
		}
	})
}
