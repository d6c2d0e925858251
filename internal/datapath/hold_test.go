package datapath

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/netslot/netslot/internal/dpconst"
)

// While a slot's VPC peer is unknown, its frames are copied to the held
// ring, whole, with the slot and its lease word; learning the peer (its
// ARP answer through the tunnel) puts a note there; once it is known,
// nothing more is copied.
func TestHeldFramesAndLearnedNote(t *testing.T) {
	e := newEnv(t, 1)
	e.attach(0, 4242, "10.9.0.5", "10.9.0.0/16", nil, vtep)
	e.dp.OpenLease(0, nil)
	word := e.dp.LeaseWord(0)
	if word&leaseOpen == 0 || word>>leaseGenShift == 0 {
		t.Fatalf("lease word %#x: want open, with a generation", word)
	}
	rd, err := ringbuf.NewReader(e.dp.HeldEvents())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	next := func() (uint32, uint32, uint32, []byte) {
		t.Helper()
		rd.SetDeadline(time.Now().Add(time.Second))
		r, err := rd.Read()
		if err != nil {
			t.Fatalf("no event: %v", err)
		}
		h, err := ParseHeld(r.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		return h.Kind, h.Slot, h.Lease, h.Data
	}

	first := guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 5, DstPort: 9}, gopacket.Payload("first"))
	second := guestFrame(t, e.cfg, netip.MustParseAddr("10.9.0.1"), &layers.UDP{SrcPort: 5, DstPort: 9}, gopacket.Payload("second"))
	if v, _ := e.egress(first, 0); v != verdictRedirect {
		t.Fatalf("first frame: verdict %d, want the ARP request out", int32(v))
	}
	if v, _ := e.egress(second, 0); v != verdictDrop {
		t.Fatalf("second frame: verdict %d, want it held (dropped here)", int32(v))
	}
	for _, want := range [][]byte{first, second} {
		kind, slot, lease, data := next()
		if kind != dpconst.HoldFrame || slot != 0 || lease != word || !bytes.Equal(data, want) {
			t.Errorf("event kind %d slot %d lease %#x, %d bytes; want the frame of %d bytes under %#x", kind, slot, lease, len(data), len(want), word)
		}
	}
	if n := e.stats(0).Drops["peer_unknown"]; n != 0 {
		t.Errorf("peer_unknown %d: held frames are not lost", n)
	}

	// The peer answers the ARP request through the tunnel.
	reply := serialize(t, &layers.Ethernet{SrcMAC: peerMAC, DstMAC: e.cfg.VPCMAC(0), EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPReply, SourceHwAddress: peerMAC, SourceProtAddress: []byte{10, 9, 0, 1},
			DstHwAddress: e.cfg.VPCMAC(0), DstProtAddress: []byte{10, 9, 0, 5}})
	e.ingress(geneveFrame(t, gnvOpts{vni: 4242}, reply))
	if kind, slot, lease, _ := next(); kind != dpconst.HoldLearned || slot != 0 || lease != word {
		t.Errorf("after the ARP answer: event kind %d slot %d lease %#x, want the learned note", kind, slot, lease)
	}
	if !e.dp.PeerKnown(0) {
		t.Error("peer not known after its ARP answer")
	}
	if v, _ := e.egress(second, 0); v != verdictRedirect {
		t.Errorf("with the peer known: verdict %d, want it encapsulated", int32(v))
	}
	rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if r, err := rd.Read(); err == nil {
		t.Errorf("an event with the peer known: %x", r.RawSample[:heldHeader])
	}

	// A new lease of the slot is a new generation.
	e.dp.CloseLease(0)
	e.dp.OpenLease(0, nil)
	if w := e.dp.LeaseWord(0); w == word || w&leaseOpen == 0 {
		t.Errorf("lease word %#x after a new lease, was %#x", w, word)
	}
}
