package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/cilium/ebpf"

	"github.com/netslot/netslot/internal/slot"
)

// DropReasons names the drop counters in the order of Stats.Drops.
var DropReasons = []string{
	"geneve_truncated", "geneve_version", "geneve_optlen", "geneve_proto",
	"dummy_vni", "unknown_vni", "unknown_dst", "wrong_vtep",
	"inner_ipv6", "inner_multicast", "inner_mac", "inner_other",
	"egress_dummy_vni", "egress_not_ipv4", "egress_spoof",
	"no_route", "rewrite", "no_slot", "slot_to_slot",
}

func init() {
	if len(DropReasons) != int(datapathDropReasonDROP_REASONS) {
		panic("datapath: DropReasons out of step with bpf/datapath.c")
	}
}

// Stats are a slot's packet counters, summed over CPUs.
type Stats struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	EncapPackets, DecapPackets             uint64
	ARPReplies, ARPRequests                uint64
	Drops                                  map[string]uint64 // only reasons with drops
}

func (d *Datapath) dummy(i int) datapathTunnelInfo {
	return datapathTunnelInfo{Vni: uint32(DummyVNIBase + i)}
}

// SetSlot records slot i and its host veth: the static half of its
// datapath state. A slot without a tunnel entry gets its dummy VNI; an
// existing entry (a lease that survived a restart) is kept. The entry of a
// previous host veth of the slot (a rebuilt slot) is removed.
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
	if oldIfindex != 0 && oldIfindex != hostIfindex {
		if err := d.objs.ByIfindex.Delete(uint32(oldIfindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("slot %d: forget ifindex %d: %w", i, oldIfindex, err)
		}
	}
	if err := d.objs.ByIfindex.Update(uint32(hostIfindex), uint32(i), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("slot %d: map ifindex: %w", i, err)
	}
	if err := d.objs.Slots.Update(uint32(i), &si, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("slot %d: write slot: %w", i, err)
	}
	dummy := d.dummy(i)
	if err := d.objs.Tunnels.Update(uint32(i), &dummy, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("slot %d: write dummy tunnel: %w", i, err)
	}
	return nil
}

