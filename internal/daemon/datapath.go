package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/metrics"
	"github.com/netslot/netslot/internal/slot"
)

// checkUplink validates the uplink options against the host, changing
// nothing.
func checkUplink(opts Options) error {
	if opts.Uplink == "" {
		if opts.UnderlayIP.IsValid() || opts.UplinkGateway.IsValid() {
			return fmt.Errorf("--underlay-ip and --uplink-gateway need --uplink")
		}
		return nil
	}
	if !opts.UnderlayIP.Is4() {
		return fmt.Errorf("--uplink %s needs --underlay-ip, an IPv4 address of %s (the source of Geneve packets)", opts.Uplink, opts.Uplink)
	}
	if opts.UplinkGateway.IsValid() && !opts.UplinkGateway.Is4() {
		return fmt.Errorf("invalid uplink gateway %s: want IPv4", opts.UplinkGateway)
	}
	addrs, err := links.UplinkAddrs(opts.Uplink)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	if !slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Addr() == opts.UnderlayIP }) {
		return fmt.Errorf("underlay ip %s is not an address of %s (it has %v)", opts.UnderlayIP, opts.Uplink, addrs)
	}
	if gw := opts.UplinkGateway; gw.IsValid() {
		if err := links.CheckOnLink(opts.Uplink, gw); err != nil {
			return fmt.Errorf("uplink gateway: %w", err)
		}
	}
	if !opts.UplinkGateway.IsValid() {
		// A flat underlay routes through a placeholder next hop (see
		// links.OnLinkNexthop), which must not be one of the host's.
		if local, err := links.IsLocalAddr(links.OnLinkNexthop); err != nil {
			return err
		} else if local {
			return fmt.Errorf("without --uplink-gateway the pool routes through the placeholder next hop %s, which is an address of this host: give --uplink-gateway", links.OnLinkNexthop)
		}
	}
	rp, err := links.RPFilterAll()
	if err != nil {
		return err
	}
	if rp == 1 {
		return fmt.Errorf("net.ipv4.conf.all.rp_filter is 1 (strict): slot traffic reaches the root namespace with the guest address as source and would be dropped; set it to 0 or 2")
	}
	return nil
}

