package state

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/netslot/netslot/internal/slot"
)

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Config(); ok || err != nil {
		t.Fatalf("empty store has config: %t %v", ok, err)
	}
	cfg := slot.DefaultConfig("ns", 100)
	if err := s.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	vpc, _ := slot.ParseAttachment(7, "198.18.0.9", "10.1.0.5", []string{"10.1.0.0/16"})
	in1, _ := slot.ParseInboundSpec("tcp/8080-8090,198.18.0.0/15")
	in2, _ := slot.ParseInboundSpec("icmp")
	l := &slot.Lease{Owner: "vm-1", Key: "vm-1-boot", AcquiredNs: 42, VPC: vpc, Egress: slot.Egress{Allow: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}},
		Inbound: []slot.InboundRule{in1, in2}}
	if err := s.PutLease(3, l); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLease(3, l); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("second lease on one slot: %v", err)
	}
	if err := s.PutLease(4, &slot.Lease{Egress: slot.Egress{DenyAll: true}, TapOwner: &slot.TapOwner{UID: 4242, GID: 4243}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLease(5, &slot.Lease{ID: "ended-5"}); err != nil {
		t.Fatal(err)
	}
	if err := s.EndLease(5, "ended-5"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, ok, err := s.Config()
	if !ok || err != nil || got.Count != 100 || got.Prefix != "ns" || got.SlotCIDR != cfg.SlotCIDR || got.GuestMAC.String() != cfg.GuestMAC.String() {
		t.Fatalf("config after reopen: %+v %t %v", got, ok, err)
	}
	leases, bad, err := s.Leases()
	if err != nil || len(bad) != 0 || len(leases) != 2 {
		t.Fatalf("leases %v bad %v err %v", leases, bad, err)
	}
	g := leases[3]
	if g.Owner != "vm-1" || g.Key != "vm-1-boot" || g.AcquiredNs != 42 || g.VPC.VNI != 7 || g.VPC.RemoteVTEP.String() != "198.18.0.9" ||
		len(g.Egress.Allow) != 1 || g.Egress.Allow[0].String() != "198.18.5.0/24" || g.Egress.DenyAll ||
		!reflect.DeepEqual(g.Inbound, l.Inbound) {
		t.Fatalf("lease 3 after reopen: %+v", g)
	}
	if g.TapOwner != nil {
		t.Fatalf("lease 3 has a tap owner after reopen: %v", g.TapOwner)
	}
	if g := leases[4]; !g.Egress.DenyAll || len(g.Egress.Allow) != 0 || g.TapOwner == nil || *g.TapOwner != (slot.TapOwner{UID: 4242, GID: 4243}) {
		t.Fatalf("lease 4 after reopen: %+v", g)
	}
	if ended, err := s.EndedLeases(); err != nil || len(ended) != 1 || ended[5] != "ended-5" {
		t.Fatalf("ended leases after reopen: %v, %v", ended, err)
	}
	if err := s.DeleteLease(3); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAllLeases(); err != nil {
		t.Fatal(err)
	}
	if leases, _, _ := s.Leases(); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
}

func TestSecondOpenTimesOut(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir); err == nil {
		t.Fatal("a second open of a held store succeeded")
	}
}

func TestUnreadableStore(t *testing.T) {
	dir := t.TempDir()
	garbage := []byte("this is not a bbolt file, it was torn by a power cut")
	cur, err := CurrentBootID()
	if err != nil {
		t.Fatal(err)
	}
	// Written during this boot: refuse, running VMs hold its leases.
	os.WriteFile(filepath.Join(dir, FileName), garbage, 0o600)
	os.WriteFile(filepath.Join(dir, BootIDFile), []byte(cur+"\n"), 0o600)
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("unreadable store of this boot was replaced")
	}
	// Written during an earlier boot: set aside and start afresh.
	os.WriteFile(filepath.Join(dir, BootIDFile), []byte("an-earlier-boot\n"), 0o600)
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("unreadable store of an earlier boot: %v", err)
	}
	defer s.Close()
	matches, _ := filepath.Glob(filepath.Join(dir, FileName+".unreadable-*"))
	if len(matches) != 1 {
		t.Fatalf("old store not set aside: %v", matches)
	}
	if err := s.SetBootID(cur); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, BootIDFile)); strings.TrimSpace(string(b)) != cur {
		t.Fatalf("boot id file %q", b)
	}
}

