package links

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The kernel marks a dump interrupted (NLM_F_DUMP_INTR) when the list
// changed while it was read: routine on a host where anything creates or
// deletes links, and while the kernel dismantles namespaces in the
// background (their host veths leave the root namespace then). netlink
// hands back what it read with ErrDumpInterrupted; a partial list must not
// be taken for the whole one, so every dump in this tree goes through the
// functions below (TestEveryDumpIsRetried checks), which read again until
// a dump comes back whole.

// dumpAttempts bounds the reads of one dump. After the first few, each
// retry waits a little (up to dumpBackoffMax, jittered) so that a burst of
// changes can pass; a dump interrupted this many times in a row means the
// list never stops changing.
const (
	dumpAttempts   = 50
	dumpBackoffMax = 5 * time.Millisecond
)

// here is the calling thread's namespace (netlink's package-level calls).
var here = &netlink.Handle{}

func handle(h *netlink.Handle) *netlink.Handle {
	if h == nil {
		return here
	}
	return h
}

// Links lists the links of h's namespace (nil: the calling thread's).
func Links(h *netlink.Handle) ([]netlink.Link, error) {
	return retryDump(handle(h).LinkList)
}

// Addrs lists the addresses of family on l (nil: on every link) in h's
// namespace (nil: the calling thread's).
func Addrs(h *netlink.Handle, l netlink.Link, family int) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return handle(h).AddrList(l, family) })
}

// Routes lists the routes of family in h's namespace (nil: the calling
// thread's) that match filter on the fields of mask (netlink.RT_FILTER_*;
// a nil filter: the main table).
func Routes(h *netlink.Handle, family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return handle(h).RouteListFiltered(family, filter, mask) })
}

// Rules lists the policy rules of family in h's namespace (nil: the
// calling thread's).
func Rules(h *netlink.Handle, family int) ([]netlink.Rule, error) {
	return retryDump(func() ([]netlink.Rule, error) { return handle(h).RuleList(family) })
}

// Neighs lists the neighbours of family on the link of index linkIndex
// (0: every link) in h's namespace (nil: the calling thread's).
func Neighs(h *netlink.Handle, linkIndex, family int) ([]netlink.Neigh, error) {
	return retryDump(func() ([]netlink.Neigh, error) { return handle(h).NeighList(linkIndex, family) })
}

func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for attempt := range dumpAttempts {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		if attempt >= 3 {
			wait := min(time.Duration(1<<(attempt-3))*100*time.Microsecond, dumpBackoffMax)
			time.Sleep(wait/2 + rand.N(wait/2+1))
		}
	}
	return nil, fmt.Errorf("dump interrupted %d times in a row: %w", dumpAttempts, err)
}

// RoutedOverlap returns a route of the calling thread's namespace, in any
// table (other than a default route), that overlaps one of ps, if any.
func RoutedOverlap(ps ...netip.Prefix) (route, p netip.Prefix, found bool, err error) {
	routes, err := Routes(nil, unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return route, p, false, fmt.Errorf("list root routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || ones == 0 {
			continue
		}
		rp := netip.PrefixFrom(a, ones)
		for _, p := range ps {
			if rp.Overlaps(p) {
				return rp, p, true, nil
			}
		}
	}
	return route, p, false, nil
}
