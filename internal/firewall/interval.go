package firewall

import (
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

// span is an inclusive IPv4 range.
type span struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// mergeCIDRs turns CIDRs into sorted, disjoint, non-adjacent ranges: the
// kernel's interval sets refuse overlapping elements.
func mergeCIDRs(cidrs []netip.Prefix) []span {
	spans := make([]span, 0, len(cidrs))
	for _, p := range cidrs {
		p = p.Masked()
		lo := u32(p.Addr())
		hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
		spans = append(spans, span{lo, hi})
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var out []span
	for _, s := range spans {
		if n := len(out); n > 0 && (s.lo <= out[n-1].hi || s.lo == out[n-1].hi+1) {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// intervalElements encodes ranges the way nft does for an interval set: a
// start element per range and an interval-end element one past its end
// (omitted when the range runs to 255.255.255.255).
func intervalElements(spans []span) []nftables.SetElement {
	var els []nftables.SetElement
	for _, s := range spans {
		els = append(els, nftables.SetElement{Key: addr(s.lo)})
		if s.hi != 0xffffffff {
			els = append(els, nftables.SetElement{Key: addr(s.hi + 1), IntervalEnd: true})
		}
	}
	return els
}

// elementsToSpans decodes what the kernel lists back into ranges, so that a
// set can be compared with what it should hold.
func elementsToSpans(els []nftables.SetElement) []span {
	type edge struct {
		v   uint32
		end bool
	}
	edges := make([]edge, 0, len(els))
	for _, e := range els {
		if len(e.Key) != 4 {
			continue
		}
		v := uint32(e.Key[0])<<24 | uint32(e.Key[1])<<16 | uint32(e.Key[2])<<8 | uint32(e.Key[3])
		edges = append(edges, edge{v, e.IntervalEnd})
	}
	slices.SortFunc(edges, func(a, b edge) int {
		switch {
		case a.v < b.v:
			return -1
		case a.v > b.v:
			return 1
		case a.end && !b.end:
			return -1
		case !a.end && b.end:
			return 1
		}
		return 0
	})
	var out []span
	open := false
	var lo uint32
	for _, e := range edges {
		switch {
		case !e.end && !open:
			lo, open = e.v, true
		case e.end && open:
			out = append(out, span{lo, e.v - 1})
			open = false
		}
	}
	if open {
		out = append(out, span{lo, 0xffffffff})
	}
	return out
}
