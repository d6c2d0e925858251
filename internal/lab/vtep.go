package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/testpacket"
)

// VTEP is a VPC host behind a remote tunnel endpoint, in the fabric: it
// listens for Geneve on the fabric's VTEP address and answers, through the
// tunnel, ARP requests for its address, ICMP echo requests and UDP
// datagrams (echoed back). It is a userspace stand-in for the kernel's
// geneve driver, which this host lacks (the QEMU tests use the real one).
type VTEP struct {
	VNI  uint32
	IP   netip.Addr
	MAC  net.HardwareAddr
	conn *net.UDPConn

	// arpDelay delays the VTEP's ARP replies (nanoseconds): a peer that
	// answers slowly.
	arpDelay atomic.Int64

	mu    sync.Mutex
	seen  []VTEPFrame
	wg    sync.WaitGroup
	close sync.Once
}

// VTEPFrame is a Geneve packet the VTEP received.
type VTEPFrame struct {
	From     netip.AddrPort
	VNI      uint32
	InnerSrc netip.Addr // invalid for non-IPv4 inner frames
	InnerDst netip.Addr
	SrcMAC   net.HardwareAddr
	DstMAC   net.HardwareAddr
	ARP      bool
}

// StartVTEP starts a VTEP for vni with VPC address ip in fabric f.
func StartVTEP(f *Fabric, vni uint32, ip netip.Addr, mac net.HardwareAddr) (*VTEP, error) {
	v := &VTEP{VNI: vni, IP: ip, MAC: mac}
	err := InNS(f.NetnsPath(), func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.VTEP, 6081)))
		v.conn = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vtep: %w", err)
	}
	v.wg.Add(1)
	go v.serve()
	return v, nil
}

// Close stops the VTEP.
func (v *VTEP) Close() {
	v.close.Do(func() {
		v.conn.Close()
		v.wg.Wait()
	})
}

// SetARPDelay makes the VTEP answer ARP requests after d, not at once.
func (v *VTEP) SetARPDelay(d time.Duration) { v.arpDelay.Store(int64(d)) }

// Seen returns the Geneve packets received so far.
func (v *VTEP) Seen() []VTEPFrame {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]VTEPFrame(nil), v.seen...)
}

func (v *VTEP) serve() {
	defer v.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := v.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || n < 8 {
			continue
		}
		optLen := int(buf[0]&0x3f) * 4
		if buf[0]>>6 != 0 || binary.BigEndian.Uint16(buf[2:]) != 0x6558 || n < 8+optLen+14 {
			continue
		}
		vni := uint32(buf[4])<<16 | uint32(buf[5])<<8 | uint32(buf[6])
		inner := gopacket.NewPacket(append([]byte(nil), buf[8+optLen:n]...), layers.LayerTypeEthernet, gopacket.Default)
		eth, _ := inner.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if eth == nil {
			continue
		}
		fr := VTEPFrame{From: from, VNI: vni, SrcMAC: eth.SrcMAC, DstMAC: eth.DstMAC}
		if ip4, ok := inner.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			fr.InnerSrc = netip.AddrFrom4([4]byte(ip4.SrcIP.To4()))
			fr.InnerDst = netip.AddrFrom4([4]byte(ip4.DstIP.To4()))
		}
		_, fr.ARP = inner.Layer(layers.LayerTypeARP).(*layers.ARP)
		v.mu.Lock()
		v.seen = append(v.seen, fr)
		v.mu.Unlock()
		if vni != v.VNI {
			continue
		}
		if reply := v.answer(inner, eth); reply != nil {
			to, pkt := netip.AddrPortFrom(from.Addr(), 6081), testpacket.Geneve(vni, reply)
			if d := time.Duration(v.arpDelay.Load()); fr.ARP && d > 0 {
				v.wg.Add(1)
				time.AfterFunc(d, func() { defer v.wg.Done(); v.conn.WriteToUDPAddrPort(pkt, to) })
				continue
			}
			v.conn.WriteToUDPAddrPort(pkt, to)
		}
	}
}

// answer returns the inner frame to send back, or nil.
func (v *VTEP) answer(p gopacket.Packet, eth *layers.Ethernet) []byte {
	ethOut := &layers.Ethernet{SrcMAC: v.MAC, DstMAC: eth.SrcMAC}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	buf := gopacket.NewSerializeBuffer()
	if arp, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		if arp.Operation != layers.ARPRequest || netip.AddrFrom4([4]byte(arp.DstProtAddress)) != v.IP {
			return nil
		}
		ethOut.EthernetType = layers.EthernetTypeARP
		reply := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPReply, SourceHwAddress: v.MAC, SourceProtAddress: v.IP.AsSlice(),
			DstHwAddress: arp.SourceHwAddress, DstProtAddress: arp.SourceProtAddress}
		if gopacket.SerializeLayers(buf, opts, ethOut, reply) != nil {
			return nil
		}
		return buf.Bytes()
	}
	ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok || netip.AddrFrom4([4]byte(ip4.DstIP.To4())) != v.IP {
		return nil
	}
	ethOut.EthernetType = layers.EthernetTypeIPv4
	ipOut := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, SrcIP: ip4.DstIP, DstIP: ip4.SrcIP, Protocol: ip4.Protocol}
	var err error
	switch {
	case p.Layer(layers.LayerTypeICMPv4) != nil:
		icmp := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if icmp.TypeCode.Type() != layers.ICMPv4TypeEchoRequest {
			return nil
		}
		out := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoReply, 0), Id: icmp.Id, Seq: icmp.Seq}
		err = gopacket.SerializeLayers(buf, opts, ethOut, ipOut, out, gopacket.Payload(icmp.Payload))
	case p.Layer(layers.LayerTypeUDP) != nil:
		udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		out := &layers.UDP{SrcPort: udp.DstPort, DstPort: udp.SrcPort}
		out.SetNetworkLayerForChecksum(ipOut)
		err = gopacket.SerializeLayers(buf, opts, ethOut, ipOut, out, gopacket.Payload(udp.Payload))
	default:
		return nil
	}
	if err != nil {
		return nil
	}
	return buf.Bytes()
}
