package datapath

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
)

// A pool refuses an uplink that another pool's datapath sits on, and
// only that: a device of another namespace with the same ifindex (the
// uplink of a host played by a namespace, as tests make, or of a
// container's) is another device. Before, the pinned link's ifindex
// alone decided, and a pool in a host namespace was refused because a
// pool of the machine had an uplink with the same number.
func TestNeighbourOnTheSameUplinkOnly(t *testing.T) {
	e := newEnv(t, 2)
	up, err := netlink.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	other := slot.DefaultConfig("dpn", 2)
	other.SlotCIDR = netip.MustParsePrefix("100.99.0.0/24") // apart from e.s
	if err := CheckNeighbours(pinRoot, other, up.Attrs().Index); err == nil || !strings.Contains(err.Error(), "already carries pool \""+e.cfg.Prefix+"\"") {
		t.Errorf("a second pool on the first's uplink: %v, want a refusal naming %s", err, e.cfg.Prefix)
	}
	// The same ifindex in another namespace.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", Index: up.Attrs().Index}, PeerName: "up1"}
		if err := netlink.LinkAdd(veth); err != nil {
			errc <- err
			return
		}
		l, err := netlink.LinkByName("up0")
		if err != nil || l.Attrs().Index != up.Attrs().Index {
			errc <- err
			return
		}
		errc <- CheckNeighbours(pinRoot, other, up.Attrs().Index)
	}()
	if err := <-errc; err != nil {
		t.Errorf("a pool on another namespace's device of the same ifindex: %v, want no refusal", err)
	}
}
