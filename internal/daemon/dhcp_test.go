package daemon_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/testpacket"
	"github.com/netslot/netslot/internal/testutil"
)

const dhcpWait = 2 * time.Second

func dhcpClient(t *testing.T, p *testutil.Pool, i int) *lab.DHCPClient {
	t.Helper()
	c, err := lab.NewDHCPClient(p.Config.NetnsPath(i), "tap0", p.Config.GuestMAC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ip4(a netip.Addr) []byte { return a.AsSlice() }

// answer sends m and returns the answer, failing t without one.
func answer(t *testing.T, c *lab.DHCPClient, m lab.DHCPMessage) *lab.DHCPAnswer {
	t.Helper()
	a, _, err := c.Exchange(c.Frame(m), m.Xid, dhcpWait)
	if err != nil {
		t.Fatalf("%s (xid %d): %v", m.Type, m.Xid, err)
	}
	return a
}

// noAnswer sends m and fails t if anything answers it.
func noAnswer(t *testing.T, c *lab.DHCPClient, m lab.DHCPMessage) {
	t.Helper()
	if a, _, err := c.Exchange(c.Frame(m), m.Xid, 300*time.Millisecond); err == nil {
		t.Fatalf("%s (xid %d) answered with %s", m.Type, m.Xid, a.Type())
	}
}

func wantOption(t *testing.T, a *lab.DHCPAnswer, o layers.DHCPOpt, want []byte) {
	t.Helper()
	got, ok := a.Option(o)
	if !ok {
		t.Errorf("%s: no option %s", a.Type(), o)
		return
	}
	if string(got) != string(want) {
		t.Errorf("%s: option %s = %v, want %v", a.Type(), o, got, want)
	}
}

func noOption(t *testing.T, a *lab.DHCPAnswer, o layers.DHCPOpt) {
	t.Helper()
	if got, ok := a.Option(o); ok {
		t.Errorf("%s: option %s = %v, want none", a.Type(), o, got)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// A stock DHCP exchange on a leased slot's tap0, parsed by gopacket: the
// guest address, mask, router, the lease's DNS servers and hostname, the
// MTU, a lease time and the server identifier; then what is not answered,
// and counted.
func TestDHCPOnTheTap(t *testing.T) {
	cfg := testutil.NewConfig(2)
	p := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: t.TempDir(),
		DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}})
	gw, guest := cfg.GatewayIP(), cfg.GuestIP()
	dns := []netip.Addr{netip.MustParseAddr("198.18.7.1"), netip.MustParseAddr("198.18.7.2")}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{DNS: dns, Hostname: "vm-42.example"})
	if err != nil {
		t.Fatal(err)
	}
	c := dhcpClient(t, p, info.Index)

	offer := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 1})
	if offer.Type() != layers.DHCPMsgTypeOffer {
		t.Fatalf("answer to DISCOVER is a %s", offer.Type())
	}
	if got := offer.DHCP.YourClientIP.String(); got != guest.String() {
		t.Errorf("offered %s, want %s", got, guest)
	}
	// Unicast to the guest's MAC and address (no broadcast flag), from tap0.
	if offer.Eth.DstMAC.String() != cfg.GuestMAC.String() || offer.Eth.SrcMAC.String() != cfg.TapMAC.String() ||
		offer.IP.DstIP.String() != guest.String() || offer.IP.SrcIP.String() != gw.String() {
		t.Errorf("offer %s -> %s, %s -> %s", offer.Eth.SrcMAC, offer.Eth.DstMAC, offer.IP.SrcIP, offer.IP.DstIP)
	}
	wantOption(t, offer, layers.DHCPOptServerID, ip4(gw))
	wantOption(t, offer, layers.DHCPOptSubnetMask, net.CIDRMask(cfg.GuestCIDR.Bits(), 32))
	wantOption(t, offer, layers.DHCPOptRouter, ip4(gw))
	wantOption(t, offer, layers.DHCPOptDNS, append(ip4(dns[0]), ip4(dns[1])...))
	wantOption(t, offer, layers.DHCPOptHostname, []byte("vm-42.example"))
	wantOption(t, offer, layers.DHCPOptInterfaceMTU, be16(1500))
	wantOption(t, offer, layers.DHCPOptLeaseTime, be32(86400))

	// SELECTING: the offer taken.
	ack := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeRequest, Xid: 2, Options: []layers.DHCPOption{
		layers.NewDHCPOption(layers.DHCPOptServerID, ip4(gw)), layers.NewDHCPOption(layers.DHCPOptRequestIP, ip4(guest))}})
	if ack.Type() != layers.DHCPMsgTypeAck || ack.DHCP.YourClientIP.String() != guest.String() {
		t.Fatalf("answer to REQUEST: %s of %s", ack.Type(), ack.DHCP.YourClientIP)
	}
	wantOption(t, ack, layers.DHCPOptLeaseTime, be32(86400))
	// RENEWING: unicast from the guest address, ciaddr set.
	renew := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeRequest, Xid: 3, Src: guest, Dst: gw, CIAddr: guest})
	if renew.Type() != layers.DHCPMsgTypeAck || renew.IP.DstIP.String() != guest.String() {
		t.Errorf("renewal: %s to %s", renew.Type(), renew.IP.DstIP)
	}
	// The broadcast flag gets a broadcast answer.
	bcast := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 4, Broadcast: true})
	if bcast.Eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || bcast.IP.DstIP.String() != "255.255.255.255" {
		t.Errorf("broadcast flag: answer to %s, %s", bcast.Eth.DstMAC, bcast.IP.DstIP)
	}
	// INIT-REBOOT for another address: NAK, broadcast.
	nak := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeRequest, Xid: 5, Options: []layers.DHCPOption{
		layers.NewDHCPOption(layers.DHCPOptRequestIP, []byte{172, 16, 9, 9})}})
	if nak.Type() != layers.DHCPMsgTypeNak || nak.DHCP.YourClientIP.String() != "0.0.0.0" || nak.IP.DstIP.String() != "255.255.255.255" {
		t.Errorf("request for another address: %s of %s to %s", nak.Type(), nak.DHCP.YourClientIP, nak.IP.DstIP)
	}
	noOption(t, nak, layers.DHCPOptLeaseTime)
	// INFORM: configuration without an address or lease time.
	inform := answer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeInform, Xid: 6, Src: guest, Dst: gw, CIAddr: guest})
	if inform.Type() != layers.DHCPMsgTypeAck || inform.DHCP.YourClientIP.String() != "0.0.0.0" || inform.IP.DstIP.String() != guest.String() {
		t.Errorf("inform: %s of %s to %s", inform.Type(), inform.DHCP.YourClientIP, inform.IP.DstIP)
	}
	noOption(t, inform, layers.DHCPOptLeaseTime)
	wantOption(t, inform, layers.DHCPOptRouter, ip4(gw))

	before, _ := p.D.Get(info.ID)
	if before.Datapath.DHCPReplies != 6 {
		t.Errorf("dhcp replies counted: %d, want 6", before.Datapath.DHCPReplies)
	}
	// Not answered: RELEASE, DECLINE (counted apart), a REQUEST for
	// another server, an OFFER from the guest; a request from another MAC
	// or source address; a malformed one.
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeRelease, Xid: 7, Src: guest, Dst: gw, CIAddr: guest})
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDecline, Xid: 8})
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeRequest, Xid: 9, Options: []layers.DHCPOption{
		layers.NewDHCPOption(layers.DHCPOptServerID, []byte{198, 18, 0, 1}), layers.NewDHCPOption(layers.DHCPOptRequestIP, ip4(guest))}})
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeOffer, Xid: 10})
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 11, SrcMAC: net.HardwareAddr{0x06, 0, 0, 0, 0, 0x66}})
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 12, Src: guest.Next()})
	bad := c.Frame(lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 13})
	bad[14+20+8+236] ^= 0xff // the magic cookie
	testpacket.FixChecksums(bad)
	if a, _, err := c.Exchange(bad, 13, 300*time.Millisecond); err == nil {
		t.Errorf("a bad magic cookie answered with %s", a.Type())
	}
	after, _ := p.D.Get(info.ID)
	for reason, want := range map[string]uint64{"dhcp_ignored": 3, "dhcp_declined": 1, "dhcp_not_guest": 2, "dhcp_malformed": 1} {
		if got := after.Datapath.Drops[reason] - before.Datapath.Drops[reason]; got != want {
			t.Errorf("%s: %d counted, want %d (drops %v)", reason, got, want, after.Datapath.Drops)
		}
	}
	if after.Datapath.DHCPReplies != before.Datapath.DHCPReplies {
		t.Errorf("%d more replies counted", after.Datapath.DHCPReplies-before.Datapath.DHCPReplies)
	}

	// A pooled slot answers nothing; its drop is the pool's.
	other := 1 - info.Index
	pooled := dhcpClient(t, p, other)
	pre := p.D.UnattributedDrops()["not_leased"]
	noAnswer(t, pooled, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 20})
	if got := p.D.UnattributedDrops()["not_leased"]; got != pre+1 {
		t.Errorf("pooled slot's DISCOVER: not_leased %d -> %d, want +1", pre, got)
	}
	pooled.Close()

	// The next tenant gets nothing of the last one's: released, leased
	// again with no hostname and the pool's DNS.
	c.Close()
	if err := p.D.Release(info.ID, info.Lease.ID); err != nil {
		t.Fatal(err)
	}
	for {
		next, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if next.Index != info.Index {
			continue // the other slot first; keep it
		}
		c2 := dhcpClient(t, p, next.Index)
		o := answer(t, c2, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 30})
		noOption(t, o, layers.DHCPOptHostname)
		wantOption(t, o, layers.DHCPOptDNS, ip4(netip.MustParseAddr("198.18.0.53")))
		break
	}
}