// A store whose data pages were overwritten is refused with ErrCorrupted,
// not a panic, when it holds this boot's leases, and set aside when it
// was written during an earlier boot.
func TestCorruptedStoreIsRefusedNotPanicked(t *testing.T) {
	for _, earlierBoot := range []bool{false, true} {
		dir := t.TempDir()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetConfig(slot.DefaultConfig("ns", 10)); err != nil {
			t.Fatal(err)
		}
		boot, err := CurrentBootID()
		if err != nil {
			t.Fatal(err)
		}
		if earlierBoot {
			boot = "an-earlier-boot"
		}
		if err := s.SetBootID(boot); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := s.PutLease(i, &slot.Lease{ID: "x", Owner: strings.Repeat("o", 200)}); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		page := int64(os.Getpagesize())
		fi, _ := f.Stat()
		junk := bytes.Repeat([]byte{0xa5}, int(page))
		for off := 2 * page; off < fi.Size(); off += page { // the two meta pages stay
			f.WriteAt(junk, off)
		}
		f.Close()
		s, err = Open(dir)
		if earlierBoot {
			if err != nil {
				t.Errorf("store of an earlier boot with junk pages: %v, want it set aside and a new one", err)
				continue
			}
			if leases, _, err := s.Leases(); err != nil || len(leases) != 0 {
				t.Errorf("new store after setting a corrupted one aside: %v, %v", leases, err)
			}
			s.Close()
			continue
		}
		if err == nil {
			s.Close()
			t.Fatal("store with junk pages opened")
		}
		if !errors.Is(err, ErrCorrupted) || !strings.Contains(err.Error(), "--adopt") {
			t.Errorf("store with junk pages: %v, want ErrCorrupted and what to do", err)
		}
	}
}

// Intact tells when the state directory was removed under the store.
func TestStoreNoticesItsFileGone(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Intact(); err != nil {
		t.Fatalf("fresh store: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Intact(); err == nil {
		t.Fatal("store file removed, Intact says nothing")
	}
}

// A store whose directory was removed under it is written anew, whole,
// and goes on working.
func TestRebuildAfterTheStateDirWentAway(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := slot.DefaultConfig("ns", 10)
	if err := s.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	boot, _ := CurrentBootID()
	if err := s.SetBootID(boot); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLease(3, &slot.Lease{ID: "abc", Owner: "vm-3"}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// Written into the removed file: the rebuild must not lose it.
	if err := s.PutLease(4, &slot.Lease{ID: "def", Owner: "vm-4"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Rebuild(); err != nil {
		t.Fatal(err)
	}
	if err := s.Intact(); err != nil {
		t.Fatalf("after the rebuild: %v", err)
	}
	if err := s.PutLease(5, &slot.Lease{ID: "ghi"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	leases, bad, err := s2.Leases()
	if err != nil || len(bad) != 0 || len(leases) != 3 || leases[3].ID != "abc" || leases[4].ID != "def" || leases[5].ID != "ghi" {
		t.Fatalf("leases after the rebuild: %v %v %v", leases, bad, err)
	}
	if got, ok, _ := s2.Config(); !ok || got.Prefix != "ns" {
		t.Fatalf("config after the rebuild: %+v %t", got, ok)
	}
	if id, _ := s2.BootID(); id != boot || writtenBeforeThisBoot(dir) {
		t.Fatalf("boot id after the rebuild: %q", id)
	}
}
