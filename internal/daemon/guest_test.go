package daemon_test

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// The slot's guest: a Debian kernel on the slot's tap, configured by the
// slot's boot_args alone (the kernel's ip=, which its init applies as
// initramfs-tools does: no DHCP, no script of its own), with the lease's
// DNS server. It pings its gateway, reaches the outside host through the
// NAT (ICMP and a UDP echo), then exchanges a UDP datagram with the VPC host
// through Geneve and pings it. UDP goes first on purpose: virtio leaves its
// checksum to offload, and the slot's first packet to the VPC becomes the
// ARP request through the tunnel.
const slotGuestScript = `
ip -4 addr show eth0 | grep -q "inet 172.16.0.2/30" || { echo NOT-CONFIGURED; ip addr; exit 9; }
grep -q "nameserver 198.18.0.53" /etc/resolv.conf || { echo NO-DNS; exit 8; }
ping -c 3 -W 2 172.16.0.1 || { echo GATEWAY-DOWN; exit 10; }
ping -c 3 -W 2 198.19.1.1 || { echo OUTSIDE-DOWN; exit 11; }
echo "OUTSIDE-UDP $(echo netslot-nat | nc.openbsd -u -w 2 198.19.1.1 7)"
nc.openbsd -u -l -W 1 5001 >/tmp/reply &
i=0
until [ -s /tmp/reply ]; do
  [ $((i % 10)) -ne 0 ] || echo "netslot-udp-hello" | nc.openbsd -u -q 0 10.9.0.1 5000
  i=$((i+1)); [ $i -lt 100 ] || { echo NO-UDP-REPLY; exit 14; }
  sleep 0.2
done
echo "UDP-REPLY $(cat /tmp/reply)"
ping -c 3 -W 2 10.9.0.1 || { echo TUNNEL-LOSSY; exit 13; }
`

// The VPC side: a second Debian kernel in the fabric running the kernel's
// own geneve driver, tunnelling 10.9.0.0/24 to the host's underlay address.
// It answers one UDP datagram and keeps IPv6 on, so that its neighbour
// discovery and MLD reach netslot's datapath through the tunnel.
const vpcGuestScript = `
ip link set eth0 up
ip addr add 198.18.1.2/24 dev eth0
ip route add default via 198.18.1.1
ip link add gnv0 type geneve id 4242 remote 198.18.0.2
ip addr add 10.9.0.1/24 dev gnv0
ip link set gnv0 up
echo VPC-READY
timeout 150 nc.openbsd -u -l -W 1 5000 >/tmp/got || exit 20
echo "UDP-GOT $(cat /tmp/got)"
echo "$(cat /tmp/got) back from the vpc" | nc.openbsd -u -q 0 10.9.0.5 5001
sleep 3
ip -s link show gnv0
`

func TestRealGuestsThroughNATAndKernelGeneve(t *testing.T) {
	testutil.GuestImage(t) // builds the image first, or skips without qemu
	p, fab, _ := datapathPool(t, 2)
	serveOutside(t, fab)
	// The VPC guest sits on a tap in the fabric, one routed hop from the
	// uplink: the tunnel's next hop is the fabric's gateway.
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
	a, err := slot.ParseAttachment(4242, "198.18.1.2", "10.9.0.5", []string{"10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	// The VPC guest answers from a socket of its own, to port 5001: new
	// traffic, which the lease lets in from the VPC.
	serve, err := slot.ParseInboundSpecs([]string{"udp/5001,10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a, Inbound: serve, DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vpc := testutil.StartVM(t, testutil.VMConfig{Netns: fab.NetnsPath(), Tap: "vt0", MAC: "52:54:00:09:00:01", Script: vpcGuestScript})
	if _, err := vpc.WaitLine(ctx, "VPC-READY"); err != nil {
		t.Fatalf("vpc guest: %v\n%s", err, vpc.Output())
	}
	_, _, bootArgs := p.D.GuestConfig(info.Lease)
	guest := testutil.StartVM(t, testutil.VMConfig{Netns: p.Config.NetnsPath(info.Index), Tap: slot.TapName,
		MAC: p.Config.GuestMAC.String(), Script: slotGuestScript, BootArgs: bootArgs})
	out, status, err := guest.Wait(ctx)
	if err != nil || status != 0 {
		t.Fatalf("slot guest: status %d, %v\n%s\n--- vpc guest:\n%s", status, err, out, vpc.Output())
	}
	if !strings.Contains(out, "OUTSIDE-UDP netslot-nat") {
		t.Errorf("no UDP echo from the outside host through the NAT:\n%s", out)
	}
	if !strings.Contains(out, "UDP-REPLY netslot-udp-hello back from the vpc") {
		t.Errorf("no UDP answer from the VPC guest:\n%s", out)
	}
	vout, vstatus, err := vpc.Wait(ctx)
	if err != nil || vstatus != 0 {
		t.Errorf("vpc guest: status %d, %v\n%s", vstatus, err, vout)
	}
	t.Logf("boot: slot guest %v, vpc guest %v", guest.BootTime(), vpc.BootTime())

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
	if out, err := exec.Command("ip", "netns", "exec", fab.Name, "ip", "link", "del", "vt0").CombinedOutput(); err != nil {
		t.Logf("delete vt0: %v: %s", err, out)
	}
}