// With --dhcp=false, tap0 runs nothing: a DISCOVER goes to the slot's
// firewall, which drops its 0.0.0.0 source.
func TestNoDHCP(t *testing.T) {
	cfg := testutil.NewConfig(1)
	p := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: t.TempDir(), NoDHCP: true})
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{}); err != nil {
		t.Fatal(err)
	}
	c := dhcpClient(t, p, 0)
	noAnswer(t, c, lab.DHCPMessage{Type: layers.DHCPMsgTypeDiscover, Xid: 1})
	if out := testutil.Exec(t, cfg.ID(0), "tc", "filter", "show", "dev", "tap0", "ingress"); out != "" {
		t.Errorf("tap0 has filters with --dhcp=false:\n%s", out)
	}
}

// dhclientScript applies a lease as dhclient-script would, without what
// the host's own script would also touch (the host's resolv.conf and
// hostname: `ip netns exec` shares both): it sets the address, MTU and
// default route, then records the lease's variables.
const dhclientScript = `#!/bin/sh
case $reason in
PREINIT) ip link set "$interface" up ;;
BOUND|RENEW|REBIND|REBOOT)
  ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
  [ -z "$new_interface_mtu" ] || ip link set "$interface" mtu "$new_interface_mtu"
  ip route replace default via "${new_routers%% *}" dev "$interface"
  ;;
esac
# Last, in one step: the test reads it as "configured".
env | grep -E '^(reason|interface|new_)' >"$NETSLOT_OUT.tmp" && mv "$NETSLOT_OUT.tmp" "$NETSLOT_OUT.$reason"
exit 0
`

