package datapath

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/netslot/netslot/internal/dpconst"
)

// DHCP is what the DHCP answers on a slot's tap0 carry for its lease,
// beyond the pool's addressing (the guest address, mask and router, the
// same in every slot).
type DHCP struct {
	MTU      int          // option 26; 0: none
	DNS      []netip.Addr // option 6, at most dpconst.DHCPDNSMax IPv4 addresses
	Hostname string       // option 12; "": none; at most dpconst.DHCPHostnameMax bytes
}

func (c DHCP) check() error {
	if len(c.DNS) > dpconst.DHCPDNSMax {
		return fmt.Errorf("%d dns servers: a dhcp answer carries at most %d", len(c.DNS), dpconst.DHCPDNSMax)
	}
	for _, a := range c.DNS {
		if !a.Is4() {
			return fmt.Errorf("dns server %s is not IPv4", a)
		}
	}
	if len(c.Hostname) > dpconst.DHCPHostnameMax {
		return fmt.Errorf("hostname of %d bytes: at most %d", len(c.Hostname), dpconst.DHCPHostnameMax)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 0xffff) {
		return fmt.Errorf("mtu %d out of range", c.MTU)
	}
	return nil
}

// SetDHCP writes what slot i's DHCP answers carry: in place, no syscall.
// Acquire calls it before OpenLease (no answer goes out while the lease is
// closed), so a guest never sees half of it.
func (d *Datapath) SetDHCP(i int, c DHCP) error {
	if err := c.check(); err != nil {
		return err
	}
	var e datapathDhcpLease
	for n, a := range c.DNS {
		e.Dns[n] = be32(a)
	}
	e.Ndns = uint8(len(c.DNS))
	e.Mtu = uint16(c.MTU)
	e.HostnameLen = uint8(len(c.Hostname))
	for n := range len(c.Hostname) {
		e.Hostname[n] = int8(c.Hostname[n])
	}
	*at[datapathDhcpLease](d.dhcp, i) = e
	return nil
}

// SetDHCPMTU rewrites the MTU slot i's DHCP answers give (the uplink's
// changed under a lease).
func (d *Datapath) SetDHCPMTU(i, mtu int) {
	at[datapathDhcpLease](d.dhcp, i).Mtu = uint16(mtu)
}

// DHCPSet reports whether slot i has DHCP settings written (a lease's).
func (d *Datapath) DHCPSet(i int) bool {
	return *at[datapathDhcpLease](d.dhcp, i) != datapathDhcpLease{}
}

// ClearDHCP forgets slot i's lease settings; release calls it after
// CloseLease.
func (d *Datapath) ClearDHCP(i int) {
	*at[datapathDhcpLease](d.dhcp, i) = datapathDhcpLease{}
}

// TapProgram is the DHCP answerer, which every slot's tap0 runs at tc
// ingress (see links.AttachTapProgram).
func (d *Datapath) TapProgram() *ebpf.Program { return d.objs.TapDhcp }
