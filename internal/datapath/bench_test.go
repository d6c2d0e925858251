package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/slot"
)

// BenchmarkAttach times the flip of a slot to a VPC (map updates only) and
// reports percentiles; detaches run outside the timed part.
func BenchmarkAttach(b *testing.B) {
	e := newEnv(b, 16)
	var atts []*slot.Attachment
	for i := range 16 {
		a, err := slot.ParseAttachment(4242, vtep.String(), fmt.Sprintf("10.9.0.%d", 10+i), []string{"10.9.0.0/24", "10.10.0.0/16"})
		if err != nil {
			b.Fatal(err)
		}
		atts = append(atts, a)
	}
	var lat []time.Duration
	n := 0
	for b.Loop() {
		i := n % 16
		start := time.Now()
		if err := e.dp.Attach(i, atts[i]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		n++
		if i == 15 {
			b.StopTimer()
			for j := range 16 {
				if err := e.dp.Detach(j, atts[j]); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-us")
}

// BenchmarkLeasePolicy times what acquire and release add to the
// datapath besides the tunnel flip: opening a slot's lease (with two
// inbound rules), closing it and clearing its flow table.
func BenchmarkLeasePolicy(b *testing.B) {
	e := newEnv(b, 16)
	rules, err := slot.ParseInboundSpecs([]string{"tcp/8080", "udp/53,198.18.0.0/15"})
	if err != nil {
		b.Fatal(err)
	}
	for _, step := range []struct {
		name string
		fn   func(i int)
	}{
		// Opening a closed lease: its flow table is cleared too.
		{"close-open", func(i int) { e.dp.CloseLease(i); e.dp.OpenLease(i, rules) }},
		{"close-open-no-rules", func(i int) { e.dp.CloseLease(i); e.dp.OpenLease(i, nil) }},
		{"close", e.dp.CloseLease},
		{"clear-flows", e.dp.ClearFlows},
	} {
		b.Run(step.name, func(b *testing.B) {
			n := 0
			for b.Loop() {
				step.fn(n % 16)
				n++
			}
		})
	}
}

// BenchmarkPrograms measures the programs' own cost per packet (the
// kernel's BPF run-time statistics, not the test-run syscall around them):
// a guest's UDP datagram and TCP segment NATed out, and the replies NATed
// back in, and the backstop's two programs. Each run gets a fresh copy of
// the packet.
func BenchmarkPrograms(b *testing.B) {
	e := newEnv(b, 2)
	up, err := netlink.LinkByName("up0")
	if err != nil {
		b.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	out := guestFrame(b, e.cfg, outside, &layers.UDP{SrcPort: 40000, DstPort: 53}, gopacket.Payload("netslot"))
	e.egress(out, 1) // the flow the reply answers
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolUDP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
	in := serialize(b, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.UDP{SrcPort: 53, DstPort: 40000}, gopacket.Payload("netslot"))
	tcpOut := guestFrame(b, e.cfg, outside, &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, ACK: true, Ack: 1, Window: 512}, gopacket.Payload("netslot"))
	tip := &layers.IPv4{Version: 4, IHL: 5, TTL: 60, Protocol: layers.IPProtocolTCP, SrcIP: outside.AsSlice(), DstIP: e.cfg.SlotIP(1).AsSlice()}
	tcpIn := serialize(b, &layers.Ethernet{SrcMAC: fabricGWMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}, tip,
		&layers.TCP{SrcPort: 80, DstPort: 40000, Seq: 1, ACK: true, Ack: 1, Window: 512}, gopacket.Payload("netslot"))
	// Slot 0 is attached to a VPC (its peer known): its packets to the
	// VPC are encapsulated.
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	vpcOut := guestFrame(b, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 40000, DstPort: 53}, gopacket.Payload("netslot"))
	natted := make([]byte, len(out)+512)
	if _, err := e.dp.objs.UplinkEgress.Run(&ebpf.RunOptions{Data: out, DataOut: natted, Context: skbCtx{IngressIfindex: uint32(e.hosts[1])}}); err != nil {
		b.Fatal(err)
	}
	natted = natted[:len(out)]
	// Slot 0's tap0, for the DHCP answer's cost.
	tap := e.slotSide(0)
	if err := e.dp.SetDHCP(0, DHCP{MTU: 1500, DNS: []netip.Addr{outside}, Hostname: "bench"}); err != nil {
		b.Fatal(err)
	}
	discover := dhcpFrame(b, e.cfg.GuestMAC, layers.DHCPMsgTypeDiscover)
	// The DHCP program looks its slot up in the namespace it runs in, which
	// for BPF_PROG_TEST_RUN is the calling thread's: its runs go on a thread
	// in the env's namespace.
	envNS, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(envNS)
	bs, err := Backstop{Prefix: "tbench", GuestCIDR: e.cfg.GuestCIDR, SlotCIDR: e.cfg.SlotCIDR}.load()
	if err != nil {
		b.Fatal(err)
	}
	defer bs.Close()
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
		iif  int
	}{
		{"egress-nat-udp", e.dp.objs.UplinkEgress, out, e.hosts[1]},
		{"ingress-nat-udp", e.dp.objs.UplinkIngress, in, up.Attrs().Index},
		{"egress-nat-tcp", e.dp.objs.UplinkEgress, tcpOut, e.hosts[1]},
		{"ingress-nat-tcp", e.dp.objs.UplinkIngress, tcpIn, up.Attrs().Index},
		// The backstop's verdict on packets it lets by (the common case).
		{"backstop-egress", bs.BackstopEgress, in, 0},
		{"backstop-ingress", bs.BackstopIngress, out, 0},
		{"egress-vpc-udp", e.dp.objs.UplinkEgress, vpcOut, e.hosts[0]},
		// A flat underlay: every slot packet is redirected to the
		// neighbour subsystem, and passes the program a second time.
		{"egress-nat-udp-flat", e.dp.objs.UplinkEgress, out, e.hosts[1]},
		{"egress-nat-udp-flat-second-pass", e.dp.objs.UplinkEgress, natted, e.hosts[1]},
		{"egress-vpc-udp-flat", e.dp.objs.UplinkEgress, vpcOut, e.hosts[0]},
		// Every packet of a guest's passes tap0's DHCP program on its way
		// in: what it costs one that is not DHCP.
		{"tap-not-dhcp-udp", e.dp.objs.TapDhcp, out, 0},
		{"tap-not-dhcp-tcp", e.dp.objs.TapDhcp, tcpOut, 0},
		// A DISCOVER answered: slot lookup, parse, the OFFER built.
		{"tap-dhcp-discover", e.dp.objs.TapDhcp, discover, tap},
	} {
		var mark uint32
		if strings.HasSuffix(c.name, "second-pass") {
			mark = dpconst.NeighMark
		}
		// Here: sub-benchmarks run on goroutines outside the test's
		// namespace, where writeConfig finds no uplink.
		e.dp.cfg.Flat = strings.Contains(c.name, "-flat")
		if err := e.dp.writeConfig(); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			if c.iif == tap {
				runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
				if err := unix.Setns(envNS, unix.CLONE_NEWNET); err != nil {
					b.Fatal(err)
				}
			}
			before, err := c.prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			opts := &ebpf.RunOptions{Data: c.pkt, DataOut: make([]byte, len(c.pkt)+512), Context: skbCtx{IngressIfindex: uint32(c.iif), Mark: mark}}
			if v, err := c.prog.Run(opts); err != nil || (strings.HasPrefix(c.name, "tap-dhcp") && v != verdictRedirect) {
				b.Fatalf("%s: verdict %d, %v", c.name, int32(v), err) // measured is what it is named for
			}
			// The slot's DHCP rate would refuse most answers: its bucket
			// is refilled before each run (stamp 0: full credit), outside
			// what the run-time statistics measure.
			full := make([]byte, e.dp.objs.DhcpLimits.ValueSize())
			binary.LittleEndian.PutUint32(full[16:], e.dp.LeaseWord(0)) // struct dhcp_limit's lease
			dhcp := strings.HasPrefix(c.name, "tap-dhcp")
			for b.Loop() {
				if dhcp {
					if err := e.dp.objs.DhcpLimits.Update(uint32(0), full, ebpf.UpdateAny); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := c.prog.Run(opts); err != nil {
					b.Fatal(err)
				}
			}
			after, err := c.prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			if n := after.RunCount - before.RunCount; n > 0 {
				b.ReportMetric(float64((after.Runtime-before.Runtime).Nanoseconds())/float64(n), "ns/packet")
			}
		})
	}
}
