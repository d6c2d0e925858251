package links

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
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
// IFF_VNET_HDR per open). The tap belongs to owner (a slot rebuilt under
// its lease), nil: to root, uid 0 and gid 0, so that only root and
// CAP_NET_ADMIN attach (a tap with no owner lets any process of its
// namespace attach, whatever its uid).
func createTap(name string, owner *slot.TapOwner) error {
	fd, err := AttachTap(name)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1); errno != 0 {
		return fmt.Errorf("persist tap %s: %w", name, errno)
	}
	// No offloads, as HeldTap.Reset leaves the tap: a new tap has the
	// ones a VMM may ask for among its requested features (inactive until
	// one asks), and TUNSETOFFLOAD can only clear them.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fmt.Errorf("offloads of %s: %w", name, err)
	}
	return setOwner(fd, name, owner)
}

// AttachTap opens /dev/net/tun and attaches to tap name of the calling
// thread's namespace (creating it if there is none) with the flags the
// slot's tap is made with, as a VMM does. An existing tap takes them back,
// whatever flags its last user attached with (IFF_VNET_HDR...).
func AttachTap(name string) (int, error) { return AttachTapFlags(name, 0) }

// AttachTapFlags is AttachTap with more of TUNSETIFF's flags, as a VMM
// may give (IFF_VNET_HDR: frames carry a virtio-net header, the way to
// offloads).
func AttachTapFlags(name string, extra uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req ifreq
	copy(req.name[:unix.IFNAMSIZ-1], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | extra
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return -1, errno
	}
	return fd, nil
}

// SetTapOwner gives tap name of the calling thread's namespace to the
// user and group of o (nil: to root, the pooled state): from then on a
// process of that uid with that gid among its groups attaches without
// CAP_NET_ADMIN. The kernel takes the owner only from a descriptor
// attached to the tap, so SetTapOwner attaches, sets it and lets go; the
// tap is detached when it returns (the detach waits for an RCU grace
// period), and a VMM can attach at once. A tap a process holds is
// ErrTapInUse; a tap that does not exist is damage (the attach made a
// passing one, gone with the descriptor).
func SetTapOwner(name string, o *slot.TapOwner) error {
	fd, err := AttachTap(name)
	if errors.Is(err, unix.EBUSY) {
		return ErrTapInUse
	}
	if err != nil {
		return fmt.Errorf("attach to %s: %w", name, err)
	}
	defer unix.Close(fd)
	// An existing tap0 is persistent; one TUNSETIFF just made is not.
	var req ifreq
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNGETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return fmt.Errorf("read flags of %s: %w", name, errno)
	}
	if req.flags&unix.IFF_PERSIST == 0 {
		return damaged("%s missing", name)
	}
	return setOwner(fd, name, o)
}

