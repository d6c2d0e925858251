package slot

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/dpconst"
)

// MaxInboundRules bounds the inbound rules of one lease (see dpconst,
// shared with the datapath).
const MaxInboundRules = dpconst.InboundRules

// InboundRule opens a guest to new traffic from outside: by default only
// replies to its own flows reach it. Proto is unix.IPPROTO_TCP, _UDP or
// _ICMP; TCP and UDP rules name a destination port range, ICMP ones none
// (any ICMP from Src). Src is where the traffic may come from.
type InboundRule struct {
	Proto          uint8
	PortLo, PortHi uint16
	Src            netip.Prefix
}

var anywhere = netip.MustParsePrefix("0.0.0.0/0")

var protoNames = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": unix.IPPROTO_ICMP}

// ProtoName is the name of an inbound rule's protocol.
func ProtoName(p uint8) string {
	for n, v := range protoNames {
		if v == p {
			return n
		}
	}
	return strconv.Itoa(int(p))
}

// String is the rule as ParseInboundSpec reads it.
func (r InboundRule) String() string {
	s := ProtoName(r.Proto)
	if r.Proto != unix.IPPROTO_ICMP {
		s += "/" + strconv.Itoa(int(r.PortLo))
		if r.PortHi != r.PortLo {
			s += "-" + strconv.Itoa(int(r.PortHi))
		}
	}
	if r.Src != anywhere {
		s += "," + r.Src.String()
	}
	return s
}

// ParseInbound validates one inbound rule given by fields: proto "tcp",
// "udp" or "icmp"; ports lo..hi for TCP and UDP (hi 0: just lo), none for
// ICMP; src an IPv4 CIDR ("": anywhere).
func ParseInbound(proto string, lo, hi uint32, src string) (InboundRule, error) {
	var r InboundRule
	p, ok := protoNames[strings.ToLower(proto)]
	if !ok {
		return r, fmt.Errorf("invalid inbound protocol %q: want tcp, udp or icmp", proto)
	}
	r.Proto = p
	if p == unix.IPPROTO_ICMP {
		if lo != 0 || hi != 0 {
			return r, fmt.Errorf("invalid inbound rule: icmp has no ports")
		}
	} else {
		if hi == 0 {
			hi = lo
		}
		if lo == 0 || lo > 65535 || hi < lo || hi > 65535 {
			return r, fmt.Errorf("invalid inbound ports %d-%d for %s: want 1..65535, low to high", lo, hi, proto)
		}
		r.PortLo, r.PortHi = uint16(lo), uint16(hi)
	}
	r.Src = anywhere
	if src != "" {
		ps, err := ParseCIDRs("inbound source cidr", []string{src})
		if err != nil {
			return r, err
		}
		r.Src = ps[0]
	}
	return r, nil
}

// ParseInboundSpec reads the command-line form of an inbound rule:
// PROTO/PORT[-PORT][,CIDR] for tcp and udp ("tcp/8080",
// "udp/53,198.18.0.0/15"), icmp[,CIDR] for ICMP.
func ParseInboundSpec(spec string) (InboundRule, error) {
	what, src, _ := strings.Cut(spec, ",")
	proto, ports, hasPorts := strings.Cut(what, "/")
	var lo, hi uint64
	if hasPorts {
		l, h, isRange := strings.Cut(ports, "-")
		var err error
		if lo, err = strconv.ParseUint(l, 10, 32); err != nil {
			return InboundRule{}, fmt.Errorf("invalid inbound rule %q: port %q", spec, l)
		}
		if isRange {
			if hi, err = strconv.ParseUint(h, 10, 32); err != nil {
				return InboundRule{}, fmt.Errorf("invalid inbound rule %q: port %q", spec, h)
			}
		}
	} else if !strings.EqualFold(proto, "icmp") {
		return InboundRule{}, fmt.Errorf("invalid inbound rule %q: want PROTO/PORT[-PORT][,CIDR] or icmp[,CIDR]", spec)
	}
	r, err := ParseInbound(proto, uint32(lo), uint32(hi), src)
	if err != nil {
		return r, fmt.Errorf("invalid inbound rule %q: %w", spec, err)
	}
	return r, nil
}

// ParseInboundSpecs reads a lease's inbound rules in ParseInboundSpec's
// form.
func ParseInboundSpecs(specs []string) ([]InboundRule, error) {
	var out []InboundRule
	for _, spec := range specs {
		r, err := ParseInboundSpec(spec)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, CheckInbound(out)
}

// CheckInbound bounds a lease's list of inbound rules.
func CheckInbound(rules []InboundRule) error {
	if len(rules) > MaxInboundRules {
		return fmt.Errorf("too many inbound rules: %d, at most %d", len(rules), MaxInboundRules)
	}
	return nil
}
