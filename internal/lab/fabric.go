// Package lab builds the test networks netslot is measured and tested in:
// a fabric namespace behind an uplink, guests with a real network stack on a
// slot's tap, a userspace Geneve VPC host. Every object is named by the
// tag it is given and removed by its Close/Remove.
package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
)

// Fabric is the network a pool's uplink leads to, played by a namespace the
// test makes: a veth from the root namespace (the uplink) to the fabric
// namespace, which holds the gateway, a remote VTEP's underlay address and
// an outside host. Its ranges come from 198.18.0.0/15, set aside for
// benchmarks; NewFabric refuses to run if the host routes them.
type Fabric struct {
	Name     string // of the namespace, pinned at /run/netns/<Name>
	Uplink   string // root-namespace end of the veth
	Underlay netip.Addr
	Gateway  netip.Addr
	VTEP     netip.Addr
	Outside  netip.Addr
	// Net is the underlay's network (Gateway, Underlay and VTEP are on
	// it), OutsideNet the outside host's, behind the gateway.
	Net, OutsideNet netip.Prefix
	// Host is the pin of the namespace that plays the host, the uplink's
	// side ("": the root namespace; see NewFabricIn).
	Host string
}

// A fabric's ranges are those of its block B: 198.18.B.0/24 (the gateway
// .1, the host's underlay address .2, the VTEP .9) and 198.19.B+1.0/24
// (the outside host .1). Tests use block 0; `make demo` uses DemoBlock, so
// that a newcomer's demo and the tests live side by side on one host.
const DemoBlock = 240

// NetnsPath is the fabric namespace's pin.
func (f *Fabric) NetnsPath() string { return "/run/netns/" + f.Name }

// FabricNamed describes the fabric of tag: if it exists, with the
// addresses it has, else with those of block 0.
func FabricNamed(tag string) *Fabric {
	f := fabricAt(tag, 0)
	_ = InNS("/run/netns/"+f.Name, func() error {
		l, err := netlink.LinkByName("f0")
		if err != nil {
			return err
		}
		as, err := links.Addrs(nil, l, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, a := range as {
			if ip := a.IP.To4(); ip != nil && ip[0] == 198 && ip[1] == 18 && ip[3] == 1 {
				f = fabricAt(tag, ip[2])
			}
		}
		return nil
	})
	return f
}

// fabricAt describes the fabric of tag in block b.
func fabricAt(tag string, b byte) *Fabric {
	return &Fabric{
		Name: "f" + tag, Uplink: "u" + tag,
		Net: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, b, 0}), 24), OutsideNet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, b + 1, 0}), 24),
		Underlay: netip.AddrFrom4([4]byte{198, 18, b, 2}), Gateway: netip.AddrFrom4([4]byte{198, 18, b, 1}),
		VTEP: netip.AddrFrom4([4]byte{198, 18, b, 9}), Outside: netip.AddrFrom4([4]byte{198, 19, b + 1, 1}),
	}
}

// ErrRangeInUse: the host routes a range the fabric would use.
var ErrRangeInUse = errors.New("fabric range in use by the host")

// NewFabric builds a fabric of block 0 whose hosts route slotCIDR back
// through the uplink. tag names its objects. The caller removes it
// (Remove).
func NewFabric(tag string, slotCIDR netip.Prefix) (*Fabric, error) {
	return NewFabricAt(tag, 0, slotCIDR)
}

// NewFabricAt is NewFabric in block b.
func NewFabricAt(tag string, b byte, slotCIDR netip.Prefix) (*Fabric, error) {
	f := fabricAt(tag, b)
	if err := refuseRouted(f.Net, f.OutsideNet); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRangeInUse, err)
	}
	return newFabric(f, slotCIDR, "")
}

// NewFabricIn is NewFabric for a host played by the namespace pinned at
// host (which the caller made and removes): the uplink is made there, so a
// test can change what is global to a host (net.ipv4.ip_forward) without
// touching the machine's.
func NewFabricIn(tag string, slotCIDR netip.Prefix, host string) (*Fabric, error) {
	return newFabric(fabricAt(tag, 0), slotCIDR, host)
}

func newFabric(f *Fabric, slotCIDR netip.Prefix, host string) (*Fabric, error) {
	f.Host = host
	ClaimName(f.Name) // a killed process's fabric is swept (SweepDead)
	if host == "" {
		ClaimName(f.Uplink)
	}
	if err := netns.EnsureDir("/run/netns"); err != nil {
		return nil, err
	}
	err := InNewNS(f.NetnsPath(), func() error {
		lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return netlink.AddrAdd(lo, addr(f.Outside, 32))
	})
	if err != nil {
		f.Remove()
		return nil, fmt.Errorf("fabric namespace: %w", err)
	}
	if err := f.link(slotCIDR); err != nil {
		f.Remove()
		return nil, err
	}
	return f, nil
}

