// Package testpacket builds and checks the packets tests send and receive:
// Internet checksums, Ethernet/IPv4/UDP frames and Geneve payloads. The
// datapath's tests, the daemon's and the lab's helpers share it. It is pure
// (no root, no kernel) and imports nothing of netslot.
package testpacket

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Checksum is the Internet checksum (RFC 1071) of b with sum folded in: 0
// over a header that carries a valid one.
func Checksum(b []byte, sum uint32) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// UDPFrame builds an Ethernet/IPv4/UDP frame with a valid IPv4 checksum
// (UDP checksum 0, which IPv4 allows).
func UDPFrame(src, dst net.HardwareAddr, sip, dip netip.Addr, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17 // UDP
	s, d := sip.As4(), dip.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}

// Geneve prefixes frame with a Geneve header (version 0, no options,
// Ethernet payload) for vni: the UDP payload a VTEP sends.
func Geneve(vni uint32, frame []byte) []byte {
	hdr := []byte{0, 0, 0x65, 0x58, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	return append(hdr, frame...)
}

// IPv4HeaderOK reports whether frame (Ethernet) carries an IPv4 header with
// a valid checksum; frames that hold no whole IPv4 header pass.
func IPv4HeaderOK(frame []byte) bool {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
		return true
	}
	hl := int(frame[14]&0xf) * 4
	if hl < 20 || len(frame) < 14+hl {
		return true
	}
	return Checksum(frame[14:14+hl], 0) == 0
}

// CheckIPv4 checks the IPv4 packet ip (header and payload): its header
// checksum and, for TCP, UDP (unless 0) and ICMP, its L4 checksum.
func CheckIPv4(ip []byte) error {
	if len(ip) < 20 {
		return fmt.Errorf("%d bytes: no IPv4 header", len(ip))
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl {
		return fmt.Errorf("IPv4 header length %d", ihl)
	}
	if c := Checksum(ip[:ihl], 0); c != 0 {
		return fmt.Errorf("bad IPv4 header checksum (residue %#04x)", c)
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || total < ihl {
		return fmt.Errorf("IPv4 total length %d, %d bytes", total, len(ip))
	}
	if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 || binary.BigEndian.Uint16(ip[6:])&0x2000 != 0 {
		return nil // a fragment: its L4 checksum covers the whole datagram
	}
	l4 := ip[ihl:total]
	var pseudo uint32
	for _, w := range [][]byte{ip[12:14], ip[14:16], ip[16:18], ip[18:20]} {
		pseudo += uint32(binary.BigEndian.Uint16(w))
	}
	pseudo += uint32(ip[9]) + uint32(len(l4))
	switch ip[9] {
	case 6: // TCP
		if len(l4) < 20 {
			return fmt.Errorf("TCP segment of %d bytes", len(l4))
		}
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("bad TCP checksum (residue %#04x)", c)
		}
	case 17: // UDP
		if len(l4) < 8 {
			return fmt.Errorf("UDP datagram of %d bytes", len(l4))
		}
		if binary.BigEndian.Uint16(l4[6:]) != 0 {
			if c := Checksum(l4, pseudo); c != 0 {
				return fmt.Errorf("bad UDP checksum (residue %#04x)", c)
			}
		}
	case 1: // ICMP
		if c := Checksum(l4, 0); c != 0 {
			return fmt.Errorf("bad ICMP checksum (residue %#04x)", c)
		}
	}
	return nil
}

// CheckDHCPOptions checks a DHCP message's options field (what follows the
// magic cookie) as a strict parser reads it: every option within the
// field, an End option, and only pad (zero) bytes after it (RFC 2131
// 4.1, RFC 2132 3.1-3.2). It returns the options' codes in order.
func CheckDHCPOptions(opts []byte) ([]byte, error) {
	var codes []byte
	for k := 0; k < len(opts); {
		switch code := opts[k]; code {
		case 0:
			k++
		case 255:
			for j, b := range opts[k+1:] {
				if b != 0 {
					return codes, fmt.Errorf("byte %d after the End option is %#02x, not pad", j, b)
				}
			}
			return codes, nil
		default:
			if k+2 > len(opts) || k+2+int(opts[k+1]) > len(opts) {
				return codes, fmt.Errorf("option %d at %d runs past the field (%d bytes)", code, k, len(opts))
			}
			codes = append(codes, code)
			k += 2 + int(opts[k+1])
		}
	}
	return codes, fmt.Errorf("no End option")
}

// FixChecksums recomputes the IPv4 header checksum and the UDP checksum
// (over its UDP length) of an Ethernet/IPv4/UDP frame whose bytes a test
// edited; the IPv4 header is 20 bytes.
func FixChecksums(f []byte) {
	ip := f[14:34]
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))
	udpLen := int(binary.BigEndian.Uint16(f[38:40]))
	f[40], f[41] = 0, 0
	c := Checksum(f[34:34+udpLen], UDPPseudoSum(f))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(f[40:], c)
}

// UDPPseudoSum is the one's complement sum (not folded) of the IPv4
// pseudo-header of an Ethernet/IPv4/UDP frame's datagram (its UDP
// length): what a sender that leaves the checksum to offload puts in the
// check field, folded.
func UDPPseudoSum(f []byte) uint32 {
	var s uint32
	for k := 26; k < 34; k += 2 {
		s += uint32(binary.BigEndian.Uint16(f[k:]))
	}
	return s + 17 + uint32(binary.BigEndian.Uint16(f[38:40]))
}
