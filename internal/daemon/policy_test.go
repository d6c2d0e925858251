package daemon_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// The operator's deny ranges (netslotd --deny) hold whatever a lease's
// allow-list says, and sit in the pool's deny set with the fixed ranges
// and the uplink's subnet.
func TestOperatorDenyBeatsTheAllowList(t *testing.T) {
	cfg := testutil.NewConfig(2)
	fab := testutil.NewFabric(t, cfg.Prefix[1:], cfg.SlotCIDR)
	// The operator denies the outside host; the lease allows its whole
	// network, where another host answers too.
	other := netip.MustParseAddr("198.19.1.2")
	testutil.Exec(t, fab.Name, "ip", "addr", "add", other.String()+"/32", "dev", "lo")
	outside := netip.PrefixFrom(fab.Outside, 32)
	p := testutil.StartPoolOpts(t, daemon.Options{
		Config: cfg, StateDir: t.TempDir(),
		Uplink: fab.Uplink, UnderlayIP: fab.Underlay, UplinkGateway: fab.Gateway,
		Deny: []netip.Prefix{outside, netip.MustParsePrefix("10.0.0.0/8")},
	})
	deny := p.D.DenySet()
	for _, want := range []string{"169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "0.0.0.0/8", "198.18.0.0/24", outside.String(), "10.0.0.0/8"} {
		if !slices.Contains(deny, netip.MustParsePrefix(want)) {
			t.Errorf("deny set %v lacks %s", deny, want)
		}
	}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.19.1.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewGuestNS(t, cfg.Prefix[1:], cfg.NetnsPath(info.Index), cfg)
	if n := ping(t, g.Name, other, 2); n == 0 {
		t.Errorf("guest did not reach %s, which its lease allows and nobody denies", other)
	}
	if n := ping(t, g.Name, fab.Outside, 2); n != 0 {
		t.Errorf("guest reached %s, which the operator denies, with %d replies", fab.Outside, n)
	}

	// The deny set is for NATed traffic: a VPC's CIDRs inside it (here
	// 10.9.0.0/24 inside the operator's 10.0.0.0/8) are reached through
	// the tunnel all the same; the rest of 10/8 is not.
	testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
	a, err := slot.ParseAttachment(testVNI, fab.VTEP.String(), "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	vpc, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a})
	if err != nil {
		t.Fatal(err)
	}
	gv := testutil.NewGuestNS(t, cfg.Prefix[1:]+"v", cfg.NetnsPath(vpc.Index), cfg)
	if n := ping(t, gv.Name, vpcHost, 3); n == 0 {
		t.Errorf("guest did not reach its VPC host %s inside the operator's deny range", vpcHost)
	}
	before := slotDrops(t, p, vpc.ID, "egress_denied")
	if n := ping(t, gv.Name, netip.MustParseAddr("10.8.0.1"), 2); n != 0 {
		t.Errorf("guest reached 10.8.0.1, outside its VPC and in the deny set")
	}
	if d := slotDrops(t, p, vpc.ID, "egress_denied") - before; d != 2 {
		t.Errorf("egress_denied drops +%d, want +2", d)
	}
}

func slotDrops(t *testing.T, p *testutil.Pool, id, reason string) uint64 {
	t.Helper()
	info, err := p.D.Get(id)
	if err != nil || info.Datapath == nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return info.Datapath.Drops[reason]
}

// An attachment whose VTEP or VPC address collides with the pool's own
// addresses is refused, and changes nothing. With a slot's address as
// VTEP, another slot's VPC traffic would come back through the fabric and
// be delivered to that slot's guest.
func TestAttachmentsCollidingWithThePoolAreRefused(t *testing.T) {
	p, fab, _ := datapathPool(t, 2)
	before := p.D.Status()
	for _, tc := range []struct {
		vtep, ip, cidr, want string
	}{
		{p.Config.SlotIP(0).String(), "10.9.0.5", "10.9.0.0/24", "inside the pool's slot cidr"},
		{p.Config.GuestIP().String(), "10.9.0.5", "10.9.0.0/24", "inside the guest network"},
		{fab.Underlay.String(), "10.9.0.5", "10.9.0.0/24", "underlay address"},
		{fab.VTEP.String(), "10.8.0.5", "10.9.0.0/24", "not inside any of the vpc cidrs"},
		{fab.VTEP.String(), p.Config.SlotIP(1).String(), p.Config.SlotCIDR.String(), "inside the pool's slot cidr"},
	} {
		a, err := slot.ParseAttachment(testVNI, tc.vtep, tc.ip, []string{tc.cidr})
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a})
		if !errors.Is(err, daemon.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vtep %s vpc ip %s: %v, want ErrInvalid with %q", tc.vtep, tc.ip, err, tc.want)
		}
	}
	if after := p.D.Status(); after.Free != before.Free || after.Leased != 0 {
		t.Errorf("refused acquires changed the pool: %+v -> %+v", before, after)
	}
	for i := range 2 {
		if info, err := p.D.Get(p.Config.ID(i)); err != nil || info.Datapath == nil || !info.Datapath.Dummy {
			t.Errorf("slot %d after refused acquires: %+v, %v", i, info.Datapath, err)
		}
	}
}
