package datapath

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
)

// total sums reason's drops over every slot and the no-slot entry.
func (e *env) total(reason string) uint64 {
	var n uint64
	for i := 0; i <= e.cfg.Count; i++ {
		n += e.stats(i).Drops[reason]
	}
	return n
}

func TestDropReasons(t *testing.T) {
	e := newEnv(t, 3)
	e.attach(0, 100, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	e.attach(1, 200, "10.9.0.6", "10.9.0.0/16", nil, vtep)
	e.attach(2, 300, "10.9.0.7", "10.9.0.0/16", nil, vtepNoRoute)
	mac0 := e.cfg.VPCMAC(0)
	udp := func() []gopacket.SerializableLayer {
		return []gopacket.SerializableLayer{&layers.UDP{SrcPort: 7, DstPort: 7}, gopacket.Payload("drop me")}
	}
	toSlot0 := innerIPv4(t, mac0, "10.9.0.1", "10.9.0.5", udp()...)
	ip6 := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: net.ParseIP("fe80::1"), DstIP: net.ParseIP("ff02::1")}
	ra := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeRouterAdvertisement, 0)}
	ra.SetNetworkLayerForChecksum(ip6)
	ipv6 := serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6},
		ip6, ra, gopacket.Payload(make([]byte, 16)))
	mcast := innerIPv4(t, net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}, "10.9.0.1", "224.0.0.1", udp()...)
	lldp := serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: mac0, EthernetType: 0x88cc}, gopacket.Payload(make([]byte, 46)))
	shortTCP := func() []byte {
		p := guestFrame(t, e.cfg, outside, &layers.UDP{SrcPort: 1, DstPort: 2})
		p = p[:14+20+4]
		p[14+9] = 6 // TCP, with no room for its checksum
		p[14+2], p[14+3] = 0, 24
		return p
	}

	// Slot 1 is made a hole for no_slot after the others ran.
	cases := []struct {
		reason string
		run    func() uint32
	}{
		{"geneve_truncated", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, toSlot0[:6])); return v }},
		{"geneve_version", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, version: 1}, toSlot0)); return v }},
		{"geneve_optlen", func() uint32 {
			v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, optLen: 63, cut: 252 + len(toSlot0) - 4}, toSlot0))
			return v
		}},
		{"geneve_proto", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, proto: 0x0800}, toSlot0)); return v }},
		{"dummy_vni", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: DummyVNIBase}, toSlot0)); return v }},
		{"unknown_vni", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 999}, toSlot0)); return v }},
		// Slot 0's VNI with slot 1's inner address must not reach slot 1.
		{"unknown_dst", func() uint32 {
			v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, innerIPv4(t, e.cfg.VPCMAC(1), "10.9.0.1", "10.9.0.6", udp()...)))
			return v
		}},
		{"wrong_vtep", func() uint32 {
			v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, src: netip.MustParseAddr("198.18.0.77")}, toSlot0))
			return v
		}},
		{"inner_ipv6", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, ipv6)); return v }},
		{"inner_multicast", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, mcast)); return v }},
		{"inner_mac", func() uint32 {
			v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, innerIPv4(t, peerMAC, "10.9.0.1", "10.9.0.5", udp()...)))
			return v
		}},
		{"inner_other", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100}, lldp)); return v }},
		{"egress_dummy_vni", func() uint32 {
			// A tunnel entry with VPC CIDRs but a dummy VNI (never written
			// by netslotd): the packet must not leave, neither through the
			// tunnel nor through the NAT.
			bad := e.dp.dummy(1)
			bad.Ncidrs = 1
			bad.Cidrs[0] = datapathVpcCidr{Addr: be32(netip.MustParseAddr("10.77.0.0")), Mask: be32(netip.MustParseAddr("255.255.0.0"))}
			if err := e.dp.objs.Tunnels.Update(uint32(1), &bad, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.77.0.1"), udp()...), 1)
			return v
		}},
		{"egress_not_ipv4", func() uint32 {
			v, _ := e.egress(serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: mac0, EthernetType: 0x88cc}, gopacket.Payload(make([]byte, 46))), 0)
			return v
		}},
		{"egress_spoof", func() uint32 {
			p := guestFrame(t, e.cfg, outside, udp()...)
			p[14+15] = 3 // 172.16.0.3
			v, _ := e.egress(p, 0)
			return v
		}},
		{"no_route", func() uint32 {
			v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), udp()...), 2)
			return v
		}},
		{"rewrite", func() uint32 { v, _ := e.egress(shortTCP(), 0); return v }},
		{"geneve_oam", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, flags: 0x80}, toSlot0)); return v }},
		{"geneve_critical", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, flags: 0x40}, toSlot0)); return v }},
		{"geneve_fragment", func() uint32 { v, _ := e.ingress(geneveFrame(t, gnvOpts{vni: 100, mf: true}, toSlot0)); return v }},
		{"too_big", func() uint32 {
			// A full 1500-byte guest packet through a 1500-byte uplink:
			// no room for the tunnel's 50 bytes.
			up, err := netlink.LinkByName("up0")
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetMTU(up, 1500); err != nil {
				t.Fatal(err)
			}
			defer netlink.LinkSetMTU(up, 9000)
			if err := e.dp.objs.Peers.Update(uint32(0), &datapathPeerInfo{Mac: mac6(peerMAC), Known: 1, Vni: 100, Remote: be32(vtep)}, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			big := guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2}, gopacket.Payload(make([]byte, 1472)))
			v, _ := e.egress(big, 0)
			return v
		}},
		{"peer_unknown", func() uint32 {
			// Slot 1 learned nothing: the first packet becomes an ARP
			// request, and it and the next ones within the interval are
			// held for netslotd, up to HOLD_BURST (32) of them; the one
			// after is dropped.
			if err := e.dp.Attach(1, e.attachment(1)); err != nil { // undo egress_dummy_vni's damage
				t.Fatal(err)
			}
			for range 32 {
				e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), udp()...), 1)
			}
			if n := e.total("peer_unknown"); n != 0 {
				t.Errorf("peer_unknown: %d frames of the first 32 dropped, want them held", n)
			}
			v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), udp()...), 1)
			return v
		}},
		{"unregistered", func() uint32 {
			// Guest-sourced, from a veth the datapath does not know: never
			// leaves untranslated.
			up, _ := netlink.LinkByName("up1")
			v, _ := e.run(e.dp.objs.UplinkEgress, guestFrame(t, e.cfg, outside, udp()...), up.Attrs().Index)
			return v
		}},
		{"slot_to_slot", func() uint32 {
			v, _ := e.egress(guestFrame(t, e.cfg, e.cfg.SlotIP(2), udp()...), 0)
			return v
		}},
		{"inbound_unsolicited", func() uint32 {
			// A connection opened from outside to slot 0's guest.
			ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolTCP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(0).AsSlice()}
			v, _ := e.ingress(serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
				&layers.TCP{SrcPort: 40000, DstPort: 22, SYN: true, Window: 1024}))
			return v
		}},
		{"not_leased", func() uint32 {
			// Slot 2 is being released: its guest sends nothing more.
			e.dp.CloseLease(2)
			v, _ := e.egress(guestFrame(t, e.cfg, outside, udp()...), 2)
			return v
		}},
		{"egress_denied", func() uint32 {
			e.dp.cfg.Deny = FixedDeny
			if err := e.dp.writeDeny(); err != nil {
				t.Fatal(err)
			}
			v, _ := e.egress(guestFrame(t, e.cfg, netip.MustParseAddr("169.254.169.254"), udp()...), 0)
			return v
		}},
		{"no_slot", func() uint32 {
			var none datapathSlotInfo
			if err := e.dp.objs.Slots.Update(uint32(1), &none, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
			v, _ := e.ingress(serialize(t, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip, &layers.UDP{SrcPort: 1, DstPort: 2}))
			return v
		}},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		seen[tc.reason] = true
		before := e.total(tc.reason)
		if v := tc.run(); v != verdictDrop {
			t.Errorf("%s: verdict %d, want TCX_DROP", tc.reason, int32(v))
		}
		if after := e.total(tc.reason); after != before+1 {
			t.Errorf("%s: counted %d drops, want 1", tc.reason, after-before)
		}
	}
	// Reasons of the tap's program, which needs a slot's namespace around
	// it (it finds its slot by a route lookup there): TestTapDHCP and
	// TestTapDHCPChecksHeaders make one (slotSide), TestTapDHCPRateLimit
	// floods it; real packets on a real slot's tap0 count them too
	// (internal/daemon TestDHCPOnTheTap).
	for _, r := range []string{"dhcp_malformed", "dhcp_not_guest", "dhcp_ignored", "dhcp_bad_length", "dhcp_bad_ip_checksum",
		"dhcp_bad_udp_checksum", "dhcp_relayed", "dhcp_declined", "dhcp_rate_limited"} {
		seen[r] = true
	}
	for _, r := range DropReasons {
		if !seen[r] {
			t.Errorf("drop reason %s has no test", r)
		}
	}
}
