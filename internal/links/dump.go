package links

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds the retries of an interrupted dump. The kernel marks
// a dump interrupted (NLM_F_DUMP_INTR) when the list changed while it was
// read, which is routine while namespaces are created or dismantled.
const dumpRetries = 10

// RootLinks lists the links of the root namespace, retrying dumps the
// kernel reports as interrupted.
func RootLinks() ([]netlink.Link, error) {
	return retryDump(netlink.LinkList)
}

// RootRoutes lists the IPv4 routes of every table of the calling thread's
// namespace, retrying interrupted dumps.
func RootRoutes() ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
}

func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, fmt.Errorf("dump interrupted %d times: %w", dumpRetries, err)
}

// RoutedOverlap returns a root-namespace route (other than a default
// route) that overlaps one of ps, if any.
func RoutedOverlap(ps ...netip.Prefix) (route, p netip.Prefix, found bool, err error) {
	routes, err := RootRoutes()
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
