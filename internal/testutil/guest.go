package testutil

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/lab"
)

// Guest is a process-side stand-in for a VM: it holds the slot's tap open
// and reads and writes Ethernet frames on it.
type Guest struct{ f *os.File }

// AttachTap opens tap0 of the namespace at nsPath the way a VMM does.
func AttachTap(nsPath, name string) (*Guest, error) {
	f, err := lab.OpenTap(nsPath, name)
	if err != nil {
		return nil, err
	}
	return &Guest{f: f}, nil
}

// Send writes one frame.
func (g *Guest) Send(frame []byte) error {
	_, err := g.f.Write(frame)
	return err
}

// Close detaches from the tap.
func (g *Guest) Close() error { return g.f.Close() }

// SetCarrier turns the tap's carrier on or off while the guest keeps it
// open, as a VMM may (TUNSETCARRIER).
func (g *Guest) SetCarrier(on bool) error {
	v := 0
	if on {
		v = 1
	}
	rc, err := g.f.SyscallConn()
	if err != nil {
		return err
	}
	var errno error
	if err := rc.Control(func(fd uintptr) { errno = unix.IoctlSetPointerInt(int(fd), unix.TUNSETCARRIER, v) }); err != nil {
		return err
	}
	return errno
}

// Capture records the IPv4 frames seen on one device of the calling
// process's root namespace.
type Capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	done   chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// CaptureOn starts capturing on ifname (in the root namespace).
func CaptureOn(ifname string) (*Capture, error) {
	ifi, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Attrs().Index}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	tv := unix.Timeval{Usec: 50_000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	c := &Capture{fd: fd, done: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // blocking reads with a timeout
		buf := make([]byte, 65536)
		for {
			select {
			case <-c.done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			c.mu.Lock()
			c.frames = append(c.frames, append([]byte(nil), buf[:n]...))
			c.mu.Unlock()
		}
	}()
	return c, nil
}

// Close stops the capture.
func (c *Capture) Close() {
	close(c.done)
	time.Sleep(60 * time.Millisecond)
	unix.Close(c.fd)
}

// SawUDP reports whether a UDP frame to dip:dport arrives within wait.
func (c *Capture) SawUDP(dip netip.Addr, dport uint16, wait time.Duration) bool {
	d := dip.As4()
	deadline := time.Now().Add(wait)
	for {
		c.mu.Lock()
		for _, f := range c.frames {
			if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP && f[23] == unix.IPPROTO_UDP &&
				[4]byte(f[30:34]) == d && binary.BigEndian.Uint16(f[36:]) == dport {
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
