package firewall

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
)

// everything is the egress allow-list of a slot without a policy.
var everything = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}

const egressSet = "egress"

// Slot is the firewall inside one slot's namespace: one netdev table named
// after the pool's prefix with one chain on tap0's ingress, so every frame
// the guest sends is judged once, before the slot's stack sees it:
//   - only the guest MAC may send; ARP only with the guest as sender;
//     nothing but IPv4 and ARP (no IPv6: no router advertisements or
//     neighbour discovery from the guest);
//   - only the guest address as IPv4 source;
//   - the gateway (tap0's address) answers ICMP only;
//   - the egress allow-list: an interval set, so that a new policy is a set
//     update, never a rule change (0.0.0.0/0 when the lease sets none;
//     nothing when it denies all). The pool's deny set is the datapath's,
//     on the NAT path only: a VPC's CIDRs may overlap it.
//
// A single base chain per slot also keeps boot cheap: each base chain is a
// hook registration (measured: three chains in two tables cost 3 ms a slot).
// Every method works on the namespace the conn was opened in.
type Slot struct{ Config slot.Config }

// Offsets into the headers the rules read.
const (
	offEtherSrc   = 6
	offEtherType  = 12
	offIPProto    = 9
	offIPSrc      = 12
	offIPDst      = 16
	offARPSender  = 8
	offARPSenderI = 14
)

func (s Slot) specs() []*tableSpec {
	c := s.Config
	t := &nftables.Table{Name: c.Prefix, Family: nftables.TableFamilyNetdev}
	accept := nftables.ChainPolicyAccept
	ingress := &nftables.Chain{Name: "tap-ingress", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityRef(-500),
		Policy: &accept, Device: slot.TapName}
	set := egressSetOf(t)
	set.ID = 1 // binds the rule's lookup to the set created in the same transaction

	drop := []expr.Any{verdict(expr.VerdictDrop)}
	acceptV := []expr.Any{verdict(expr.VerdictAccept)}
	neq := func(base expr.PayloadBase, off, n uint32, data []byte) []expr.Any {
		return cmpPayload(base, off, n, expr.CmpOpNeq, data)
	}
	be16 := func(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }
	gip, gw := c.GuestIP().As4(), c.GatewayIP().As4()
	arpIPv4 := []byte{0x00, 0x01, 0x08, 0x00, 0x06, 0x04} // htype 1, ptype IPv4, hlen 6, plen 4
	rules := []ruleSpec{
		{"guest-mac-only", rule(neq(expr.PayloadBaseLLHeader, offEtherSrc, 6, c.GuestMAC), drop)},
		{"guest-arp", rule(matchPayload(expr.PayloadBaseLLHeader, offEtherType, 2, be16(unix.ETH_P_ARP)),
			matchPayload(expr.PayloadBaseNetworkHeader, 0, 6, arpIPv4),
			matchPayload(expr.PayloadBaseNetworkHeader, offARPSender, 6, c.GuestMAC),
			matchPayload(expr.PayloadBaseNetworkHeader, offARPSenderI, 4, gip[:]), acceptV)},
		{"ipv4-only", rule(neq(expr.PayloadBaseLLHeader, offEtherType, 2, be16(unix.ETH_P_IP)), drop)},
		{"guest-ip-only", rule(neq(expr.PayloadBaseNetworkHeader, offIPSrc, 4, gip[:]), drop)},
		{"gateway-icmp", rule(matchPayload(expr.PayloadBaseNetworkHeader, offIPDst, 4, gw[:]),
			matchPayload(expr.PayloadBaseNetworkHeader, offIPProto, 1, []byte{unix.IPPROTO_ICMP}), acceptV)},
		{"gateway-other", rule(matchPayload(expr.PayloadBaseNetworkHeader, offIPDst, 4, gw[:]), drop)},
		{"egress-allow", rule(
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offIPDst, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: egressSet, SetID: set.ID, Invert: true},
			}, drop)},
	}
	return []*tableSpec{{table: t, sets: []*nftables.Set{set}, chains: []chainSpec{{ingress, rules}}}}
}

func (s Slot) egressSetRef() *nftables.Set {
	return egressSetOf(&nftables.Table{Name: s.Config.Prefix, Family: nftables.TableFamilyNetdev})
}

// egressSetOf is the egress allow-list set of table t.
func egressSetOf(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: egressSet, KeyType: nftables.TypeIPAddr, Interval: true}
}

// egress is what the egress set holds for e: its allow-list, everything
// or nothing.
func (s Slot) egress(e slot.Egress) []span {
	switch {
	case e.DenyAll:
		return nil
	case len(e.Allow) == 0:
		return mergeCIDRs(everything)
	}
	return mergeCIDRs(e.Allow)
}

// Apply (re)writes the slot's tables in one transaction, with the egress
// policy e. tap0 must exist.
func (s Slot) Apply(conn *nftables.Conn, e slot.Egress) error {
	return s.write(conn, e, (*tableSpec).replace)
}

// Create writes the slot's tables into a namespace that has none (a new
// slot): unlike Apply it deletes nothing, so the transaction leaves no
// destroy work behind.
func (s Slot) Create(conn *nftables.Conn, e slot.Egress) error {
	return s.write(conn, e, (*tableSpec).create)
}

func (s Slot) write(conn *nftables.Conn, e slot.Egress, op func(*tableSpec, *nftables.Conn, map[string][]nftables.SetElement) error) error {
	elems := map[string][]nftables.SetElement{egressSet: intervalElements(s.egress(e))}
	for _, t := range s.specs() {
		if err := op(t, conn, elems); err != nil {
			return err
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write slot firewall: %w", err)
	}
	return nil
}

// SetEgress replaces the egress set in one transaction: no rule changes,
// only the set's elements.
func (s Slot) SetEgress(conn *nftables.Conn, e slot.Egress) error {
	set := s.egressSetRef()
	conn.FlushSet(set)
	if err := conn.SetAddElements(set, intervalElements(s.egress(e))); err != nil {
		return fmt.Errorf("egress allow-list: %w", err)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write egress allow-list: %w", err)
	}
	return nil
}

// Verify compares the slot's tables and egress set with what Apply writes
// for e.
func (s Slot) Verify(conn *nftables.Conn, e slot.Egress) error {
	for _, t := range s.specs() {
		if err := t.verify(conn); err != nil {
			return err
		}
	}
	els, err := conn.GetSetElements(s.egressSetRef())
	if err != nil {
		return fmt.Errorf("%w: egress set: %v", ErrChanged, err)
	}
	if got := elementsToSpans(els); !slices.Equal(got, s.egress(e)) {
		return fmt.Errorf("%w: egress allow-list differs", ErrChanged)
	}
	return nil
}
