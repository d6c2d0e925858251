package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
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
//
// It returns once the tap is operationally up: attaching turns the
// carrier on, but the kernel starts the tap's queue only when its link
// watcher gets to it, and until then what the slot sends to the guest
// (an answer) is dropped. A booting VM asks long after that.
func NewDHCPClient(path, name string, mac net.HardwareAddr) (*DHCPClient, error) {
	f, err := OpenTap(path, name)
	if err != nil {
		return nil, err
	}
	if err := WaitOperUp(path, name, 3*time.Second); err != nil {
		f.Close()
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
// skipped). It returns the answer and how long it took: from the write's
// start to the read that returned the answer, both made directly on the
// descriptor from one locked thread, as a VMM's thread polls its tap (not
// through Go's scheduler, whose hand-offs would be most of what is
// measured).
func (c *DHCPClient) Exchange(frame []byte, xid uint32, wait time.Duration) (*DHCPAnswer, time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	raw, err := c.tap.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var answer *DHCPAnswer
	var took time.Duration
	var ioErr error
	cerr := raw.Control(func(fd uintptr) {
		start := time.Now()
		deadline := start.Add(wait)
		if _, err := unix.Write(int(fd), frame); err != nil {
			ioErr = fmt.Errorf("write to tap: %w", err)
			return
		}
		for {
			n, err := unix.Read(int(fd), c.buf)
			if errors.Is(err, unix.EAGAIN) {
				left := time.Until(deadline)
				if left <= 0 {
					ioErr = ErrNoAnswer
					return
				}
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
					ioErr = fmt.Errorf("poll tap: %w", err)
					return
				}
				continue
			}
			if err != nil {
				ioErr = fmt.Errorf("read from tap: %w", err)
				return
			}
			t := time.Since(start)
			if a := parseDHCPAnswer(c.buf[:n]); a != nil && a.DHCP.Xid == xid {
				answer, took = a, t
				return
			}
		}
	})
	if cerr != nil {
		return nil, 0, cerr
	}
	if ioErr != nil {
		return nil, 0, ioErr
	}
	return answer, took, nil
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
