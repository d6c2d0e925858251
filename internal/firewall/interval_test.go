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

func TestEgressSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    slot.Egress
		want []span
	}{
		{"no policy: everything", slot.Egress{}, []span{{0, 0xffffffff}}},
		{"deny all", slot.Egress{DenyAll: true}, nil},
		{"deny all wins over an allow-list", slot.Egress{DenyAll: true, Allow: prefixes("8.8.8.0/24")}, nil},
		{"an allow-list", slot.Egress{Allow: prefixes("10.0.1.0/24", "10.0.0.0/24")}, []span{{0x0a000000, 0x0a0001ff}}},
	} {
		if got := (Slot{}).egress(tc.e); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %x, want %x", tc.name, got, tc.want)
		}
	}
}

func TestRootRuleCountIsConstant(t *testing.T) {
	a := Root{Prefix: "a"}.RuleCount()
	b := Root{Prefix: "b", Uplink: "eth1"}.RuleCount()
	if a != b || a == 0 || a > 144 {
		t.Fatalf("root rule counts %d and %d", a, b)
	}
}
