// Package links builds, checks and scrubs the devices of a slot: tap0 for
// the VM, the eth0/host veth pair, their addresses, routes and neighbours.
//
// Every function that takes a slot handle works on the namespace that handle
// was opened in; functions that create a tap must also run on a thread that
// is inside the slot's namespace (see package netns).
package links

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
)

const (
	defaultTxQLen = 1000
	defaultMTU    = slot.GuestMTU
	loIndex       = 1 // lo is always ifindex 1 in a new namespace
)

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// Build creates the devices of slot i. The calling thread must be inside the
// new slot namespace, h must be a handle opened there and rootFD a
// descriptor of the root namespace. Devices are created in their final
// namespace: the veth's host end is created directly in the root namespace,
// nothing is moved. FinishHost completes the host end. tap0 belongs to
// owner (nil: root, a pooled slot).
//
// tapProg is the program tap0 runs at tc ingress (see AttachTapProgram),
// attached before tap0 comes up (a qdisc added to a device that is up
// waits for an RCU grace period); -1: none.
//
// It returns the ifindex of the host veth (in the root namespace).
func Build(h *netlink.Handle, rootFD int, c slot.Config, i, tapProg int, owner *slot.TapOwner) (hostIndex int, err error) {
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: loIndex}}); err != nil {
		return 0, fmt.Errorf("set lo up: %w", err)
	}
	if err := createTap(slot.TapName, owner); err != nil {
		return 0, err
	}
	tap, err := h.LinkByName(slot.TapName)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", slot.TapName, err)
	}
	if err := setDevConf(tap.Attrs().Index); err != nil {
		return 0, err
	}
	if tapProg >= 0 {
		if err := AttachTapProgram(h, tap.Attrs().Index, tapProg); err != nil {
			return 0, err
		}
	}
	if err := configureTap(h, tap, c); err != nil {
		return 0, err
	}
	gw := c.GatewayIP()
	if err := h.AddrAdd(tap, &netlink.Addr{IPNet: ipNet(gw, c.GuestCIDR.Bits())}); err != nil {
		return 0, fmt.Errorf("address %s: %w", slot.TapName, err)
	}

	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         slot.VethName,
			HardwareAddr: c.SlotVethMAC(i),
			MTU:          defaultMTU,
			// One queue each way on both ends, which is what a veth
			// uses unless told otherwise. Left to the kernel, each
			// end gets one per CPU, cut down to one once registered,
			// and the cut waits for an expedited RCU grace period
			// while holding RTNL (netif_set_real_num_tx_queues),
			// stalling every other builder.
			NumTxQueues: 1,
			NumRxQueues: 1,
		},
		PeerName:         c.HostVeth(i),
		PeerHardwareAddr: c.HostVethMAC(i),
		PeerNamespace:    netlink.NsFd(rootFD),
	}
	if err := h.LinkAdd(veth); err != nil {
		return 0, fmt.Errorf("create veth %s/%s: %w", slot.VethName, c.HostVeth(i), err)
	}
	eth0, err := h.LinkByName(slot.VethName)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", slot.VethName, err)
	}
	if err := setDevConf(eth0.Attrs().Index); err != nil {
		return 0, err
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return 0, fmt.Errorf("set %s up: %w", slot.VethName, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(c.SlotIP(i), 32)}); err != nil {
		return 0, fmt.Errorf("address %s: %w", slot.VethName, err)
	}
	if err := EnsureGateway(h, eth0.Attrs().Index, c, i); err != nil {
		return 0, err
	}
	if err := h.RouteAdd(defaultRoute(eth0.Attrs().Index)); err != nil {
		return 0, fmt.Errorf("default route: %w", err)
	}
	// A veth's link index is its peer's ifindex (in the peer's namespace).
	return eth0.Attrs().ParentIndex, nil
}

