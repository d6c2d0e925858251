package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/links"
)

// probeWait is how long TapState waits for a frame the slot sent to
// reach the tap's descriptor before it says the frame was not delivered.
// A delivered frame is in the tap's queue when the send returns (the
// device transmits in the sender's system call), so this only bounds
// the wait for one that never comes.
const probeWait = 2 * time.Second

// TapState describes what the next VMM to attach to tap name of the
// namespace at nsPath finds there, attaching as root does: what a tun
// descriptor reads back (TUNGETIFF's flags, TUNGETSNDBUF,
// TUNGETVNETHDRSZ, TUNGETVNETLE, TUNGETVNETBE, TUNGETFILTER), the
// device's MAC, type, owner and group (netlink), its offloads, requested
// and active (ETHTOOL_GFEATURES), and its message level (ETHTOOL_GMSGLVL);
// and, for what no call reads back (a transmit filter, an eBPF filter), by
// behaviour: whether a frame the slot sends out of the tap to guest, and a
// broadcast, reach the descriptor. A tap that a process holds, or that is
// missing, is said so.
//
// Attaching sets the tap's TUNSETIFF flags to the attacher's (as any VMM's
// attach does) and turns the carrier on, then off when it lets go.
func TapState(tb testing.TB, nsPath, name string, guest net.HardwareAddr) string {
	tb.Helper()
	var (
		b     strings.Builder
		fd    = -1
		pkt   = -1
		index int
		mac   net.HardwareAddr
	)
	defer func() {
		if pkt >= 0 {
			unix.Close(pkt)
		}
	}()
	err := lab.InNS(nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			fmt.Fprintf(&b, "%s missing\n", name)
			return nil
		}
		index, mac = l.Attrs().Index, l.Attrs().HardwareAddr
		if fd, err = links.AttachTap(name); errors.Is(err, unix.EBUSY) {
			fmt.Fprintf(&b, "%s held by a process\n", name)
			return nil
		} else if err != nil {
			return fmt.Errorf("attach to %s: %w", name, err)
		}
		var ifr struct {
			name  [unix.IFNAMSIZ]byte
			flags uint16
			_     [22]byte
		}
		if e := ioctlPtr(fd, unix.TUNGETIFF, unsafe.Pointer(&ifr)); e != 0 {
			return fmt.Errorf("TUNGETIFF: %w", e)
		}
		fmt.Fprintf(&b, "%s flags %#x\n", name, ifr.flags)
		for _, g := range []struct {
			what string
			req  uint
		}{{"send buffer", unix.TUNGETSNDBUF}, {"vnet header size", unix.TUNGETVNETHDRSZ},
			{"vnet little-endian", unix.TUNGETVNETLE}, {"vnet big-endian", unix.TUNGETVNETBE}} {
			var v int32
			if e := ioctlPtr(fd, g.req, unsafe.Pointer(&v)); e != 0 {
				fmt.Fprintf(&b, "%s %s: %v\n", name, g.what, e)
			} else {
				fmt.Fprintf(&b, "%s %s %d\n", name, g.what, v)
			}
		}
		var prog unix.SockFprog
		if e := ioctlPtr(fd, unix.TUNGETFILTER, unsafe.Pointer(&prog)); e != 0 {
			return fmt.Errorf("TUNGETFILTER: %w", e)
		}
		fmt.Fprintf(&b, "%s socket filter of %d instructions, at an address: %t\n", name, prog.Len, prog.Filter != nil)
		if err := ethtoolState(&b, name); err != nil {
			return err
		}
		// The frames go out of the tap from a packet socket of the
		// slot's namespace, as the slot's answers to the guest do.
		pkt, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		tb.Fatalf("state of %s in %s: %v", name, nsPath, err)
	}
	if fd < 0 {
		return b.String()
	}
	// A tap just attached drops what is sent to it until its queue starts.
	if err := lab.WaitOperUp(nsPath, name, 3*time.Second); err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	probes := [][]byte{probeFrame(guest, mac, "unicast"), probeFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mac, "broadcast")}
	for _, f := range probes {
		if err := unix.Sendto(pkt, f, 0, &unix.SockaddrLinklayer{Ifindex: index, Protocol: htons(0x88b5), Halen: 6}); err != nil {
			unix.Close(fd)
			tb.Fatalf("send on %s: %v", name, err)
		}
	}
	seen := readProbes(fd, probes)
	unix.Close(fd)
	fmt.Fprintf(&b, "%s frame to the guest's MAC delivered: %t\n%s broadcast delivered: %t\n", name, seen[0], name, seen[1])
	// Asking for the link runs the kernel's pending link-watch work for it
	// (see links.HeldTap.Close): its carrier is off when TapState returns.
	err = lab.InNS(nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		t, ok := l.(*netlink.Tuntap)
		if !ok {
			return fmt.Errorf("%s is a %s", name, l.Type())
		}
		fmt.Fprintf(&b, "%s mac %s type %s owner %d group %d\n", name, l.Attrs().HardwareAddr, l.Attrs().EncapType, t.Owner, t.Group)
		return nil
	})
	if err != nil {
		tb.Fatalf("state of %s in %s: %v", name, nsPath, err)
	}
	return b.String()
}

// probeFrame is an Ethernet frame of the local experimental EtherType
// 0x88b5 from src to dst that says what it is.
func probeFrame(dst, src net.HardwareAddr, what string) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x88, 0xb5)
	f = append(f, "netslot tap probe "+what...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

// readProbes reads fd, a tap's descriptor, until it has seen each of
// probes or probeWait has passed, and says which it saw; other frames are
// skipped.
func readProbes(fd int, probes [][]byte) []bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	seen := make([]bool, len(probes))
	buf := make([]byte, 65536)
	for deadline, n := time.Now().Add(probeWait), 0; n < len(probes); {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil || pfd[0].Revents&unix.POLLIN == 0 {
			continue
		}
		m, err := unix.Read(fd, buf)
		if err != nil {
			continue
		}
		for i, p := range probes {
			if !seen[i] && bytes.Equal(buf[:m], p) {
				seen[i] = true
				n++
			}
		}
	}
	return seen
}

// ethtoolState writes device name's offloads, as words of the kernel's
// feature bits, requested and active (ETHTOOL_GFEATURES), and its message
// level (ETHTOOL_GMSGLVL), read in the calling thread's namespace.
func ethtoolState(b *strings.Builder, name string) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	type block struct{ available, requested, active, neverChanged uint32 }
	var features struct {
		cmd, size uint32
		blocks    [4]block
	}
	features.cmd, features.size = unix.ETHTOOL_GFEATURES, uint32(len(features.blocks))
	level := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_GMSGLVL}
	for _, data := range []unsafe.Pointer{unsafe.Pointer(&features), unsafe.Pointer(&level)} {
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:unix.IFNAMSIZ-1], name)
		ifr.data = data
		if e := ioctlPtr(s, unix.SIOCETHTOOL, unsafe.Pointer(&ifr)); e != 0 {
			return fmt.Errorf("SIOCETHTOOL %s: %w", name, e)
		}
		runtime.KeepAlive(data)
	}
	var req, act []string
	for _, bl := range features.blocks[:min(int(features.size), len(features.blocks))] {
		req, act = append(req, fmt.Sprintf("%#x", bl.requested)), append(act, fmt.Sprintf("%#x", bl.active))
	}
	fmt.Fprintf(b, "%s offloads requested %s active %s\n%s message level %#x\n", name, strings.Join(req, " "), strings.Join(act, " "), name, level.data)
	return nil
}
