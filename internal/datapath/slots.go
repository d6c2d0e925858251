package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/slot"
)

// DropReasons names the drop counters in the order of Stats.Drops (see
// dpconst.DropReasons, their one source).
var DropReasons = dpconst.DropReasonNames()

func init() {
	// Both are generated from dpconst; a stale binding would show here.
	if len(DropReasons) != len(datapathSlotStats{}.Drops) {
		panic("datapath: the bindings are stale: run make generate")
	}
	if len(datapathLeasePolicy{}.Inbound) != dpconst.InboundRules {
		panic("datapath: the bindings are stale: run make generate")
	}
}

// Constants shared with bpf/ (see dpconst).
const (
	leaseOpen     = uint32(dpconst.LeaseOpen)
	leaseGenShift = dpconst.LeaseGenShift
	encapMark     = uint32(dpconst.EncapMark)
)

// OpenLease lets slot i's traffic flow, both ways, under its lease: from
// now on the guest may send, and receive replies to its own flows and
// what the inbound rules allow (at most slot.MaxInboundRules, checked by
// every caller). Until then (a pooled slot), and from CloseLease on (a
// slot being released), the datapath drops everything to and from it.
// Opening a closed lease starts from an empty flow table (no program
// writes it while the lease is closed). The flags word is written last,
// in one atomic store (a release: no program sees the lease open before
// its rules): no syscall. Each opening starts a new generation of the
// slot's lease (LeaseWord), unless the lease is open already (a restart).
func (d *Datapath) OpenLease(i int, inbound []slot.InboundRule) {
	p := at[datapathLeasePolicy](d.leases, i)
	if atomic.LoadUint32(&p.Flags)&leaseOpen != 0 {
		return
	}
	*at[datapathSlotFlows](d.flows, i) = datapathSlotFlows{}
	var rules [len(p.Inbound)]datapathInboundRule
	for n, r := range inbound { // panics past len(rules): unchecked input
		rules[n] = datapathInboundRule{Proto: r.Proto, PortLo: r.PortLo, PortHi: r.PortHi,
			Src: be32(r.Src.Addr()), Mask: be32(maskOf(r.Src))}
	}
	p.Inbound, p.Ninbound = rules, uint32(len(inbound))
	d.mu.Lock()
	d.gen[i]++
	gen := d.gen[i]
	d.mu.Unlock()
	atomic.StoreUint32(&p.Flags, leaseOpen|gen<<leaseGenShift)
}

// LeaseWord is slot i's lease flags word as the programs see it: 0 while
// closed, else open with the lease's generation. What the datapath hands
// netslotd (a held frame) carries the word it saw, so that it is only
// ever acted on under the same lease.
func (d *Datapath) LeaseWord(i int) uint32 {
	return atomic.LoadUint32(&at[datapathLeasePolicy](d.leases, i).Flags)
}

// HeldEvents is the ring buffer of the programs' events for netslotd
// (see bpf/lib/arp.h, hold).
func (d *Datapath) HeldEvents() *ebpf.Map { return d.objs.Held }

// CloseLease stops slot i's traffic both ways (the flags word first, in
// one atomic store), then forgets its inbound rules.
func (d *Datapath) CloseLease(i int) {
	p := at[datapathLeasePolicy](d.leases, i)
	atomic.StoreUint32(&p.Flags, 0)
	p.Ninbound, p.Inbound = 0, [len(p.Inbound)]datapathInboundRule{}
}

// ClearFlows forgets the flows slot i's guest opened (so that a released
// slot holds nothing of its tenant's). The slot's lease must be closed.
func (d *Datapath) ClearFlows(i int) {
	*at[datapathSlotFlows](d.flows, i) = datapathSlotFlows{}
}

// Stats are a slot's packet counters, summed over CPUs.
type Stats struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	EncapPackets, DecapPackets             uint64
	ARPReplies, ARPRequests                uint64
	DHCPReplies                            uint64
	ICMPFragNeeded                         uint64            // answers to packets too big for the tunnel
	Drops                                  map[string]uint64 // only reasons with drops
}

func (d *Datapath) dummy(i int) datapathTunnelInfo {
	return datapathTunnelInfo{Vni: uint32(DummyVNIBase + i)}
}