// ISC dhclient, a real client with its own raw socket, gets its lease from
// the tap's program in a guest namespace, and the guest then reaches the
// outside host through the NAT and the VPC host through the tunnel.
func TestDHClientGetsALeaseAndReachesOut(t *testing.T) {
	if _, err := exec.LookPath("dhclient"); err != nil {
		t.Skip("dhclient not installed (scripts/deps.sh installs it)")
	}
	p, fab, tag := datapathPool(t, 2)
	serveOutside(t, fab)
	testutil.StartVTEP(t, fab, testVNI, vpcHost, vpcMAC)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: vpcAttachment(t, fab, testVNI, "10.9.0.5"),
		DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}, Hostname: "dhclient-guest"})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewBareGuestNS(t, tag, p.Config.NetnsPath(info.Index), p.Config)
	vars := runDHClient(t, g.Name, "", "BOUND")
	for k, want := range map[string]string{
		"new_ip_address": p.Config.GuestIP().String(), "new_subnet_mask": "255.255.255.252",
		"new_routers": p.Config.GatewayIP().String(), "new_domain_name_servers": "198.18.0.53",
		"new_host_name": "dhclient-guest", "new_interface_mtu": "1500",
		"new_dhcp_server_identifier": p.Config.GatewayIP().String(), "new_dhcp_lease_time": "86400",
	} {
		if vars[k] != want {
			t.Errorf("%s = %q, want %q (all: %v)", k, vars[k], want, vars)
		}
	}
	if n := ping(t, g.Name, fab.Outside, 3); n == 0 {
		t.Error("the guest configured by dhclient does not reach the outside host")
	}
	if got, err := udpRoundTrip(t, g, netip.AddrPortFrom(vpcHost, 9), "dhclient-guest"); err != nil || !strings.Contains(got, "dhclient-guest") {
		t.Errorf("UDP to the VPC host: %q, %v", got, err)
	}
}

