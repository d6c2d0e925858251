package links

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/dpconst"
)

// UplinkRoute is how slot traffic reaches the uplink: one policy rule sends
// everything from the guest address (the same in every slot, and the
// source of every packet a slot forwards before the datapath rewrites it on
// the uplink) to the pool's own routing table, which holds only a default
// route out of the uplink, and under it a blackhole default route: when the
// kernel removes the uplink's route (the link went down, or the device was
// deleted) slot traffic is dropped, never passed on to the host's main
// table and its default route. Three objects whatever the pool size.
//
// Without a gateway (a flat underlay) the default route's next hop is
// OnLinkNexthop, which a permanent neighbour on the uplink resolves at
// once: a fourth object. A route with no next hop would make the host
// resolve each packet's own destination on the uplink before the
// datapath sees it, and a VPC address, which is behind the tunnel, never
// resolves there: the packet would wait in the neighbour queue and die.
// Through OnLinkNexthop every slot packet reaches the uplink's egress
// program, which resolves the real next hop itself (the VTEP, or the
// NATed packet's destination) with bpf_redirect_neigh. That lookup is the
// kernel's, in the pool's resolve table (a default route straight out of
// the uplink), which a second rule selects by the datapath's marks and the
// uplink as output device: the route it finds becomes the packet's, so a
// packet that waits for its neighbour is sent to the right one when it
// resolves (with the next hop passed to bpf_redirect_neigh instead, the
// packet would keep its route through the placeholder, and the neighbour
// queue would send it there). Seven objects in all, whatever the pool size.
type UplinkRoute struct {
	Prefix    string // names the table (see RouteTable)
	Uplink    string
	Gateway   netip.Addr // next hop on the uplink; invalid: destinations are on-link
	GuestCIDR netip.Prefix
}

// OnLinkNexthop is the next hop of a flat underlay's pool table, and
// OnLinkNexthopMAC its permanent neighbour on the uplink. 192.0.0.8 is
// the IPv4 dummy address (RFC 7600), which no host on a link answers for;
// no frame is ever sent to the MAC (the datapath rewrites the Ethernet
// header of every slot packet, and the backstop drops any it did not
// translate).
var (
	OnLinkNexthop    = netip.MustParseAddr("192.0.0.8")
	OnLinkNexthopMAC = net.HardwareAddr{0x02, 0x6e, 0x73, 0x00, 0x00, 0x08}
)

// RulePriority is the priority of the pool's policy rule: before the main
// table (32766).
const RulePriority = 1000

// RouteTable is the routing table of prefix's pool: a fixed function of
// the prefix, so that teardown finds it without any state.
func RouteTable(prefix string) int {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	// 30 bits of hash above the small ids people configure by hand.
	return 0x40000000 | int(h.Sum32()&0x3fffffff)
}

// ResolveTable is the resolve table of prefix's pool on a flat underlay
// (see UplinkRoute).
func ResolveTable(prefix string) int { return RouteTable(prefix) ^ 0x20000000 }

// resolveMark and resolveMask select the datapath's marks
// (dpconst.EncapMark, dpconst.NeighMark) in the resolve rule.
const (
	resolveMark = dpconst.EncapMark &^ 3
	resolveMask = ^uint32(3)
)

func init() {
	for _, m := range []uint32{dpconst.EncapMark, dpconst.NeighMark} {
		if m&resolveMask != resolveMark {
			panic("dpconst marks outside the resolve rule's mask")
		}
	}
}

func (u UplinkRoute) resolveRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = RulePriority
	r.Table = ResolveTable(u.Prefix)
	r.Mark = resolveMark
	mask := resolveMask
	r.Mask = &mask
	r.OifName = u.Uplink
	return r
}

func (u UplinkRoute) resolveRoute(uplink int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: uplink,
		Table:     ResolveTable(u.Prefix),
		Scope:     netlink.SCOPE_LINK,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}
}

func (u UplinkRoute) rule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = RulePriority
	r.Table = RouteTable(u.Prefix)
	r.Src = &net.IPNet{IP: u.GuestCIDR.Addr().AsSlice(), Mask: net.CIDRMask(u.GuestCIDR.Bits(), 32)}
	return r
}

// blackholeMetric puts the table's blackhole route under the uplink's.
const blackholeMetric = 0x7fffffff

func (u UplinkRoute) blackhole() *netlink.Route {
	return &netlink.Route{
		Table:    RouteTable(u.Prefix),
		Type:     unix.RTN_BLACKHOLE,
		Priority: blackholeMetric,
		Dst:      &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}
}