// setOwner sets the owner and group of the tap attached to fd to o's
// (nil: root's, uid 0 and gid 0). There is no going back to no owner: the
// kernel refuses -1 (EINVAL).
func setOwner(fd int, name string, o *slot.TapOwner) error {
	var uid, gid uint32
	if o != nil {
		uid, gid = o.UID, o.GID
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETOWNER, uintptr(uid)); errno != 0 {
		return fmt.Errorf("set owner of %s to %d: %w", name, uid, errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETGROUP, uintptr(gid)); errno != 0 {
		return fmt.Errorf("set group of %s to %d: %w", name, gid, errno)
	}
	return nil
}

// ErrTapOwner marks a tap whose owner or group is not the expected one
// (with ErrDamaged).
var ErrTapOwner = errors.New("tap owner differs")

// checkTapOwner compares the owner and group tap reads with (netlink's
// IFLA_TUN_OWNER and IFLA_TUN_GROUP) with want's (nil: root's, 0). The
// kernel leaves out an id that is none, which the netlink library reads
// as 0 too: a tap with no owner (made by an older netslotd, or by hand)
// passes for root's. It gets root's at its next release.
func checkTapOwner(tap netlink.Link, want *slot.TapOwner) error {
	t, ok := tap.(*netlink.Tuntap)
	if !ok {
		return damaged("%s is a %s", tap.Attrs().Name, tap.Type())
	}
	var w slot.TapOwner
	if want != nil {
		w = *want
	}
	if t.Owner != w.UID || t.Group != w.GID {
		return fmt.Errorf("%w: %w: %s owner %s, want %s", ErrDamaged, ErrTapOwner, tap.Attrs().Name, ownerString(t.Owner, t.Group), ownerString(w.UID, w.GID))
	}
	return nil
}

func ownerString(uid, gid uint32) string { return fmt.Sprintf("uid=%d gid=%d", uid, gid) }

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
func HoldTap(h *netlink.Handle, name string) (*HeldTap, error) {
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
	return &HeldTap{f: os.NewFile(uintptr(fd), "/dev/net/tun"), h: h, name: name}, nil
}

// HeldTap is a tap the daemon holds attached (see HoldTap).
type HeldTap struct {
	f    *os.File
	h    *netlink.Handle
	name string
}

// vnetHdrSize is the size of struct virtio_net_hdr, a new tap's vnet
// header size.
const vnetHdrSize = 10

// Reset gives the tap back to root and puts back what a VMM attached to it
// may have changed as its owner, with no capability, that outlives its
// descriptor: drivers/net/tun.c keeps it on the device, and the next VMM
// to attach gets it. Each is one ioctl on the descriptor held anyway (each
// takes RTNL):
//   - owner and group (TUNSETOWNER, TUNSETGROUP): root's;
//   - the transmit filter (TUNSETTXFILTER), with which the tap drops every
//     frame to a MAC not in it, the guest's answers included: none;
//   - the socket filter (TUNATTACHFILTER): detached, and the program the
//     kernel keeps for the next attacher (its length, and its address in
//     the VMM's memory) forgotten;
//   - the eBPF filter and steering programs (TUNSETFILTEREBPF,
//     TUNSETSTEERINGEBPF): none (a filter that returns 0 drops every
//     frame);
//   - offloads (TUNSETOFFLOAD): none, as the tap was made;
//   - the vnet header's size and byte order (TUNSETVNETHDRSZ,
//     TUNSETVNETLE, TUNSETVNETBE): 10 bytes, the guest's order (a kernel
//     without CONFIG_TUN_VNET_CROSS_LE has no big-endian setting: EINVAL);
//   - the message level (TUNSETDEBUG), with which the kernel logs the
//     tap's ioctls and every frame it sends: none.
//
// Not here: the MAC (SIOCSIFHWADDR on the descriptor), which Scrub sets;
// the flags of TUNSETIFF, which the attach gave back; the carrier, off
// when the last descriptor lets go (and HoldTap's turned it off); the
// send buffer (TUNSETSNDBUF), which the kernel applies only to the
// descriptors attached when it is set; the link type (TUNSETLINK), refused
// while the tap is up, which a tenant cannot change; persistence
// (TUNSETPERSIST 0): the tap is gone when the VMM lets go, and the slot is
// rebuilt.
func (t *HeldTap) Reset() error {
	fd := int(t.f.Fd())
	if err := setOwner(fd, t.name, nil); err != nil {
		return err
	}
	var txFilter struct{ flags, count uint16 } // no address: no filter
	var noProgram unix.SockFprog
	none, hdrSize, off := int32(-1), int32(vnetHdrSize), int32(0)
	for _, r := range []struct {
		what string
		req  uint
		arg  unsafe.Pointer // nil: the value 0
		ok   unix.Errno     // an answer that is not a failure (0: none)
	}{
		{what: "transmit filter", req: unix.TUNSETTXFILTER, arg: unsafe.Pointer(&txFilter)},
		{what: "socket filter", req: unix.TUNDETACHFILTER},
		// The kernel copies the program in, then fails to attach an
		// empty one: what it keeps is zero.
		{what: "kept socket filter", req: unix.TUNATTACHFILTER, arg: unsafe.Pointer(&noProgram), ok: unix.EINVAL},
		{what: "eBPF filter", req: unix.TUNSETFILTEREBPF, arg: unsafe.Pointer(&none)},
		{what: "eBPF steering", req: unix.TUNSETSTEERINGEBPF, arg: unsafe.Pointer(&none)},
		{what: "offloads", req: unix.TUNSETOFFLOAD},
		{what: "vnet header size", req: unix.TUNSETVNETHDRSZ, arg: unsafe.Pointer(&hdrSize)},
		{what: "vnet little-endian", req: unix.TUNSETVNETLE, arg: unsafe.Pointer(&off)},
		{what: "vnet big-endian", req: unix.TUNSETVNETBE, arg: unsafe.Pointer(&off), ok: unix.EINVAL},
		{what: "message level", req: unix.TUNSETDEBUG},
	} {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(r.req), uintptr(r.arg)); errno != 0 && errno != r.ok {
			return fmt.Errorf("reset %s of %s: %w", r.what, t.name, errno)
		}
	}
	return nil
}

// Close detaches from the tap, then asks for it by name: the kernel runs
// its pending link-watch work for the device first (rtnl_getlink), so its
// operstate, and the "linkdown" mark of its routes, are final when Close
// returns rather than up to a second later.
func (t *HeldTap) Close() error {
	err := t.f.Close()
	if _, lerr := t.h.LinkByName(t.name); lerr != nil {
		err = errors.Join(err, fmt.Errorf("find %s: %w", t.name, lerr))
	}
	return err
}
