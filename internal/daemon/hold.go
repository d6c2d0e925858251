package daemon

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/dpconst"
	"github.com/netslot/netslot/internal/slot"
)

// A guest's first frames to its VPC, sent while the datapath does not know
// the VPC peer's MAC yet, are not lost to the resolution: the datapath
// turns the first into an ARP request through the tunnel and hands a copy
// of each to netslotd (bpf/lib/arp.h, hold), which keeps them here until
// the datapath learns the peer, then sends them again into the slot, on
// its eth0: the way out of the slot they took the first time, after which
// the datapath encapsulates them for the peer it now knows. A VM's first
// TCP SYN to its VPC, sent within a millisecond of acquire, is delivered
// one ARP round trip late instead of one retransmit (1 s) late.
const (
	holdPerSlot = 32          // frames held per slot; the oldest go first
	holdFor     = time.Second // then the guest's own retransmits take over
	holdBytes   = 4 << 20     // held in all, at most
)

type heldFrame struct {
	lease uint32 // the lease word the datapath saw (see datapath.LeaseWord)
	at    int64  // CLOCK_MONOTONIC, ns
	frame []byte
}

type holder struct {
	mu    sync.Mutex
	q     map[int][]heldFrame
	bytes int // of the frames in q
	// send is held from the check of a slot's lease word to the last
	// send of its frames, and taken by release after it closed the
	// lease: no frame of a lease goes out once its release went past
	// that point, so none under the next lease.
	send sync.Mutex
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// runHolder reads the datapath's events until stop.
func (d *Daemon) runHolder(stop <-chan struct{}) {
	rd, err := ringbuf.NewReader(d.dp.HeldEvents())
	if err != nil {
		d.log.Error("cannot read the datapath's held frames: first packets to unknown VPC peers are lost", "err", err)
		return
	}
	go func() {
		<-stop
		rd.Close()
	}()
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			d.log.Warn("read held frames", "err", err)
			continue
		}
		e, err := datapath.ParseHeld(rec.RawSample)
		if err != nil || int(e.Slot) >= d.cfg.Count {
			d.log.Warn("bad event from the datapath", "err", err, "slot", e.Slot)
			continue
		}
		switch e.Kind {
		case dpconst.HoldFrame:
			d.holdFrame(e)
		case dpconst.HoldLearned:
			d.sendHeld(int(e.Slot))
		}
	}
}

func (d *Daemon) holdFrame(e datapath.HeldEvent) {
	i := int(e.Slot)
	if d.dp.LeaseWord(i) != e.Lease {
		d.Metrics.HeldFrames.WithLabelValues("dropped").Inc() // the lease is over
		return
	}
	d.held.mu.Lock()
	if d.held.q == nil {
		d.held.q = map[int][]heldFrame{}
	}
	// What waited too long goes (a peer that never answers), then the
	// oldest if the slot's queue is full; and nothing is held past the
	// budget for all slots.
	q, now, expired := d.held.q[i], monotonicNow(), 0
	for len(q) > 0 && time.Duration(now-q[0].at) > holdFor {
		d.held.bytes -= len(q[0].frame)
		q, expired = q[1:], expired+1
	}
	dropped := 0
	if len(q) >= holdPerSlot {
		d.held.bytes -= len(q[0].frame)
		q, dropped = q[1:], dropped+1
	}
	if d.held.bytes+len(e.Data) > holdBytes {
		dropped++
	} else {
		q = append(q, heldFrame{lease: e.Lease, at: e.At, frame: append([]byte(nil), e.Data...)})
		d.held.bytes += len(e.Data)
		d.Metrics.HeldFrames.WithLabelValues("held").Inc()
	}
	d.held.q[i] = q
	d.held.mu.Unlock()
	d.Metrics.HeldFrames.WithLabelValues("expired").Add(float64(expired))
	d.Metrics.HeldFrames.WithLabelValues("dropped").Add(float64(dropped))
	// The peer may have been learned on another CPU before this frame's
	// copy was read: its note came first.
	if d.dp.PeerKnown(i) {
		d.sendHeld(i)
	}
}