func (u UplinkRoute) route(uplink int) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: uplink,
		Table:     RouteTable(u.Prefix),
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}
	if u.Gateway.IsValid() {
		r.Gw = u.Gateway.AsSlice()
	} else {
		r.Gw = OnLinkNexthop.AsSlice()
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

// neigh is the flat underlay's permanent neighbour (see OnLinkNexthop).
func (u UplinkRoute) neigh(uplink int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    uplink,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           OnLinkNexthop.AsSlice(),
		HardwareAddr: OnLinkNexthopMAC,
	}
}

// Apply writes the table's default route and the rule, in the calling
// thread's namespace. It refuses when another table already takes traffic
// from the guest CIDR at that priority (another pool with the same guest
// addressing has an uplink).
func (u UplinkRoute) Apply() error {
	want := u.rule()
	rules, err := Rules(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	have := false
	for _, r := range rules {
		if r.Priority != RulePriority || r.Src == nil || r.Src.String() != want.Src.String() {
			continue
		}
		if r.Table != want.Table {
			return fmt.Errorf("traffic from %s is already routed by table %d (another netslot pool with an uplink?)", u.GuestCIDR, r.Table)
		}
		have = true
	}
	// The blackhole and the rule go in even while the uplink is missing:
	// they are what keeps slot traffic off the host's other routes.
	if err := netlink.RouteReplace(u.blackhole()); err != nil {
		return fmt.Errorf("blackhole route of table %d: %w", want.Table, err)
	}
	if !have {
		if err := netlink.RuleAdd(want); err != nil {
			return fmt.Errorf("rule from %s: %w", u.GuestCIDR, err)
		}
	}
	resolve := false
	for _, r := range rules {
		if r.Table != ResolveTable(u.Prefix) || u.Gateway.IsValid() {
			continue
		}
		if r.Mark == resolveMark && r.OifName == u.Uplink {
			resolve = true
			continue
		}
		// Another uplink's (a restart changed --uplink): its rule would
		// keep the marked packets off this uplink's resolve table, and
		// its placeholder neighbour would stay behind.
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete stale resolve rule (oif %s): %w", r.OifName, err)
		}
		if old, err := netlink.LinkByName(r.OifName); err == nil && r.OifName != "" {
			if err := delPlaceholder(old.Attrs().Index); err != nil {
				return err
			}
		}
	}
	if u.Gateway.IsValid() {
		// A gateway's pool needs none of a flat underlay's objects (a
		// restart may have changed the pool's mode).
		if err := u.removeFlat(rules); err != nil {
			return err
		}
	} else if !resolve {
		if err := netlink.RuleAdd(u.resolveRule()); err != nil {
			return fmt.Errorf("resolve rule of table %d: %w", ResolveTable(u.Prefix), err)
		}
	}
	l, err := netlink.LinkByName(u.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", u.Uplink, err)
	}
	if !u.Gateway.IsValid() {
		// Before the route that needs them.
		if err := netlink.NeighSet(u.neigh(l.Attrs().Index)); err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", OnLinkNexthop, u.Uplink, err)
		}
		if err := netlink.RouteReplace(u.resolveRoute(l.Attrs().Index)); err != nil {
			return fmt.Errorf("default route of table %d via %s: %w", ResolveTable(u.Prefix), u.Uplink, err)
		}
	}
	if err := netlink.RouteReplace(u.route(l.Attrs().Index)); err != nil {
		return fmt.Errorf("default route of table %d via %s: %w", want.Table, u.Uplink, err)
	}
	return nil
}

// removeFlat removes the flat underlay's resolve rule, resolve table and
// placeholder neighbour; what is missing is not an error.
func (u UplinkRoute) removeFlat(rules []netlink.Rule) error {
	var errs []error
	for _, r := range rules {
		if r.Table != ResolveTable(u.Prefix) {
			continue
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete resolve rule: %w", err))
		}
	}
	routes, err := Routes(nil, unix.AF_INET, &netlink.Route{Table: ResolveTable(u.Prefix)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list table %d: %w", ResolveTable(u.Prefix), err))...)
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route: %w", err))
		}
	}
	if l, err := netlink.LinkByName(u.Uplink); err == nil {
		errs = append(errs, delPlaceholder(l.Attrs().Index))
	}
	return errors.Join(errs...)
}

// delPlaceholder deletes the placeholder neighbour of a flat underlay on
// the link of index ifindex, if it is there.
func delPlaceholder(ifindex int) error {
	err := netlink.NeighDel(UplinkRoute{}.neigh(ifindex))
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete neighbour %s: %w", OnLinkNexthop, err)
	}
	return nil
}

