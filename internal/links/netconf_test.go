package links

import (
	"errors"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/testenv"
)

// TestDevProbe asks a probe about a device that exists, one whose
// forwarding changes the way an operator changes it (/proc/sys, which
// is what the kernel's netconf events report), and one that is gone.
func TestDevProbe(t *testing.T) {
	testenv.PrivateNetns(t)
	vethsUp(t, [2]string{"pa0", "pa1"})
	l, err := netlink.LinkByName("pa0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := OpenDevProbe()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if name, err := p.Name(l.Attrs().Index); err != nil || name != "pa0" {
		t.Fatalf("Name(%d) = %q, %v; want pa0", l.Attrs().Index, name, err)
	}
	for _, on := range []bool{true, false, true} {
		if err := SetHostDevConf(l.Attrs().Index, on); err != nil {
			t.Fatal(err)
		}
		c, err := p.Netconf(l.Attrs().Index)
		if err != nil || c.Ifindex != l.Attrs().Index || c.Forwarding != on || c.RPFilter != 0 {
			t.Fatalf("after setting forwarding %v: %+v, %v", on, c, err)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/pa0/forwarding", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	if c, err := p.Netconf(l.Attrs().Index); err != nil || c.Forwarding {
		t.Fatalf("after /proc/sys wrote forwarding 0: %+v, %v", c, err)
	}
	if c, err := p.Netconf(NetconfAll); err != nil || c.Ifindex != NetconfAll {
		t.Fatalf("Netconf(all) = %+v, %v", c, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Name(l.Attrs().Index); !errors.Is(err, ErrNoDevice) {
		t.Errorf("Name of a deleted device: %v, want ErrNoDevice", err)
	}
	if _, err := p.Netconf(l.Attrs().Index); !errors.Is(err, ErrNoDevice) {
		t.Errorf("Netconf of a deleted device: %v, want ErrNoDevice", err)
	}
}
