package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testpacket"
)

// Addresses of the test environment. 198.18.0.0/15 is set aside for
// benchmarks and routed nowhere on this host; everything lives in a
// namespace the test makes.
var (
	underlay    = netip.MustParseAddr("198.18.0.2")
	fabricGW    = netip.MustParseAddr("198.18.0.1")
	fabricGWMAC = net.HardwareAddr{0x02, 0xfa, 0xb0, 0, 0, 1}
	uplinkMAC   = net.HardwareAddr{0x02, 0xfa, 0xb0, 0, 0, 2}
	vtep        = netip.MustParseAddr("198.18.0.9")
	vtepFar     = netip.MustParseAddr("198.19.7.9")   // via the fabric gateway
	vtepNoRoute = netip.MustParseAddr("10.255.255.9") // not in the pool's table
	outside     = netip.MustParseAddr("198.19.1.1")
	peerMAC     = net.HardwareAddr{0x02, 0x9e, 0xe4, 0, 0, 1}
)

const testTable = 100

// pinRoot is this test process's: a datapath refuses an uplink whose
// ifindex carries another pool's pinned links, and every test namespace's
// "up0" has the same ifindex, so two test processes (or fuzzing workers)
// sharing a pin root would refuse each other.
var pinRoot = fmt.Sprintf("/sys/fs/bpf/netslot-test-%d", os.Getpid())

// sweepPinRoots removes the pin roots of test processes that are gone
// (killed by a timeout before their cleanups ran): their pins would hold
// their maps and programs for as long as the host runs.
var sweepPinRoots = sync.OnceFunc(func() {
	roots, _ := filepath.Glob("/sys/fs/bpf/netslot-test-*")
	for _, r := range roots {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(r), "netslot-test-"))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			os.RemoveAll(r)
		}
	}
})

type env struct {
	atts  map[int]*slot.Attachment
	t     testing.TB
	dp    *Datapath
	cfg   slot.Config
	hosts []int // host ifindex per slot
}

// newEnv moves the test's goroutine into a fresh network namespace (its
// thread is never unlocked, so it dies with the test instead of going back
// to the pool in the wrong namespace) and loads a two-slot datapath on an
// uplink veth there.
func newEnv(t testing.TB, slots int) *env { return newEnvAt(t, slots, pinRoot) }

// newEnvAt is newEnv with the datapath pinned under pins. Fuzzing workers
// are processes of their own, each with a datapath on its own "up0": they
// need pin roots of their own, or each would find the others' pools on an
// uplink of the same ifindex.
func newEnvAt(t testing.TB, slots int, pins string) *env {
	testenv.PrivateNetns(t)
	sweepPinRoots()
	must := func(err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must(netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}), "lo up")
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", HardwareAddr: uplinkMAC, MTU: 9000}, PeerName: "up1"}
	must(netlink.LinkAdd(up), "uplink veth")
	peer, err := netlink.LinkByName("up1")
	must(err, "up1")
	must(netlink.LinkSetMTU(peer, 9000), "up1 mtu")
	must(netlink.LinkSetUp(peer), "up1 up")
	must(netlink.LinkSetUp(up), "up0 up")
	must(netlink.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: underlay.AsSlice(), Mask: net.CIDRMask(24, 32)}}), "uplink address")
	must(netlink.NeighAdd(&netlink.Neigh{LinkIndex: up.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: fabricGW.AsSlice(), HardwareAddr: fabricGWMAC}), "gateway neighbour")
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Table: testTable, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IPv4(198, 18, 0, 0).To4(), Mask: net.CIDRMask(24, 32)}}), "on-link route")
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Table: testTable, Gw: fabricGW.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4(198, 19, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}}), "fabric route")

	prefix := fmt.Sprintf("dpt%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	e := &env{t: t, cfg: slot.DefaultConfig(prefix, slots)}
	for i := 0; i < slots; i++ {
		// This kernel has no dummy driver; a veth gives an ifindex too.
		h := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.cfg.HostVeth(i)}, PeerName: fmt.Sprintf("p%d", i)}
		must(netlink.LinkAdd(h), "host device")
		// As netslotd sets it on host veths: slot traffic is forwarded.
		must(os.WriteFile("/proc/sys/net/ipv4/conf/"+h.Name+"/forwarding", []byte("1"), 0), "forwarding")
		e.hosts = append(e.hosts, h.Index)
	}
	t.Cleanup(func() {
		if err := Remove(pins, e.cfg.Prefix); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
		os.Remove(pins) // only if empty
	})
	dp, err := Open(Config{Slot: e.cfg, Uplink: "up0", UnderlayIP: underlay, RouteTable: testTable, PinRoot: pins})
	must(err, "open datapath")
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	for i, h := range e.hosts {
		must(dp.SetSlot(i, h), "set slot")
		must(dp.Detach(i, nil), "dummy vni") // as netslotd does for a free slot
		dp.OpenLease(i, nil)                 // and then leases it
	}
	return e
}

