package lab

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/slot"
)

// FreeAddressing returns the slot and guest networks a test or bench pool
// of count slots takes so that it clashes with no other pool on the host
// (a user's, or `make demo`'s): pools with an uplink can share neither
// their slot addresses (each pool's replies come back by them) nor their
// guest network (the root namespace routes slot traffic by it, with one
// policy rule per pool). It prefers the defaults, and else takes the next
// /16 of 100.64.0.0/10 and /30 of 172.16.0.0/12 that no pinned pool, no
// policy rule and no route of the host uses.
func FreeAddressing(count int) (slotCIDR, guestCIDR netip.Prefix, err error) {
	used := datapath.PinnedSlotRanges("")
	rules, err := links.Rules(nil, unix.AF_INET)
	if err != nil {
		return slotCIDR, guestCIDR, err
	}
	overlapsPool := func(p netip.Prefix) bool {
		lo, hi := u32(p.Addr()), u32(p.Addr())|(1<<(32-p.Bits())-1)
		for _, r := range used {
			first := u32(r.First)
			if r.Count > 0 && first <= hi && lo <= first+uint32(r.Count)-1 {
				return true
			}
		}
		return false
	}
	overlapsRule := func(p netip.Prefix) bool {
		for _, r := range rules {
			if r.Src == nil {
				continue
			}
			a, _ := netip.AddrFromSlice(r.Src.IP.To4())
			bits, _ := r.Src.Mask.Size()
			if netip.PrefixFrom(a, bits).Overlaps(p) {
				return true
			}
		}
		return false
	}
	routes, err := links.Routes(nil, unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return slotCIDR, guestCIDR, err
	}
	routed := func(p netip.Prefix) bool {
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && ones > 0 && netip.PrefixFrom(a, ones).Overlaps(p) {
				return true
			}
		}
		return false
	}
	pick := func(first netip.Prefix, n int, taken func(netip.Prefix) bool) (netip.Prefix, error) {
		step := uint32(1) << (32 - first.Bits())
		for k := range n {
			p := netip.PrefixFrom(addr4(u32(first.Addr())+uint32(k)*step), first.Bits())
			if !taken(p) && !routed(p) {
				return p, nil
			}
		}
		return netip.Prefix{}, fmt.Errorf("no free network like %s for a test pool: the host's pools and routes take them all", first)
	}
	if slotCIDR, err = pick(slot.DefaultSlotCIDR, 64, overlapsPool); err != nil {
		return slotCIDR, guestCIDR, err
	}
	if guestCIDR, err = pick(slot.DefaultGuestCIDR, 1<<18, overlapsRule); err != nil {
		return slotCIDR, guestCIDR, err
	}
	if capa := slot.Capacity(slotCIDR); count > capa {
		return slotCIDR, guestCIDR, fmt.Errorf("a test pool of %d slots does not fit %s", count, slotCIDR)
	}
	return slotCIDR, guestCIDR, nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