// dropHeld forgets what is held for slot i, whose lease is over: release
// calls it after closing the lease, and it waits for a send of the slot's
// frames under way (see holder.send).
func (d *Daemon) dropHeld(i int) {
	d.held.send.Lock()
	defer d.held.send.Unlock()
	if n := len(d.takeHeld(i)); n > 0 {
		d.Metrics.HeldFrames.WithLabelValues("dropped").Add(float64(n))
	}
}

// takeHeld removes and returns what is held for slot i.
func (d *Daemon) takeHeld(i int) []heldFrame {
	d.held.mu.Lock()
	defer d.held.mu.Unlock()
	q := d.held.q[i]
	delete(d.held.q, i)
	for _, h := range q {
		d.held.bytes -= len(h.frame)
	}
	return q
}

// sendHeld sends what is held for slot i again into the slot, in order:
// frames of its current lease that are not too old.
func (d *Daemon) sendHeld(i int) {
	d.held.send.Lock()
	defer d.held.send.Unlock()
	q := d.takeHeld(i)
	if len(q) == 0 {
		return
	}
	now, word := monotonicNow(), d.dp.LeaseWord(i)
	var frames [][]byte
	for _, h := range q {
		switch {
		case h.lease != word:
			d.Metrics.HeldFrames.WithLabelValues("dropped").Inc()
		case time.Duration(now-h.at) > holdFor:
			d.Metrics.HeldFrames.WithLabelValues("expired").Inc()
		default:
			f, err := d.resendable(i, h.frame)
			if err != nil {
				d.log.Warn("held frame not sent", "slot", d.cfg.ID(i), "err", err)
				d.Metrics.HeldFrames.WithLabelValues("dropped").Inc()
				continue
			}
			frames = append(frames, f)
		}
	}
	if len(frames) == 0 {
		return
	}
	err := d.inSlot(i, func() error {
		if d.dp.LeaseWord(i) != word {
			return errors.New("the lease ended")
		}
		return sendOnEth0(frames)
	})
	if err != nil {
		d.log.Warn("held frames not sent", "slot", d.cfg.ID(i), "frames", len(frames), "err", err)
		d.Metrics.HeldFrames.WithLabelValues("dropped").Add(float64(len(frames)))
		return
	}
	d.Metrics.HeldFrames.WithLabelValues("sent").Add(float64(len(frames)))
}

// resendable makes a frame held at the uplink what slot i's eth0 sends:
// its Ethernet addresses the slot's veth pair's, the TTL the root
// namespace's forwarding took back (it forwards the frame again), and its
// checksums whole (a virtio guest leaves its transport checksum to
// offload, which the copy did not get).
func (d *Daemon) resendable(i int, frame []byte) ([]byte, error) {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if eth == nil || ip == nil {
		return nil, errors.New("not IPv4 over Ethernet")
	}
	eth.SrcMAC, eth.DstMAC = d.cfg.SlotVethMAC(i), d.cfg.HostVethMAC(i)
	if ip.TTL < 255 {
		ip.TTL++
	}
	out := []gopacket.SerializableLayer{eth, ip}
	switch l4 := p.Layer(ip.NextLayerType()).(type) {
	case *layers.TCP:
		l4.SetNetworkLayerForChecksum(ip)
		out = append(out, l4, gopacket.Payload(l4.Payload))
	case *layers.UDP:
		l4.SetNetworkLayerForChecksum(ip)
		out = append(out, l4, gopacket.Payload(l4.Payload))
	default:
		out = append(out, gopacket.Payload(ip.Payload))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, out...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// sendOnEth0 sends frames out of the calling thread's namespace's eth0.
func sendOnEth0(frames [][]byte) error {
	eth0, err := netlink.LinkByName(slot.VethName)
	if err != nil {
		return fmt.Errorf("find %s: %w", slot.VethName, err)
	}
	proto := uint16(unix.ETH_P_IP&0xff)<<8 | uint16(unix.ETH_P_IP>>8) // network order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: eth0.Attrs().Index, Protocol: proto, Halen: 6}
	copy(to.Addr[:], net.HardwareAddr(frames[0][:6]))
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return fmt.Errorf("send on %s: %w", slot.VethName, err)
		}
	}
	return nil
}
