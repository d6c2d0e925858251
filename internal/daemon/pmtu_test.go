package daemon_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/testutil"
)

// geneveHost is a VPC host with a real TCP stack behind a real Geneve
// tunnel: a namespace whose tap v0 (the host's NIC, MTU 1500) is bridged
// to a Geneve socket on the fabric's VTEP address by two copy loops, as a
// software VTEP would (this kernel has no geneve driver). Frames from v0
// go to the pool's underlay address with the VNI; Geneve to the VTEP goes
// to v0 without its headers.
func geneveHost(t *testing.T, fab *testutil.Fabric, vni uint32, ip netip.Addr, mac net.HardwareAddr) string {
	t.Helper()
	path := "/run/netns/v" + fab.Name[1:]
	var tapFD int
	err := lab.InNewNS(path, func() error {
		if err := netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			return err
		}
		fd, err := links.AttachTap("v0")
		if err != nil {
			return err
		}
		tapFD = fd
		l, err := netlink.LinkByName("v0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	t.Cleanup(func() { netns.Remove(path) })
	if err != nil {
		t.Fatalf("vpc host namespace: %v", err)
	}
	unix.SetNonblock(tapFD, true)
	tap := os.NewFile(uintptr(tapFD), "v0")
	var conn *net.UDPConn
	if err := testutil.InNS(fab.NetnsPath(), func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.VTEP, 6081)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); tap.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			opt := int(buf[0]&0x3f) * 4
			if 8+opt < n {
				tap.Write(buf[8+opt : n])
			}
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(fab.Underlay, 6081))
		for {
			n, err := tap.Read(buf[8:])
			if err != nil {
				return
			}
			binary.BigEndian.PutUint32(buf[0:], 0x00006558) // version 0, no options, Ethernet
			binary.BigEndian.PutUint32(buf[4:], vni<<8)
			conn.WriteToUDP(buf[:8+n], to)
		}
	}()
	return path
}

// setMTU sets the MTU of link name in the namespace at path ("" for this
// one).
func setMTU(t *testing.T, path, name string, mtu int) {
	t.Helper()
	do := func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetMTU(l, mtu)
	}
	var err error
	if path == "" {
		err = do()
	} else {
		err = testutil.InNS(path, do)
	}
	if err != nil {
		t.Fatalf("mtu of %s: %v", name, err)
	}
}

// A guest with MTU 1500 sends 10 MB over TCP to a VPC host whose own MTU
// is 1500 (it announces an MSS of 1460) through a 1500-byte underlay: its
// full-sized segments do not fit the tunnel, the datapath answers them
// with ICMP fragmentation needed (MTU 1450), the guest's TCP lowers its
// segment size and the transfer completes. (Issue 15, item 6.)
func TestTCPThroughTunnelLearnsPathMTU(t *testing.T) {
	p, fab, tag := datapathPool(t, 1)
	setMTU(t, "", fab.Uplink, 1500)
	setMTU(t, fab.NetnsPath(), "f0", 1500)
	host := geneveHost(t, fab, testVNI, vpcHost, vpcMAC)
	g := testutil.NewGuestNS(t, tag, p.Config.NetnsPath(0), p.Config)
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: vpcAttachment(t, fab, testVNI, "10.9.0.5")})
	if err != nil {
		t.Fatal(err)
	}

	const size = 10 << 20
	var ln net.Listener
	if err := testutil.InNS(host, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(vpcHost, 5001).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()

	c, err := g.Dial("tcp4", netip.AddrPortFrom(vpcHost, 5001))
	if err != nil {
		t.Fatalf("connect to the VPC host: %v", err)
	}
	start := time.Now()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		c.Close()
		s, _ := p.D.Get(info.ID)
		t.Fatalf("send 10 MB: %v after %v; slot counters %+v", err, time.Since(start), s.Datapath)
	}
	c.Close()
	n := <-got
	s, _ := p.D.Get(info.ID)
	if n != size {
		t.Fatalf("the VPC host received %d bytes of %d; slot counters %+v", n, size, s.Datapath)
	}
	t.Logf("10 MB in %v; slot counters %+v", time.Since(start).Round(time.Millisecond), s.Datapath)
	if s.Datapath.ICMPFragNeeded == 0 {
		t.Errorf("no fragmentation needed sent: the path MTU was not what this test is about")
	}
}

// A guest with a virtio-net NIC's offloads sends one UDP segmentation
// offload write (UDP_SEGMENT, 8 datagrams of 1,000 bytes) to a VPC host:
// the datapath encapsulates the GSO packet whole (BPF_F_ADJ_ROOM_FIXED_GSO,
// one program run), each datagram leaves in Geneve of its own, and the
// host's kernel gets all 8. (Issue 15, item 6.)
func TestUDPSegmentationOffloadThroughTheTunnel(t *testing.T) {
	p, fab, tag := datapathPool(t, 1)
	host := geneveHost(t, fab, testVNI, vpcHost, vpcMAC)
	g := testutil.NewGuestNSWith(t, tag, p.Config.NetnsPath(0), p.Config, lab.GuestOptions{Offload: true})
	a := vpcAttachment(t, fab, testVNI, "10.9.0.5")
	a.PeerMAC = vpcMAC // known: a GSO packet is never held for an unknown peer
	info, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a})
	if err != nil {
		t.Fatal(err)
	}
	var rx *net.UDPConn
	if err := testutil.InNS(host, func() error {
		var err error
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(vpcHost, 5002)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	c, err := g.Dial("udp4", netip.AddrPortFrom(vpcHost, 5002))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 1000) })
	if err != nil {
		t.Fatalf("UDP_SEGMENT: %v", err)
	}
	before, _ := p.D.Get(info.ID)
	if _, err := c.Write(make([]byte, 8000)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n := 0
	for ; n < 8; n++ {
		rx.SetReadDeadline(time.Now().Add(3 * time.Second))
		if m, err := rx.Read(buf); err != nil || m != 1000 {
			break
		}
	}
	after, _ := p.D.Get(info.ID)
	if n != 8 {
		t.Fatalf("the VPC host got %d of 8 datagrams; slot counters %+v", n, after.Datapath)
	}
	// One GSO packet through the program (it counts packets as it sees
	// them), not 8: else the guest's kernel segmented, and this test
	// proves nothing.
	if enc := after.Datapath.EncapPackets - before.Datapath.EncapPackets; enc != 1 {
		t.Errorf("%d packets encapsulated for 8 datagrams, want 1 GSO packet", enc)
	}
	if d := after.Datapath.Drops["rewrite"]; d != 0 {
		t.Errorf("%d rewrite drops", d)
	}
}
