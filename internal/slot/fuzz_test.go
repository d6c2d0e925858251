package slot

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzParseConfig feeds netslotd's pool flags through ParseConfig. A
// configuration it accepts must give every slot an interface name the
// kernel takes, a unique address inside the slot range and outside the
// guest network, a dummy VNI that fits 24 bits, MACs that are unicast, and
// ids and device names that parse back to their slot.
func FuzzParseConfig(f *testing.F) {
	f.Add("nslot", 4000, "100.64.0.0/16", "172.16.0.0/30", "06:00:ac:10:00:02")
	f.Add("a", 1, "10.0.0.0/31", "172.16.0.0/30", "02:00:00:00:00:01")
	f.Add("p1", 70000, "100.64.0.0/15", "192.168.0.0/24", "06:00:ac:10:00:02")
	f.Add("x", 2000000, "10.0.0.0/8", "172.16.0.0/30", "06:00:ac:10:00:02")
	f.Add("nslot", 10, "100.64.0.1/16", "172.16.0.0/30", "06:00:ac:10:00:02")
	f.Add("Bad", 10, "::/64", "172.16.0.0/31", "ff:ff:ff:ff:ff:ff")
	f.Fuzz(func(t *testing.T, prefix string, count int, slotCIDR, guestCIDR, guestMAC string) {
		c, err := ParseConfig(prefix, count, slotCIDR, guestCIDR, guestMAC)
		if err != nil {
			if err.Error() == "" || strings.ToLower(err.Error()[:1]) != err.Error()[:1] {
				t.Errorf("error %q: want a lowercase message", err)
			}
			return
		}
		for _, i := range []int{0, count / 2, count - 1} {
			if n := len(c.HostVeth(i)); n > maxIfName {
				t.Fatalf("slot %d: host veth %q is %d characters", i, c.HostVeth(i), n)
			}
			a := c.SlotIP(i)
			if !c.SlotCIDR.Contains(a) || c.GuestCIDR.Contains(a) {
				t.Fatalf("slot %d: address %s outside %s or inside the guest network %s", i, a, c.SlotCIDR, c.GuestCIDR)
			}
			if bits := c.SlotCIDR.Bits(); bits < 31 && (a == c.SlotCIDR.Addr() || a == lastAddr(c.SlotCIDR)) {
				t.Fatalf("slot %d: address %s is the network or broadcast address of %s", i, a, c.SlotCIDR)
			}
			if got, err := c.ParseID(c.ID(i)); err != nil || got != i {
				t.Fatalf("slot %d: id %q parses to %d, %v", i, c.ID(i), got, err)
			}
			if got, ok := c.IndexOfName(c.HostVeth(i), ""); !ok || got != i {
				t.Fatalf("slot %d: host veth %q parses to %d, %t", i, c.HostVeth(i), got, ok)
			}
			for _, m := range [][]byte{c.HostVethMAC(i), c.SlotVethMAC(i), c.VPCMAC(i)} {
				if len(m) != 6 || m[0]&1 != 0 {
					t.Fatalf("slot %d: mac %x is not unicast", i, m)
				}
			}
		}
		if c.SlotIP(0) == c.SlotIP(count-1) && count > 1 {
			t.Fatalf("slots 0 and %d share address %s", count-1, c.SlotIP(0))
		}
		if uint64(DummyVNIBase)+uint64(count-1) > MaxVNI {
			t.Fatalf("%d slots: dummy vni %#x does not fit 24 bits", count, uint64(DummyVNIBase)+uint64(count-1))
		}
	})
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// FuzzParseID: ids a client sends (release, show) parse to a slot of the
// pool or to an error, and only the canonical spelling of an id parses.
func FuzzParseID(f *testing.F) {
	c := DefaultConfig("nslot", 4000)
	for _, s := range []string{"nslot-0", "nslot-3999", "nslot-4000", "nslot-01", "nslot--1", "nslot-+1", "nslot-", "other-1", "nslot-1 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		i, err := c.ParseID(id)
		if err != nil {
			return
		}
		if i < 0 || i >= c.Count || c.ID(i) != id {
			t.Fatalf("ParseID(%q) = %d, which is slot %q of a %d-slot pool", id, i, c.ID(i), c.Count)
		}
	})
}

