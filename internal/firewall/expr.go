// Package firewall owns every nftables table netslot creates: one static
// table in the root namespace whose rules do not depend on the number of
// slots, and per-slot tables inside each slot's namespace (anti-spoofing on
// tap0, the tenant's egress allow-list). No rule uses conntrack.
package firewall

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ifname encodes an exact interface name as the kernel compares it.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// matchIfname matches iifname/oifname exactly or, with wildcard, by prefix
// ("name*" in nft syntax: the comparison covers only the prefix bytes).
func matchIfname(key expr.MetaKey, name string, wildcard bool, op expr.CmpOp) []expr.Any {
	data := ifname(name)
	if wildcard {
		data = []byte(name)
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func matchPayload(base expr.PayloadBase, off, n uint32, data []byte) []expr.Any {
	return cmpPayload(base, off, n, expr.CmpOpEq, data)
}

func cmpPayload(base expr.PayloadBase, off, n uint32, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func rule(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
