// Package bench measures netslot against the design it replaces, side by
// side in one run, on real namespaces, devices and packets.
package bench

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/netslot/netslot/internal/netns"
)

// Baseline is the design a pre-built pool replaces, built the way it was run: a
// namespace per slot whose guest traffic is MASQUERADEd onto the slot's
// veth, MASQUERADEd again onto the uplink in the root namespace (stateful
// NAT twice, conntrack on in both namespaces), and about 30 iptables rules
// per slot in the root namespace, which every packet walks in order.
//
// Rules are written for Slots slots; namespaces and devices exist for the
// slots in Real only (the per-packet cost is the rule walk, which the
// rules alone reproduce; creating thousands of baseline namespaces would
// measure nothing more here).
type Baseline struct {
	Tag      string // names everything: namespaces "b<tag>-<i>", veths "b<tag>v<i>", chains "B<tag>-*"
	Uplink   string
	Gateway  netip.Addr // next hop on the uplink
	Slots    int
	Real     []int
	Table    int // routing table for the transit range
	guestNet netip.Prefix
	// iptables tables (filter, nat) of the root namespace that Create
	// found already there: the others are its own, removed with it.
	hadTables map[string]bool
}

// iptablesTables are the root namespace's tables the baseline writes to.
var iptablesTables = []string{"filter", "nat"}

// RulesPerSlot is the number of root-namespace rules each baseline slot
// adds (Lambda's description: "~30 rules x 4,000 slots").
const RulesPerSlot = 30

// transit is the range of the baseline's per-slot /30 veth subnets.
var transit = netip.MustParsePrefix("10.200.0.0/16")

func (b *Baseline) veth(i int) string { return fmt.Sprintf("b%sv%d", b.Tag, i) }

// NetnsName is baseline slot i's namespace.
func (b *Baseline) NetnsName(i int) string { return fmt.Sprintf("b%s-%d", b.Tag, i) }

// NetnsPath is baseline slot i's namespace pin.
func (b *Baseline) NetnsPath(i int) string { return "/run/netns/" + b.NetnsName(i) }

func (b *Baseline) chain(kind string) string { return "B" + strings.ToUpper(b.Tag) + "-" + kind }

// subnet returns slot i's transit /30: root end .1, slot end .2.
func subnet(i int) (root, slot netip.Addr, p netip.Prefix) {
	base := transit.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 + uint32(i)*4
	a := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return a.Next(), a.Next().Next(), netip.PrefixFrom(a, 30)
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func inNS(ns string, args ...string) error {
	return sh(append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// Create builds the baseline's rules and its real slots.
func (b *Baseline) Create(guest netip.Prefix) error {
	if b.Slots*4 > 1<<(32-transit.Bits()) {
		return fmt.Errorf("baseline: %d slots do not fit %s", b.Slots, transit)
	}
	b.guestNet = guest
	b.hadTables = map[string]bool{}
	for _, t := range iptablesTables {
		b.hadTables[t] = sh("nft", "list", "table", "ip", t) == nil
	}
	if err := netns.EnsureDir("/run/netns"); err != nil {
		return err
	}
	for _, i := range b.Real {
		if err := b.createSlot(i); err != nil {
			return fmt.Errorf("baseline slot %d: %w", i, err)
		}
	}
	// Replies come in on the uplink and are forwarded to the slot veths.
	if err := sh("sysctl", "-qw", "net.ipv4.conf."+b.Uplink+".forwarding=1"); err != nil {
		return err
	}
	if err := sh("ip", "route", "replace", "default", "via", b.Gateway.String(), "dev", b.Uplink, "table", strconv.Itoa(b.Table)); err != nil {
		return err
	}
	if err := sh("ip", "rule", "add", "from", transit.String(), "lookup", strconv.Itoa(b.Table), "pref", "1001"); err != nil {
		return err
	}
	return b.writeRules()
}

func (b *Baseline) createSlot(i int) error {
	ns, v := b.NetnsName(i), b.veth(i)
	root, slotEnd, _ := subnet(i)
	gw := b.guestNet.Addr().Next()
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "addr", "add", root.String() + "/30", "dev", v},
		{"ip", "link", "set", v, "up"},
		{"sysctl", "-qw", "net.ipv4.conf." + v + ".forwarding=1"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			return err
		}
	}
	for _, s := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "tuntap", "add", "tap0", "mode", "tap"},
		{"ip", "addr", "add", gw.String() + "/" + strconv.Itoa(b.guestNet.Bits()), "dev", "tap0"},
		{"ip", "link", "set", "tap0", "up"},
		{"ip", "addr", "add", slotEnd.String() + "/30", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", root.String()},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		// The first NAT: guest address to the slot's veth address.
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"},
	} {
		if err := inNS(ns, s...); err != nil {
			return err
		}
	}
	return nil
}

