package firewall

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/netslot/netslot/internal/slot"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestMergeCIDRs(t *testing.T) {
	cases := []struct {
		in   []netip.Prefix
		want []span
	}{
		{prefixes("0.0.0.0/0"), []span{{0, 0xffffffff}}},
		{prefixes("10.0.0.0/8", "10.1.0.0/16"), []span{{0x0a000000, 0x0affffff}}},
		{prefixes("10.0.1.0/24", "10.0.0.0/24"), []span{{0x0a000000, 0x0a0001ff}}}, // adjacent
		{prefixes("10.0.0.0/24", "10.0.2.0/24"), []span{{0x0a000000, 0x0a0000ff}, {0x0a000200, 0x0a0002ff}}},
		{prefixes("255.255.255.255/32"), []span{{0xffffffff, 0xffffffff}}},
	}
	for _, tc := range cases {
		got := mergeCIDRs(tc.in)
		if !slices.Equal(got, tc.want) {
			t.Errorf("mergeCIDRs(%v) = %x, want %x", tc.in, got, tc.want)
		}
		// What the kernel would list back decodes to the same ranges.
		if back := elementsToSpans(intervalElements(got)); !slices.Equal(back, got) {
			t.Errorf("round trip of %v: %x", tc.in, back)
		}
	}
	if n := len(intervalElements(mergeCIDRs(prefixes("0.0.0.0/0")))); n != 1 {
		t.Errorf("0.0.0.0/0 encodes to %d elements, want 1 (no end past the address space)", n)
	}
}

func TestEgressIsAllowMinusDeny(t *testing.T) {
	s := Slot{Deny: append(prefixes("198.18.0.0/24", "10.0.0.0/8"), FixedDeny...)}
	span4 := func(lo, hi string) span {
		return span{u32(netip.MustParseAddr(lo)), u32(netip.MustParseAddr(hi))}
	}
	cases := []struct {
		name string
		e    slot.Egress
		want []span
	}{
		{"no policy: everything but the deny set", slot.Egress{}, []span{
			span4("1.0.0.0", "9.255.255.255"), span4("11.0.0.0", "169.253.255.255"),
			span4("169.255.0.0", "198.17.255.255"), span4("198.18.1.0", "223.255.255.255")}},
		{"deny all", slot.Egress{DenyAll: true}, nil},
		{"deny all wins over an allow-list", slot.Egress{DenyAll: true, Allow: prefixes("8.8.8.0/24")}, nil},
		{"allow-list cut by the deny set", slot.Egress{Allow: prefixes("198.18.0.0/23", "169.254.169.254/32", "100.64.0.0/10")}, []span{
			span4("100.64.0.0", "100.127.255.255"), span4("198.18.1.0", "198.18.1.255")}},
		{"allow-list inside the deny set", slot.Egress{Allow: prefixes("10.1.0.0/16")}, nil},
	}
	for _, tc := range cases {
		if got := s.egress(tc.e); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %x, want %x", tc.name, got, tc.want)
		}
	}
	if got := (Slot{}).egress(slot.Egress{}); !slices.Equal(got, []span{{0, 0xffffffff}}) {
		t.Errorf("no deny set, no policy: %x", got)
	}
}

func TestRootRuleCountIsConstant(t *testing.T) {
	a := Root{Prefix: "a"}.RuleCount()
	b := Root{Prefix: "b", Uplink: "eth1"}.RuleCount()
	if a != b || a == 0 || a > 144 {
		t.Fatalf("root rule counts %d and %d", a, b)
	}
}
