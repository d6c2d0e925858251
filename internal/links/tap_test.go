package links

import (
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
)

// BenchmarkHeldTapReset times what release adds to put back the settings
// a VMM may leave on tap0 (HeldTap.Reset, owner and group included), on a
// tap of a namespace made for the benchmark, held as a scrub holds it.
func BenchmarkHeldTapReset(b *testing.B) {
	testenv.PrivateNetns(b)
	if err := createTap(slot.TapName, nil); err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	tap, err := HoldTap(h, slot.TapName)
	if err != nil {
		b.Fatal(err)
	}
	defer tap.Close()
	for b.Loop() {
		if err := tap.Reset(); err != nil {
			b.Fatal(err)
		}
	}
}