// SetSlot records slot i and its host veth: the static half of its
// datapath state; Attach or Detach then writes its tunnel entry. The entry
// of a previous host veth of the slot (a rebuilt slot) is removed.
func (d *Datapath) SetSlot(i, hostIfindex int) error {
	var prev datapathSlotInfo
	oldIfindex := 0
	if err := d.objs.Slots.Lookup(uint32(i), &prev); err == nil {
		oldIfindex = int(prev.HostIfindex)
	}
	c := d.cfg.Slot
	si := datapathSlotInfo{
		HostIfindex: uint32(hostIfindex),
		SlotIp:      be32(c.SlotIP(i)),
		SlotMac:     mac6(c.SlotVethMAC(i)),
		HostMac:     mac6(c.HostVethMAC(i)),
	}
	var owner uint32
	if oldIfindex != 0 && oldIfindex != hostIfindex &&
		d.objs.ByIfindex.Lookup(uint32(oldIfindex), &owner) == nil && int(owner) == i {
		if err := d.objs.ByIfindex.Delete(uint32(oldIfindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget ifindex %d: %w", oldIfindex, err)
		}
	}
	if err := d.objs.ByIfindex.Update(uint32(hostIfindex), uint32(i), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("map ifindex: %w", err)
	}
	if err := d.objs.Slots.Update(uint32(i), &si, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write slot: %w", err)
	}
	return nil
}

// Tunnel returns slot i's VNI and whether it is a dummy one.
func (d *Datapath) Tunnel(i int) (vni uint32, dummy bool, err error) {
	var t datapathTunnelInfo
	if err := d.objs.Tunnels.Lookup(uint32(i), &t); err != nil {
		return 0, false, fmt.Errorf("read tunnel: %w", err)
	}
	return t.Vni, t.Vni >= DummyVNIBase, nil
}

func routeKey(i int, p netip.Prefix) datapathVpcRouteKey {
	return datapathVpcRouteKey{Prefixlen: uint32(32 + p.Bits()), Slot: uint32(i), Ip: be32(p.Addr())}
}

// Attach connects slot i to a VPC with map updates only: the routes and
// the inbound key first, the tunnel entry (the flip from the dummy VNI to
// a's) last, in one update that packets see whole or not at all. It is
// idempotent, so a restart re-applies leases as they are.
func (d *Datapath) Attach(i int, a *slot.Attachment) error {
	key := datapathVniKey{Vni: a.VNI, Ip: be32(a.VPCIP)}
	d.mu.Lock()
	owner, exists := d.owner[key]
	d.mu.Unlock()
	if exists && owner != i {
		return fmt.Errorf("%s on vni %d (slot %d): %w", a.VPCIP, a.VNI, owner, ErrConflict)
	}
	inline, extra := splitCIDRs(a.VPCCIDRs)
	one := uint8(1)
	for n, p := range extra {
		if err := d.objs.VpcRoutes.Update(routeKey(i, p), one, ebpf.UpdateAny); err != nil {
			d.deleteRoutes(i, extra[:n])
			return fmt.Errorf("vpc route %s: %w", p, err)
		}
	}
	undo := func() { d.deleteRoutes(i, extra) }
	if !exists {
		if err := d.addInbound(key, i); err != nil {
			undo()
			if errors.Is(err, ErrConflict) {
				return fmt.Errorf("%s on vni %d: %w", a.VPCIP, a.VNI, err)
			}
			return err
		}
		undo = func() {
			d.removeInbound(key, i)
			d.deleteRoutes(i, extra)
		}
	}
	if a.PeerMAC != nil {
		p := datapathPeerInfo{Mac: mac6(a.PeerMAC), Known: 1, Vni: a.VNI, Remote: be32(a.RemoteVTEP)}
		if err := d.objs.Peers.Update(uint32(i), &p, ebpf.UpdateAny); err != nil {
			undo()
			return fmt.Errorf("peer mac: %w", err)
		}
	}
	t := datapathTunnelInfo{
		Vni:      a.VNI,
		VpcIp:    be32(a.VPCIP),
		RemoteIp: be32(a.RemoteVTEP),
		VpcMac:   mac6(d.cfg.Slot.VPCMAC(i)),
		Ncidrs:   uint8(len(inline)),
	}
	if len(extra) > 0 {
		t.MoreRoutes = 1
	}
	for n, p := range inline {
		t.Cidrs[n] = datapathVpcCidr{Addr: be32(p.Addr()), Mask: be32(maskOf(p))}
	}
	if err := d.objs.Tunnels.Update(uint32(i), &t, ebpf.UpdateAny); err != nil {
		undo()
		return fmt.Errorf("flip to vni %d: %w", a.VNI, err)
	}
	return nil
}

// Detach flips slot i back to its dummy VNI first (nothing more goes
// through the tunnel), then removes what Attach added.
func (d *Datapath) Detach(i int, a *slot.Attachment) error {
	dummy := d.dummy(i)
	if err := d.objs.Tunnels.Update(uint32(i), &dummy, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("flip to dummy vni: %w", err)
	}
	var errs []error
	if a != nil {
		errs = append(errs, d.removeInbound(datapathVniKey{Vni: a.VNI, Ip: be32(a.VPCIP)}, i))
		_, extra := splitCIDRs(a.VPCCIDRs)
		errs = append(errs, d.deleteRoutes(i, extra))
	}
	if err := d.objs.Peers.Update(uint32(i), &datapathPeerInfo{}, ebpf.UpdateAny); err != nil {
		errs = append(errs, fmt.Errorf("clear peer: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return nil
}

// tunnelCIDRs is how many VPC CIDRs a tunnel entry holds (TUNNEL_CIDRS in
// bpf/datapath.c); the rest go to the LPM trie.
const tunnelCIDRs = len(datapathTunnelInfo{}.Cidrs)

func splitCIDRs(ps []netip.Prefix) (inline, extra []netip.Prefix) {
	if len(ps) <= tunnelCIDRs {
		return ps, nil
	}
	return ps[:tunnelCIDRs], ps[tunnelCIDRs:]
}

func maskOf(p netip.Prefix) netip.Addr {
	m := net.CIDRMask(p.Bits(), 32)
	return netip.AddrFrom4([4]byte(m))
}

func (d *Datapath) deleteRoutes(i int, ps []netip.Prefix) error {
	var errs []error
	for _, p := range ps {
		k := routeKey(i, p)
		if err := d.objs.VpcRoutes.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete vpc route %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// addInbound maps (VNI, VPC address) to slot i, marking the VNI known when
// it gains its first slot.
func (d *Datapath) addInbound(k datapathVniKey, i int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Checked again under the lock: two acquires of one key race here.
	if owner, ok := d.owner[k]; ok {
		if owner == i {
			return nil
		}
		return fmt.Errorf("owned by slot %d: %w", owner, ErrConflict)
	}
	if err := d.objs.VniDst.Update(&k, uint32(i), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("vni entry: %w", err)
	}
	if d.vnis[k.Vni] == 0 {
		if err := d.objs.Vnis.Update(k.Vni, uint32(1), ebpf.UpdateAny); err != nil {
			d.objs.VniDst.Delete(&k)
			return fmt.Errorf("vni %d: %w", k.Vni, err)
		}
	}
	d.owner[k] = i
	d.vnis[k.Vni]++
	return nil
}

// removeInbound undoes addInbound if slot i owns k.
func (d *Datapath) removeInbound(k datapathVniKey, i int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if owner, ok := d.owner[k]; !ok || owner != i {
		return nil
	}
	if err := d.objs.VniDst.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete vni entry: %w", err)
	}
	delete(d.owner, k)
	if d.vnis[k.Vni]--; d.vnis[k.Vni] <= 0 {
		delete(d.vnis, k.Vni)
		if err := d.objs.Vnis.Delete(k.Vni); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete vni %d: %w", k.Vni, err)
		}
	}
	return nil
}

// loadInbound rebuilds the mirrors from the kernel's maps (after a
// restart) and rewrites the vnis map to match.
func (d *Datapath) loadInbound() error {
	owner := map[datapathVniKey]int{}
	counts := map[uint32]int{}
	var k datapathVniKey
	var v uint32
	it := d.objs.VniDst.Iterate()
	for it.Next(&k, &v) {
		owner[k] = int(v)
		counts[k.Vni]++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read vni entries: %w", err)
	}
	var vni, n uint32
	var stale []uint32
	it = d.objs.Vnis.Iterate()
	for it.Next(&vni, &n) {
		if counts[vni] == 0 {
			stale = append(stale, vni)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read vnis: %w", err)
	}
	for _, vni := range stale {
		if err := d.objs.Vnis.Delete(vni); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete vni %d: %w", vni, err)
		}
	}
	for vni := range counts {
		if err := d.objs.Vnis.Update(vni, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("mark vni %d: %w", vni, err)
		}
	}
	d.mu.Lock()
	d.owner, d.vnis = owner, counts
	d.mu.Unlock()
	return nil
}

// Prune removes inbound entries and VPC routes of slots for which keep
// returns false (leases gone while the daemon was down), then reloads the
// mirrors.
func (d *Datapath) Prune(keep func(i int, vni uint32, vpcIP netip.Addr) bool) error {
	var k datapathVniKey
	var v uint32
	var dead []datapathVniKey
	it := d.objs.VniDst.Iterate()
	for it.Next(&k, &v) {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], k.Ip)
		if !keep(int(v), k.Vni, netip.AddrFrom4(b)) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read vni entries: %w", err)
	}
	for _, k := range dead {
		if err := d.objs.VniDst.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete vni entry: %w", err)
		}
	}
	var rk datapathVpcRouteKey
	var one uint8
	var deadRoutes []datapathVpcRouteKey
	it = d.objs.VpcRoutes.Iterate()
	for it.Next(&rk, &one) {
		if !keep(int(rk.Slot), 0, netip.Addr{}) {
			deadRoutes = append(deadRoutes, rk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read vpc routes: %w", err)
	}
	for _, rk := range deadRoutes {
		if err := d.objs.VpcRoutes.Delete(&rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete vpc route: %w", err)
		}
	}
	return d.loadInbound()
}

// ResetStats zeroes slot i's counters.
func (d *Datapath) ResetStats(i int) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	zero := make([]datapathSlotStats, n)
	if err := d.objs.Stats.Update(uint32(i), zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	return nil
}

// Stats returns slot i's counters; i = Count gives what belongs to no
// slot (Geneve for unknown VNIs and the like).
func (d *Datapath) Stats(i int) (Stats, error) {
	var per []datapathSlotStats
	if err := d.objs.Stats.Lookup(uint32(i), &per); err != nil {
		return Stats{}, fmt.Errorf("read counters: %w", err)
	}
	var s Stats
	var drops [len(datapathSlotStats{}.Drops)]uint64
	for _, p := range per {
		s.TxPackets += p.TxPackets
		s.TxBytes += p.TxBytes
		s.RxPackets += p.RxPackets
		s.RxBytes += p.RxBytes
		s.EncapPackets += p.EncapPackets
		s.DecapPackets += p.DecapPackets
		s.ARPReplies += p.ArpReplies
		s.ARPRequests += p.ArpRequests
		s.DHCPReplies += p.DhcpReplies
		s.ICMPFragNeeded += p.IcmpFragNeeded
		for r := range drops {
			drops[r] += p.Drops[r]
		}
	}
	for r, n := range drops {
		if n > 0 {
			if s.Drops == nil {
				s.Drops = map[string]uint64{}
			}
			s.Drops[DropReasons[r]] = n
		}
	}
	return s, nil
}

// SlotState describes everything the datapath holds for slot i, with the
// slot's own identity (its dummy VNI, address, MACs and VPC MAC) written as
// names, so that the states of two slots that hold the same compare equal:
// a released slot's against a fresh one's. Host veth ifindexes are left
// out (they differ per slot, and SetSlot checks them).
func (d *Datapath) SlotState(i int) (string, error) {
	var b []string
	add := func(f string, a ...any) { b = append(b, fmt.Sprintf(f, a...)) }
	c := d.cfg.Slot
	var t datapathTunnelInfo
	if err := d.objs.Tunnels.Lookup(uint32(i), &t); err != nil {
		return "", fmt.Errorf("tunnel: %w", err)
	}
	vni := fmt.Sprint(t.Vni)
	if t.Vni == uint32(DummyVNIBase+i) {
		vni = "own-dummy"
	}
	vpcMAC := fmt.Sprintf("%x", t.VpcMac)
	if vpcMAC == fmt.Sprintf("%x", mac6(c.VPCMAC(i))) {
		vpcMAC = "own"
	}
	add("tunnel vni=%s vpc_ip=%x remote=%x vpc_mac=%s cidrs=%d more=%d %x", vni, t.VpcIp, t.RemoteIp, vpcMAC, t.Ncidrs, t.MoreRoutes, t.Cidrs)
	var p datapathPeerInfo
	if err := d.objs.Peers.Lookup(uint32(i), &p); err == nil {
		add("peer mac=%x known=%d vni=%d remote=%x asked_ns=%d", p.Mac, p.Known, p.Vni, p.Remote, p.AskedNs)
	}
	var s datapathSlotInfo
	if err := d.objs.Slots.Lookup(uint32(i), &s); err != nil {
		return "", fmt.Errorf("slot entry: %w", err)
	}
	add("slot own_ip=%t own_macs=%t has_host=%t", s.SlotIp == be32(c.SlotIP(i)),
		s.SlotMac == mac6(c.SlotVethMAC(i)) && s.HostMac == mac6(c.HostVethMAC(i)), s.HostIfindex != 0)
	var k datapathVniKey
	var owner uint32
	for it := d.objs.VniDst.Iterate(); it.Next(&k, &owner); {
		if owner == uint32(i) {
			add("inbound vni=%d ip=%x", k.Vni, k.Ip)
		}
	}
	var rk datapathVpcRouteKey
	var rv []byte
	for it := d.objs.VpcRoutes.Iterate(); it.Next(&rk, &rv); {
		if rk.Slot == uint32(i) {
			add("route %x/%d", rk.Ip, rk.Prefixlen-32)
		}
	}
	var lp datapathLeasePolicy
	if err := d.objs.Leases.Lookup(uint32(i), &lp); err != nil {
		return "", fmt.Errorf("lease policy: %w", err)
	}
	add("lease flags=%d inbound=%d %x", lp.Flags, lp.Ninbound, lp.Inbound)
	var fl datapathSlotFlows
	if err := d.objs.Flows.Lookup(uint32(i), &fl); err != nil {
		return "", fmt.Errorf("flows: %w", err)
	}
	used := 0
	for _, f := range fl.F {
		if f != (datapathFlow{}) {
			used++
		}
	}
	add("flows %d", used)
	var dl datapathDhcpLease
	if err := d.objs.Dhcp.Lookup(uint32(i), &dl); err != nil {
		return "", fmt.Errorf("dhcp: %w", err)
	}
	add("dhcp %+v", dl)
	st, err := d.Stats(i)
	if err != nil {
		return "", err
	}
	add("counters %+v", st)
	return strings.Join(b, "\n"), nil
}

// PeerKnown reports whether the datapath knows the MAC of slot i's VPC
// peer, for its current attachment.
func (d *Datapath) PeerKnown(i int) bool {
	var p datapathPeerInfo
	var t datapathTunnelInfo
	if d.objs.Peers.Lookup(uint32(i), &p) != nil || d.objs.Tunnels.Lookup(uint32(i), &t) != nil {
		return false
	}
	return p.Known != 0 && p.Vni == t.Vni && p.Remote == t.RemoteIp
}

// HeldEvent is a record of the held ring (struct hold_event): a guest's
// frame held while its VPC peer is unknown (Kind dpconst.HoldFrame), or
// the peer learned (dpconst.HoldLearned).
type HeldEvent struct {
	Kind, Slot uint32
	Lease      uint32 // the slot's LeaseWord when the program saw it
	At         int64  // CLOCK_MONOTONIC, ns
	Data       []byte // the frame; it points into the record
}

// heldHeader is what of a record comes before its frame.
var heldHeader = int(unsafe.Offsetof(datapathHoldEvent{}.Data))

// ParseHeld decodes a record of the held ring (its layout is the
// generated binding's).
func ParseHeld(b []byte) (HeldEvent, error) {
	if len(b) < heldHeader {
		return HeldEvent{}, fmt.Errorf("held event of %d bytes", len(b))
	}
	// The header as the kernel wrote it: host layout, host byte order.
	var h datapathHoldEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), heldHeader), b)
	if int(h.Len) > len(b)-heldHeader {
		return HeldEvent{}, fmt.Errorf("held event claims %d bytes of %d", h.Len, len(b)-heldHeader)
	}
	return HeldEvent{Kind: h.Kind, Slot: h.Slot, Lease: h.Lease, At: int64(h.TimeNs), Data: b[heldHeader : heldHeader+int(h.Len)]}, nil
}