// Tunnel returns slot i's VNI and whether it is a dummy one.
func (d *Datapath) Tunnel(i int) (vni uint32, dummy bool, err error) {
	var t datapathTunnelInfo
	if err := d.objs.Tunnels.Lookup(uint32(i), &t); err != nil {
		return 0, false, fmt.Errorf("slot %d: read tunnel: %w", i, err)
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
	var owner uint32
	err := d.objs.VniDst.Lookup(&key, &owner)
	switch {
	case err == nil && int(owner) != i:
		return fmt.Errorf("%s on vni %d (slot %d): %w", a.VPCIP, a.VNI, owner, ErrConflict)
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("slot %d: read vni entry: %w", i, err)
	}
	fresh := err != nil // re-applied after a restart: already counted
	one := uint8(1)
	for n, p := range a.VPCCIDRs {
		if err := d.objs.VpcRoutes.Update(routeKey(i, p), one, ebpf.UpdateAny); err != nil {
			d.deleteRoutes(i, a.VPCCIDRs[:n])
			return fmt.Errorf("slot %d: vpc route %s: %w", i, p, err)
		}
	}
	undo := func() { d.deleteRoutes(i, a.VPCCIDRs) }
	if err := d.objs.VniDst.Update(&key, uint32(i), ebpf.UpdateAny); err != nil {
		undo()
		return fmt.Errorf("slot %d: vni entry: %w", i, err)
	}
	undo = func() {
		d.objs.VniDst.Delete(&key)
		d.deleteRoutes(i, a.VPCCIDRs)
	}
	if fresh {
		if err := d.addVNI(a.VNI, 1); err != nil {
			undo()
			return fmt.Errorf("slot %d: %w", i, err)
		}
		prev := undo
		undo = func() { d.addVNI(a.VNI, -1); prev() }
	}
	if a.PeerMAC != nil {
		p := datapathPeerInfo{Mac: mac6(a.PeerMAC), Known: 1}
		if err := d.objs.Peers.Update(uint32(i), &p, ebpf.UpdateAny); err != nil {
			undo()
			return fmt.Errorf("slot %d: peer mac: %w", i, err)
		}
	}
	t := datapathTunnelInfo{
		Vni:      a.VNI,
		VpcIp:    be32(a.VPCIP),
		RemoteIp: be32(a.RemoteVTEP),
		VpcMac:   mac6(d.cfg.Slot.VPCMAC(i)),
	}
	if err := d.objs.Tunnels.Update(uint32(i), &t, ebpf.UpdateAny); err != nil {
		undo()
		return fmt.Errorf("slot %d: flip to vni %d: %w", i, a.VNI, err)
	}
	return nil
}

// Detach flips slot i back to its dummy VNI first (nothing more goes
// through the tunnel), then removes what Attach added.
func (d *Datapath) Detach(i int, a *slot.Attachment) error {
	dummy := d.dummy(i)
	if err := d.objs.Tunnels.Update(uint32(i), &dummy, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("slot %d: flip to dummy vni: %w", i, err)
	}
	var errs []error
	if a != nil {
		key := datapathVniKey{Vni: a.VNI, Ip: be32(a.VPCIP)}
		var owner uint32
		if err := d.objs.VniDst.Lookup(&key, &owner); err == nil && int(owner) == i {
			if err := d.objs.VniDst.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("delete vni entry: %w", err))
			} else if err := d.addVNI(a.VNI, -1); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, d.deleteRoutes(i, a.VPCCIDRs))
	}
	if err := d.objs.Peers.Update(uint32(i), &datapathPeerInfo{}, ebpf.UpdateAny); err != nil {
		errs = append(errs, fmt.Errorf("clear peer: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("slot %d: detach: %w", i, err)
	}
	return nil
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

// addVNI changes the number of slots attached to vni; the vnis map holds
// the VNIs with at least one.
func (d *Datapath) addVNI(vni uint32, delta int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := int(d.vnis[vni]) + delta
	if n <= 0 {
		delete(d.vnis, vni)
		if err := d.objs.Vnis.Delete(vni); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete vni %d: %w", vni, err)
		}
		return nil
	}
	if err := d.objs.Vnis.Update(vni, uint32(n), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("count vni %d: %w", vni, err)
	}
	d.vnis[vni] = uint32(n)
	return nil
}

// countVNIs rebuilds the VNI counts from the inbound entries (after a
// restart) and rewrites the vnis map to match.
func (d *Datapath) countVNIs() error {
	counts := map[uint32]uint32{}
	var k datapathVniKey
	var v uint32
	it := d.objs.VniDst.Iterate()
	for it.Next(&k, &v) {
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
	for vni, n := range counts {
		if err := d.objs.Vnis.Update(vni, n, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("count vni %d: %w", vni, err)
		}
	}
	d.mu.Lock()
	d.vnis = counts
	d.mu.Unlock()
	return nil
}

// Prune removes inbound entries and VPC routes of slots for which keep
// returns false (leases gone while the daemon was down), then recounts.
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
	return d.countVNIs()
}

// ResetStats zeroes slot i's counters.
func (d *Datapath) ResetStats(i int) error {
	zero := make([]datapathSlotStats, runtime.NumCPU())
	if n, err := ebpf.PossibleCPU(); err == nil {
		zero = make([]datapathSlotStats, n)
	}
	if err := d.objs.Stats.Update(uint32(i), zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("slot %d: reset counters: %w", i, err)
	}
	return nil
}

// Stats returns slot i's counters; i = Count gives what belongs to no
// slot (Geneve for unknown VNIs and the like).
func (d *Datapath) Stats(i int) (Stats, error) {
	var per []datapathSlotStats
	if err := d.objs.Stats.Lookup(uint32(i), &per); err != nil {
		return Stats{}, fmt.Errorf("slot %d: read counters: %w", i, err)
	}
	var s Stats
	var drops [datapathDropReasonDROP_REASONS]uint64
	for _, p := range per {
		s.TxPackets += p.TxPackets
		s.TxBytes += p.TxBytes
		s.RxPackets += p.RxPackets
		s.RxBytes += p.RxBytes
		s.EncapPackets += p.EncapPackets
		s.DecapPackets += p.DecapPackets
		s.ARPReplies += p.ArpReplies
		s.ARPRequests += p.ArpRequests
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
