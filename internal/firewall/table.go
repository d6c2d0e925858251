package firewall

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// ErrChanged marks a table whose content differs from what netslot wrote.
var ErrChanged = errors.New("firewall changed")

// ruleSpec is one rule as netslot writes it. The name goes into the rule's
// user data, so that a listing can be matched back to the spec.
type ruleSpec struct {
	name  string
	exprs []expr.Any
}

type chainSpec struct {
	chain *nftables.Chain
	rules []ruleSpec
}

// tableSpec is a whole table: written in one transaction, verified by
// listing it back.
type tableSpec struct {
	table  *nftables.Table
	sets   []*nftables.Set
	chains []chainSpec
}

// Dial opens a lasting nftables connection in the calling thread's
// namespace. Close it with Close.
func Dial() (*nftables.Conn, error) {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return conn, nil
}

// CloseInBackground closes conn in the background. Closing an nftables socket after a
// transaction that deleted objects waits for an RCU grace period (the
// kernel flushes its destroy work on NETLINK_URELEASE): 5-20 ms here, which
// must not be paid on the acquire/release path.
func CloseInBackground(conn *nftables.Conn) { go conn.CloseLasting() }

func userData(name string) []byte { return []byte("netslot:" + name) }

// replace queues, in one transaction, the removal of any table of the same
// name and family and the creation of t ("add; delete; add" succeeds whether
// or not the table existed).
func (t *tableSpec) replace(conn *nftables.Conn, setElems map[string][]nftables.SetElement) error {
	t.remove(conn)
	return t.create(conn, setElems)
}

// create queues the creation of t, which must not exist.
func (t *tableSpec) create(conn *nftables.Conn, setElems map[string][]nftables.SetElement) error {
	conn.AddTable(t.table)
	for _, s := range t.sets {
		if err := conn.AddSet(s, setElems[s.Name]); err != nil {
			return fmt.Errorf("add set %s: %w", s.Name, err)
		}
	}
	for _, c := range t.chains {
		conn.AddChain(c.chain)
		for _, r := range c.rules {
			conn.AddRule(&nftables.Rule{Table: t.table, Chain: c.chain, Exprs: r.exprs, UserData: userData(r.name)})
		}
	}
	return nil
}

// remove queues the table's deletion, tolerating its absence.
func (t *tableSpec) remove(conn *nftables.Conn) {
	conn.AddTable(t.table)
	conn.DelTable(t.table)
}

// ruleCount is the number of rules t holds.
func (t *tableSpec) ruleCount() int {
	n := 0
	for _, c := range t.chains {
		n += len(c.rules)
	}
	return n
}

// verify lists the table back and compares chains (hook, priority, policy,
// device) and rules (order, names, expression count) with the spec.
func (t *tableSpec) verify(conn *nftables.Conn) error {
	if _, err := conn.ListTableOfFamily(t.table.Name, t.table.Family); err != nil {
		return fmt.Errorf("%w: table %s missing", ErrChanged, t.table.Name)
	}
	chains, err := conn.ListChainsOfTableFamily(t.table.Family)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	got := map[string]*nftables.Chain{}
	for _, c := range chains {
		if c.Table.Name == t.table.Name {
			got[c.Name] = c
		}
	}
	if len(got) != len(t.chains) {
		return fmt.Errorf("%w: table %s has %d chains, want %d", ErrChanged, t.table.Name, len(got), len(t.chains))
	}
	for _, want := range t.chains {
		c := got[want.chain.Name]
		if c == nil {
			return fmt.Errorf("%w: chain %s missing", ErrChanged, want.chain.Name)
		}
		if !sameChain(c, want.chain) {
			return fmt.Errorf("%w: chain %s hook, priority, policy or device changed", ErrChanged, c.Name)
		}
		rules, err := conn.GetRules(t.table, want.chain)
		if err != nil {
			return fmt.Errorf("list rules of %s: %w", c.Name, err)
		}
		if len(rules) != len(want.rules) {
			return fmt.Errorf("%w: chain %s has %d rules, want %d", ErrChanged, c.Name, len(rules), len(want.rules))
		}
		for i, r := range rules {
			w := want.rules[i]
			if !bytes.Equal(r.UserData, userData(w.name)) || !sameExprs(t.table.Family, r.Exprs, w.exprs) {
				return fmt.Errorf("%w: chain %s rule %d is not %s", ErrChanged, c.Name, i, w.name)
			}
		}
	}
	return nil
}

// sameExprs compares rules expression by expression, in the kernel's
// encoding. A listed lookup names its set but carries no set id (the id
// only binds a set created in the same transaction), so ids are ignored.
func sameExprs(fam nftables.TableFamily, got, want []expr.Any) bool {
	if len(got) != len(want) {
		return false
	}
	enc := func(e expr.Any) []byte {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0
			e = &c
		}
		b, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return nil
		}
		return b
	}
	for i := range got {
		a, b := enc(got[i]), enc(want[i])
		if a == nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

func sameChain(got, want *nftables.Chain) bool {
	eqU := func(a, b *nftables.ChainHook) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	eqP := func(a, b *nftables.ChainPriority) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	eqPol := func(a, b *nftables.ChainPolicy) bool {
		if a == nil {
			return b == nil || *b == nftables.ChainPolicyAccept
		}
		if b == nil {
			return *a == nftables.ChainPolicyAccept
		}
		return *a == *b
	}
	return eqU(got.Hooknum, want.Hooknum) && eqP(got.Priority, want.Priority) &&
		eqPol(got.Policy, want.Policy) && got.Type == want.Type &&
		// The library does not decode a listed chain's device: compare it
		// only when it is there.
		(got.Device == "" || got.Device == want.Device)
}
