package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/links"
)

// Backstop keeps a pool closed when its datapath is not there: its tcx
// programs detached (their pins removed while no daemon held them, a
// failed upgrade). It is two small programs (bpf/backstop.c) in classic tc
// filters on the uplink's clsact qdisc, which the kernel runs after every
// tcx program and holds itself, with no pin and no daemon: egress drops a
// packet leaving with the guest address as its source (untranslated),
// ingress one arriving for a slot address (undelivered: the host's other
// routes would take it). While the datapath works neither ever matches.
// Unlike the root nftables table, a firewall reload does not remove them.
type Backstop struct {
	Prefix    string // names the filters (see BackstopPriority)
	Uplink    string
	GuestCIDR netip.Prefix
	SlotCIDR  netip.Prefix
}

// BackstopPriority is the filters' tc priority: a fixed function of the
// prefix above the priorities people set by hand, so that teardown finds
// them with no state.
func BackstopPriority(prefix string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	return 0xc000 | uint16(h.Sum32()&0x3fff)
}

// backstopVersion names the programs' build: a filter of another build is
// replaced.
var backstopVersion = func() string {
	s := sha256.Sum256(_BackstopBytes)
	return hex.EncodeToString(s[:4])
}()

// name is what a filter carries: who put it there, which build, and what it
// matches, so that Check needs nothing but the filter list.
func (b Backstop) name(parent uint32) string {
	if parent == netlink.HANDLE_MIN_EGRESS {
		return fmt.Sprintf("netslot:%s:%s:egress:src:%s", b.Prefix, backstopVersion, b.GuestCIDR.Masked())
	}
	return fmt.Sprintf("netslot:%s:%s:ingress:dst:%s", b.Prefix, backstopVersion, b.SlotCIDR.Masked())
}

var backstopParents = [2]uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS}

// backstopFilters lists the filters of priority prio on l's hook parent.
func backstopFilters(l netlink.Link, parent uint32, prio uint16) ([]netlink.Filter, error) {
	fs, err := netlink.FilterList(l, parent)
	if err != nil {
		return nil, fmt.Errorf("list filters of %s: %w", l.Attrs().Name, err)
	}
	var out []netlink.Filter
	for _, f := range fs {
		if f.Attrs().Priority == prio {
			out = append(out, f)
		}
	}
	return out, nil
}

// exactlyNamed reports whether fs is one direct-action BPF filter named
// name.
func exactlyNamed(fs []netlink.Filter, name string) bool {
	if len(fs) != 1 {
		return false
	}
	f, ok := fs[0].(*netlink.BpfFilter)
	return ok && f.DirectAction && f.Name == name
}

func (b Backstop) load() (*backstopObjects, error) {
	spec, err := loadBackstop()
	if err != nil {
		return nil, fmt.Errorf("backstop spec: %w", err)
	}
	// In network order, as the programs load the packet's bytes.
	for name, v := range map[string]uint32{
		"guest_net": be32(b.GuestCIDR.Masked().Addr()), "guest_mask": be32(maskOf(b.GuestCIDR)),
		"slot_net": be32(b.SlotCIDR.Masked().Addr()), "slot_mask": be32(maskOf(b.SlotCIDR)),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("backstop %s: %w", name, err)
		}
	}
	var objs backstopObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load backstop: %w", err)
	}
	return &objs, nil
}

// Apply puts the uplink's clsact qdisc (if it has none) and the two
// filters in place, replacing filters of the pool's priority that differ.
// It reports whether it changed anything.
func (b Backstop) Apply() (bool, error) {
	l, err := netlink.LinkByName(b.Uplink)
	if err != nil {
		return false, fmt.Errorf("uplink %s: %w", b.Uplink, err)
	}
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("clsact qdisc on %s: %w", b.Uplink, err)
	}
	prio := BackstopPriority(b.Prefix)
	var objs *backstopObjects
	defer func() {
		if objs != nil {
			objs.Close() // the filters hold the programs
		}
	}()
	changed := false
	for _, parent := range backstopParents {
		fs, err := backstopFilters(l, parent, prio)
		if err != nil {
			return changed, err
		}
		if exactlyNamed(fs, b.name(parent)) {
			continue
		}
		if objs == nil {
			if objs, err = b.load(); err != nil {
				return changed, err
			}
		}
		prog := objs.BackstopIngress
		if parent == netlink.HANDLE_MIN_EGRESS {
			prog = objs.BackstopEgress
		}
		// Added before the stale ones go: no moment without one.
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent,
				Priority: prio, Protocol: unix.ETH_P_IP},
			Fd: prog.FD(), Name: b.name(parent), DirectAction: true,
		}
		if err := addFilter(f, fs); err != nil {
			return changed, fmt.Errorf("backstop filter on %s: %w", b.Uplink, err)
		}
		changed = true
	}
	return changed, nil
}

// addFilter adds f (the kernel picks its handle), then deletes stale.
func addFilter(f *netlink.BpfFilter, stale []netlink.Filter) error {
	if err := netlink.FilterAdd(f); err != nil {
		return err
	}
	for _, s := range stale {
		if err := netlink.FilterDel(s); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete stale filter: %w", err)
		}
	}
	return nil
}

// Check reports whether both filters are on the uplink as Apply writes
// them.
func (b Backstop) Check() error {
	l, err := netlink.LinkByName(b.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", b.Uplink, err)
	}
	for _, parent := range backstopParents {
		fs, err := backstopFilters(l, parent, BackstopPriority(b.Prefix))
		if err != nil {
			return err
		}
		if !exactlyNamed(fs, b.name(parent)) {
			return fmt.Errorf("backstop filter %s missing on %s", b.name(parent), b.Uplink)
		}
	}
	return nil
}

// RemoveBackstop deletes prefix's filters from the device of index hint
// (the uplink as the datapath last knew it) or, when they are not there,
// from every device but the pool's own; what is missing is not an error.
// The clsact qdisc stays: others may have filters on it.
func RemoveBackstop(prefix string, hint int) error {
	prio := BackstopPriority(prefix)
	mine := "netslot:" + prefix + ":"
	remove := func(l netlink.Link) (int, error) {
		n := 0
		var errs []error
		for _, parent := range backstopParents {
			fs, err := backstopFilters(l, parent, prio)
			if err != nil {
				continue // no clsact qdisc
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); !ok || !strings.HasPrefix(bf.Name, mine) {
					continue // another pool's, whose prefix hashes alike
				}
				if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete backstop filter on %s: %w", l.Attrs().Name, err))
					continue
				}
				n++
			}
		}
		return n, errors.Join(errs...)
	}
	if hint != 0 {
		if l, err := netlink.LinkByIndex(hint); err == nil {
			if n, err := remove(l); n > 0 || err != nil {
				return err
			}
		}
	}
	all, err := links.Links(nil)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range all {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			continue // the pool's own veths: never an uplink
		}
		if _, err := remove(l); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
