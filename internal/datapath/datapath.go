package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/slot"
)

// DefaultPinRoot is where pools pin their maps and links, one directory per
// prefix.
const DefaultPinRoot = "/sys/fs/bpf/netslot"

// DummyVNIBase is the first VNI of the reserved range: slot i carries
// DummyVNIBase+i while it is pooled (see dpconst).
const DummyVNIBase = dpconst.DummyVNIBase

// EncapOverhead is what Geneve adds to a guest's frame on the underlay
// (see dpconst).
const EncapOverhead = dpconst.EncapOverhead

// vpcRoutesPerSlot bounds the VPC CIDRs of one attachment (the LPM trie is
// sized for it; its nodes are allocated on use).
const vpcRoutesPerSlot = 256

// MaxDeny bounds a pool's deny set.
const MaxDeny = 1024

// FixedDeny is what no guest's NATed traffic may reach, whatever its
// lease says: "this" network, link-local (where clouds serve instance
// metadata, such as 169.254.169.254), multicast, and the reserved range
// with the limited broadcast address. A pool adds the uplink's subnets and
// the operator's ranges (Config.Deny).
var FixedDeny = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// Pin names of the two links on the uplink.
const (
	ingressPin = "link_uplink_ingress"
	egressPin  = "link_uplink_egress"
)

// Config is what the datapath needs to know of a pool.
type Config struct {
	Slot       slot.Config
	Uplink     string     // "" loads and pins maps but attaches nothing
	UnderlayIP netip.Addr // outer source of Geneve; required with Uplink
	RouteTable int        // table holding the uplink's routes
	PinRoot    string     // DefaultPinRoot if empty
	// Deny is the pool's deny set: destinations a guest's traffic may not
	// be NATed to (traffic to its VPC is not NATed, and not subject to it).
	Deny []netip.Prefix
	// Flat: no uplink gateway. The route table's next hop is a
	// placeholder (links.OnLinkNexthop) and the programs have every
	// packet's real next hop resolved (see links.UplinkRoute).
	Flat bool
}

// Errors callers may test for.
var (
	ErrConflict     = errors.New("vpc address already attached on this vni")
	ErrIncompatible = errors.New("pinned datapath does not match this pool")
)

// Datapath is a loaded, pinned datapath of one pool.
type Datapath struct {
	// Migrated names the pinned maps Open converted from an older
	// layout (see migrate).
	Migrated []string

	layout map[string]mapLayout // of the pinned maps (see migrate)
	pinned map[string]bool      // the maps that are pinned (not scratch space)
	cfg    Config
	dir    string
	objs   datapathObjects
	// The leases, flows and dhcp maps, mapped into memory.
	leases, flows, dhcp *mmapArray
	// The two uplink links, held open as long as the daemon runs: their
	// pins are not their only reference, so removing the pins detaches
	// nothing (Repair pins them again).
	links [2]link.Link

	// The inbound keys and their owners, and the number of slots per VNI:
	// mirrors of vni_dst and vnis, so that an attach checks conflicts and
	// counts without reading the kernel's maps (the vnis map is written
	// only when a VNI gains its first slot or loses its last).
	mu    sync.Mutex
	gen   []uint32 // the generation of each slot's last lease (see OpenLease)
	owner map[datapathVniKey]int
	vnis  map[uint32]int
}

// PinDir is the bpffs directory of prefix's pool.
func PinDir(pinRoot, prefix string) string {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	return filepath.Join(pinRoot, prefix)
}

