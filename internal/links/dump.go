package links

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The kernel marks a dump interrupted (NLM_F_DUMP_INTR) when the list
// changed while it was read: routine on a host where anything creates or
// deletes links, and while the kernel dismantles namespaces in the
// background (their host veths leave the root namespace then). netlink
// hands back what it read with ErrDumpInterrupted. Every dump in this tree
// goes through the functions below (TestEveryDumpIsRetried checks), which
// read again, backing off a little, until a dump comes back whole.
//
// On a host whose links never hold still (another pool booting, a CNI
// plugin or a loop creating and deleting veths, thousands of links to
// read), no dump may ever come back whole. After dumpAttempts reads, the
// union of what they returned is the answer, each object as last read.
// Since Linux 6.6 the kernel walks links in ifindex order and resumes
// after the last one it sent, so every link that existed throughout is in
// every read; an older kernel, walking hash chains, may skip one in a read
// (another read likely has it). Objects that came or went meanwhile may be
// in it or not, as they would be a moment later anyway. Callers look for
// their own objects, which nobody else changes, and where missing one
// would do harm (boot taking a slot for damaged) they ask for it by name.

// dumpAttempts bounds the reads of one dump; dumpBackoffMax bounds the
// (jittered, doubling) wait between the later ones.
const (
	dumpAttempts   = 8
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
	return retryDump(handle(h).LinkList, func(l netlink.Link) string { return strconv.Itoa(l.Attrs().Index) })
}

// Addrs lists the addresses of family on l (nil: on every link) in h's
// namespace (nil: the calling thread's).
func Addrs(h *netlink.Handle, l netlink.Link, family int) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return handle(h).AddrList(l, family) },
		func(a netlink.Addr) string { return strconv.Itoa(a.LinkIndex) + " " + a.IPNet.String() })
}

// Routes lists the routes of family in h's namespace (nil: the calling
// thread's) that match filter on the fields of mask (netlink.RT_FILTER_*;
// a nil filter: the main table).
func Routes(h *netlink.Handle, family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return handle(h).RouteListFiltered(family, filter, mask) },
		func(r netlink.Route) string { return strconv.Itoa(r.Table) + " " + r.String() })
}

// Rules lists the policy rules of family in h's namespace (nil: the
// calling thread's).
func Rules(h *netlink.Handle, family int) ([]netlink.Rule, error) {
	return retryDump(func() ([]netlink.Rule, error) { return handle(h).RuleList(family) },
		func(r netlink.Rule) string { return r.String() })
}

// Neighs lists the neighbours of family on the link of index linkIndex (0:
// every link) in h's namespace (nil: the calling thread's).
func Neighs(h *netlink.Handle, linkIndex, family int) ([]netlink.Neigh, error) {
	return retryDump(func() ([]netlink.Neigh, error) { return handle(h).NeighList(linkIndex, family) },
		func(n netlink.Neigh) string { return strconv.Itoa(n.LinkIndex) + " " + n.IP.String() })
}

// retryDump runs dump until it comes back whole, or returns the union of
// dumpAttempts interrupted reads (by key; an object's latest copy).
func retryDump[T any](dump func() ([]T, error), key func(T) string) ([]T, error) {
	var union []T
	pos := map[string]int{}
	for attempt := range dumpAttempts {
		out, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		for _, o := range out {
			k := key(o)
			if n, ok := pos[k]; ok {
				union[n] = o
				continue
			}
			pos[k] = len(union)
			union = append(union, o)
		}
		if attempt >= 2 && attempt < dumpAttempts-1 {
			wait := min(time.Duration(1<<(attempt-2))*250*time.Microsecond, dumpBackoffMax)
			time.Sleep(wait/2 + rand.N(wait/2+1))
		}
	}
	return union, nil
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