// link makes the uplink's veth (in the host's namespace), its fabric end
// and their addresses and routes.
func (f *Fabric) link(slotCIDR netip.Prefix) error {
	if f.Host != "" {
		return InNS(f.Host, func() error { return f.linkHere(slotCIDR) })
	}
	return f.linkHere(slotCIDR)
}

func (f *Fabric) linkHere(slotCIDR netip.Prefix) error {
	nsFD, err := netns.Open(f.NetnsPath())
	if err != nil {
		return err
	}
	defer unix.Close(nsFD)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: f.Uplink, MTU: 9000}, PeerName: "f0", PeerNamespace: netlink.NsFd(nsFD)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("fabric uplink: %w", err)
	}
	up, err := netlink.LinkByName(f.Uplink)
	if err == nil {
		err = netlink.AddrAdd(up, addr(f.Underlay, 24))
	}
	if err == nil {
		err = netlink.LinkSetUp(up)
	}
	if err != nil {
		return fmt.Errorf("fabric uplink: %w", err)
	}
	err = netns.Do(nsFD, func() error {
		f0, err := netlink.LinkByName("f0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(f0, 9000); err != nil {
			return err
		}
		for _, a := range []netip.Addr{f.Gateway, f.VTEP} {
			if err := netlink.AddrAdd(f0, addr(a, 24)); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(f0); err != nil {
			return err
		}
		// Slot addresses live behind the host's underlay address.
		return netlink.RouteAdd(&netlink.Route{LinkIndex: f0.Attrs().Index, Gw: f.Underlay.AsSlice(),
			Dst: &net.IPNet{IP: slotCIDR.Addr().AsSlice(), Mask: net.CIDRMask(slotCIDR.Bits(), 32)}})
	})
	if err != nil {
		return fmt.Errorf("fabric side: %w", err)
	}
	return nil
}

// Relink deletes the uplink (which takes its fabric end with it) and makes
// it again with the same name and addresses, as a host whose network
// configuration is reapplied does: a new device with a new ifindex.
func (f *Fabric) Relink(slotCIDR netip.Prefix) error {
	if l, err := netlink.LinkByName(f.Uplink); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("delete uplink: %w", err)
		}
	}
	return f.link(slotCIDR)
}

// Unlink deletes the uplink (and its fabric end).
func (f *Fabric) Unlink() error {
	l, err := netlink.LinkByName(f.Uplink)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	return netlink.LinkDel(l)
}

// Remove deletes the fabric (the uplink goes with the namespace's veth).
func (f *Fabric) Remove() {
	if l, err := netlink.LinkByName(f.Uplink); err == nil {
		netlink.LinkDel(l)
	}
	netns.Remove(f.NetnsPath())
}

// Exec runs a command inside the fabric namespace.
func (f *Fabric) Exec(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", f.Name, name}, args...)...)
}

func addr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
}

// refuseRouted fails if the root namespace routes any of ps: a test must
// never put addresses on the host's own networks.
func refuseRouted(ps ...netip.Prefix) error {
	rp, p, found, err := links.RoutedOverlap(ps...)
	if err != nil {
		return err
	}
	if found {
		return fmt.Errorf("the host routes %s, which overlaps the test fabric's %s", rp, p)
	}
	return nil
}

// InNewNS creates a namespace pinned at path and runs fn inside it on a
// locked thread, which then returns to the root namespace (or, if it
// cannot, dies with its goroutine).
func InNewNS(path string, fn func() error) error {
	root, err := netns.Root()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.CreateHere(path); err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		err := fn()
		if rerr := netns.Enter(root); rerr != nil {
			errc <- fmt.Errorf("return to root netns: %w", rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// InNS runs fn inside the namespace pinned at path.
func InNS(path string, fn func() error) error {
	fd, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return netns.Do(fd, fn)
}

// ConntrackEntriesFor counts the conntrack entries of the namespace at
// path ("" for the root namespace) that mention any of addrs, by
// conntrack(8).
func ConntrackEntriesFor(path string, addrs ...netip.Addr) (int, error) {
	args := []string{"-L", "-o", "extended"}
	cmd := exec.Command("conntrack", args...)
	if path != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", strings.TrimPrefix(path, "/run/netns/"), "conntrack"}, args...)...)
	}
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("conntrack -L: %w", err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		for _, a := range addrs {
			if strings.Contains(line, "="+a.String()+" ") {
				n++
				break
			}
		}
	}
	return n, nil
}
