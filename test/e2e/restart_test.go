package e2e

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/firewall"
)

func TestRestartAfterKill9KeepsLeases(t *testing.T) {
	p := newPool(t, 300)
	p.start()
	c := p.client()
	held := map[string]bool{}
	for i := range 5 {
		req := &netslotv1.AcquireRequest{Owner: "vm"}
		if i == 0 {
			req.EgressAllow = []string{"198.18.5.0/24"}
		}
		s, err := c.Acquire(ctx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		held[s.Id] = true
	}
	before := p.kernelObjects()
	p.kill()
	p.start()
	st := p.status()
	if st.Leased != 5 || st.Free != 295 || st.Boot.Adopted != 300 || st.Boot.Created != 0 || st.Boot.Repaired != 0 {
		t.Fatalf("status after kill -9 and restart: %+v", st)
	}
	if after := p.kernelObjects(); after != before {
		t.Fatalf("restart changed kernel objects: %+v -> %+v", before, after)
	}
	c = p.client()
	slots, err := c.List(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if held[s.Id] != (s.State == "leased") {
			t.Fatalf("slot %s is %s after restart (held: %t)", s.Id, s.State, held[s.Id])
		}
		if held[s.Id] && s.GetLease().GetOwner() != "vm" {
			t.Fatalf("lease of %s lost its owner: %v", s.Id, s.GetLease())
		}
	}
	// Nothing leased is vended again: drain the pool.
	for range 295 {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if held[s.Id] {
			t.Fatalf("leased slot %s vended again after restart", s.Id)
		}
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{}); err == nil {
		t.Fatal("pool not exhausted")
	}
}

func TestRestartRepairsAndRemovesStrays(t *testing.T) {
	p := newPool(t, 50)
	p.start()
	p.kill()
	ns := func(i string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", p.prefix + "-" + i}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	ns("3", "ip", "link", "del", "tap0")                                 // a device gone
	ns("4", "nft", "flush", "table", "netdev", p.prefix)                 // firewall emptied: rewritten, the slot kept
	ns("5", "ip", "addr", "flush", "dev", "eth0")                        // address gone
	ns("6", "ip", "link", "set", "tap0", "address", "02:00:00:00:00:99") // MAC changed
	if out, err := exec.Command("ip", "link", "set", p.prefix+"7", "down").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if err := os.Remove("/run/netns/" + p.prefix + "-8"); err == nil {
		t.Fatal("removing a mounted pin should fail") // sanity: pins are mount points
	}
	if out, err := exec.Command("umount", "/run/netns/"+p.prefix+"-8").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out) // the namespace itself is lost
	}
	// Strays of our prefix the store does not know.
	if out, err := exec.Command("ip", "netns", "add", p.prefix+"-77").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("ip", "link", "add", p.prefix+"99", "type", "veth", "peer", "name", "x"+p.prefix+"99").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "link", "del", "x"+p.prefix+"99").Run()
	if err := (firewall.Root{Prefix: p.prefix}).Remove(); err != nil {
		t.Fatal(err)
	}

	p.start()
	st := p.status()
	if st.Boot.Repaired+st.Boot.Created != 5 || st.Boot.Adopted != 45 || st.Free != 50 {
		t.Fatalf("after damage: %+v", st)
	}
	if !strings.Contains(p.log.String(), "slot firewall differs") || !strings.Contains(p.log.String(), p.prefix+"-4") {
		t.Errorf("slot 4's emptied firewall was not rewritten in place:\n%s", p.log)
	}
	if out, err := exec.Command("ip", "netns", "exec", p.prefix+"-4", "nft", "list", "table", "netdev", p.prefix).CombinedOutput(); err != nil || !strings.Contains(string(out), "@egress") {
		t.Errorf("slot 4's firewall after the restart: %v\n%s", err, out)
	}
	if o := p.kernelObjects(); o.Pins != 50 || o.RootTables != 1 || o.HostVeths != 50 {
		t.Fatalf("objects after repair: %+v", o)
	}
	if _, err := os.Stat("/run/netns/" + p.prefix + "-77"); !os.IsNotExist(err) {
		t.Fatalf("stray namespace survived: %v", err)
	}
	if _, err := netlink.LinkByName(p.prefix + "99"); !errors.As(err, &netlink.LinkNotFoundError{}) {
		t.Fatalf("stray host veth survived: %v", err)
	}
	if err := (firewall.Root{Prefix: p.prefix}).Verify(); err != nil {
		t.Fatalf("root table not restored: %v", err)
	}
	// A second restart finds nothing to do.
	p.kill()
	p.start()
	if st := p.status(); st.Boot.Adopted != 50 || st.Boot.Repaired != 0 || st.Boot.Created != 0 {
		t.Fatalf("second restart: %+v", st)
	}
}
