package slot

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := DefaultConfig("nslot", 4000)
	if err := ok.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"empty prefix", func(c *Config) { c.Prefix = "" }, "invalid prefix"},
		{"prefix with dash", func(c *Config) { c.Prefix = "a-b" }, "invalid prefix"},
		{"prefix upper", func(c *Config) { c.Prefix = "Ns" }, "invalid prefix"},
		{"prefix ending in a digit", func(c *Config) { c.Prefix = "ns1" }, "invalid prefix"},
		{"prefix too long", func(c *Config) { c.Prefix = "abcdefghi" }, "invalid prefix"},
		{"zero slots", func(c *Config) { c.Count = 0 }, "invalid slot count"},
		{"cidr too small", func(c *Config) { c.SlotCIDR = netip.MustParsePrefix("100.64.0.0/24") }, "holds 254 slot addresses"},
		{"cidr host bits", func(c *Config) { c.SlotCIDR = netip.MustParsePrefix("100.64.0.1/16") }, "host bits set"},
		{"cidr ipv6", func(c *Config) { c.SlotCIDR = netip.MustParsePrefix("fd00::/64") }, "IPv4"},
		{"guest /31", func(c *Config) { c.GuestCIDR = netip.MustParsePrefix("172.16.0.0/31") }, "guest cidr"},
		{"loopback", func(c *Config) { c.SlotCIDR = netip.MustParsePrefix("127.0.0.0/16") }, "reserved"},
		{"link-local guest", func(c *Config) { c.GuestCIDR = netip.MustParsePrefix("169.254.1.0/30") }, "reserved"},
		{"overlap", func(c *Config) { c.GuestCIDR = netip.MustParsePrefix("100.64.0.0/30") }, "overlaps"},
		{"multicast mac", func(c *Config) { c.GuestMAC = []byte{1, 0, 0, 0, 0, 1} }, "guest mac"},
		{"same macs", func(c *Config) { c.TapMAC = c.GuestMAC }, "must differ"},
		{"more slots than dummy vnis", func(c *Config) {
			c.Count = MaxSlots + 1
			c.SlotCIDR = netip.MustParsePrefix("10.0.0.0/8")
		}, "slot count 1048577"},
		{"longest names fit", func(c *Config) {
			c.Prefix = "abcdefgh"
			c.Count = MaxSlots
			c.SlotCIDR = netip.MustParsePrefix("10.0.0.0/8")
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig("nslot", 4000)
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want no error", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestAddressing(t *testing.T) {
	c := DefaultConfig("ns", 3)
	if got := c.GatewayIP().String(); got != "172.16.0.1" {
		t.Errorf("gateway %s", got)
	}
	if got := c.GuestIP().String(); got != "172.16.0.2" {
		t.Errorf("guest %s", got)
	}
	if got := c.SlotIP(0).String(); got != "100.64.0.1" {
		t.Errorf("slot 0 ip %s", got)
	}
	if got := c.SlotIP(300).String(); got != "100.64.1.45" {
		t.Errorf("slot 300 ip %s", got)
	}
	if c.ID(2) != "ns-2" || c.NetnsPath(2) != "/run/netns/ns-2" || c.HostVeth(2) != "ns2" {
		t.Errorf("names: %s %s %s", c.ID(2), c.NetnsPath(2), c.HostVeth(2))
	}
	if c.HostVethMAC(1).String() == c.HostVethMAC(2).String() || c.HostVethMAC(1).String() == c.SlotVethMAC(1).String() {
		t.Error("veth MACs collide")
	}
	other := DefaultConfig("other", 3)
	if other.HostVethMAC(1).String() == c.HostVethMAC(1).String() {
		t.Error("MACs of two pools collide")
	}
	// Every slot address is distinct and inside the CIDR, network and
	// broadcast excluded.
	small := DefaultConfig("ns", Capacity(netip.MustParsePrefix("10.9.0.0/28")))
	small.SlotCIDR = netip.MustParsePrefix("10.9.0.0/28")
	if err := small.Validate(); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i := 0; i < small.Count; i++ {
		a := small.SlotIP(i)
		if !small.SlotCIDR.Contains(a) || a == small.SlotCIDR.Addr() || a.As4()[3] == 15 || seen[a] {
			t.Fatalf("slot %d address %s", i, a)
		}
		seen[a] = true
	}
}

func TestParseID(t *testing.T) {
	c := DefaultConfig("ns", 10)
	if i, err := c.ParseID("ns-9"); err != nil || i != 9 {
		t.Fatalf("ParseID(ns-9) = %d, %v", i, err)
	}
	for _, bad := range []string{"", "ns-10", "ns--1", "ns-01", "other-1", "ns-x", "ns-"} {
		if _, err := c.ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
	if i, ok := c.IndexOfName("ns12", ""); !ok || i != 12 {
		t.Errorf("IndexOfName(ns12) = %d %t", i, ok)
	}
	for _, bad := range []string{"nsfoo", "ns", "ns012", "ns-1"} {
		if _, ok := c.IndexOfName(bad, ""); ok {
			t.Errorf("IndexOfName(%q) matched", bad)
		}
	}
}

func TestParseAttachment(t *testing.T) {
	good := []string{"10.1.0.0/16"}
	if _, err := ParseAttachment(5, "198.18.0.9", "10.1.0.5", good); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		vni              uint32
		vtep, ip, errHas string
		cidrs            []string
	}{
		{0, "198.18.0.9", "10.1.0.5", "invalid vni 0", good},
		{MaxAttachVNI + 1, "198.18.0.9", "10.1.0.5", "invalid vni", good},
		{5, "198.18.0.999", "10.1.0.5", "invalid remote vtep", good},
		{5, "fd00::1", "10.1.0.5", "want IPv4", good},
		{5, "224.0.0.1", "10.1.0.5", "unicast", good},
		{5, "198.18.0.9", "nope", "invalid vpc ip", good},
		{5, "198.18.0.9", "10.1.0.5", "at least one", nil},
		{5, "198.18.0.9", "10.1.0.5", "invalid vpc cidr", []string{"10.1.0.0/33"}},
		{5, "198.18.0.9", "10.1.0.5", "host bits", []string{"10.1.0.1/16"}},
	}
	for _, tc := range cases {
		if _, err := ParseAttachment(tc.vni, tc.vtep, tc.ip, tc.cidrs); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("ParseAttachment(%d,%s,%s,%v) = %v, want %q", tc.vni, tc.vtep, tc.ip, tc.cidrs, err, tc.errHas)
		}
	}
	if _, err := ParseAttachment(MaxAttachVNI, "198.18.0.9", "10.1.0.5", good); err != nil {
		t.Errorf("max vni refused: %v", err)
	}
	many := make([]string, maxListLen+1)
	for i := range many {
		many[i] = "10.0.0.0/8"
	}
	if _, err := ParseCIDRs("egress cidr", many); err == nil {
		t.Error("oversized list accepted")
	}
	if err := ValidateOwner(strings.Repeat("x", maxOwnerLen+1)); err == nil {
		t.Error("oversized owner accepted")
	}
}