// FinishHost configures slot i's host veth; rootSys is /proc/sys/net/ipv6/conf of the
// root namespace.
//
// IPv6 is disabled on the host veth before it comes up: otherwise each one
// adds fe80::/64 and ff00::/8 routes to the root namespace, and routes of
// one prefix on many devices share a FIB node whose list every insert walks,
// so boot time grows with the square of the slot count (measured: the last
// 10 % of 4,000 slots were 4.6x slower than the first 10 %).
//
// The device is addressed by index: a lookup by name would make the kernel
// resolve the veth's peer namespace id, a walk over every slot namespace.
func FinishHost(root *netlink.Handle, rootSys SysctlDir, c slot.Config, i, hostIndex int, forward bool) error {
	name := c.HostVeth(i)
	if err := rootSys.Set(name+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := SetHostDevConf(hostIndex, forward); err != nil {
		return err
	}
	if err := root.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: hostIndex, Name: name}}); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func configureTap(h *netlink.Handle, tap netlink.Link, c slot.Config) error {
	if err := h.LinkSetHardwareAddr(tap, c.TapMAC); err != nil {
		return fmt.Errorf("set %s mac: %w", slot.TapName, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("set %s up: %w", slot.TapName, err)
	}
	return nil
}

func gatewayNeigh(ifindex int, c slot.Config, i int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    ifindex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           slot.HostGateway.AsSlice(),
		HardwareAddr: c.HostVethMAC(i),
	}
}

func defaultRoute(ifindex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: ifindex,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        slot.HostGateway.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
	}
}

// VerifyHost checks slot i's host veth (ifindex hostIndex) settings that a
// root-namespace dump does not show, and sets its forwarding to forward:
// a restart may add or remove the uplink, which must not rebuild slots that
// VMs are using.
func VerifyHost(rootSys SysctlDir, c slot.Config, i, hostIndex int, forward bool) error {
	conf, err := readDevConf(hostIndex)
	if err != nil {
		return err
	}
	if conf.rpFilter != 0 {
		return damaged("%s rp_filter=%d", c.HostVeth(i), conf.rpFilter)
	}
	if conf.forwarding != forward {
		if err := SetHostDevConf(hostIndex, forward); err != nil {
			return err
		}
	}
	v, err := rootSys.Get(c.HostVeth(i) + "/disable_ipv6")
	if err != nil {
		return damaged("%v", err)
	}
	if v != "1" {
		return damaged("ipv6 enabled on %s", c.HostVeth(i))
	}
	return nil
}

// ErrDamaged marks a slot whose devices differ from what Build makes.
var ErrDamaged = errors.New("slot damaged")

// ErrTapInUse: a process (the VM's VMM) still holds tap0 open.
var ErrTapInUse = errors.New("tap0 still attached")

func damaged(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrDamaged, fmt.Sprintf(format, a...))
}

// Adopt verifies slot i (see verify), its tap0 belonging to owner (nil:
// root), rewrites its gateway neighbour and makes tap0 run tapProg (see
// AttachTapProgram; -1: nothing).
func Adopt(h *netlink.Handle, c slot.Config, i, tapProg int, owner *slot.TapOwner) error {
	if err := verifyAndGateway(h, c, i, owner); err != nil {
		return err
	}
	tap, err := h.LinkByName(slot.TapName)
	if err != nil {
		return fmt.Errorf("find %s: %w", slot.TapName, err)
	}
	return AttachTapProgram(h, tap.Attrs().Index, tapProg)
}

// verifyAndGateway verifies slot i (see verify) and rewrites its gateway
// neighbour.
func verifyAndGateway(h *netlink.Handle, c slot.Config, i int, owner *slot.TapOwner) error {
	eth0, err := verify(h, c, i, owner)
	if err != nil {
		return err
	}
	return EnsureGateway(h, eth0, c, i)
}

