package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
)

// GuestNS stands in for a VM with a real kernel network stack: a namespace
// whose tap g0 is wired to a slot's tap0 by two copy loops, as a VMM's
// virtio device would be. Programs in the namespace (ping, net.Dial,
// iperf3) are the guest's applications.
type GuestNS struct {
	Name      string
	slotTap   *os.File
	guestTap  *os.File
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NetnsPath is the guest namespace's pin.
func (g *GuestNS) NetnsPath() string { return "/run/netns/" + g.Name }

// NewGuestNS makes guest namespace "g"+tag attached to tap0 of the slot
// namespace at slotNS, with the slot's guest addressing (cfg). The caller
// closes it.
func NewGuestNS(tag, slotNS string, cfg slot.Config) (*GuestNS, error) {
	return NewGuestNSWith(tag, slotNS, cfg, GuestOptions{})
}

// NewBareGuestNS is NewGuestNS for a guest that configures itself (a DHCP
// client): g0 has the guest's MAC and is up, with no address and no route.
func NewBareGuestNS(tag, slotNS string, cfg slot.Config) (*GuestNS, error) {
	return NewGuestNSWith(tag, slotNS, cfg, GuestOptions{Bare: true})
}

// GuestOptions vary the guest a GuestNS stands in for.
type GuestOptions struct {
	// Bare: g0 gets no address and no route (the guest configures
	// itself).
	Bare bool
	// Offload makes the wire a virtio-net device's, with its offloads:
	// both taps carry a virtio-net header, and the guest's kernel hands
	// the slot's tap0 what a virtio guest does (checksums left to the
	// host, TCP and UDP segmentation offload packets of up to 64 KiB).
	// Toward the guest, the slot's kernel segments and checksums.
	Offload bool
}

// tunOffloads are a virtio-net guest's: checksum, TSO and USO (TUNSETOFFLOAD).
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6

// NewGuestNSWith is NewGuestNS with options.
func NewGuestNSWith(tag, slotNS string, cfg slot.Config, o GuestOptions) (*GuestNS, error) {
	var flags uint16
	if o.Offload {
		flags = unix.IFF_VNET_HDR
	}
	configure := !o.Bare
	g := &GuestNS{Name: "g" + tag}
	ClaimName(g.Name) // a killed process's guest is swept (SweepDead)
	var gfd int
	err := InNewNS(g.NetnsPath(), func() error {
		lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// Not persistent: the tap goes away when the wire closes it.
		fd, err := links.AttachTapFlags("g0", flags)
		if err != nil {
			return err
		}
		gfd = fd
		if o.Offload {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffloads); err != nil {
				return fmt.Errorf("offloads on g0: %w", err)
			}
		}
		l, err := netlink.LinkByName("g0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, cfg.GuestMAC); err != nil {
			return err
		}
		if configure {
			if err := netlink.AddrAdd(l, addr(cfg.GuestIP(), cfg.GuestCIDR.Bits())); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if !configure {
			return nil
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: cfg.GatewayIP().AsSlice()})
	})
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("guest namespace: %w", err)
	}
	// Non-blocking descriptors go through Go's poller, so that Close
	// interrupts the copy loops.
	unix.SetNonblock(gfd, true)
	g.guestTap = os.NewFile(uintptr(gfd), "g0")
	if g.slotTap, err = openTapFlags(slotNS, slot.TapName, flags); err != nil {
		g.Close()
		return nil, fmt.Errorf("attach to %s: %w", slot.TapName, err)
	}
	g.wg.Add(2)
	go g.copy(g.slotTap, g.guestTap)
	go g.copy(g.guestTap, g.slotTap)
	// Attaching brings tap0's carrier up, but its queue starts only when
	// the kernel's link watcher gets to it (up to a second later); until
	// then what the slot sends to the guest is dropped. A VM boots for
	// longer than that; a test would lose its first ARP reply.
	if err := WaitOperUp(slotNS, slot.TapName, 3*time.Second); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// WaitOperUp waits until name in the namespace at path is operationally up
// (see NewDHCPClient: a tap just attached drops what is sent to it until
// then).
func WaitOperUp(path, name string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var state netlink.LinkOperState
		err := InNS(path, func() error {
			l, err := netlink.LinkByName(name)
			if err == nil {
				state = l.Attrs().OperState
			}
			return err
		})
		if err != nil {
			return err
		}
		if state == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after %v (state %s)", name, limit, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *GuestNS) copy(dst, src *os.File) {
	defer g.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return // closed, or the device went away with its namespace
		}
		// A full queue on the other side drops the frame, as a NIC would.
		dst.Write(buf[:n])
	}
}

// Close stops the wire and removes the namespace.
func (g *GuestNS) Close() {
	g.closeOnce.Do(func() {
		if g.slotTap != nil {
			g.slotTap.Close()
		}
		if g.guestTap != nil {
			g.guestTap.Close()
		}
		g.wg.Wait()
		netns.Remove(g.NetnsPath())
	})
}

// Do runs fn inside the guest namespace (sockets it opens stay there).
func (g *GuestNS) Do(fn func() error) error { return InNS(g.NetnsPath(), fn) }

// Dial connects from inside the guest.
func (g *GuestNS) Dial(network string, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := g.Do(func() error {
		var err error
		c, err = net.Dial(network, to.String())
		return err
	})
	return c, err
}

// ListenUDP opens a UDP socket on port of every address of the guest.
func (g *GuestNS) ListenUDP(port int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := g.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	return c, err
}

// Listen opens a TCP listener on port of every address of the guest.
func (g *GuestNS) Listen(port int) (net.Listener, error) {
	var l net.Listener
	err := g.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	return l, err
}

// OpenTap attaches to tap name of the namespace pinned at path the way a
// VMM does, non-blocking (Close interrupts a pending read).
func OpenTap(path, name string) (*os.File, error) { return openTapFlags(path, name, 0) }

func openTapFlags(path, name string, flags uint16) (*os.File, error) {
	var fd int
	err := InNS(path, func() error {
		var err error
		fd, err = links.AttachTapFlags(name, flags)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}