func TestCheckAttachment(t *testing.T) {
	pool := DefaultConfig("ck", 100)
	underlay := netip.MustParseAddr("198.18.0.2")
	att := func(vtep, ip string, cidrs ...string) *Attachment {
		a, err := ParseAttachment(5, vtep, ip, cidrs)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if err := pool.CheckAttachment(att("198.18.0.9", "10.1.0.5", "10.2.0.0/16", "10.1.0.0/16"), underlay); err != nil {
		t.Fatalf("good attachment refused: %v", err)
	}
	for _, tc := range []struct {
		a    *Attachment
		want string
	}{
		{att("100.64.0.1", "10.1.0.5", "10.1.0.0/16"), "remote vtep 100.64.0.1: inside the pool's slot cidr"},
		{att("172.16.0.2", "10.1.0.5", "10.1.0.0/16"), "remote vtep 172.16.0.2: inside the guest network"},
		{att("198.18.0.2", "10.1.0.5", "10.1.0.0/16"), "this host's underlay address"},
		{att("198.18.0.9", "10.9.0.5", "10.1.0.0/16"), "not inside any of the vpc cidrs"},
		{att("198.18.0.9", "224.0.0.5", "224.0.0.0/4"), "want a unicast address"},
		{att("198.18.0.9", "255.255.255.255", "255.255.255.255/32"), "want a unicast address"},
		{att("198.18.0.9", "100.64.0.7", "100.64.0.0/16"), "vpc ip 100.64.0.7: inside the pool's slot cidr"},
		{att("198.18.0.9", "172.16.0.2", "172.16.0.0/12"), "vpc ip 172.16.0.2: inside the guest network"},
	} {
		if err := pool.CheckAttachment(tc.a, underlay); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vtep %s vpc ip %s cidrs %v: %v, want %q", tc.a.RemoteVTEP, tc.a.VPCIP, tc.a.VPCCIDRs, err, tc.want)
		}
	}
}