// FuzzParseAttachment: a VPC attachment that parses carries a VNI outside
// the pooled slots' range, IPv4 addresses and masked IPv4 CIDRs; one the
// default pool accepts (CheckAttachment) also has a unicast VPC address
// inside one of its CIDRs, and neither address in the pool's slot range,
// its guest network or at its underlay address.
func FuzzParseAttachment(f *testing.F) {
	f.Add(uint32(9), "198.18.0.9", "10.1.0.5", "10.1.0.0/16", "")
	f.Add(uint32(0xF00000), "198.18.0.9", "10.1.0.5", "10.1.0.0/16", "02:00:00:00:00:09")
	f.Add(uint32(1), "::1", "10.1.0.5", "10.1.0.7/16", "ff:ff:ff:ff:ff:ff")
	f.Add(uint32(5), "198.18.0.9", "10.2.0.5", "10.1.0.0/16,10.2.0.0/24", "01:00:5e:00:00:01")
	f.Add(uint32(5), "100.64.0.1", "10.1.0.5", "10.1.0.0/16", "")     // a slot's address as VTEP
	f.Add(uint32(5), "198.18.0.9", "10.9.0.5", "10.1.0.0/16", "")     // VPC address outside the CIDRs
	f.Add(uint32(5), "198.18.0.2", "10.1.0.5", "10.1.0.0/16", "")     // the underlay as VTEP
	f.Add(uint32(5), "198.18.0.9", "172.16.0.2", "172.16.0.0/12", "") // the guest address as VPC address
	f.Add(uint32(5), "198.18.0.9", "224.1.0.5", "224.0.0.0/4", "")
	underlay := netip.MustParseAddr("198.18.0.2")
	pool := DefaultConfig("fz", 100)
	f.Fuzz(func(t *testing.T, vni uint32, vtep, vpcIP, cidrs, peer string) {
		a, err := ParseAttachment(vni, vtep, vpcIP, strings.Split(cidrs, ","))
		if err == nil {
			if a.VNI == 0 || a.VNI > MaxAttachVNI {
				t.Fatalf("vni %d accepted", a.VNI)
			}
			if !a.RemoteVTEP.Is4() || !a.VPCIP.Is4() {
				t.Fatalf("addresses %s, %s accepted", a.RemoteVTEP, a.VPCIP)
			}
			for _, p := range a.VPCCIDRs {
				if !p.Addr().Is4() || p != p.Masked() {
					t.Fatalf("cidr %s accepted", p)
				}
			}
			if pool.CheckAttachment(a, underlay) == nil {
				inside := false
				for _, p := range a.VPCCIDRs {
					inside = inside || p.Contains(a.VPCIP)
				}
				if !inside || a.VPCIP.IsMulticast() || a.VPCIP.IsUnspecified() || a.VPCIP.IsLoopback() {
					t.Fatalf("vpc ip %s accepted with cidrs %v", a.VPCIP, a.VPCCIDRs)
				}
				for _, ip := range []netip.Addr{a.RemoteVTEP, a.VPCIP} {
					if pool.SlotCIDR.Contains(ip) || pool.GuestCIDR.Contains(ip) {
						t.Fatalf("%s accepted: inside the pool's own ranges", ip)
					}
				}
				if a.RemoteVTEP == underlay {
					t.Fatalf("the underlay address accepted as vtep")
				}
			}
		}
		if m, err := ParsePeerMAC(peer); err == nil && m != nil && (len(m) != 6 || m[0]&1 != 0) {
			t.Fatalf("peer mac %s accepted", m)
		}
	})
}

// FuzzParseInboundSpec: an inbound rule that parses is TCP or UDP with a
// port range inside 1..65535, low to high, or ICMP without ports, from a
// masked IPv4 CIDR; and it prints back to itself.
func FuzzParseInboundSpec(f *testing.F) {
	for _, s := range []string{"tcp/8080", "udp/53,198.18.0.0/15", "icmp", "icmp,10.0.0.0/8", "tcp/8000-8100",
		"tcp/0", "udp/70000", "tcp/9-8", "icmp/5", "sctp/9", "tcp/80,10.0.0.1/8", "tcp/80,::/0", "TCP/22", "tcp/+5", "udp/1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := ParseInboundSpec(spec)
		if err != nil {
			if strings.ToLower(err.Error()[:1]) != err.Error()[:1] {
				t.Errorf("error %q: want a lowercase message", err)
			}
			return
		}
		switch r.Proto {
		case 6, 17:
			if r.PortLo == 0 || r.PortHi < r.PortLo {
				t.Fatalf("%q: ports %d-%d accepted", spec, r.PortLo, r.PortHi)
			}
		case 1:
			if r.PortLo != 0 || r.PortHi != 0 {
				t.Fatalf("%q: icmp with ports accepted", spec)
			}
		default:
			t.Fatalf("%q: protocol %d accepted", spec, r.Proto)
		}
		if !r.Src.Addr().Is4() || r.Src != r.Src.Masked() {
			t.Fatalf("%q: source %s accepted", spec, r.Src)
		}
		if back, err := ParseInboundSpec(r.String()); err != nil || back != r {
			t.Fatalf("%q prints as %q, which parses to %+v, %v", spec, r.String(), back, err)
		}
	})
}
