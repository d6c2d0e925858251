package firewall

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
)

// inScratchNS runs fn on a locked thread inside a new, unnamed namespace
// that holds a tap0; the namespace disappears with the thread's return.
func inScratchNS(t *testing.T, fn func()) {
	t.Helper()
	testenv.RequireRoot(t)
	root, err := netns.Root()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		defer func() {
			if netns.Enter(root) == nil {
				runtime.UnlockOSThread()
			}
		}()
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: slot.TapName}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
		if err := netlink.LinkAdd(tap); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

func TestSlotVerifyCatchesChanges(t *testing.T) {
	cfg := slot.DefaultConfig("fw", 1)
	s := Slot{Config: cfg}
	allow := slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}}
	inScratchNS(t, func() {
		conn, err := Dial()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.CloseLasting()
		if err := s.Create(conn, allow); err != nil {
			t.Error(err)
			return
		}
		if err := s.Verify(conn, allow); err != nil {
			t.Errorf("fresh table: %v", err)
		}
		if err := s.Verify(conn, slot.Egress{}); !errors.Is(err, ErrChanged) {
			t.Errorf("allow-list difference not seen: %v", err)
		}
		if err := s.Verify(conn, slot.Egress{DenyAll: true}); !errors.Is(err, ErrChanged) {
			t.Errorf("deny-all difference not seen: %v", err)
		}
		for _, e := range []slot.Egress{{}, {DenyAll: true}, allow} {
			if err := s.SetEgress(conn, e); err != nil {
				t.Errorf("set %+v: %v", e, err)
			}
			if err := s.Verify(conn, e); err != nil {
				t.Errorf("after SetEgress(%+v): %v", e, err)
			}
		}
		// Same rule name, same number of expressions, another MAC.
		spec := s.specs()[0]
		ch := spec.chains[0]
		rules, err := conn.GetRules(spec.table, ch.chain)
		if err != nil || len(rules) == 0 {
			t.Errorf("list rules: %v", err)
			return
		}
		other := Slot{Config: cfg}
		other.Config.GuestMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
		forged := other.specs()[0].chains[0].rules[0]
		conn.ReplaceRule(&nftables.Rule{Table: spec.table, Chain: ch.chain, Handle: rules[0].Handle,
			Exprs: forged.exprs, UserData: userData(forged.name)})
		if err := conn.Flush(); err != nil {
			t.Error(err)
			return
		}
		if err := s.Verify(conn, allow); !errors.Is(err, ErrChanged) {
			t.Errorf("rewritten rule not seen: %v", err)
		}
		if err := s.Apply(conn, allow); err != nil {
			t.Error(err)
		}
		if err := s.Verify(conn, allow); err != nil {
			t.Errorf("after Apply: %v", err)
		}
	})
}