// runDHClient runs ISC dhclient once (-1) on g0 in guest namespace ns,
// with configuration conf (its dhclient.conf; "": none) and
// dhclientScript, until the script has run for reason, and returns the
// lease's variables the script saw then.
func runDHClient(t *testing.T, ns, conf, reason string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte(dhclientScript), 0o755); err != nil {
		t.Fatal(err)
	}
	cf := "/dev/null"
	if conf != "" {
		cf = filepath.Join(dir, "dhclient.conf")
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "lease")
	cmd := exec.Command("ip", "netns", "exec", ns, "dhclient", "-4", "-1", "-d", "-v", "-cf", cf,
		"-sf", script, "-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid"), "-e", "NETSLOT_OUT="+out, "g0")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// dhclient's first DISCOVER leaves at once and the answer takes
	// microseconds: its own retransmits (a few seconds each) are all the
	// deadline has to cover.
	var b []byte
	if !testutil.Wait(20*time.Second, func() bool {
		var err error
		b, err = os.ReadFile(out + "." + reason)
		return err == nil
	}) {
		t.Fatalf("dhclient: no %s in 20 s:\n%s", reason, log.String())
	}
	t.Logf("dhclient: %s after %v", reason, time.Since(start).Round(time.Millisecond))
	vars := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		vars[k] = strings.Trim(v, "'")
	}
	return vars
}

// ISC dhclient, unmodified, sending long options from its configuration
// file: a 60-byte host-name and a 200-byte vendor class (no answer
// before: options were read from their first 256 bytes only), then a
// 255-byte host-name with a client identifier, which the answers echo.
// Each is bound and gets the lease's settings.
func TestDHClientLongOptions(t *testing.T) {
	if _, err := exec.LookPath("dhclient"); err != nil {
		t.Skip("dhclient not installed (scripts/deps.sh installs it)")
	}
	cfg := testutil.NewConfig(1)
	p := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: t.TempDir()})
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{Hostname: "long-options",
		DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}})
	if err != nil {
		t.Fatal(err)
	}
	for k, conf := range []string{
		fmt.Sprintf("send host-name \"%s\";\nsend vendor-class-identifier \"%s\";\n", strings.Repeat("h", 60), strings.Repeat("v", 200)),
		fmt.Sprintf("send host-name \"%s\";\nsend dhcp-client-identifier 1:%s;\n", strings.Repeat("n", 255), cfg.GuestMAC),
	} {
		before, _ := p.D.Get(info.ID)
		g := testutil.NewBareGuestNS(t, fmt.Sprintf("%s%d", cfg.Prefix[1:], k), cfg.NetnsPath(info.Index), cfg)
		vars := runDHClient(t, g.Name, conf, "BOUND")
		for name, want := range map[string]string{
			"new_ip_address": cfg.GuestIP().String(), "new_routers": cfg.GatewayIP().String(),
			"new_host_name": "long-options", "new_domain_name_servers": "198.18.0.53",
		} {
			if vars[name] != want {
				t.Errorf("config %d: %s = %q, want %q (all: %v)", k, name, vars[name], want, vars)
			}
		}
		after, _ := p.D.Get(info.ID)
		if n := after.Datapath.Drops["dhcp_malformed"] - before.Datapath.Drops["dhcp_malformed"]; n != 0 {
			t.Errorf("config %d: %d requests dropped as malformed", k, n)
		}
		g.Close()
	}
}

