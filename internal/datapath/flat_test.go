package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/dpconst"
)

// runMarked runs the egress program on pkt from slot i's host veth with
// skb->mark set to mark, and returns the verdict and the mark it left.
func (e *env) runMarked(pkt []byte, i int, mark uint32) (uint32, uint32) {
	e.t.Helper()
	out := make([]byte, len(pkt)+512)
	ctxOut := make([]byte, 256) // the whole struct __sk_buff; mark is its third word
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: skbCtx{IngressIfindex: uint32(e.hosts[i]), Mark: mark}, ContextOut: ctxOut}
	v, err := e.dp.objs.UplinkEgress.Run(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return v, binary.NativeEndian.Uint32(ctxOut[8:])
}

// On a flat underlay (no gateway) the programs leave nothing to the pool
// table's placeholder next hop: a NATed packet and an encapsulated one are
// both handed to the neighbour subsystem (redirect), marked so that their
// second pass goes out; with a gateway a NATed packet simply goes on.
func TestFlatUnderlayRedirectsEverySlotPacket(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", peerMAC, vtep)
	nat := guestFrame(t, e.cfg, outside, &layers.UDP{SrcPort: 1, DstPort: 2})
	vpc := guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 1, DstPort: 2})

	if v, mark := e.runMarked(nat, 0, 0); v != verdictNext || mark != 0 {
		t.Errorf("with a gateway, NAT: verdict %d mark %#x, want TCX_NEXT unmarked", int32(v), mark)
	}
	e.dp.cfg.Flat = true
	if err := e.dp.writeConfig(); err != nil {
		t.Fatal(err)
	}
	if v, mark := e.runMarked(nat, 0, 0); v != verdictRedirect || mark != dpconst.NeighMark {
		t.Errorf("flat, NAT: verdict %d mark %#x, want a redirect marked %#x", int32(v), mark, dpconst.NeighMark)
	}
	if v, mark := e.runMarked(vpc, 0, 0); v != verdictRedirect || mark != dpconst.EncapMark {
		t.Errorf("flat, VPC: verdict %d mark %#x, want a redirect marked %#x", int32(v), mark, dpconst.EncapMark)
	}
	// The NATed packet's second pass (its source is the slot address
	// now): out it goes, unmarked.
	_, natted := e.egress(nat, 0)
	if v, mark := e.runMarked(natted[:len(nat)], 0, dpconst.NeighMark); v != verdictNext || mark != 0 {
		t.Errorf("flat, NAT second pass: verdict %d mark %#x, want TCX_NEXT unmarked", int32(v), mark)
	}
	if s := e.stats(0); s.TxPackets != 4 || s.EncapPackets != 1 {
		t.Errorf("counters %+v, want 4 out (each counted once), 1 encapsulated", s)
	}
}
