package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// The slots' guests: Debian kernels on their slots' taps, one configured
// by its slot's boot_args alone (the kernel's ip=, which its init applies
// as initramfs-tools does: no DHCP, no script of its own), the other by
// DHCP (ip=dhcp: busybox's udhcpc, answered by the tap's program), both
// with the lease's DNS server. Each pings its gateway, reaches the
// outside host through the NAT (ICMP and a UDP echo), then exchanges a
// UDP datagram with the VPC host through Geneve and pings it. UDP goes
// first on purpose: virtio leaves its checksum to offload, and the slot's
// first packet to the VPC becomes the ARP request through the tunnel.
// @VPCIP@ is the guest's VPC address, @CHECK@ what its configuration
// must show, @GUEST@ its address and prefix length, @GATEWAY@ its gateway.
const slotGuestScript = `
ip -4 addr show eth0 | grep -q "inet @GUEST@" || { echo NOT-CONFIGURED; ip addr; exit 9; }
grep -q "nameserver 198.18.0.53" /etc/resolv.conf || { echo NO-DNS; exit 8; }
@CHECK@
ping -c 3 -W 2 @GATEWAY@ || { echo GATEWAY-DOWN; exit 10; }
ping -c 3 -W 2 198.19.1.1 || { echo OUTSIDE-DOWN; exit 11; }
echo "OUTSIDE-UDP $(echo netslot-nat | nc.openbsd -u -w 2 198.19.1.1 7)"
nc.openbsd -u -l -W 1 5001 >/tmp/reply &
i=0
until [ -s /tmp/reply ]; do
  [ $((i % 10)) -ne 0 ] || echo "netslot-udp-hello-@VPCIP@" | nc.openbsd -u -q 0 10.9.0.1 5000
  i=$((i+1)); [ $i -lt 150 ] || { echo NO-UDP-REPLY; exit 14; }
  sleep 0.2
done
echo "UDP-REPLY $(cat /tmp/reply)"
ping -c 3 -W 2 10.9.0.1 || { echo TUNNEL-LOSSY; exit 13; }
`

// What the DHCP guest's configuration must show beyond its address and
// DNS: the MTU of its lease (%d) and its hostname; the kernel's ip= carries
// neither.
const dhcpCheck = `ip link show eth0 | grep -q "mtu %d " || { echo NO-DHCP-MTU; ip link show eth0; exit 7; }
[ "$(hostname)" = dhcp-guest ] || { echo NO-DHCP-HOSTNAME; hostname; exit 6; }`

// vpcGeneveSetup puts a VPC guest on the fabric (198.18.1.2, on vt0's
// link: see vpcGuestTap) with the kernel's geneve driver tunnelling
// 10.9.0.0/24 (its address 10.9.0.1, vni 4242) to the host's underlay
// address, and no static neighbour.
const vpcGeneveSetup = `
ip link set eth0 up
ip addr add 198.18.1.2/24 dev eth0
ip route add default via 198.18.1.1
ip link add gnv0 type geneve id 4242 remote 198.18.0.2
ip addr add 10.9.0.1/24 dev gnv0
ip link set gnv0 up`

// The VPC side: a third Debian kernel in the fabric running the kernel's
// own geneve driver, tunnelling 10.9.0.0/24 to the host's underlay address.
// It answers each slot guest's UDP datagram (to the address it names) and
// keeps IPv6 on, so that its neighbour discovery and MLD reach netslot's
// datapath through the tunnel.
const vpcGuestScript = vpcGeneveSetup + `
echo VPC-READY
answered=""
n=0
while [ $n -lt 20 ]; do
  timeout 150 nc.openbsd -u -l -W 1 5000 >/tmp/got || exit 20
  msg=$(cat /tmp/got)
  to=${msg##*-}
  echo "UDP-GOT $msg"
  echo "$msg back from the vpc" | nc.openbsd -u -q 0 "$to" 5001
  case " $answered " in *" $to "*) ;; *) answered="$answered $to" ;; esac
  set -- $answered
  [ $# -lt 2 ] || break
  n=$((n+1))
done
sleep 3
ip -s link show gnv0
`