// flatSubnets are the uplink's subnets when it has no gateway (a flat
// underlay): where a VTEP can be reached. Nil with a gateway, or without
// an uplink.
func flatSubnets(opts Options) ([]netip.Prefix, error) {
	if opts.Uplink == "" || opts.UplinkGateway.IsValid() {
		return nil, nil
	}
	addrs, err := links.UplinkAddrs(opts.Uplink)
	if err != nil {
		return nil, fmt.Errorf("uplink: %w", err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, p := range addrs {
		out = append(out, p.Masked())
	}
	return out, nil
}

// checkVTEP refuses a VTEP the pool cannot reach: on a flat underlay (no
// gateway) every next hop is on the uplink's link, so the VTEP must be in
// one of its subnets.
func (d *Daemon) checkVTEP(vtep netip.Addr) error {
	if d.opts.Uplink == "" || d.opts.UplinkGateway.IsValid() {
		return nil
	}
	if slices.ContainsFunc(d.onLink, func(p netip.Prefix) bool { return p.Contains(vtep) }) {
		return nil
	}
	return fmt.Errorf("invalid remote vtep %s: not on the uplink %s's link (its subnets: %v), and the pool has no --uplink-gateway to reach it through", vtep, d.opts.Uplink, d.onLink)
}

func (d *Daemon) uplinkRoute() links.UplinkRoute {
	return links.UplinkRoute{Prefix: d.cfg.Prefix, Uplink: d.opts.Uplink, Gateway: d.opts.UplinkGateway, GuestCIDR: d.cfg.GuestCIDR}
}

func (d *Daemon) backstop() datapath.Backstop {
	return datapath.Backstop{Prefix: d.cfg.Prefix, Uplink: d.opts.Uplink, GuestCIDR: d.cfg.GuestCIDR, SlotCIDR: d.cfg.SlotCIDR}
}

// setupDatapath routes slot traffic to the uplink (or removes that routing
// when there is no uplink) and loads the pool's datapath, reusing pinned
// maps and links.
func (d *Daemon) setupDatapath() error {
	if d.opts.Uplink == "" {
		if err := links.RemoveUplinkRoute(d.cfg.Prefix); err != nil {
			return err
		}
		if err := datapath.RemoveBackstop(d.cfg.Prefix, datapath.UplinkIndex("", d.cfg.Prefix)); err != nil {
			return err
		}
	} else {
		if err := d.uplinkRoute().Apply(); err != nil {
			return err
		}
		if _, err := d.backstop().Apply(); err != nil {
			return err
		}
		if l, err := netlink.LinkByName(d.opts.Uplink); err == nil {
			d.uplinkMTU.Store(int64(l.Attrs().MTU)) // kept current by the monitor
			if l.Attrs().MTU < slot.GuestMTU+datapath.EncapOverhead {
				d.log.Warn("the uplink's MTU leaves no room for Geneve headers over a 1500-byte guest MTU: VPC leases are given a smaller MTU",
					"uplink", d.opts.Uplink, "mtu", l.Attrs().MTU, "want_at_least", slot.GuestMTU+datapath.EncapOverhead)
			}
		}
	}
	dc := datapath.Config{
		Slot: d.cfg, Uplink: d.opts.Uplink, UnderlayIP: d.opts.UnderlayIP,
		RouteTable: links.RouteTable(d.cfg.Prefix), Flat: !d.opts.UplinkGateway.IsValid(), PinRoot: "", Deny: d.deny,
	}
	dp, err := datapath.Open(dc)
	if errors.Is(err, datapath.ErrIncompatible) && d.leaseCount() == 0 {
		// Maps pinned by another version of netslotd, of a layout Open
		// could not migrate (none pinned with them), or with a pinned
		// layout that does not describe them (damaged, or written by
		// hand): with no lease held, nothing depends on them, so they are
		// replaced (the datapath stops for the few milliseconds this
		// takes). With leases, Open's error stands: replacing them would
		// cut the tenants' traffic.
		d.log.Warn("replacing a pinned datapath this version cannot use; no lease is held", "reason", err)
		d.Metrics.ReconcileAction.WithLabelValues("replace_datapath").Inc()
		if err := datapath.Remove("", d.cfg.Prefix); err != nil {
			return err
		}
		dp, err = datapath.Open(dc)
	}
	if err != nil {
		return err
	}
	if len(dp.Migrated) > 0 {
		d.log.Info("pinned maps migrated to this version's layout; leases kept", "maps", strings.Join(dp.Migrated, ","), "leases", d.leaseCount())
		d.Metrics.ReconcileAction.WithLabelValues("migrate_datapath").Add(float64(len(dp.Migrated)))
	}
	d.dp = dp
	// Entries of leases that ended while the daemon was down.
	return dp.Prune(func(i int, vni uint32, vpcIP netip.Addr) bool {
		if i < 0 || i >= d.cfg.Count {
			return false
		}
		l := d.lease(i)
		if l == nil || l.VPC == nil {
			return false
		}
		return vni == 0 || (l.VPC.VNI == vni && l.VPC.VPCIP == vpcIP)
	})
}

// registerDatapath records slot i's host veth in the datapath and writes
// its tunnel entry and lease policy: for lease l (attached to its VPC, if
// any; open under its inbound rules), or, with l nil, a pooled slot's
// (the dummy VNI, closed, no flows).
func (d *Daemon) registerDatapath(i int, l *slot.Lease) error {
	d.mu.Lock()
	host := d.hostIdx[i]
	d.mu.Unlock()
	if host == 0 {
		return errors.New("host veth index unknown")
	}
	if err := d.dp.SetSlot(i, host); err != nil {
		return err
	}
	if l == nil {
		// A pooled slot: also what a crash in the middle of a release
		// left, flows and all.
		d.dp.CloseLease(i)
		d.dp.ClearFlows(i)
		d.clearDHCP(i)
		return d.dp.Detach(i, nil)
	}
	if l.VPC != nil {
		if err := d.dp.Attach(i, l.VPC); err != nil {
			return err
		}
	} else if err := d.dp.Detach(i, nil); err != nil {
		return err
	}
	d.writeDHCP(i, l)
	d.dp.OpenLease(i, l.Inbound)
	return nil
}

// writeDHCP writes what slot i's DHCP answers carry under lease l: its
// GuestConfig and hostname. Every value was checked on the way in.
func (d *Daemon) writeDHCP(i int, l *slot.Lease) {
	d.dhcpMu.Lock()
	defer d.dhcpMu.Unlock()
	// Again if the uplink's MTU changed meanwhile: the monitor's refresh
	// may have passed this slot before its lease was recorded.
	for {
		up := d.uplinkMTU.Load()
		mtu, dns, _ := d.GuestConfig(l)
		if err := d.dp.SetDHCP(i, datapath.DHCP{MTU: mtu, DNS: dns, Hostname: l.Hostname}); err != nil {
			d.log.Error("dhcp settings refused", "slot", d.cfg.ID(i), "err", err)
		}
		if d.uplinkMTU.Load() == up {
			return
		}
	}
}

// clearDHCP forgets slot i's DHCP settings (its lease is closed).
func (d *Daemon) clearDHCP(i int) {
	d.dhcpMu.Lock()
	d.dp.ClearDHCP(i)
	d.dhcpMu.Unlock()
}

// refreshDHCPMTU rewrites the MTU the DHCP answers of every leased slot
// give, after the uplink's changed. An entry that is clear (a pooled slot,
// or one whose release cleared it) stays clear.
func (d *Daemon) refreshDHCPMTU() {
	d.dhcpMu.Lock()
	defer d.dhcpMu.Unlock()
	for i := range d.cfg.Count {
		if l := d.lease(i); l != nil && d.dp.DHCPSet(i) {
			mtu, _, _ := d.GuestConfig(l)
			d.dp.SetDHCPMTU(i, mtu)
		}
	}
}

// tapProgram is the descriptor of the program every slot's tap0 runs (the
// DHCP answerer), or -1 with Options.NoDHCP.
func (d *Daemon) tapProgram() int {
	if d.opts.NoDHCP || d.dp == nil {
		return -1
	}
	return d.dp.TapProgram().FD()
}

func (d *Daemon) setHostIndex(i, ifindex int) {
	d.mu.Lock()
	if old := d.hostIdx[i]; old != 0 && d.hostSlot[old] == i {
		delete(d.hostSlot, old)
	}
	d.hostIdx[i] = ifindex
	if ifindex != 0 {
		d.hostSlot[ifindex] = i
	}
	d.mu.Unlock()
}

// hostIndex is the ifindex of slot i's host veth (0: unknown).
func (d *Daemon) hostIndex(i int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hostIdx[i]
}

// ownsHostIndex reports whether ifindex is a host veth of the pool.
func (d *Daemon) ownsHostIndex(ifindex int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.hostSlot[ifindex]
	return ok
}

// scrubDatapath detaches slot i's VPC (a), forgets its flows and what it
// learned, and zeroes its counters (netslotd's count of its held frames
// dropped too). The slot's lease is closed already
// (scrub closes it first, a rebuilt slot is registered closed).
func (d *Daemon) scrubDatapath(i int, a *slot.Attachment) error {
	if err := d.dp.Detach(i, a); err != nil {
		return err
	}
	// A packet that saw the lease open before it closed may still record
	// a flow after this; the next OpenLease starts from an empty table
	// anyway.
	d.dp.ClearFlows(i)
	d.clearDHCP(i)
	d.held.resetDropped(i)
	return d.dp.ResetStats(i)
}

// DatapathInfo is a slot's datapath state for API clients.
type DatapathInfo struct {
	VNI    uint32
	Dummy  bool
	VPCMAC string
	datapath.Stats
	// HeldDropped counts the guest's frames to a VPC peer not yet known
	// that netslotd held, or was handed to hold, and dropped: evicted to
	// give another lease its fair share of the held-frame budget, over
	// the slot's 32, or not sent (see hold.go). Expired ones are not
	// counted: the peer never answered them.
	HeldDropped uint64
}

func (d *Daemon) datapathInfo(i int) *DatapathInfo {
	if d.dp == nil {
		return nil
	}
	vni, dummy, err := d.dp.Tunnel(i)
	if err != nil {
		return nil
	}
	st, err := d.dp.Stats(i)
	if err != nil {
		return nil
	}
	return &DatapathInfo{VNI: vni, Dummy: dummy, VPCMAC: d.cfg.VPCMAC(i).String(), Stats: st, HeldDropped: d.held.droppedOf(i)}
}

// UnattributedDrops are drops that belong to no slot, by reason.
func (d *Daemon) UnattributedDrops() map[string]uint64 {
	if d.dp == nil {
		return nil
	}
	st, err := d.dp.Stats(d.cfg.Count)
	if err != nil {
		return nil
	}
	return st.Drops
}

// DatapathCounters implements metrics.Gauges.
func (d *Daemon) DatapathCounters(emit func(slot string, c metrics.Counters)) {
	if d.dp == nil {
		return
	}
	conv := func(s datapath.Stats) metrics.Counters {
		return metrics.Counters{TxPackets: s.TxPackets, TxBytes: s.TxBytes, RxPackets: s.RxPackets, RxBytes: s.RxBytes,
			EncapPackets: s.EncapPackets, DecapPackets: s.DecapPackets, ARPReplies: s.ARPReplies, ARPRequests: s.ARPRequests,
			DHCPReplies: s.DHCPReplies, ICMPFragNeeded: s.ICMPFragNeeded, Drops: s.Drops}
	}
	for i := 0; i < d.cfg.Count; i++ {
		if d.lease(i) == nil {
			continue
		}
		if st, err := d.dp.Stats(i); err == nil {
			c := conv(st)
			c.HeldDropped = d.held.droppedOf(i)
			emit(d.cfg.ID(i), c)
		}
	}
	if st, err := d.dp.Stats(d.cfg.Count); err == nil {
		emit("none", conv(st))
	}
}

func (d *Daemon) leaseCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, l := range d.leases {
		if l != nil {
			n++
		}
	}
	return n
}