// writeRules loads the root namespace's per-slot rules in one
// iptables-restore: RulesPerSlot-2 filter rules and 2 nat rules per slot,
// in slot order, reached from FORWARD and POSTROUTING.
func (b *Baseline) writeRules() error {
	fwd, post := b.chain("FWD"), b.chain("POST")
	var r strings.Builder
	fmt.Fprintf(&r, "*filter\n:%s - [0:0]\n", fwd)
	fmt.Fprintf(&r, "-A FORWARD -i b%sv+ -j %s\n-A FORWARD -o b%sv+ -j %s\n", b.Tag, fwd, b.Tag, fwd)
	blocked := []string{"25", "111", "135", "137", "138", "139", "445", "465", "587", "2049", "3389", "11211"}
	for i := 0; i < b.Slots; i++ {
		v := b.veth(i)
		_, _, p := subnet(i)
		rules := []string{
			fmt.Sprintf("-i %s ! -s %s -j DROP", v, p),
			fmt.Sprintf("-i %s -d 169.254.169.254/32 -j DROP", v),
			fmt.Sprintf("-i %s -d 224.0.0.0/4 -j DROP", v),
			fmt.Sprintf("-i %s -d 192.168.0.0/16 -j DROP", v),
			fmt.Sprintf("-i %s -d 172.16.0.0/12 -j DROP", v),
			fmt.Sprintf("-i %s -d %s -j DROP", v, transit),
			fmt.Sprintf("-i %s -m conntrack --ctstate INVALID -j DROP", v),
		}
		for _, port := range blocked {
			rules = append(rules, fmt.Sprintf("-i %s -p tcp --dport %s -j DROP", v, port))
		}
		rules = append(rules,
			fmt.Sprintf("-i %s -p udp --dport 137:139 -j DROP", v),
			fmt.Sprintf("-i %s -p udp --dport 53 -j ACCEPT", v),
			fmt.Sprintf("-i %s -p tcp --dport 53 -j ACCEPT", v),
			fmt.Sprintf("-o %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", v),
			fmt.Sprintf("-o %s -p icmp --icmp-type destination-unreachable -j ACCEPT", v),
			fmt.Sprintf("-o %s -j DROP", v),
			fmt.Sprintf("-i %s -p icmp -j ACCEPT", v),
			fmt.Sprintf("-i %s -o %s -j ACCEPT", v, b.Uplink),
			fmt.Sprintf("-i %s -j DROP", v),
		)
		if len(rules) != RulesPerSlot-2 {
			return fmt.Errorf("baseline: %d filter rules per slot, want %d", len(rules), RulesPerSlot-2)
		}
		for _, x := range rules {
			fmt.Fprintf(&r, "-A %s %s\n", fwd, x)
		}
	}
	r.WriteString("COMMIT\n*nat\n")
	fmt.Fprintf(&r, ":%s - [0:0]\n-A POSTROUTING -o %s -j %s\n", post, b.Uplink, post)
	for i := 0; i < b.Slots; i++ {
		_, _, p := subnet(i)
		// The second NAT, and the accounting rule such setups carried.
		fmt.Fprintf(&r, "-A %s -s %s -o %s -j MASQUERADE\n", post, p, b.Uplink)
		fmt.Fprintf(&r, "-A %s -s %s -j RETURN\n", post, p)
	}
	r.WriteString("COMMIT\n")
	cmd := exec.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(r.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}

// RootRules is the number of root-namespace rules the baseline adds.
func (b *Baseline) RootRules() int { return b.Slots*RulesPerSlot + 3 }

// untouchedTable: an iptables -S listing with built-in chains only, empty,
// with the default ACCEPT policy (what iptables makes on first use).
func untouchedTable(listing string) bool {
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		if l != "" && !(strings.HasPrefix(l, "-P ") && strings.HasSuffix(l, " ACCEPT")) {
			return false
		}
	}
	return true
}

// Remove deletes everything Create made; it is safe on a partial Create.
func (b *Baseline) Remove() error {
	var errs []error
	fwd, post := b.chain("FWD"), b.chain("POST")
	for _, args := range [][]string{
		{"iptables", "-D", "FORWARD", "-i", "b" + b.Tag + "v+", "-j", fwd},
		{"iptables", "-D", "FORWARD", "-o", "b" + b.Tag + "v+", "-j", fwd},
		{"iptables", "-F", fwd}, {"iptables", "-X", fwd},
		{"iptables", "-t", "nat", "-D", "POSTROUTING", "-o", b.Uplink, "-j", post},
		{"iptables", "-t", "nat", "-F", post}, {"iptables", "-t", "nat", "-X", post},
		{"ip", "rule", "del", "from", transit.String(), "lookup", strconv.Itoa(b.Table)},
		{"ip", "route", "flush", "table", strconv.Itoa(b.Table)},
	} {
		sh(args...) // missing pieces are fine
	}
	// iptables leaves its tables behind with empty built-in chains; an
	// empty nat table still has the host's traffic tracked. Remove the
	// ones Create brought in, once nothing is left in them.
	for _, t := range iptablesTables {
		if b.hadTables == nil || b.hadTables[t] || sh("nft", "list", "table", "ip", t) != nil {
			continue // someone else's, or not an nftables table (iptables-legacy)
		}
		if out, err := exec.Command("iptables", "-t", t, "-S").Output(); err == nil && untouchedTable(string(out)) {
			if err := sh("nft", "delete", "table", "ip", t); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, i := range b.Real {
		sh("ip", "link", "del", b.veth(i))
		if err := netns.Remove(b.NetnsPath(i)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