// verify checks the devices, addresses, device settings and routes of slot
// i in the namespace of h, and that tap0 belongs to owner (nil: root; a
// difference is ErrTapOwner, which an owner set anew repairs). The gateway
// neighbour is not listed (see EnsureGateway): callers rewrite it instead.
func verify(h *netlink.Handle, c slot.Config, i int, owner *slot.TapOwner) (eth0Index int, err error) {
	tap, err := h.LinkByName(slot.TapName)
	if err != nil {
		return 0, damaged("%s missing", slot.TapName)
	}
	if _, ok := tap.(*netlink.Tuntap); !ok || tap.Type() != "tuntap" {
		return 0, damaged("%s is a %s", slot.TapName, tap.Type())
	}
	if tap.Attrs().HardwareAddr.String() != c.TapMAC.String() {
		return 0, damaged("%s mac %s", slot.TapName, tap.Attrs().HardwareAddr)
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		return 0, damaged("%s down", slot.TapName)
	}
	if err := checkTapOwner(tap, owner); err != nil {
		return 0, err
	}
	if err := hasOnlyAddr(h, tap, c.GatewayIP(), c.GuestCIDR.Bits()); err != nil {
		return 0, err
	}
	if err := checkDevConf(tap); err != nil {
		return 0, err
	}
	eth0, err := h.LinkByName(slot.VethName)
	if err != nil {
		return 0, damaged("%s missing", slot.VethName)
	}
	if eth0.Type() != "veth" || eth0.Attrs().HardwareAddr.String() != c.SlotVethMAC(i).String() {
		return 0, damaged("%s is not slot %d's veth", slot.VethName, i)
	}
	if eth0.Attrs().Flags&net.FlagUp == 0 {
		return 0, damaged("%s down", slot.VethName)
	}
	if err := hasOnlyAddr(h, eth0, c.SlotIP(i), 32); err != nil {
		return 0, err
	}
	if err := checkDevConf(eth0); err != nil {
		return 0, err
	}
	routes, err := Routes(h, unix.AF_INET, &netlink.Route{LinkIndex: eth0.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	found := false
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(slot.HostGateway.AsSlice()) {
			found = true
		}
	}
	if !found {
		return 0, damaged("default route missing")
	}
	return eth0.Attrs().Index, nil
}

func checkDevConf(l netlink.Link) error {
	c, err := readDevConf(l.Attrs().Index)
	if err != nil {
		return err
	}
	if !c.forwarding || !c.noAddrGen {
		return damaged("%s forwarding=%t ipv6-addr-gen-none=%t", l.Attrs().Name, c.forwarding, c.noAddrGen)
	}
	return nil
}

func hasOnlyAddr(h *netlink.Handle, l netlink.Link, a netip.Addr, bits int) error {
	addrs, err := Addrs(h, l, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	if len(addrs) != 1 || !addrs[0].IP.Equal(a.AsSlice()) {
		return damaged("%s addresses %v, want %s/%d", l.Attrs().Name, addrs, a, bits)
	}
	if ones, _ := addrs[0].Mask.Size(); ones != bits {
		return damaged("%s prefix /%d, want /%d", l.Attrs().Name, ones, bits)
	}
	return nil
}

// Scrub removes what a tenant may have left on the slot's devices: learned
// neighbours, a changed MAC, MTU or queue length, and anything queued on the
// tap (a down/up cycle flushes the qdisc), then verifies the slot, with
// tap0 back to root's, and rewrites its gateway neighbour. The
// calling thread must be in the slot's namespace, and should hold the tap
// (HoldTap), so that no VMM attaches meanwhile; the holder puts tap0's
// owner back (HeldTap.SetOwner).
func Scrub(h *netlink.Handle, c slot.Config, i int) error {
	tap, err := h.LinkByName(slot.TapName)
	if err != nil {
		return fmt.Errorf("find %s: %w", slot.TapName, err)
	}
	// Taking tap0 down flushes every neighbour entry on it, permanent ones
	// included (neigh_ifdown), and whatever is queued on its qdisc.
	if err := h.LinkSetDown(tap); err != nil {
		return fmt.Errorf("set %s down: %w", slot.TapName, err)
	}
	a := tap.Attrs()
	if a.MTU != defaultMTU {
		if err := h.LinkSetMTU(tap, defaultMTU); err != nil {
			return fmt.Errorf("reset %s mtu: %w", slot.TapName, err)
		}
	}
	if a.TxQLen != defaultTxQLen {
		if err := h.LinkSetTxQLen(tap, defaultTxQLen); err != nil {
			return fmt.Errorf("reset %s queue length: %w", slot.TapName, err)
		}
	}
	if err := configureTap(h, tap, c); err != nil {
		return err
	}
	// tap0's program stays: no tenant reaches the slot's tc, and this
	// netslotd put its own there when it built or adopted the slot.
	return verifyAndGateway(h, c, i, nil)
}

// EnsureGateway (re)writes the permanent neighbour entry of the slot's next
// hop. Writing it is O(1); listing neighbours is not: the kernel's
// neighbour table is shared by all namespaces and a dump walks every
// slot's entries.
func EnsureGateway(h *netlink.Handle, eth0Index int, c slot.Config, i int) error {
	if err := h.NeighSet(gatewayNeigh(eth0Index, c, i)); err != nil {
		return fmt.Errorf("neighbour %s: %w", slot.HostGateway, err)
	}
	return nil
}
