package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/netns"
)

// OrderingOptions size the device-creation orderings scenario.
type OrderingOptions struct {
	Slots int // namespaces per ordering
	Log   *slog.Logger
}

// OrderingResult is the wall time per slot of each way of making a slot's
// devices (tap0, and a veth with one end in the slot, one in the root
// namespace, both up).
type OrderingResult struct {
	Opts    OrderingOptions
	InPlace []time.Duration // create each device in its final namespace
	Moved   []time.Duration // create in the root namespace, then move
}

// RunOrderings times the two orderings for o.Slots fresh namespaces each,
// alternating slot by slot so that both see the same kernel state, then
// removes what it made. Namespace creation is outside the timed part: both
// orderings need it.
func RunOrderings(ctx context.Context, o OrderingOptions) (*OrderingResult, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if err := netns.EnsureDir("/run/netns"); err != nil {
		return nil, err
	}
	rootFD, err := netns.Root()
	if err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	res := &OrderingResult{Opts: o}
	var made []string
	defer func() {
		for _, name := range made {
			removeOrderingSlot(name)
		}
	}()
	runtime.LockOSThread()
	defer func() {
		// Back to the root namespace before the thread is unlocked; a
		// thread that cannot get back stays locked and dies with the
		// goroutine.
		if netns.Enter(rootFD) == nil {
			runtime.UnlockOSThread()
		}
	}()
	root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer root.Close()
	for i := 0; i < o.Slots && ctx.Err() == nil; i++ {
		for _, moved := range []bool{i%2 == 1, i%2 == 0} {
			name := fmt.Sprintf("no%s%c%d", tag, map[bool]byte{false: 'p', true: 'm'}[moved], i)
			path := "/run/netns/" + name
			made = append(made, name)
			if err := netns.CreateHere(path); err != nil {
				return nil, err
			}
			slotFD, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			var took time.Duration
			if moved {
				if err = netns.Enter(rootFD); err == nil {
					start := time.Now()
					err = createThenMove(root, name, slotFD)
					took = time.Since(start)
				}
			} else {
				start := time.Now()
				err = createInPlace(name, rootFD)
				took = time.Since(start)
				if rerr := netns.Enter(rootFD); err == nil {
					err = rerr
				}
			}
			unix.Close(slotFD)
			if err != nil {
				return nil, fmt.Errorf("ordering %s: %w", name, err)
			}
			if moved {
				res.Moved = append(res.Moved, took)
			} else {
				res.InPlace = append(res.InPlace, took)
			}
		}
	}
	return res, ctx.Err()
}

// createInPlace runs inside the slot's namespace: tap0 and eth0 are made
// there, the veth's other end directly in the root namespace.
func createInPlace(name string, rootFD int) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
	if err := h.LinkAdd(tap); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", NumTxQueues: 1, NumRxQueues: 1},
		PeerName: name, PeerNamespace: netlink.NsFd(rootFD)}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	for _, l := range []netlink.Link{tap, veth} {
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	root, err := netlink.NewHandleAt(nsHandle(rootFD))
	if err != nil {
		return err
	}
	defer root.Close()
	return root.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}})
}

// createThenMove runs in the root namespace: tap0 and both veth ends are
// made there, then tap0 and eth0 move into the slot's namespace (the order
// of tools that create, then place).
func createThenMove(root *netlink.Handle, name string, slotFD int) error {
	tapName, vethName := name+"t", name+"e"
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tapName}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
	if err := root.LinkAdd(tap); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethName, NumTxQueues: 1, NumRxQueues: 1}, PeerName: name}
	if err := root.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	for _, l := range []netlink.Link{tap, veth} {
		if err := root.LinkSetNsFd(l, slotFD); err != nil {
			return fmt.Errorf("move %s: %w", l.Attrs().Name, err)
		}
	}
	h, err := netlink.NewHandleAt(nsHandle(slotFD))
	if err != nil {
		return err
	}
	defer h.Close()
	for old, final := range map[string]string{tapName: "tap0", vethName: "eth0"} {
		l, err := h.LinkByName(old)
		if err != nil {
			return err
		}
		if err := h.LinkSetName(l, final); err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return root.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}})
}

func removeOrderingSlot(name string) {
	// The veth's root end, and what a failed create-then-move left there.
	for _, n := range []string{name, name + "t", name + "e"} {
		if l, err := netlink.LinkByName(n); err == nil {
			netlink.LinkDel(l)
		}
	}
	netns.Remove("/run/netns/" + name)
}

// Write prints the orderings as markdown table rows.
func (r *OrderingResult) Write(w io.Writer) {
	fmt.Fprintf(w, "Device creation for %d fresh namespaces per ordering, alternating slot by slot (tap0, a veth with its other end in the root namespace, all up; namespace creation not timed)\n\n", r.Opts.Slots)
	fmt.Fprintln(w, "| ordering | p50 per slot | p99 per slot | total | vs in place |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	sum := func(xs []time.Duration) (t time.Duration) {
		for _, x := range xs {
			t += x
		}
		return t
	}
	in := sortedCopy(r.InPlace)
	for _, row := range []struct {
		name string
		s    []time.Duration
	}{{"create in the final namespace (netslot)", r.InPlace}, {"create in the root namespace, then move", r.Moved}} {
		s := sortedCopy(row.s)
		fmt.Fprintf(w, "| %s | %s | %s | %.2f s | %s |\n", row.name, fmtDur(percentile(s, 0.5)), fmtDur(percentile(s, 0.99)),
			sum(s).Seconds(), ratio(float64(percentile(s, 0.5))/float64(max(1, percentile(in, 0.5)))))
	}
}

func nsHandle(fd int) vnetns.NsHandle { return vnetns.NsHandle(fd) }