func (e *env) attach(i int, vni uint32, vpcIP string, cidr string, peer net.HardwareAddr, remote netip.Addr) *slot.Attachment {
	e.t.Helper()
	a, err := slot.ParseAttachment(vni, remote.String(), vpcIP, []string{cidr})
	if err != nil {
		e.t.Fatal(err)
	}
	a.PeerMAC = peer
	if err := e.dp.Attach(i, a); err != nil {
		e.t.Fatalf("attach slot %d: %v", i, err)
	}
	if e.atts == nil {
		e.atts = map[int]*slot.Attachment{}
	}
	e.atts[i] = a
	return a
}

func (e *env) attachment(i int) *slot.Attachment { return e.atts[i] }

// skbCtx is the head of struct __sk_buff up to ifindex, what
// BPF_PROG_TEST_RUN lets a test set.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

const (
	verdictNext     = 0xffffffff // TCX_NEXT
	verdictDrop     = 2
	verdictRedirect = 7
)

// run runs prog on pkt as if it had come in on ingressIfindex and returns
// the verdict and the packet as the program left it.
func (e *env) run(prog *ebpf.Program, pkt []byte, ingressIfindex int) (uint32, []byte) {
	e.t.Helper()
	out := make([]byte, len(pkt)+512)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: skbCtx{IngressIfindex: uint32(ingressIfindex)}}
	ret, err := prog.Run(opts)
	if err != nil {
		e.t.Fatalf("run %s: %v", prog, err)
	}
	return ret, opts.DataOut
}

func (e *env) egress(pkt []byte, slotIdx int) (uint32, []byte) {
	return e.run(e.dp.objs.UplinkEgress, pkt, e.hosts[slotIdx])
}

func (e *env) ingress(pkt []byte) (uint32, []byte) {
	up, _ := netlink.LinkByName("up0")
	return e.run(e.dp.objs.UplinkIngress, pkt, up.Attrs().Index)
}

func (e *env) stats(i int) Stats {
	e.t.Helper()
	s, err := e.dp.Stats(i)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// serialize builds a frame with lengths and checksums computed.
func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(findIP(ls))
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(findIP(ls))
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// findIP returns the innermost IPv4 layer before the first transport layer.
func findIP(ls []gopacket.SerializableLayer) gopacket.NetworkLayer {
	var ip gopacket.NetworkLayer
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.IPv4:
			ip = l
		case *layers.TCP, *layers.UDP:
			return ip
		}
	}
	return ip
}

// guestFrame is what a guest sends: to the gateway's MAC (as seen on the
// uplink after routing, the MACs are the uplink's; they do not matter to
// the egress program).
func guestFrame(t testing.TB, c slot.Config, dst netip.Addr, l4 ...gopacket.SerializableLayer) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 63, SrcIP: c.GuestIP().AsSlice(), DstIP: dst.AsSlice(), Id: 77}
	ip.Protocol = protoOf(l4)
	ls := []gopacket.SerializableLayer{
		&layers.Ethernet{SrcMAC: uplinkMAC, DstMAC: fabricGWMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
	}
	return serialize(t, append(ls, l4...)...)
}

func protoOf(l4 []gopacket.SerializableLayer) layers.IPProtocol {
	switch l4[0].(type) {
	case *layers.TCP:
		return layers.IPProtocolTCP
	case *layers.UDP:
		return layers.IPProtocolUDP
	default:
		return layers.IPProtocolICMPv4
	}
}

func l4Variants() map[string][]gopacket.SerializableLayer {
	payload := gopacket.Payload([]byte("netslot says hello"))
	return map[string][]gopacket.SerializableLayer{
		"tcp":  {&layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, SYN: true, Window: 64240}, payload},
		"udp":  {&layers.UDP{SrcPort: 40000, DstPort: 53}, payload},
		"icmp": {&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 9, Seq: 1}, payload},
	}
}

// replyVariants answer the flows of l4Variants: a SYN-ACK, a UDP answer
// and an echo reply.
func replyVariants() map[string][]gopacket.SerializableLayer {
	payload := gopacket.Payload([]byte("netslot hears you"))
	return map[string][]gopacket.SerializableLayer{
		"tcp":  {&layers.TCP{SrcPort: 80, DstPort: 40000, Seq: 7, Ack: 2, SYN: true, ACK: true, Window: 64240}, payload},
		"udp":  {&layers.UDP{SrcPort: 53, DstPort: 40000}, payload},
		"icmp": {&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoReply, 0), Id: 9, Seq: 1}, payload},
	}
}

// sendVariants has slot i's guest send each of l4Variants to dst, so that
// replyVariants from dst answer flows of its own. (To a VPC peer whose MAC
// is unknown, all but the first are dropped while the slot ARPs: the flows
// count from the guest's sending, not from what got through.)
func (e *env) sendVariants(i int, dst netip.Addr) {
	e.t.Helper()
	for _, l4 := range l4Variants() {
		e.egress(guestFrame(e.t, e.cfg, dst, l4...), i)
	}
}

// checkIPv4 fails t unless the IPv4 packet at ip (header and payload) has a
// valid header checksum and a valid TCP, UDP or ICMP checksum.
func checkIPv4(t testing.TB, what string, ip []byte) {
	t.Helper()
	if err := testpacket.CheckIPv4(ip); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func addr(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b)) }