// Check reports whether the rule and the table's default route are as
// Apply writes them (the kernel drops the route when the uplink goes down,
// and with the device when it is deleted).
func (u UplinkRoute) Check() error {
	want := u.rule()
	rules, err := Rules(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool {
		return r.Priority == RulePriority && r.Table == want.Table && r.Src != nil && r.Src.String() == want.Src.String()
	}) {
		return fmt.Errorf("rule from %s to table %d missing", u.GuestCIDR, want.Table)
	}
	routes, err := Routes(nil, unix.AF_INET, &netlink.Route{Table: want.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list table %d: %w", want.Table, err)
	}
	isDefault := func(r netlink.Route) bool { return r.Dst == nil || r.Dst.IP.IsUnspecified() }
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Type == unix.RTN_BLACKHOLE && isDefault(r)
	}) {
		return fmt.Errorf("blackhole route of table %d missing", want.Table)
	}
	l, err := netlink.LinkByName(u.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", u.Uplink, err)
	}
	wantGw := u.route(l.Attrs().Index).Gw
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.LinkIndex == l.Attrs().Index && r.Type == unix.RTN_UNICAST && isDefault(r) && r.Gw.Equal(wantGw)
	}) {
		return fmt.Errorf("default route of table %d via %s missing", want.Table, u.Uplink)
	}
	if u.Gateway.IsValid() {
		return nil
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool {
		return r.Table == ResolveTable(u.Prefix) && r.Mark == resolveMark && r.OifName == u.Uplink
	}) {
		return fmt.Errorf("resolve rule of table %d missing", ResolveTable(u.Prefix))
	}
	resolve, err := Routes(nil, unix.AF_INET, &netlink.Route{Table: ResolveTable(u.Prefix)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list table %d: %w", ResolveTable(u.Prefix), err)
	}
	if !slices.ContainsFunc(resolve, func(r netlink.Route) bool {
		return r.LinkIndex == l.Attrs().Index && r.Type == unix.RTN_UNICAST && isDefault(r) && r.Gw == nil
	}) {
		return fmt.Errorf("default route of table %d via %s missing", ResolveTable(u.Prefix), u.Uplink)
	}
	neighs, err := Neighs(nil, l.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", u.Uplink, err)
	}
	if !slices.ContainsFunc(neighs, func(n netlink.Neigh) bool {
		return n.IP.Equal(OnLinkNexthop.AsSlice()) && n.State == netlink.NUD_PERMANENT && bytes.Equal(n.HardwareAddr, OnLinkNexthopMAC)
	}) {
		return fmt.Errorf("permanent neighbour %s on %s missing", OnLinkNexthop, u.Uplink)
	}
	return nil
}

// RemoveUplinkRoute deletes prefix's rules and the routes of its table; what
// is missing is not an error.
func RemoveUplinkRoute(prefix string) error {
	tables := []int{RouteTable(prefix), ResolveTable(prefix)}
	rules, err := Rules(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	var errs []error
	for _, r := range rules {
		if !slices.Contains(tables, r.Table) {
			continue
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule: %w", err))
		}
	}
	for _, table := range tables {
		routes, err := Routes(nil, unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list table %d: %w", table, err))
			continue
		}
		for _, r := range routes {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route: %w", err))
			}
			// A flat underlay's placeholder neighbour goes with its
			// routes.
			if (r.Gw.Equal(OnLinkNexthop.AsSlice()) || table == ResolveTable(prefix)) && r.LinkIndex != 0 {
				errs = append(errs, delPlaceholder(r.LinkIndex))
			}
		}
	}
	return errors.Join(errs...)
}

// UplinkAddrs are the IPv4 addresses of the root-namespace device name,
// with their prefix lengths (the subnets the device is on).
func UplinkAddrs(name string) ([]netip.Prefix, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("uplink %s: %w", name, err)
	}
	addrs, err := Addrs(nil, l, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", name, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// CheckOnLink fails unless the root namespace reaches gw directly through
// device name (a connected or on-link route: what a route "via gw dev
// name" needs), asking the kernel's routing as a packet would.
func CheckOnLink(name string, gw netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	// Not with Oif set: the kernel then takes any destination for on-link.
	routes, err := netlink.RouteGet(gw.AsSlice())
	if err != nil || len(routes) == 0 {
		return fmt.Errorf("%s is not reachable through %s: %v", gw, name, err)
	}
	if r := routes[0]; r.LinkIndex != l.Attrs().Index || r.Gw != nil {
		return fmt.Errorf("%s is not on %s's link (the kernel routes it via %v)", gw, name, r.Gw)
	}
	return nil
}

// IsLocalAddr reports whether a is an address of the calling thread's
// namespace (the kernel routes it to itself).
func IsLocalAddr(a netip.Addr) (bool, error) {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil {
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
			return false, nil
		}
		return false, fmt.Errorf("route to %s: %w", a, err)
	}
	return len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL, nil
}

// RPFilterAll is net.ipv4.conf.all.rp_filter of the root namespace.
func RPFilterAll() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
	if err != nil {
		return 0, fmt.Errorf("read rp_filter: %w", err)
	}
	switch strings.TrimSpace(string(b)) {
	case "0":
		return 0, nil
	case "1":
		return 1, nil
	default:
		return 2, nil
	}
}
