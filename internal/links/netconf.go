package links

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A host veth is looked at by its ifindex, one question each, never by a
// dump of the root namespace: a dump costs what the host has (another
// pool's thousands of links), a question what the pool owns. Both
// questions take no RTNL: SIOCGIFNAME resolves the index under RCU, and
// RTM_GETNETCONF reads the device's IPv4 configuration under RCU.

// Netconf attributes (include/uapi/linux/netconf.h); x/sys has none.
const (
	netconfaIfindex    = 1
	netconfaForwarding = 2
	netconfaRPFilter   = 3

	// NetconfAll and NetconfDefault are the ifindex of a netconf
	// message about net.ipv4.conf.all and .default.
	NetconfAll     = -1
	NetconfDefault = -2
)

// ErrNoDevice: no device has the ifindex asked about.
var ErrNoDevice = errors.New("no such device")

// DevProbe asks about devices of the namespace it was opened in, by
// ifindex, over sockets it keeps: about a microsecond and a half a device
// (questions go to the kernel in batches; each answer is one read). It is
// not safe for concurrent use.
type DevProbe struct {
	ioctl, nl int
	seq       uint32
	buf       []byte
}

// OpenDevProbe opens a probe of the calling thread's namespace.
func OpenDevProbe() (*DevProbe, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ioctl socket: %w", err)
	}
	// A blocking socket: the kernel answers a question before the send
	// that asked it returns, so a read never waits (but for a bound, in
	// case it would).
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err == nil {
		err = unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
		if err == nil {
			err = unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		}
		if err != nil {
			unix.Close(s)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &DevProbe{ioctl: fd, nl: s, buf: make([]byte, 8192)}, nil
}

// Close closes the probe's sockets.
func (p *DevProbe) Close() {
	unix.Close(p.ioctl)
	unix.Close(p.nl)
}

// Name is the name of device ifindex (ErrNoDevice: there is none).
func (p *DevProbe) Name(ifindex int) (string, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", err
	}
	ifr.SetUint32(uint32(ifindex))
	if err := unix.IoctlIfreq(p.ioctl, unix.SIOCGIFNAME, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return "", fmt.Errorf("ifindex %d: %w", ifindex, ErrNoDevice)
		}
		return "", fmt.Errorf("name of ifindex %d: %w", ifindex, err)
	}
	return ifr.Name(), nil
}

// Netconf is a device's IPv4 configuration that slot traffic depends on.
type Netconf struct {
	Ifindex    int // or NetconfAll, NetconfDefault
	Forwarding bool
	RPFilter   uint32
}

// Netconf reads the IPv4 configuration of device ifindex (NetconfAll:
// net.ipv4.conf.all).
func (p *DevProbe) Netconf(ifindex int) (Netconf, error) {
	var c Netconf
	var err error
	if berr := p.Netconfs([]int{ifindex}, func(_ int, nc Netconf, e error) { c, err = nc, e }); berr != nil {
		return Netconf{}, berr
	}
	return c, err
}

// netconfBatch is how many questions go to the kernel in one send.
const netconfBatch = 64

// Netconfs reads the IPv4 configuration of each device of ifindexes and
// calls fn with its position in ifindexes and the answer (an error
// wrapping ErrNoDevice for a device that is gone). It returns an error
// when the kernel could not be asked or did not answer.
func (p *DevProbe) Netconfs(ifindexes []int, fn func(k int, c Netconf, err error)) error {
	for lo := 0; lo < len(ifindexes); lo += netconfBatch {
		batch := ifindexes[lo:min(lo+netconfBatch, len(ifindexes))]
		var out []byte
		base := p.seq
		for k, ifindex := range batch {
			req := nl.NewNetlinkRequest(unix.RTM_GETNETCONF, 0)
			req.Seq = base + uint32(k)
			req.AddData(netconfmsg{})
			req.AddData(nl.NewRtAttr(netconfaIfindex, nl.Uint32Attr(uint32(int32(ifindex)))))
			out = append(out, req.Serialize()...)
		}
		p.seq += uint32(len(batch))
		if err := unix.Sendto(p.nl, out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("ask for netconf: %w", err)
		}
		for left := len(batch); left > 0; {
			n, _, err := unix.Recvfrom(p.nl, p.buf, 0)
			if errors.Is(err, unix.EINTR) {
				continue // a signal (a socket with a timeout is not restarted)
			}
			if err != nil {
				return fmt.Errorf("read netconf: %w", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(p.buf[:n])
			if err != nil {
				return fmt.Errorf("read netconf: %w", err)
			}
			for _, m := range msgs {
				k := int(m.Header.Seq - base)
				if m.Header.Seq-base >= uint32(len(batch)) {
					continue // an answer to a batch that gave up
				}
				left--
				ifindex := batch[k]
				switch m.Header.Type {
				case unix.NLMSG_ERROR:
					errno := unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data)))
					if errno == unix.ENODEV || errno == unix.EINVAL {
						// A device that is gone, as the kernel says it.
						fn(lo+k, Netconf{}, fmt.Errorf("netconf of ifindex %d: %w (%w)", ifindex, ErrNoDevice, errno))
					} else {
						fn(lo+k, Netconf{}, fmt.Errorf("netconf of ifindex %d: %w", ifindex, errno))
					}
				case unix.RTM_NEWNETCONF:
					c, err := ParseNetconf(m.Data)
					fn(lo+k, c, err)
				default:
					fn(lo+k, Netconf{}, fmt.Errorf("netconf of ifindex %d: unexpected answer type %d", ifindex, m.Header.Type))
				}
			}
		}
	}
	return nil
}

// netconfmsg is struct netconfmsg of an IPv4 question, aligned.
type netconfmsg struct{}

func (netconfmsg) Len() int          { return 4 }
func (netconfmsg) Serialize() []byte { return []byte{unix.AF_INET, 0, 0, 0} }

// ParseNetconf decodes the body of an RTM_NEWNETCONF message (an answer,
// or an event of RTNLGRP_IPV4_NETCONF). Attributes it lacks read as off.
func ParseNetconf(b []byte) (Netconf, error) {
	if len(b) < 4 || b[0] != unix.AF_INET {
		return Netconf{}, errors.New("not an IPv4 netconf message")
	}
	attrs, err := nl.ParseRouteAttr(b[4:])
	if err != nil {
		return Netconf{}, fmt.Errorf("netconf attributes: %w", err)
	}
	c, found := Netconf{}, false
	for _, a := range attrs {
		if len(a.Value) < 4 {
			continue
		}
		v := binary.NativeEndian.Uint32(a.Value)
		switch a.Attr.Type {
		case netconfaIfindex:
			c.Ifindex, found = int(int32(v)), true
		case netconfaForwarding:
			c.Forwarding = v != 0
		case netconfaRPFilter:
			c.RPFilter = v
		}
	}
	if !found {
		return Netconf{}, errors.New("netconf message names no device")
	}
	return c, nil
}
