package slot

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/netslot/netslot/internal/dpconst"
)

// Attachment is a slot's connection to a customer VPC through Geneve.
type Attachment struct {
	VNI        uint32
	RemoteVTEP netip.Addr
	VPCIP      netip.Addr
	VPCCIDRs   []netip.Prefix
	// PeerMAC is the VPC side's MAC (its gateway, or the remote geneve
	// device); nil to learn it by ARP through the tunnel.
	PeerMAC net.HardwareAddr
}

// Lease is what a tenant asked for when it acquired a slot.
type Lease struct {
	ID         string // random, names this lease (see NewLeaseID)
	Owner      string
	AcquiredNs int64
	VPC        *Attachment
	Egress     Egress
	Inbound    []InboundRule // new traffic from outside the guest accepts
	// Key is the acquire's idempotency key ("": none): while this lease
	// lives, an acquire with the same key returns it.
	Key string
	// DNS are the guest's DNS servers for this lease (none: the pool's).
	DNS []netip.Addr
	// Hostname is what the guest's DHCP answers name it ("": nothing).
	Hostname string
	// TapOwner is who tap0 belongs to while the lease lives (nil: root,
	// as in the pool).
	TapOwner *TapOwner
}

// TapOwner is the user and group a leased slot's tap0 belongs to, those a
// jailed VMM runs as (Firecracker's jailer: --uid, --gid). The kernel lets
// a process attach to a tap that has an owner and a group if it has
// CAP_NET_ADMIN, or if its effective uid is the owner and the group is
// among its groups; either alone is refused. A pooled slot's tap belongs
// to root (uid 0, gid 0): see docs/design.md, "Who may attach to tap0".
type TapOwner struct {
	UID, GID uint32
}

func (o TapOwner) String() string { return fmt.Sprintf("uid=%d gid=%d", o.UID, o.GID) }

// NoID is the uid and gid -1 of the kernel's interfaces: none. The kernel
// refuses it as a tap's owner or group.
const NoID = ^uint32(0)

// ValidateTapOwner checks a tap owner asked for. Both ids are needed (the
// jailer takes both), neither may be -1 (the kernel has no such owner) or
// 0: root's is the pooled state, which a lease without a tap owner keeps,
// and root is what a jailed VMM drops.
func ValidateTapOwner(o TapOwner) error {
	for _, x := range []struct {
		what string
		id   uint32
	}{{"uid", o.UID}, {"gid", o.GID}} {
		switch x.id {
		case 0:
			return fmt.Errorf("invalid tap %s 0: tap0 is root's already; give the unprivileged %s the VMM runs as", x.what, x.what)
		case NoID:
			return fmt.Errorf("invalid tap %s %d: that is -1, no %s; give the %s the VMM runs as", x.what, x.id, x.what, x.what)
		}
	}
	return nil
}

// Egress is where a guest may send, within what the pool denies to every
// guest whatever its policy (see the daemon's deny set).
type Egress struct {
	// Allow lists the destinations; empty with DenyAll false means no
	// restriction.
	Allow []netip.Prefix
	// DenyAll: nowhere (an empty allow-list that says so).
	DenyAll bool
}

// Restricted reports whether e limits the guest at all.
func (e Egress) Restricted() bool { return e.DenyAll || len(e.Allow) > 0 }

// NewLeaseID returns a random lease id.
func NewLeaseID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// maxListLen bounds the CIDR lists of one request: each becomes a set
// element in the slot's firewall.
const maxListLen = 256

// maxOwnerLen bounds the free-form owner label.
const maxOwnerLen = 256

// ParseAttachment validates the strings of a VPC attachment.
func ParseAttachment(vni uint32, vtep, vpcIP string, cidrs []string) (*Attachment, error) {
	if vni == 0 || vni > MaxAttachVNI {
		return nil, fmt.Errorf("invalid vni %d: want 1..%d (%d and up are reserved for pooled slots)", vni, MaxAttachVNI, DummyVNIBase)
	}
	a := &Attachment{VNI: vni}
	var err error
	if a.RemoteVTEP, err = parseIPv4("remote vtep", vtep); err != nil {
		return nil, err
	}
	if !a.RemoteVTEP.IsGlobalUnicast() && !a.RemoteVTEP.IsPrivate() {
		return nil, fmt.Errorf("invalid remote vtep %s: want a unicast address", a.RemoteVTEP)
	}
	if a.VPCIP, err = parseIPv4("vpc ip", vpcIP); err != nil {
		return nil, err
	}
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("vpc attachment needs at least one vpc cidr")
	}
	if a.VPCCIDRs, err = ParseCIDRs("vpc cidr", cidrs); err != nil {
		return nil, err
	}
	return a, nil
}

