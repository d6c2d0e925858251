package daemon_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/slot"
)

// TestAcquireWithFullMapChangesNothing fills the datapath's LPM trie of
// VPC routes from outside (API requests cannot: it holds 256 routes per
// slot), then acquires with a VPC of more CIDRs than a tunnel entry holds
// inline. The acquire fails with a clear error and nothing is half done:
// the slot is free, no lease is stored, and every slot's datapath state is
// what it was.
func TestAcquireWithFullMapChangesNothing(t *testing.T) {
	p, fab, _ := datapathPool(t, 2)
	states := func() []string {
		var s []string
		for i := range p.Config.Count {
			st, err := p.D.DatapathState(i)
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, st)
		}
		return s
	}
	before := states()

	routes, err := ebpf.LoadPinnedMap(filepath.Join(datapath.PinDir("", p.Config.Prefix), "vpc_routes"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { routes.Close() }) // after the entries' removal below (cleanups run last first)
	// Keys as the datapath writes them (prefix length, slot, address), for
	// a slot index no pool has; removed again at the end.
	key := func(n uint32) []byte {
		k := make([]byte, 12)
		binary.NativeEndian.PutUint32(k[0:], 32+32)
		binary.NativeEndian.PutUint32(k[4:], 1<<30)
		binary.BigEndian.PutUint32(k[8:], n)
		return k
	}
	filled := uint32(0)
	for ; ; filled++ {
		if err := routes.Update(key(filled), uint8(1), ebpf.UpdateNoExist); err != nil {
			if !errors.Is(err, ebpf.ErrKeyExist) {
				break
			}
		}
	}
	t.Cleanup(func() {
		for n := range filled {
			routes.Delete(key(n))
		}
	})
	if filled != routes.MaxEntries() {
		t.Fatalf("filled %d of %d route entries", filled, routes.MaxEntries())
	}

	var cidrs []string
	for k := range 12 {
		cidrs = append(cidrs, fmt.Sprintf("10.%d.0.0/16", 20+k))
	}
	a, err := slot.ParseAttachment(4242, fab.VTEP.String(), "10.20.0.5", cidrs)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a})
	if err == nil {
		t.Fatal("acquire with a full route map succeeded")
	}
	t.Logf("acquire with the route map full: %v", err)
	if st := p.D.Status(); st.Free != 2 || st.Leased != 0 {
		t.Errorf("after the failed acquire: %d free, %d leased", st.Free, st.Leased)
	}
	for i, s := range states() {
		if s != before[i] {
			t.Errorf("slot %d's datapath changed:\n%s\nwas\n%s", i, s, before[i])
		}
	}
	// With room again, the same request works.
	for n := range filled {
		routes.Delete(key(n))
	}
	filled = 0
	if _, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: a}); err != nil {
		t.Errorf("acquire once the map has room: %v", err)
	}
}