// A guest whose client finds its address in use declines it (RFC 2131
// 3.1.5): ISC dhclient does when its script fails to apply the lease
// (dhclient-script's address check). A slot has no other address to
// offer: the DECLINE is counted on the slot (dhcp_declined), in what show
// and the per-slot metrics report, and answered by nothing.
func TestDHCPDeclineIsCounted(t *testing.T) {
	if _, err := exec.LookPath("dhclient"); err != nil {
		t.Skip("dhclient not installed (scripts/deps.sh installs it)")
	}
	cfg := testutil.NewConfig(1)
	p := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: t.TempDir()})
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewBareGuestNS(t, cfg.Prefix[1:], cfg.NetnsPath(info.Index), cfg)
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncase $reason in BOUND) exit 1 ;; esac\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", g.Name, "dhclient", "-4", "-1", "-d", "-v", "-cf", "/dev/null",
		"-sf", script, "-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid"), "g0")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	declined := func() uint64 {
		s, err := p.D.Get(info.ID)
		if err != nil {
			t.Fatal(err)
		}
		return s.Datapath.Drops["dhcp_declined"]
	}
	if !testutil.Wait(20*time.Second, func() bool { return declined() > 0 }) {
		t.Fatalf("no DECLINE counted (drops %v):\n%s", func() any { s, _ := p.D.Get(info.ID); return s.Datapath.Drops }(), log.String())
	}
	countersExported(t, p, info.ID)
}

// A renewing client of the guest kernel's own stack (a UDP socket, as
// systemd-networkd renews) on a virtio NIC leaves its checksum to
// offload: its request reaches tap0 with the pseudo-header's sum in the
// check field (CHECKSUM_PARTIAL). It is answered, not taken for a bad
// checksum, and the answer reaches the socket through the guest kernel's
// own checks.
func TestDHCPRenewalWithChecksumOffload(t *testing.T) {
	cfg := testutil.NewConfig(1)
	p := testutil.StartPoolOpts(t, daemon.Options{Config: cfg, StateDir: t.TempDir()})
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	g := testutil.NewGuestNSWith(t, cfg.Prefix[1:], cfg.NetnsPath(info.Index), cfg, lab.GuestOptions{Offload: true})
	conn, err := g.ListenUDP(68)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6, Xid: 0x7e7e,
		ClientIP: cfg.GuestIP().AsSlice(), ClientHWAddr: cfg.GuestMAC, Options: []layers.DHCPOption{
			layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeRequest)})}}
	buf := gopacket.NewSerializeBuffer()
	if err := req.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		t.Fatal(err)
	}
	gw := &net.UDPAddr{IP: cfg.GatewayIP().AsSlice(), Port: 67}
	var ack *layers.DHCPv4
	// The first datagram may wait for the guest's ARP of the gateway: a
	// few tries, each waiting what an answer takes with room to spare.
	for try := 0; try < 5 && ack == nil; try++ {
		if _, err := conn.WriteToUDP(buf.Bytes(), gw); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 2048)
		n, _, err := conn.ReadFromUDP(b)
		if err != nil {
			continue
		}
		d := &layers.DHCPv4{}
		if err := d.DecodeFromBytes(b[:n], gopacket.NilDecodeFeedback); err == nil && d.Xid == req.Xid {
			ack = d
		}
	}
	s, _ := p.D.Get(info.ID)
	if ack == nil {
		t.Fatalf("no answer to the renewal (drops %v)", s.Datapath.Drops)
	}
	if typ := (&lab.DHCPAnswer{DHCP: ack}).Type(); typ != layers.DHCPMsgTypeAck || ack.YourClientIP.String() != cfg.GuestIP().String() {
		t.Errorf("renewal answered with %s of %s", typ, ack.YourClientIP)
	}
	if n := s.Datapath.Drops["dhcp_bad_udp_checksum"]; n != 0 {
		t.Errorf("%d renewals taken for a bad checksum", n)
	}
}