// CheckAttachment refuses an attachment that parses but cannot work on
// this pool: a VPC address that is not unicast or lies outside every VPC
// CIDR, a VTEP or VPC address in the slot CIDR or the guest network (a
// VTEP at a slot's address would hand one slot's VPC traffic to another),
// or a VTEP at the underlay address. New leases are checked; stored ones
// are taken as they were accepted.
func (c Config) CheckAttachment(a *Attachment, underlay netip.Addr) error {
	if !a.VPCIP.IsGlobalUnicast() { // private ranges included
		return fmt.Errorf("invalid vpc ip %s: want a unicast address", a.VPCIP)
	}
	if !slices.ContainsFunc(a.VPCCIDRs, func(p netip.Prefix) bool { return p.Contains(a.VPCIP) }) {
		return fmt.Errorf("invalid vpc ip %s: not inside any of the vpc cidrs %v", a.VPCIP, a.VPCCIDRs)
	}
	for _, x := range []struct {
		what string
		ip   netip.Addr
	}{{"remote vtep", a.RemoteVTEP}, {"vpc ip", a.VPCIP}} {
		switch {
		case c.SlotCIDR.Contains(x.ip):
			return fmt.Errorf("invalid %s %s: inside the pool's slot cidr %s", x.what, x.ip, c.SlotCIDR)
		case c.GuestCIDR.Contains(x.ip):
			return fmt.Errorf("invalid %s %s: inside the guest network %s", x.what, x.ip, c.GuestCIDR)
		}
	}
	if a.RemoteVTEP == underlay {
		return fmt.Errorf("invalid remote vtep %s: it is this host's underlay address", a.RemoteVTEP)
	}
	return nil
}

// ParsePeerMAC validates the optional VPC peer MAC of an attachment.
func ParsePeerMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("invalid peer mac %q: want a 6-byte MAC", s)
	}
	if m[0]&1 != 0 || isZero(m) {
		return nil, fmt.Errorf("invalid peer mac %q: want a unicast MAC", s)
	}
	return m, nil
}

// ParseCIDRs validates a list of IPv4 CIDRs (what names the list in errors).
func ParseCIDRs(what string, in []string) ([]netip.Prefix, error) {
	if len(in) > maxListLen {
		return nil, fmt.Errorf("too many %ss: %d, at most %d", what, len(in), maxListLen)
	}
	out := make([]netip.Prefix, 0, len(in))
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", what, s, err)
		}
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("invalid %s %q: want IPv4", what, s)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("invalid %s %q: host bits set (did you mean %s?)", what, s, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func parseIPv4(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid %s %q: %w", what, s, err)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("invalid %s %q: want IPv4", what, s)
	}
	return a, nil
}

// MaxDNS bounds the DNS servers given to a guest (what a DHCP answer
// carries).
const MaxDNS = dpconst.DHCPDNSMax

// MaxHostname bounds a lease's hostname.
const MaxHostname = dpconst.DHCPHostnameMax

// CheckHostname checks a guest's hostname (option 12 of its DHCP
// answers): empty (none), or dot-separated labels of letters, digits and
// hyphens, none starting or ending with a hyphen (RFC 1123), MaxHostname
// bytes at most in all.
func CheckHostname(name string) error {
	if name == "" {
		return nil
	}
	if len(name) > MaxHostname {
		return fmt.Errorf("hostname of %d bytes: at most %d", len(name), MaxHostname)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname %q: empty label, or one that starts or ends with '-'", name)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("hostname %q: only letters, digits, '-' and '.'", name)
			}
		}
	}
	return nil
}

// ParseDNS parses DNS server addresses (IPv4, at most MaxDNS).
func ParseDNS(ss []string) ([]netip.Addr, error) {
	if len(ss) > MaxDNS {
		return nil, fmt.Errorf("%d dns servers: at most %d", len(ss), MaxDNS)
	}
	var out []netip.Addr
	for _, s := range ss {
		a, err := parseIPv4("dns server", s)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// maxKeyLen bounds an acquire's idempotency key.
const maxKeyLen = 128

// ValidateKey checks an acquire's idempotency key: empty (none), or 1-128
// printable ASCII characters.
func ValidateKey(key string) error {
	if len(key) > maxKeyLen {
		return fmt.Errorf("request key too long: %d bytes, at most %d", len(key), maxKeyLen)
	}
	for _, c := range []byte(key) {
		if c < 0x21 || c > 0x7e {
			return fmt.Errorf("request key %q: only printable ASCII without spaces", key)
		}
	}
	return nil
}

// ValidateOwner checks the free-form owner label of a lease.
func ValidateOwner(owner string) error {
	if len(owner) > maxOwnerLen {
		return fmt.Errorf("owner label too long: %d bytes, at most %d", len(owner), maxOwnerLen)
	}
	return nil
}
