// Package slot holds the pure arithmetic of a netslot pool: names, addresses
// and MACs of every slot, derived from the pool configuration and the slot's
// index. Nothing here touches the kernel.
package slot

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/netslot/netslot/internal/dpconst"
)

// Names and addresses that are the same in every slot.
const (
	TapName  = "tap0" // the VM's device inside the slot namespace
	VethName = "eth0" // the slot's uplink inside the slot namespace
	// IfaceID is the Firecracker iface_id of the slot's interface.
	IfaceID = "eth0"
	// NetnsDir is where iproute2 and Firecracker's jailer look for named namespaces.
	NetnsDir = "/run/netns"
	// maxIfName is IFNAMSIZ-1.
	maxIfName = 15
)

// HostGateway is the link-local next hop a slot uses to reach the root
// namespace. It is resolved by a permanent neighbour entry pointing at the
// root-side veth's MAC, so no address is needed on the root side.
var HostGateway = netip.MustParseAddr("169.254.1.1")

// Defaults of the guest-facing side, identical in every slot.
var (
	DefaultGuestCIDR = netip.MustParsePrefix("172.16.0.0/30")
	DefaultSlotCIDR  = netip.MustParsePrefix("100.64.0.0/16")
	DefaultGuestMAC  = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x02}
	DefaultTapMAC    = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x01}
)

// reserved are ranges no slot or guest address may come from: "this
// network", loopback, link-local (the slot's next hop lives there),
// multicast and the reserved class E.
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// MaxVNI is the largest 24-bit Geneve VNI.
const MaxVNI = 1<<24 - 1

// DummyVNIBase starts the VNIs reserved for pooled slots: slot i carries
// DummyVNIBase+i while no VPC is attached, and no attachment may use them
// (see dpconst, shared with the datapath).
const DummyVNIBase = dpconst.DummyVNIBase

// MaxAttachVNI is the largest VNI an attachment may use.
const MaxAttachVNI = DummyVNIBase - 1

// MaxSlots is the largest pool: each slot carries its own dummy VNI.
const MaxSlots = MaxVNI - DummyVNIBase + 1

// prefixRE: a prefix must not end in a digit, so that "<prefix><index>"
// names of two pools can never collide ("ab1"+"0" vs "ab"+"10").
var prefixRE = regexp.MustCompile(`^[a-z]([a-z0-9]{0,6}[a-z])?$`)

// ValidPrefix reports whether p may name a pool.
func ValidPrefix(p string) bool { return prefixRE.MatchString(p) }

// Config is the shape of a pool. Everything about slot i follows from it.
type Config struct {
	Prefix    string           // names every kernel object of the pool
	Count     int              // number of slots
	SlotCIDR  netip.Prefix     // one unique slot address per slot
	GuestCIDR netip.Prefix     // guest-facing network, same in every slot
	GuestMAC  net.HardwareAddr // same in every slot
	TapMAC    net.HardwareAddr // MAC of tap0, same in every slot
}

// DefaultConfig returns a pool of count slots with the default addressing.
func DefaultConfig(prefix string, count int) Config {
	return Config{
		Prefix:    prefix,
		Count:     count,
		SlotCIDR:  DefaultSlotCIDR,
		GuestCIDR: DefaultGuestCIDR,
		GuestMAC:  DefaultGuestMAC,
		TapMAC:    DefaultTapMAC,
	}
}

// ParseConfig builds a pool's configuration from netslotd's flags and
// validates it.
func ParseConfig(prefix string, count int, slotCIDR, guestCIDR, guestMAC string) (Config, error) {
	c := DefaultConfig(prefix, count)
	var err error
	if c.SlotCIDR, err = netip.ParsePrefix(slotCIDR); err != nil {
		return c, fmt.Errorf("invalid --slot-cidr %q: %w", slotCIDR, err)
	}
	if c.GuestCIDR, err = netip.ParsePrefix(guestCIDR); err != nil {
		return c, fmt.Errorf("invalid --guest-cidr %q: %w", guestCIDR, err)
	}
	if c.GuestMAC, err = net.ParseMAC(guestMAC); err != nil {
		return c, fmt.Errorf("invalid --guest-mac %q: %w", guestMAC, err)
	}
	return c, c.Validate()
}

