package links

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Per-device settings made over netlink instead of /proc/sys. Writing a
// sysctl in a namespace first resolves /proc/sys/net/ipv4 (or ipv6), and
// those dentries of every namespace hang in one hash chain under the shared
// /proc/sys/net: each write walks a chain as long as the number of slots,
// which made boot quadratic (measured: proc_sys_compare took a third of all
// CPU by slot 3,000 of 4,000). A slot therefore never touches /proc/sys:
//   - IPv4 forwarding is enabled per device (IFLA_INET_CONF), which is what
//     the kernel checks on the input device when it routes a packet;
//   - IPv6 gets no address generation (IFLA_INET6_ADDR_GEN_MODE none): no
//     link-local address, so no duplicate address detection, no router
//     solicitation and nothing for autoconfiguration to build on. The guest
//     cannot send IPv6 at all (tap0's ingress filter drops it) and the host
//     veth has IPv6 disabled, so no router advertisement reaches a slot.

const (
	ipv4DevconfForwarding = 1 // IPV4_DEVCONF_FORWARDING (1-based index)
	ipv4DevconfRPFilter   = 8 // IPV4_DEVCONF_RP_FILTER
	in6AddrGenModeNone    = 1 // IN6_ADDR_GEN_MODE_NONE
)

// setDevConf enables IPv4 forwarding and disables IPv6 address generation
// on ifindex, in the calling thread's namespace. It must run while the
// device is down: bringing a device up generates its link-local address.
func setDevConf(ifindex int) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	af := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := af.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfForwarding, nl.Uint32Attr(1))
	af.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNone})
	req.AddData(af)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set device conf of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// SetHostDevConf sets a host veth's IPv4 forwarding (on only when the
// pool has an uplink: slot traffic is routed from the veth to it; with no
// uplink the root namespace refuses to route slot traffic at all, besides
// the root table's drop rules) and turns reverse-path filtering off: every
// slot's traffic carries the same guest source address, which the root
// namespace cannot route back to any one veth. (The kernel applies the
// larger of this and net.ipv4.conf.all.rp_filter; netslotd refuses strict
// mode.) It runs in the calling thread's namespace, which must be the root
// namespace.
func SetHostDevConf(ifindex int, forward bool) error {
	fwd := uint32(0)
	if forward {
		fwd = 1
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	af := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := af.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfForwarding, nl.Uint32Attr(fwd))
	conf.AddRtAttr(ipv4DevconfRPFilter, nl.Uint32Attr(0))
	req.AddData(af)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set device conf of ifindex %d: %w", ifindex, err)
	}
	return nil
}

type devConfig struct {
	forwarding, noAddrGen bool
	rpFilter              uint32
}

// readDevConf reads back what setDevConf and SetHostDevConf write.
func readDevConf(ifindex int) (c devConfig, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return c, fmt.Errorf("get link %d: %w", ifindex, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return c, fmt.Errorf("get link %d: %d messages in the answer", ifindex, len(msgs))
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return c, err
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_AF_SPEC {
			continue
		}
		fams, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return c, err
		}
		for _, f := range fams {
			inner, err := nl.ParseRouteAttr(f.Value)
			if err != nil {
				return c, err
			}
			for _, x := range inner {
				switch {
				case f.Attr.Type == unix.AF_INET && x.Attr.Type == unix.IFLA_INET_CONF:
					c.forwarding = confAt(x.Value, ipv4DevconfForwarding) == 1
					c.rpFilter = confAt(x.Value, ipv4DevconfRPFilter)
				case f.Attr.Type == unix.AF_INET6 && x.Attr.Type == unix.IFLA_INET6_ADDR_GEN_MODE:
					c.noAddrGen = len(x.Value) > 0 && x.Value[0] == in6AddrGenModeNone
				}
			}
		}
	}
	return c, nil
}

// confAt is entry idx (1-based) of an IFLA_INET_CONF array.
func confAt(v []byte, idx int) uint32 {
	off := (idx - 1) * 4
	if len(v) < off+4 {
		return 0
	}
	return binary.NativeEndian.Uint32(v[off:])
}
