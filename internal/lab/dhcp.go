package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// DHCPClient speaks DHCP on a slot's tap0 from the VMM's side of it: it
// writes a guest's DHCP messages into the tap and reads the answers the
// guest would get, timing each exchange there (the write's start to the
// answer's read).
type DHCPClient struct {
	MAC net.HardwareAddr
	tap *os.File
	buf []byte
}

// NewDHCPClient attaches to tap name in the namespace pinned at path, as a
// VMM does, for a guest of MAC mac. The caller closes it.
func NewDHCPClient(path, name string, mac net.HardwareAddr) (*DHCPClient, error) {
	f, err := OpenTap(path, name)
	if err != nil {
		return nil, err
	}
	return &DHCPClient{MAC: mac, tap: f, buf: make([]byte, 65536)}, nil
}

// Close detaches from the tap.
func (c *DHCPClient) Close() error { return c.tap.Close() }

// DHCPMessage is what a client sends: its type, transaction id, options,
// and the fields a client in a given state sets.
type DHCPMessage struct {
	Type      layers.DHCPMsgType
	Xid       uint32
	Broadcast bool       // the BOOTP broadcast flag
	Src       netip.Addr // IPv4 source (invalid: 0.0.0.0)
	Dst       netip.Addr // IPv4 destination (invalid: 255.255.255.255)
	CIAddr    netip.Addr
	SrcMAC    net.HardwareAddr // Ethernet source (nil: the client's)
	Options   []layers.DHCPOption
}

// Frame encodes m as a guest sends it: Ethernet, IPv4, UDP 68 to 67.
func (c *DHCPClient) Frame(m DHCPMessage) []byte {
	src, dst := net.IPv4zero, net.IPv4bcast
	if m.Src.IsValid() {
		src = m.Src.AsSlice()
	}
	if m.Dst.IsValid() {
		dst = m.Dst.AsSlice()
	}
	ciaddr := net.IPv4zero
	if m.CIAddr.IsValid() {
		ciaddr = m.CIAddr.AsSlice()
	}
	smac := m.SrcMAC
	if smac == nil {
		smac = c.MAC
	}
	var flags uint16
	if m.Broadcast {
		flags = 0x8000
	}
	opts := append([]layers.DHCPOption{layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(m.Type)})}, m.Options...)
	opts = append(opts, layers.NewDHCPOption(layers.DHCPOptParamsRequest,
		[]byte{byte(layers.DHCPOptSubnetMask), byte(layers.DHCPOptRouter), byte(layers.DHCPOptDNS),
			byte(layers.DHCPOptHostname), byte(layers.DHCPOptInterfaceMTU)}))
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: dst}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ip)
	d := &layers.DHCPv4{Operation: layers.DHCPOpRequest, HardwareType: layers.LinkTypeEthernet, HardwareLen: 6,
		Xid: m.Xid, Flags: flags, ClientIP: ciaddr, ClientHWAddr: c.MAC, Options: opts}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, d); err != nil {
		panic(fmt.Sprintf("lab: encode dhcp: %v", err)) // fixed layers: cannot fail
	}
	return buf.Bytes()
}

// DHCPAnswer is a server's answer as the guest reads it.
type DHCPAnswer struct {
	Eth  *layers.Ethernet
	IP   *layers.IPv4
	UDP  *layers.UDP
	DHCP *layers.DHCPv4
}

// Type is the answer's message type (0: none given).
func (a *DHCPAnswer) Type() layers.DHCPMsgType {
	if o, ok := a.Option(layers.DHCPOptMessageType); ok && len(o) == 1 {
		return layers.DHCPMsgType(o[0])
	}
	return 0
}

// Option returns the data of the answer's option t.
func (a *DHCPAnswer) Option(t layers.DHCPOpt) ([]byte, bool) {
	for _, o := range a.DHCP.Options {
		if o.Type == t {
			return o.Data, true
		}
	}
	return nil, false
}

// ErrNoAnswer: nothing answered within the wait.
var ErrNoAnswer = errors.New("no dhcp answer")

// Exchange sends frame into the tap and waits up to wait for the DHCP
// answer of transaction xid (other frames the guest would get are
// skipped). It returns the answer and how long it took.
func (c *DHCPClient) Exchange(frame []byte, xid uint32, wait time.Duration) (*DHCPAnswer, time.Duration, error) {
	start := time.Now()
	if _, err := c.tap.Write(frame); err != nil {
		return nil, 0, fmt.Errorf("write to tap: %w", err)
	}
	deadline := start.Add(wait)
	if err := c.tap.SetReadDeadline(deadline); err != nil {
		return nil, 0, err
	}
	for {
		n, err := c.tap.Read(c.buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, 0, ErrNoAnswer
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read from tap: %w", err)
		}
		took := time.Since(start)
		if a := parseDHCPAnswer(c.buf[:n]); a != nil && a.DHCP.Xid == xid {
			return a, took, nil
		}
	}
}

func parseDHCPAnswer(b []byte) *DHCPAnswer {
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	var a DHCPAnswer
	var ok bool
	if a.Eth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		return nil
	}
	if a.IP, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		return nil
	}
	if a.UDP, ok = p.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok || a.UDP.SrcPort != 67 || a.UDP.DstPort != 68 {
		return nil
	}
	if a.DHCP, ok = p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4); !ok || a.DHCP.Operation != layers.DHCPOpReply {
		return nil
	}
	return &a
}