// Open loads the programs, reuses the pool's pinned maps (or creates and
// pins them), writes the pool configuration and, with an uplink, attaches
// the programs to it. Pinned links are updated in place, so packets keep
// flowing through a restart.
func Open(c Config) (*Datapath, error) {
	if c.Slot.Count > slot.MaxSlots {
		return nil, fmt.Errorf("%d slots: the dummy vni range holds at most %d", c.Slot.Count, slot.MaxSlots)
	}
	if c.Uplink != "" && !c.UnderlayIP.Is4() {
		return nil, fmt.Errorf("an uplink needs an IPv4 underlay address")
	}
	if len(c.Deny) > MaxDeny {
		return nil, fmt.Errorf("deny set of %d ranges: at most %d", len(c.Deny), MaxDeny)
	}
	dir := PinDir(c.PinRoot, c.Slot.Prefix)
	if err := EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	n := uint32(c.Slot.Count)
	for name, size := range map[string]uint32{
		"slots": n, "by_ifindex": 2 * n, "tunnels": n, "peers": n, "vni_dst": n, "vnis": n,
		"vpc_routes": n * vpcRoutesPerSlot, "stats": n + 1, "leases": n, "flows": n, "dhcp": n, "icmp_limits": n, "dhcp_limits": n, "deny": MaxDeny,
	} {
		spec.Maps[name].MaxEntries = size
	}
	d := &Datapath{cfg: c, dir: dir, pinned: map[string]bool{}}
	for name, m := range spec.Maps {
		d.pinned[name] = m.Pinning == ebpf.PinByName
	}
	if d.Migrated, err = migrate(spec, dir); err != nil {
		return nil, fmt.Errorf("%w: migrating the pinned maps to this version's layout: %w: run 'netslotd teardown' for prefix %q first", ErrIncompatible, err, c.Slot.Prefix)
	}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("%w (%w): run 'netslotd teardown' for prefix %q first", ErrIncompatible, err, c.Slot.Prefix)
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if d.leases, err = mapArray(d.objs.Leases); err == nil {
		if d.flows, err = mapArray(d.objs.Flows); err == nil {
			d.dhcp, err = mapArray(d.objs.Dhcp)
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	d.gen = make([]uint32, c.Slot.Count)
	for i := range d.gen {
		d.gen[i] = d.LeaseWord(i) >> leaseGenShift
	}
	if err := d.writeConfig(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.writeDeny(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.loadInbound(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.attach(); err != nil {
		d.Close()
		return nil, err
	}
	// Last: the layout describes the maps the attached programs use.
	d.layout = layoutOf(spec)
	if err := writeLayout(dir, d.layout); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close releases the loaded objects and memory mappings; pinned maps and
// links stay in the kernel and keep forwarding.
func (d *Datapath) Close() error {
	errs := []error{d.leases.close(), d.flows.close(), d.dhcp.close(), d.objs.Close()}
	for k, l := range d.links {
		if l != nil {
			errs = append(errs, l.Close())
			d.links[k] = nil
		}
	}
	return errors.Join(errs...)
}

func be32(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func mac6(m net.HardwareAddr) (out [6]uint8) {
	copy(out[:], m)
	return out
}

func (d *Datapath) writeConfig() error {
	c := d.cfg
	ttl, err := flowTTL()
	if err != nil {
		return err
	}
	pc := datapathPoolConfig{
		GuestIp:     be32(c.Slot.GuestIP()),
		SlotFirst:   be32(c.Slot.SlotIP(0)),
		SlotCount:   uint32(c.Slot.Count),
		UnderlayIp:  be32(c.UnderlayIP),
		RouteTable:  uint32(c.RouteTable),
		FlowTtl:     ttl,
		GatewayIp:   be32(c.Slot.GatewayIP()),
		GuestMask:   be32(maskOf(c.Slot.GuestCIDR)),
		HostGateway: be32(slot.HostGateway),
		TapMac:      mac6(c.Slot.TapMAC),
		GuestMac:    mac6(c.Slot.GuestMAC),
	}
	if c.Flat {
		pc.Flat = 1
	}
	if c.Uplink != "" {
		l, err := netlink.LinkByName(c.Uplink)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", c.Uplink, err)
		}
		pc.UplinkIfindex = uint32(l.Attrs().Index)
		pc.UplinkMac = mac6(l.Attrs().HardwareAddr)
	}
	if err := d.objs.Config.Update(uint32(0), &pc, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

// FlowIdle is how long a flow of a guest's stays open after its last
// packet out: replies to it are let in meanwhile.
const FlowIdle = 120 * time.Second

// flowTTL is FlowIdle in the flow table's clock: jiffies, 2^FLOW_TIME_SHIFT
// a unit. A jiffy is the tick, the resolution of the coarse clocks.
func flowTTL() (uint32, error) {
	var res unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &res); err != nil {
		return 0, fmt.Errorf("tick length: %w", err)
	}
	tick := time.Duration(res.Nano())
	if tick <= 0 {
		return 0, fmt.Errorf("tick length %v", tick)
	}
	unit := tick << uint(dpconst.FlowTimeShift)
	return uint32((FlowIdle + unit - 1) / unit), nil
}

// writeDeny makes the deny map hold exactly the pool's deny set: new
// ranges are added before old ones go, so that no moment allows both.
func (d *Datapath) writeDeny() error {
	want := map[datapathDenyKey]bool{}
	for _, p := range d.cfg.Deny {
		if !p.Addr().Is4() {
			return fmt.Errorf("deny range %s: want IPv4", p)
		}
		k := datapathDenyKey{Prefixlen: uint32(p.Bits()), Ip: be32(p.Masked().Addr())}
		want[k] = true
		if err := d.objs.Deny.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("deny range %s: %w", p, err)
		}
	}
	var k datapathDenyKey
	var v uint8
	var stale []datapathDenyKey
	for it := d.objs.Deny.Iterate(); it.Next(&k, &v); {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := d.objs.Deny.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete deny range: %w", err)
		}
	}
	return nil
}

// attach makes the two uplink links run the freshly loaded programs: a
// pinned link on the same device is updated in place (no gap in
// forwarding); anything else is replaced. Without an uplink, pinned links
// are removed.
func (d *Datapath) attach() error {
	ifindex := 0
	if d.cfg.Uplink != "" {
		l, err := netlink.LinkByName(d.cfg.Uplink)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", d.cfg.Uplink, err)
		}
		ifindex = l.Attrs().Index
	}
	if ifindex != 0 {
		if other := d.uplinkUser(ifindex); other != "" {
			return fmt.Errorf("uplink %s already carries pool %q's datapath: pools cannot share an uplink (each drops the other's Geneve as unknown)", d.cfg.Uplink, other)
		}
	}
	for k, a := range d.attachments() {
		path := filepath.Join(d.dir, a.pin)
		if old, err := link.LoadPinnedLink(path, nil); err == nil {
			info, ierr := old.Info()
			if ierr == nil && ifindex != 0 && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				if err := old.Update(a.prog); err != nil {
					old.Close()
					return fmt.Errorf("update %s: %w", a.pin, err)
				}
				d.hold(k, old)
				continue
			}
			old.Unpin()
			old.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("load %s: %w", a.pin, err)
		}
		if ifindex == 0 {
			continue
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.at})
		if err != nil {
			return fmt.Errorf("attach to %s: %w", d.cfg.Uplink, err)
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			return fmt.Errorf("pin %s: %w", a.pin, err)
		}
		d.hold(k, l)
	}
	return nil
}

// Repair puts back what the datapath depends on outside the daemon and
// says what it did: its pin directory and pins, of maps and links
// (removed pins take nothing away while the daemon holds them, but a
// restart would start from empty maps, and the programs would go with the
// last holder), and its two attachments on the uplink, which went with a
// deleted uplink (one made again under the same name gets them back, with
// the pool's configuration rewritten for the new device). A missing
// uplink is an error: there is nothing to attach to.
//
// Without full, only the pins are looked at (a few stat calls).
func (d *Datapath) Repair(full bool) (done []string, err error) {
	if err := EnsureBPFFS(d.dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	repin := func(what, path string, unpin func() error, pin func(string) error) {
		if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
			return
		}
		unpin() // forgets the pin the object still records; the file is gone
		if perr := pin(path); perr != nil {
			err = errors.Join(err, fmt.Errorf("pin %s: %w", what, perr))
			return
		}
		done = append(done, "pin "+what)
	}
	maps := reflect.ValueOf(d.objs.datapathMaps)
	for i := range maps.NumField() {
		if name := maps.Type().Field(i).Tag.Get("ebpf"); name != "" && d.pinned[name] {
			m := maps.Field(i).Interface().(*ebpf.Map)
			repin("map "+name, filepath.Join(d.dir, name), m.Unpin, m.Pin)
		}
	}
	for k, a := range d.attachments() {
		if l := d.links[k]; l != nil {
			repin(a.pin, filepath.Join(d.dir, a.pin), l.Unpin, l.Pin)
		}
	}
	// The layout, which an upgrade needs to migrate the maps.
	if _, serr := os.Stat(filepath.Join(d.dir, layoutPin)); errors.Is(serr, os.ErrNotExist) {
		if werr := writeLayout(d.dir, d.layout); werr != nil {
			err = errors.Join(err, werr)
		} else {
			done = append(done, "pin "+layoutPin)
		}
	}
	if d.cfg.Uplink == "" || !full {
		return done, err
	}
	up, lerr := netlink.LinkByName(d.cfg.Uplink)
	if lerr != nil {
		return done, errors.Join(err, fmt.Errorf("uplink %s: %w", d.cfg.Uplink, lerr))
	}
	for _, l := range d.links {
		if l != nil {
			if info, ierr := l.Info(); ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == up.Attrs().Index {
				continue
			}
		}
		if werr := d.writeConfig(); werr != nil {
			return done, errors.Join(err, werr)
		}
		if aerr := d.attach(); aerr != nil {
			return done, errors.Join(err, aerr)
		}
		done = append(done, "attach to "+d.cfg.Uplink)
		break
	}
	return done, err
}

type attachment struct {
	pin  string
	prog *ebpf.Program
	at   ebpf.AttachType
}

func (d *Datapath) attachments() [2]attachment {
	return [2]attachment{
		{ingressPin, d.objs.UplinkIngress, ebpf.AttachTCXIngress},
		{egressPin, d.objs.UplinkEgress, ebpf.AttachTCXEgress},
	}
}

// hold keeps l as attachment k, closing the handle it replaces.
func (d *Datapath) hold(k int, l link.Link) {
	if old := d.links[k]; old != nil && old != l {
		old.Close()
	}
	d.links[k] = l
}

// uplinkUser returns the prefix of another pool whose pinned links sit on
// ifindex, or "".
func (d *Datapath) uplinkUser(ifindex int) string {
	return onUplink(neighbours(filepath.Dir(d.dir), filepath.Base(d.dir)), ifindex)
}

// onUplink returns the prefix of the pool of ns whose pinned ingress link
// is attached to device ifindex of the calling thread's namespace, or "".
// It asks the device which links it holds: an ifindex alone names
// different devices in different namespaces (a pool whose host is a
// namespace of its own, as tests make), so the pinned link's is no proof.
func onUplink(ns []neighbour, ifindex int) string {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return ""
	}
	for _, p := range res.Programs {
		id, ok := p.LinkID()
		if !ok {
			continue
		}
		for _, n := range ns {
			if n.link != 0 && n.link == id {
				return n.prefix
			}
		}
	}
	return ""
}

// neighbour is another pool pinned under the same root: its prefix, the
// id of its pinned ingress link (0: none, no uplink) and its slot
// addresses (first, and how many; 0 if its configuration cannot be read).
type neighbour struct {
	prefix    string
	link      link.ID
	slotFirst netip.Addr
	slots     int
}

func neighbours(root, self string) []neighbour {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []neighbour
	for _, e := range ents {
		if !e.IsDir() || e.Name() == self {
			continue
		}
		n := neighbour{prefix: e.Name()}
		dir := filepath.Join(root, e.Name())
		if l, err := link.LoadPinnedLink(filepath.Join(dir, ingressPin), nil); err == nil {
			if info, err := l.Info(); err == nil {
				n.link = info.ID
			}
			l.Close()
		}
		if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "config"), &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
			var pc datapathPoolConfig
			if m.Lookup(uint32(0), &pc) == nil { // another layout: unknown
				var b [4]byte
				binary.NativeEndian.PutUint32(b[:], pc.SlotFirst)
				n.slotFirst, n.slots = netip.AddrFrom4(b), int(pc.SlotCount)
			}
			m.Close()
		}
		out = append(out, n)
	}
	return out
}

