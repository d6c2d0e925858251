package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Root is the static table netslot keeps in the root namespace. Its rules
// match slot devices by name prefix, so their number is the same for one
// slot or ten thousand:
//   - slots cannot talk to each other through the root namespace,
//   - slot traffic is forwarded only to and from the uplink (with no uplink,
//     not at all), never out of the host's default route,
//   - slots cannot reach services of the root namespace,
//   - slot traffic is never tracked: the datapath's NAT is stateless, and a
//     conntrack entry per flow is the cost the design removes (other rules
//     of the host that load conntrack would otherwise track it).
type Root struct {
	Prefix string // names the table and is the prefix of every host veth
	Uplink string // may be empty
}

func (r Root) spec() *tableSpec {
	t := &nftables.Table{Name: r.Prefix, Family: nftables.TableFamilyINet}
	prio := nftables.ChainPriorityRef(-10)
	accept := nftables.ChainPolicyAccept
	fwd := &nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: prio, Policy: &accept}
	in := &nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: prio, Policy: &accept}
	raw := &nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept}
	drop := []expr.Any{verdict(expr.VerdictDrop)}
	fromSlot := matchIfname(expr.MetaKeyIIFNAME, r.Prefix, true, expr.CmpOpEq)
	toSlot := matchIfname(expr.MetaKeyOIFNAME, r.Prefix, true, expr.CmpOpEq)
	fwdRules := []ruleSpec{{"slot-to-slot", rule(fromSlot, toSlot, drop)}}
	if r.Uplink == "" {
		fwdRules = append(fwdRules,
			ruleSpec{"slot-egress-no-uplink", rule(fromSlot, drop)},
			ruleSpec{"slot-ingress-no-uplink", rule(toSlot, drop)})
	} else {
		fwdRules = append(fwdRules,
			ruleSpec{"slot-egress-uplink-only", rule(fromSlot, matchIfname(expr.MetaKeyOIFNAME, r.Uplink, false, expr.CmpOpNeq), drop)},
			ruleSpec{"slot-ingress-uplink-only", rule(toSlot, matchIfname(expr.MetaKeyIIFNAME, r.Uplink, false, expr.CmpOpNeq), drop)})
	}
	return &tableSpec{
		table: t,
		chains: []chainSpec{
			{fwd, fwdRules},
			{in, []ruleSpec{{"slot-to-host", rule(fromSlot, drop)}}},
			{raw, []ruleSpec{{"slot-notrack", rule(fromSlot, []expr.Any{&expr.Notrack{}})}}},
		},
	}
}

// Apply (re)writes the root table in one transaction.
func (r Root) Apply() error {
	conn, err := Dial()
	if err != nil {
		return err
	}
	defer CloseInBackground(conn)
	if err := r.spec().replace(conn, nil); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("write root table %s: %w", r.Prefix, err)
	}
	return nil
}

// Verify checks the root table against what Apply writes.
func (r Root) Verify() error {
	conn, err := Dial()
	if err != nil {
		return err
	}
	defer CloseInBackground(conn)
	return r.spec().verify(conn)
}

// Remove deletes the root table; a missing table is not an error.
func (r Root) Remove() error {
	conn, err := Dial()
	if err != nil {
		return err
	}
	defer conn.CloseLasting()
	r.spec().remove(conn)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("remove root table %s: %w", r.Prefix, err)
	}
	return nil
}

// RuleCount is the number of rules in the root table.
func (r Root) RuleCount() int { return r.spec().ruleCount() }

// CountRules counts the nftables rules of the tables named prefix, of
// every family, in the calling thread's namespace: what a pool of that
// prefix holds there (other jobs' tables may come and go).
func CountRules(prefix string) (int, error) {
	conn, err := Dial()
	if err != nil {
		return 0, err
	}
	defer CloseInBackground(conn)
	chains, err := conn.ListChains()
	if err != nil {
		return 0, fmt.Errorf("list chains: %w", err)
	}
	n := 0
	for _, c := range chains {
		if c.Table.Name != prefix {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return 0, fmt.Errorf("list rules of %s/%s: %w", c.Table.Name, c.Name, err)
		}
		n += len(rules)
	}
	return n, nil
}