// Validate reports the first problem with c, in words an operator can act on.
func (c Config) Validate() error {
	if !ValidPrefix(c.Prefix) {
		return fmt.Errorf("invalid prefix %q: want 1-8 lowercase letters or digits, starting and ending with a letter", c.Prefix)
	}
	if c.Count < 1 || c.Count > MaxSlots {
		return fmt.Errorf("invalid slot count %d: want 1 to %d (each pooled slot carries its own dummy vni)", c.Count, MaxSlots)
	}
	if n := len(c.HostVeth(c.Count - 1)); n > maxIfName {
		return fmt.Errorf("slot count %d with prefix %q gives interface names of %d characters, the kernel allows %d", c.Count, c.Prefix, n, maxIfName)
	}
	if !c.SlotCIDR.IsValid() || !c.SlotCIDR.Addr().Is4() {
		return errors.New("invalid slot cidr: want an IPv4 prefix such as 100.64.0.0/16")
	}
	if c.SlotCIDR != c.SlotCIDR.Masked() {
		return fmt.Errorf("invalid slot cidr %s: host bits set (did you mean %s?)", c.SlotCIDR, c.SlotCIDR.Masked())
	}
	for _, r := range reserved {
		if c.SlotCIDR.Overlaps(r) || c.GuestCIDR.Overlaps(r) {
			return fmt.Errorf("slot cidr %s or guest cidr %s overlaps reserved range %s", c.SlotCIDR, c.GuestCIDR, r)
		}
	}
	if capa := Capacity(c.SlotCIDR); c.Count > capa {
		return fmt.Errorf("slot cidr %s holds %d slot addresses, fewer than the %d slots asked for", c.SlotCIDR, capa, c.Count)
	}
	if !c.GuestCIDR.IsValid() || !c.GuestCIDR.Addr().Is4() || c.GuestCIDR.Bits() > 30 {
		return errors.New("invalid guest cidr: want an IPv4 prefix of /30 or shorter")
	}
	if c.GuestCIDR != c.GuestCIDR.Masked() {
		return fmt.Errorf("invalid guest cidr %s: host bits set", c.GuestCIDR)
	}
	if c.GuestCIDR.Overlaps(c.SlotCIDR) {
		return fmt.Errorf("guest cidr %s overlaps slot cidr %s", c.GuestCIDR, c.SlotCIDR)
	}
	for name, mac := range map[string]net.HardwareAddr{"guest": c.GuestMAC, "tap": c.TapMAC} {
		if len(mac) != 6 || mac[0]&1 != 0 || isZero(mac) {
			return fmt.Errorf("invalid %s mac %q: want a unicast Ethernet address", name, mac)
		}
	}
	if c.GuestMAC.String() == c.TapMAC.String() {
		return errors.New("guest mac and tap mac must differ")
	}
	return nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Capacity is the number of slot addresses in p: every address but the
// network and broadcast addresses (for prefixes shorter than /31).
func Capacity(p netip.Prefix) int {
	host := 32 - p.Bits()
	if host >= 31 {
		return 1<<31 - 1
	}
	n := 1 << host
	if host >= 2 {
		n -= 2
	}
	return n
}

// GatewayIP is the address of tap0: the first host of the guest network.
func (c Config) GatewayIP() netip.Addr { return c.GuestCIDR.Addr().Next() }

// GuestMTU is the MTU of every slot's tap0 and eth0: what a guest may send
// at most, before its path (the uplink, a tunnel) takes its share.
const GuestMTU = 1500

// BootArgs is the kernel's ip= argument that configures the guest's eth0
// with no DHCP (Documentation/admin-guide/nfs/nfsroot.rst: client, server,
// gateway, netmask, hostname, device, autoconf, dns0, dns1): the same in
// every slot but for the DNS servers, of which the kernel takes two.
func (c Config) BootArgs(dns []netip.Addr) string {
	mask := net.IP(net.CIDRMask(c.GuestCIDR.Bits(), 32)).String()
	s := fmt.Sprintf("ip=%s::%s:%s::eth0:off", c.GuestIP(), c.GatewayIP(), mask)
	for _, a := range dns[:min(len(dns), 2)] {
		s += ":" + a.String()
	}
	return s
}

// GuestIP is the guest's address: the second host of the guest network.
func (c Config) GuestIP() netip.Addr { return c.GatewayIP().Next() }

// ID is the public identifier of slot i, also its namespace name.
func (c Config) ID(i int) string { return c.Prefix + "-" + strconv.Itoa(i) }

// NetnsPath is where slot i's namespace is pinned.
func (c Config) NetnsPath(i int) string { return NetnsDir + "/" + c.ID(i) }

// HostVeth is the root-namespace end of slot i's veth pair.
func (c Config) HostVeth(i int) string { return c.Prefix + strconv.Itoa(i) }

// SlotIP is slot i's unique address, the one its traffic carries outside.
func (c Config) SlotIP(i int) netip.Addr {
	a := c.SlotCIDR.Addr()
	if 32-c.SlotCIDR.Bits() >= 2 {
		a = a.Next() // skip the network address
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// poolTag is one byte derived from the prefix, so that MACs of two pools on
// one host differ (except for 1 pair of prefixes in 256).
func (c Config) poolTag() byte {
	h := fnv.New32a()
	h.Write([]byte(c.Prefix))
	return byte(h.Sum32())
}

func (c Config) mac(i int, role byte) net.HardwareAddr {
	return net.HardwareAddr{0x02, c.poolTag(), byte(i >> 16), byte(i >> 8), byte(i), role}
}

// HostVethMAC is the MAC of slot i's root-side veth.
func (c Config) HostVethMAC(i int) net.HardwareAddr { return c.mac(i, 0x01) }

// SlotVethMAC is the MAC of eth0 inside slot i.
func (c Config) SlotVethMAC(i int) net.HardwareAddr { return c.mac(i, 0x02) }

// VPCMAC is slot i's MAC inside its VPC: the inner source of what it sends
// through the tunnel and what it answers ARP with.
func (c Config) VPCMAC(i int) net.HardwareAddr { return c.mac(i, 0x03) }

// ParseID returns the index of a slot id of this pool.
func (c Config) ParseID(id string) (int, error) {
	rest, ok := strings.CutPrefix(id, c.Prefix+"-")
	if !ok {
		return 0, fmt.Errorf("unknown slot id %q: not of pool %q", id, c.Prefix)
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || i >= c.Count || strconv.Itoa(i) != rest {
		return 0, fmt.Errorf("unknown slot id %q", id)
	}
	return i, nil
}

// IndexOfName parses name as "<prefix><sep><index>" and reports the index,
// whether or not it is inside the pool. ok is false for names that are not of
// this form (for example other devices that happen to share the prefix).
func (c Config) IndexOfName(name, sep string) (idx int, ok bool) {
	rest, found := strings.CutPrefix(name, c.Prefix+sep)
	if !found || rest == "" {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || strconv.Itoa(i) != rest {
		return 0, false
	}
	return i, true
}
