package links

import (
	"fmt"
	"unsafe"

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
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	var req ifreq
	copy(req.name[:unix.IFNAMSIZ-1], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return fmt.Errorf("create tap %s: %w", name, errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1); errno != 0 {
		return fmt.Errorf("persist tap %s: %w", name, errno)
	}
	return nil
}
