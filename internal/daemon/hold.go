package daemon

import (
	"container/heap"
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
//
// What is held is bounded three ways, so that no tenant can take holding
// away from the others: by age (a frame older than holdFor goes, whatever
// its slot does meanwhile), by slot (holdPerSlot frames, the oldest go
// first), and in all (holdBytes), shared max-min fairly between leases:
// with the budget full, a frame evicts the oldest frame of the lease that
// holds the most bytes, unless its own lease would then hold more than
// that one. A lease that, with its frame, holds no more than the largest
// holder therefore gets that frame held, however many leases fill the
// budget (per-slot and age bounds aside).
const (
	holdPerSlot = 32          // frames held per slot; the oldest go first
	holdFor     = time.Second // then the guest's own retransmits take over
	holdBytes   = 4 << 20     // held in all, at most
)

type heldFrame struct {
	lease uint32 // the lease word the datapath saw (see datapath.LeaseWord)
	at    int64  // CLOCK_MONOTONIC, ns
	frame []byte
	q     *heldQueue
	// The holder's frames, in the order they were read (their age
	// order, but for the few microseconds by which the datapath's CPUs
	// may interleave their copies).
	older, newer *heldFrame
}

// heldQueue is what is held for one slot, oldest first. Frames leave it
// from the front (expired, evicted, over the slot's count) or all at once
// (sent, or the lease ended), so the holder's oldest frame is always the
// first of its queue.
type heldQueue struct {
	slot   int
	frames []*heldFrame
	bytes  int // of frames
	rank   int // its index in holder.big
}

// bySize orders the queues that hold frames, the one with the most bytes
// first (container/heap).
type bySize []*heldQueue

func (b bySize) Len() int           { return len(b) }
func (b bySize) Less(i, j int) bool { return b[i].bytes > b[j].bytes }
func (b bySize) Swap(i, j int) {
	b[i], b[j] = b[j], b[i]
	b[i].rank, b[j].rank = i, j
}
func (b *bySize) Push(x any) {
	q := x.(*heldQueue)
	q.rank = len(*b)
	*b = append(*b, q)
}
func (b *bySize) Pop() any {
	old := *b
	q := old[len(old)-1]
	old[len(old)-1] = nil
	*b = old[:len(old)-1]
	return q
}

type holder struct {
	mu sync.Mutex
	// The limits: holdPerSlot, holdFor and holdBytes (tests change them).
	perSlot int
	age     time.Duration
	budget  int
	// now is CLOCK_MONOTONIC in ns (the clock of the datapath's
	// timestamps), lease a slot's lease word now (datapath.LeaseWord),
	// count adds to netslot_vpc_held_frames_total.
	now   func() int64
	lease func(slot int) uint32
	count func(outcome string, n int)

	slots          map[int]*heldQueue // the slots that hold frames
	big            bySize             // the same, largest first
	oldest, newest *heldFrame
	bytes          int // of every held frame
	// dropped counts, by slot, the frames of its current lease that were
	// dropped (release resets it).
	dropped []uint64
	// timer expires what is held by age when nothing else comes: armed
	// only while a frame is held, for the oldest one's expiry plus a
	// tenth of holdFor, so that it fires at most ten times a second, and
	// once at most after the last frame went (sent, or taken by a newer
	// frame's expiry).
	timer   *time.Timer
	armed   bool
	stopped bool
	// send is held from the check of a slot's lease word to the last
	// send of its frames, and taken by release after it closed the
	// lease: no frame of a lease goes out once its release went past
	// that point, so none under the next lease.
	send sync.Mutex
}

// init readies h for slots slots (see holder for now, lease and count).
func (h *holder) init(slots int, now func() int64, lease func(int) uint32, count func(string, int)) {
	h.perSlot, h.age, h.budget = holdPerSlot, holdFor, holdBytes
	h.now, h.lease, h.count = now, lease, count
	h.slots = map[int]*heldQueue{}
	h.dropped = make([]uint64, slots)
}

// hold keeps a copy of frame, which slot i's guest sent under lease word
// lease at time at (see holder for what is given up to make room).
func (h *holder) hold(i int, lease uint32, at int64, frame []byte) {
	n := len(frame)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.expire()
	if q := h.slots[i]; q != nil && len(q.frames) >= h.perSlot {
		h.evict(q)
	}
	for h.bytes+n > h.budget {
		mine := 0
		if q := h.slots[i]; q != nil {
			mine = q.bytes
		}
		if n > h.budget || len(h.big) == 0 {
			h.dropLocked(i, lease, 1)
			return
		}
		top := h.big[0]
		if top.slot != i && mine+n > top.bytes {
			// This lease would then hold more than any other.
			h.dropLocked(i, lease, 1)
			return
		}
		h.evict(top)
	}
	q := h.slots[i]
	if q == nil {
		q = &heldQueue{slot: i}
		h.slots[i] = q
		heap.Push(&h.big, q)
	}
	f := &heldFrame{lease: lease, at: at, frame: append([]byte(nil), frame...), q: q, older: h.newest}
	if h.newest != nil {
		h.newest.newer = f
	} else {
		h.oldest = f
	}
	h.newest = f
	q.frames = append(q.frames, f)
	q.bytes += n
	h.bytes += n
	heap.Fix(&h.big, q.rank)
	h.count("held", 1)
	h.arm()
}

// evict drops the oldest frame of q.
func (h *holder) evict(q *heldQueue) {
	f := h.removeOldest(q)
	h.dropLocked(q.slot, f.lease, 1)
}

// expire drops what is older than h.age, oldest first.
func (h *holder) expire() {
	now, n := h.now(), 0
	for h.oldest != nil && time.Duration(now-h.oldest.at) > h.age {
		h.removeOldest(h.oldest.q)
		n++
	}
	if n > 0 {
		h.count("expired", n)
	}
}

// removeOldest removes the first frame of q, which holds at least one,
// and forgets q if that was its last.
func (h *holder) removeOldest(q *heldQueue) *heldFrame {
	f := q.frames[0]
	q.frames[0] = nil
	q.frames = q.frames[1:]
	h.unlink(f)
	if len(q.frames) == 0 {
		h.forget(q)
	} else {
		heap.Fix(&h.big, q.rank)
	}
	return f
}

// unlink takes f out of the holder's age order and its byte counts.
func (h *holder) unlink(f *heldFrame) {
	if f.older != nil {
		f.older.newer = f.newer
	} else {
		h.oldest = f.newer
	}
	if f.newer != nil {
		f.newer.older = f.older
	} else {
		h.newest = f.older
	}
	f.older, f.newer = nil, nil
	f.q.bytes -= len(f.frame)
	h.bytes -= len(f.frame)
}

// forget removes q, which holds no frame any more.
func (h *holder) forget(q *heldQueue) {
	heap.Remove(&h.big, q.rank)
	delete(h.slots, q.slot)
}

// take removes and returns what is held for slot i, oldest first.
func (h *holder) take(i int) []*heldFrame {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.slots[i]
	if q == nil {
		return nil
	}
	for _, f := range q.frames {
		h.unlink(f)
	}
	h.forget(q)
	return q.frames
}

// drop counts n frames of slot i's lease word lease as dropped: on the
// slot too while that lease is its lease.
func (h *holder) drop(i int, lease uint32, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(i, lease, n)
}

func (h *holder) dropLocked(i int, lease uint32, n int) {
	h.count("dropped", n)
	if h.lease(i) == lease {
		h.dropped[i] += uint64(n)
	}
}

// droppedOf is what slot i's lease lost: frames held, or to be held, and
// dropped (see holder).
func (h *holder) droppedOf(i int) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped[i]
}

