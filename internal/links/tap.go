package links

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ifreq for TUNSETIFF: a name and a flags word, padded to the kernel's size.
type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// createTap makes a persistent, single-queue tap device named name in the
// network namespace of the calling thread. /dev/net/tun always creates in
// the caller's namespace, so the caller must be on a locked thread that has
// entered the slot's namespace.
//
// Flags are those Firecracker attaches with (IFF_TAP|IFF_NO_PI; it adds
// IFF_VNET_HDR per open), and no owner is set: only CAP_NET_ADMIN may attach.
func createTap(name string) error {
	fd, err := AttachTap(name)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1); errno != 0 {
		return fmt.Errorf("persist tap %s: %w", name, errno)
	}
	return nil
}

// AttachTap opens /dev/net/tun and attaches to tap name of the calling
// thread's namespace (creating it if there is none) with the flags the
// slot's tap is made with, as a VMM does. An existing tap takes them back,
// whatever flags its last user attached with (IFF_VNET_HDR...).
func AttachTap(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req ifreq
	copy(req.name[:unix.IFNAMSIZ-1], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return -1, errno
	}
	return fd, nil
}

// TapHeld reports whether a process holds tap name of h's namespace (the
// calling thread's) open, a VMM, whatever its carrier: it tries to attach
// (the kernel reports no attachment count for a single-queue tap), and
// lets go at once if it could. Attaching waits for an RCU grace period on
// the way out: a check for when a slot's lease is unknown, not for every
// slot at every start.
func TapHeld(h *netlink.Handle, name string) (bool, error) {
	t, err := HoldTap(h, name)
	if errors.Is(err, ErrTapInUse) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, t.Close()
}

// HoldTap attaches to the tap name, which must exist in h's namespace, the
// calling thread's, and keeps it until the returned Closer is closed:
// meanwhile no VMM can attach. A tap a process still holds (a VMM that
// has not exited, even one that turned the carrier off with
// TUNSETCARRIER) cannot be attached to twice: that is ErrTapInUse.
func HoldTap(h *netlink.Handle, name string) (io.Closer, error) {
	// TUNSETIFF would create a tap that does not exist.
	if _, err := h.LinkByName(name); err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	fd, err := AttachTap(name)
	if errors.Is(err, unix.EBUSY) {
		return nil, ErrTapInUse
	}
	if err != nil {
		return nil, fmt.Errorf("attach to %s: %w", name, err)
	}
	// Attaching turned the carrier on: off again, so that the slot queues
	// nothing for us while it is scrubbed.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETCARRIER, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("carrier off on %s: %w", name, err)
	}
	return heldTap{f: os.NewFile(uintptr(fd), "/dev/net/tun"), h: h, name: name}, nil
}

type heldTap struct {
	f    *os.File
	h    *netlink.Handle
	name string
}

// Close detaches from the tap, then asks for it by name: the kernel runs
// its pending link-watch work for the device first (rtnl_getlink), so its
// operstate, and the "linkdown" mark of its routes, are final when Close
// returns rather than up to a second later.
func (t heldTap) Close() error {
	err := t.f.Close()
	if _, lerr := t.h.LinkByName(t.name); lerr != nil {
		err = errors.Join(err, fmt.Errorf("find %s: %w", t.name, lerr))
	}
	return err
}