func TestParseInboundSpec(t *testing.T) {
	for spec, want := range map[string]InboundRule{
		"tcp/8080":             {Proto: 6, PortLo: 8080, PortHi: 8080, Src: anywhere},
		"udp/53,198.18.0.0/15": {Proto: 17, PortLo: 53, PortHi: 53, Src: netip.MustParsePrefix("198.18.0.0/15")},
		"tcp/8000-8100":        {Proto: 6, PortLo: 8000, PortHi: 8100, Src: anywhere},
		"icmp,10.0.0.0/8":      {Proto: 1, Src: netip.MustParsePrefix("10.0.0.0/8")},
	} {
		got, err := ParseInboundSpec(spec)
		if err != nil || got != want {
			t.Errorf("ParseInboundSpec(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
		if got.String() != spec {
			t.Errorf("%q prints as %q", spec, got.String())
		}
	}
	for spec, want := range map[string]string{
		"tcp": "want PROTO/PORT", "tcp/0": "want 1..65535", "udp/65536": "want 1..65535", "tcp/9-8": "low to high",
		"icmp/5": "icmp has no ports", "sctp/9": "want tcp, udp or icmp", "tcp/80,10.0.0.1/8": "host bits", "tcp/x": "port",
	} {
		if _, err := ParseInboundSpec(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseInboundSpec(%q) = %v, want an error with %q", spec, err, want)
		}
	}
	many := make([]InboundRule, MaxInboundRules+1)
	if err := CheckInbound(many); err == nil {
		t.Error("17 inbound rules accepted")
	}
}

func TestBootArgs(t *testing.T) {
	c := DefaultConfig("ns", 4)
	if got, want := c.BootArgs(nil), "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"; got != want {
		t.Errorf("BootArgs() = %q, want %q", got, want)
	}
	dns := []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("198.18.1.53"), netip.MustParseAddr("198.18.2.53")}
	if got, want := c.BootArgs(dns), "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:198.18.0.53:198.18.1.53"; got != want {
		t.Errorf("BootArgs(dns) = %q, want %q (the kernel takes two)", got, want)
	}
	if _, err := ParseDNS([]string{"198.18.0.53", "2001:db8::53"}); err == nil {
		t.Error("ParseDNS took an IPv6 address")
	}
	if _, err := ParseDNS([]string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}); err == nil {
		t.Error("ParseDNS took 4 servers")
	}
}

func TestValidateTapOwner(t *testing.T) {
	for _, tc := range []struct {
		o  TapOwner
		ok bool
	}{
		{TapOwner{UID: 4242, GID: 4242}, true},
		{TapOwner{UID: 1, GID: 65534}, true},
		{TapOwner{UID: 4294967294, GID: 4294967294}, true},
		{TapOwner{UID: 4294967295, GID: 4242}, false}, // -1: none
		{TapOwner{UID: 4242, GID: 4294967295}, false},
		{TapOwner{UID: 0, GID: 4242}, false}, // root
		{TapOwner{UID: 4242, GID: 0}, false},
	} {
		if err := ValidateTapOwner(tc.o); (err == nil) != tc.ok {
			t.Errorf("ValidateTapOwner(%v): %v, want ok %t", tc.o, err, tc.ok)
		}
	}
}

func TestCheckHostname(t *testing.T) {
	for _, ok := range []string{"", "vm", "vm-42", "vm-42.example", "a.b.c", strings.Repeat("a", 63), "A1-b2"} {
		if err := CheckHostname(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{strings.Repeat("a", 64), "-vm", "vm-", "vm..x", ".vm", "vm.", "vm_42", "vm 42", "vé", "vm\x00"} {
		if err := CheckHostname(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