// resetDropped zeroes slot i's count of dropped frames (its lease is
// closed: nothing counts on it until the next one opens).
func (h *holder) resetDropped(i int) {
	h.mu.Lock()
	h.dropped[i] = 0
	h.mu.Unlock()
}

// maxAge is how long a frame may be held.
func (h *holder) maxAge() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.age
}

// arm makes sure the timer will expire the oldest frame, if any.
func (h *holder) arm() {
	if h.armed || h.stopped || h.oldest == nil {
		return
	}
	wait := time.Duration(h.oldest.at-h.now()) + h.age + h.age/10
	h.armed = true
	if h.timer == nil {
		h.timer = time.AfterFunc(wait, h.tick)
	} else {
		h.timer.Reset(wait)
	}
}

func (h *holder) tick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed = false
	h.expire()
	h.arm()
}

// stop stops the timer for good; what is held stays (the daemon is
// closing).
func (h *holder) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop()
	}
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// runHolder reads the datapath's events until stop.
func (d *Daemon) runHolder(stop <-chan struct{}) {
	defer d.held.stop()
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
		d.held.drop(i, e.Lease, 1) // the lease is over
		return
	}
	d.held.hold(i, e.Lease, e.At, e.Data)
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
	for _, h := range d.held.take(i) {
		d.held.drop(i, h.lease, 1)
	}
}

// sendHeld sends what is held for slot i again into the slot, in order:
// frames of its current lease that are not too old.
func (d *Daemon) sendHeld(i int) {
	d.held.send.Lock()
	defer d.held.send.Unlock()
	q := d.held.take(i)
	if len(q) == 0 {
		return
	}
	now, age, word := monotonicNow(), d.held.maxAge(), d.dp.LeaseWord(i)
	var frames [][]byte
	for _, h := range q {
		switch {
		case h.lease != word:
			d.held.drop(i, h.lease, 1)
		case time.Duration(now-h.at) > age:
			d.Metrics.HeldFrames.WithLabelValues("expired").Inc()
		default:
			f, err := d.resendable(i, h.frame)
			if err != nil {
				d.log.Warn("held frame not sent", "slot", d.cfg.ID(i), "err", err)
				d.held.drop(i, h.lease, 1)
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
		d.held.drop(i, word, len(frames))
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