// SlotRange is the slot addresses of a pool: the first, and how many.
type SlotRange struct {
	Prefix string
	First  netip.Addr
	Count  int
}

// PinnedSlotRanges reports the slot addresses of every pool pinned under
// pinRoot ("": DefaultPinRoot) whose configuration can be read.
func PinnedSlotRanges(pinRoot string) []SlotRange {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	var out []SlotRange
	for _, n := range neighbours(pinRoot, "") {
		if n.slots > 0 {
			out = append(out, SlotRange{Prefix: n.prefix, First: n.slotFirst, Count: n.slots})
		}
	}
	return out
}

// CheckNeighbours refuses a pool that would clash with another pool
// pinned under pinRoot, before anything is made: one that would share its
// uplink (ifindex; 0 for none) (each would drop the other's Geneve as
// unknown), or, both having an uplink, whose slot addresses overlap the
// other's (the underlay would route one pool's replies to the other).
func CheckNeighbours(pinRoot string, c slot.Config, uplink int) error {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	ns := neighbours(pinRoot, c.Prefix)
	if uplink != 0 {
		if other := onUplink(ns, uplink); other != "" {
			return fmt.Errorf("this uplink already carries pool %q's datapath: pools cannot share an uplink (each would drop the other's Geneve as unknown)", other)
		}
	}
	lo, hi := u32(c.SlotIP(0)), u32(c.SlotIP(c.Count-1))
	for _, n := range ns {
		// Slot addresses that never leave the host (no uplink) clash
		// with nobody.
		if uplink != 0 && n.link != 0 && n.slots > 0 {
			nlo := u32(n.slotFirst)
			nhi := nlo + uint32(n.slots) - 1
			if lo <= nhi && nlo <= hi {
				return fmt.Errorf("slot addresses %s-%s overlap pool %q's (%s, %d slots): choose another --slot-cidr, or tear that pool down",
					c.SlotIP(0), c.SlotIP(c.Count-1), n.prefix, n.slotFirst, n.slots)
			}
		}
	}
	return nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// Remove detaches and unpins prefix's datapath; a missing one is not an
// error.
func Remove(pinRoot, prefix string) error {
	dir := PinDir(pinRoot, prefix)
	for _, pin := range []string{ingressPin, egressPin} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, pin), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load %s: %w", pin, err)
		}
		err = l.Unpin()
		l.Close()
		if err != nil {
			return fmt.Errorf("unpin %s: %w", pin, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	os.Remove(filepath.Dir(dir)) // the pin root, once no pool is left in it
	return nil
}

// UplinkIndex is the ifindex of the device prefix's pinned datapath is
// attached to (0: none, or not pinned).
func UplinkIndex(pinRoot, prefix string) int {
	l, err := link.LoadPinnedLink(filepath.Join(PinDir(pinRoot, prefix), ingressPin), nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	if info, err := l.Info(); err == nil && info.TCX() != nil {
		return int(info.TCX().Ifindex)
	}
	return 0
}

// Exists reports whether prefix's datapath is pinned.
func Exists(pinRoot, prefix string) bool {
	_, err := os.Stat(PinDir(pinRoot, prefix))
	return err == nil
}

// EnsureBPFFS makes sure pinRoot lies on a bpffs: if the nearest existing
// directory of it is on another file system and pinRoot is under
// /sys/fs/bpf, a bpffs is mounted there (hosts without systemd often lack
// it); anywhere else that is an error.
func EnsureBPFFS(pinRoot string) error {
	p := filepath.Clean(pinRoot)
	for {
		if _, err := os.Stat(p); err == nil || p == "/" {
			break
		}
		p = filepath.Dir(p)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", p, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	const bpffs = "/sys/fs/bpf"
	if !strings.HasPrefix(filepath.Clean(pinRoot)+"/", bpffs+"/") {
		return fmt.Errorf("pin root %s is not on a bpffs", pinRoot)
	}
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", bpffs, err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
	}
	return nil
}