func TestRealGuestsThroughNATAndKernelGeneve(t *testing.T) {
	testutil.GuestImage(t) // builds the image first, or skips without qemu
	p, fab, _ := datapathPool(t, 2)
	serveOutside(t, fab)
	vpcGuestTap(t, fab)
	// The VPC guest answers from a socket of its own, to port 5001: new
	// traffic, which the leases let in from the VPC.
	serve, err := slot.ParseInboundSpecs([]string{"udp/5001,10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	dns := []netip.Addr{netip.MustParseAddr("198.18.0.53")}
	lease := func(vpcIP, hostname string) daemon.SlotInfo {
		a, err := slot.ParseAttachment(4242, "198.18.1.2", vpcIP, []string{"10.9.0.0/24"})
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a, Inbound: serve, DNS: dns, Hostname: hostname})
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	info, dhcpInfo := lease("10.9.0.5", ""), lease("10.9.0.6", "dhcp-guest")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vpc := testutil.StartVM(t, testutil.VMConfig{Netns: fab.NetnsPath(), Tap: "vt0", MAC: "52:54:00:09:00:01", Script: vpcGuestScript})
	if _, err := vpc.WaitLine(ctx, "VPC-READY"); err != nil {
		t.Fatalf("vpc guest: %v\n%s", err, vpc.Output())
	}
	script := func(vpcIP, check string) string {
		return strings.NewReplacer("@VPCIP@", vpcIP, "@CHECK@", check,
			"@GUEST@", netip.PrefixFrom(p.Config.GuestIP(), p.Config.GuestCIDR.Bits()).String(),
			"@GATEWAY@", p.Config.GatewayIP().String()).Replace(slotGuestScript)
	}
	_, _, bootArgs := p.D.GuestConfig(info.Lease)
	guest := testutil.StartVM(t, testutil.VMConfig{Netns: p.Config.NetnsPath(info.Index), Tap: slot.TapName,
		MAC: p.Config.GuestMAC.String(), Script: script("10.9.0.5", ":"), BootArgs: bootArgs})
	mtu, _, _ := p.D.GuestConfig(dhcpInfo.Lease)
	dhcpGuest := testutil.StartVM(t, testutil.VMConfig{Netns: p.Config.NetnsPath(dhcpInfo.Index), Tap: slot.TapName,
		MAC: p.Config.GuestMAC.String(), Script: script("10.9.0.6", fmt.Sprintf(dhcpCheck, mtu)), BootArgs: "ip=dhcp"})
	for _, g := range []struct {
		name, vpcIP string
		vm          *testutil.VM
	}{{"boot_args", "10.9.0.5", guest}, {"dhcp", "10.9.0.6", dhcpGuest}} {
		out, status, err := g.vm.Wait(ctx)
		if err != nil || status != 0 {
			t.Fatalf("%s guest: status %d, %v\n%s\n--- vpc guest:\n%s", g.name, status, err, out, vpc.Output())
		}
		if !strings.Contains(out, "OUTSIDE-UDP netslot-nat") {
			t.Errorf("%s guest: no UDP echo from the outside host through the NAT:\n%s", g.name, out)
		}
		if !strings.Contains(out, "UDP-REPLY netslot-udp-hello-"+g.vpcIP+" back from the vpc") {
			t.Errorf("%s guest: no UDP answer from the VPC guest:\n%s", g.name, out)
		}
		t.Logf("%s guest booted in %v", g.name, g.vm.BootTime())
	}
	if out := dhcpGuest.Output(); !strings.Contains(out, "from dhcp") {
		t.Errorf("the dhcp guest's init did not configure it by DHCP:\n%s", out)
	} else {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "netslot-init: dhcp from") || strings.Contains(l, "from dhcp") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
	vout, vstatus, err := vpc.Wait(ctx)
	if err != nil || vstatus != 0 {
		t.Errorf("vpc guest: status %d, %v\n%s", vstatus, err, vout)
	}
	t.Logf("boot: vpc guest %v", vpc.BootTime())
	if got, _ := p.D.Get(dhcpInfo.ID); got.Datapath.DHCPReplies < 2 {
		t.Errorf("dhcp guest's slot answered %d DHCP messages, want its OFFER and ACK", got.Datapath.DHCPReplies)
	}

	got, _ := p.D.Get(info.ID)
	// The slot's first packet to the VPC (UDP, checksum left to offload)
	// went out as an ARP request through the tunnel.
	if dp := got.Datapath; dp.EncapPackets == 0 || dp.DecapPackets == 0 || dp.ARPRequests == 0 {
		t.Errorf("slot counters %+v: want traffic both ways through the tunnel, after an ARP request", dp)
	}
	// The kernel peer's IPv6 (neighbour discovery, MLD) came through the
	// tunnel and was dropped and counted.
	drops := p.D.UnattributedDrops()
	if drops["inner_ipv6"] == 0 {
		t.Errorf("no inner IPv6 dropped; drops %v", drops)
	}
	t.Logf("slot counters %+v; drops outside any slot %v", got.Datapath, drops)
}

// vpcGuestTap makes the tap a VPC guest sits on (vt0, 198.18.1.1/24) in the
// fabric, one routed hop from the uplink: the tunnel's next hop is the
// fabric's gateway. The VPC guest is at 198.18.1.2.
func vpcGuestTap(t *testing.T, fab *testutil.Fabric) {
	t.Helper()
	for _, args := range [][]string{
		{"ip", "tuntap", "add", "vt0", "mode", "tap"},
		{"ip", "addr", "add", "198.18.1.1/24", "dev", "vt0"},
		{"ip", "link", "set", "vt0", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if out, err := fab.Exec(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "exec", fab.Name, "ip", "link", "del", "vt0").CombinedOutput(); err != nil {
			t.Logf("delete vt0: %v: %s", err, out)
		}
	})
}
