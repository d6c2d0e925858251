package daemon

import (
	"sync"
	"testing"
	"time"
)

// heldLab is a holder on a clock the test moves, with lease words it
// sets, counting outcomes as netslot_vpc_held_frames_total does.
type heldLab struct {
	h      holder
	mu     sync.Mutex
	clock  int64
	leases map[int]uint32
	counts map[string]int
	events chan string // an outcome, each time one is counted
}

func newHeldLab(t *testing.T, slots int) *heldLab {
	l := &heldLab{leases: map[int]uint32{}, counts: map[string]int{}, events: make(chan string, 1<<16)}
	now := func() int64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.clock
	}
	lease := func(i int) uint32 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.leases[i]
	}
	l.h.init(slots, now, lease, func(o string, n int) {
		l.mu.Lock()
		l.counts[o] += n
		l.mu.Unlock()
		l.events <- o
	})
	t.Cleanup(l.h.stop)
	for i := range slots {
		l.leases[i] = 1<<1 | 1 // open, first lease
	}
	return l
}

func (l *heldLab) hold(i, size int) {
	l.h.hold(i, l.word(i), l.now(), make([]byte, size))
}

func (l *heldLab) word(i int) uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leases[i]
}

func (l *heldLab) now() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.clock
}

func (l *heldLab) advance(d time.Duration) {
	l.mu.Lock()
	l.clock += int64(d)
	l.mu.Unlock()
}

func (l *heldLab) count(o string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[o]
}

// bytesOf is what slot i holds.
func (l *heldLab) bytesOf(i int) int {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	if q := l.h.slots[i]; q != nil {
		return q.bytes
	}
	return 0
}

// check verifies the holder's bookkeeping: byte counts, age order, queues
// and heap agree.
func (l *heldLab) check(t *testing.T) {
	t.Helper()
	h := &l.h
	h.mu.Lock()
	defer h.mu.Unlock()
	total, frames := 0, 0
	for f := h.oldest; f != nil; f = f.newer {
		total += len(f.frame)
		frames++
		if f.newer == nil && f != h.newest {
			t.Fatal("the age order does not end at its newest frame")
		}
	}
	inQueues := 0
	for i, q := range h.slots {
		b := 0
		for _, f := range q.frames {
			b += len(f.frame)
		}
		if q.slot != i || q.bytes != b || len(q.frames) == 0 || h.big[q.rank] != q {
			t.Fatalf("slot %d's queue: slot %d, %d bytes counted of %d, %d frames, rank %d", i, q.slot, q.bytes, b, len(q.frames), q.rank)
		}
		inQueues += len(q.frames)
	}
	if total != h.bytes || frames != inQueues || len(h.big) != len(h.slots) {
		t.Fatalf("%d bytes counted of %d; %d frames in age order, %d in queues; %d queues ranked of %d", h.bytes, total, frames, inQueues, len(h.big), len(h.slots))
	}
	for k := 1; k < len(h.big); k++ {
		if h.big[(k-1)/2].bytes < h.big[k].bytes {
			t.Fatal("the largest queue is not first")
		}
	}
}

// The scenario, at the real limits: 88 leases send 32 full-size
// frames each (more than the 4 MiB budget), then another lease's first
// frames are all held, and what made room for them was taken from the
// leases that held the most.
func TestHeldBudgetSharedMaxMinFairly(t *testing.T) {
	const attackers, victim, full = 88, 88, 1514
	l := newHeldLab(t, attackers+1)
	for a := range attackers {
		for range holdPerSlot {
			l.hold(a, full)
		}
	}
	l.check(t)
	if l.h.bytes+full <= holdBytes {
		t.Fatalf("the attack holds %d bytes: the budget is not full", l.h.bytes)
	}
	// Full: the attackers now share it within a frame of each other.
	least, most := holdBytes, 0
	for a := range attackers {
		least, most = min(least, l.bytesOf(a)), max(most, l.bytesOf(a))
	}
	if most-least > full {
		t.Errorf("attackers hold from %d to %d bytes each", least, most)
	}
	dropped := l.count("dropped")
	for range 3 {
		l.hold(victim, full)
	}
	l.check(t)
	if got := l.bytesOf(victim); got != 3*full {
		t.Fatalf("the victim holds %d bytes, want its 3 frames' %d", got, 3*full)
	}
	if l.h.droppedOf(victim) != 0 {
		t.Errorf("the victim's slot counts %d dropped", l.h.droppedOf(victim))
	}
	var lost uint64
	for a := range attackers {
		lost += l.h.droppedOf(a)
	}
	if l.count("dropped") != dropped+3 || lost != uint64(l.count("dropped")) || l.h.bytes > holdBytes {
		t.Errorf("%d dropped in all (%d before the victim), %d counted on the attackers' slots; %d bytes held", l.count("dropped"), dropped, lost, l.h.bytes)
	}
}

// However many leases fill the budget (here 4,000, a full pool, sending
// two full-size frames each), a lease that holds less than the largest
// holder gets its frame held; one that would then hold more than any
// other does not.
func TestHeldBudgetWithManyLeases(t *testing.T) {
	const leases, full, small = 4000, 1514, 600
	v := leases
	l := newHeldLab(t, leases+1)
	for a := range leases {
		l.hold(a, full)
		l.hold(a, full)
	}
	l.check(t)
	l.hold(v, small)
	if got := l.bytesOf(v); got != small {
		t.Fatalf("a lease holding nothing got %d bytes held, want its %d-byte frame", got, small)
	}
	// It goes on sending: held while there is room or it holds less than
	// the largest holder (one full frame), then dropped.
	for k := 0; l.h.droppedOf(v) == 0; k++ {
		if k == 10 {
			t.Fatalf("a lease got %d bytes held, more than any other's", l.bytesOf(v))
		}
		l.hold(v, small)
	}
	l.check(t)
	l.h.mu.Lock()
	largest, total := 0, l.h.bytes
	for i, q := range l.h.slots {
		if i != v {
			largest = max(largest, q.bytes)
		}
	}
	l.h.mu.Unlock()
	if mine := l.bytesOf(v); mine+small <= largest || total+small <= holdBytes || l.h.droppedOf(v) != 1 {
		t.Errorf("a frame of a lease holding %d bytes (the largest other %d; %d held in all) was dropped (%d)", mine, largest, total, l.h.droppedOf(v))
	}
}

// A lease that holds the most gives up its own oldest frame for its new
// one; the slot's own bound goes first.
func TestHeldLargestHolderGivesItsOwnOldest(t *testing.T) {
	l := newHeldLab(t, 2)
	l.h.budget, l.h.perSlot = 3000, 4
	l.hold(0, 1000)
	l.hold(0, 1000)
	l.hold(1, 900)
	l.hold(0, 1000) // over: slot 0 holds the most, its oldest goes
	l.check(t)
	if l.bytesOf(0) != 2000 || l.bytesOf(1) != 900 || l.h.droppedOf(0) != 1 || l.h.droppedOf(1) != 0 {
		t.Fatalf("slot 0 holds %d (%d dropped), slot 1 %d (%d dropped)", l.bytesOf(0), l.h.droppedOf(0), l.bytesOf(1), l.h.droppedOf(1))
	}
	l.hold(0, 10)
	l.hold(0, 10)
	l.hold(0, 10) // its fifth: its oldest goes, within the budget
	l.check(t)
	if l.bytesOf(0) != 1030 || l.h.droppedOf(0) != 2 {
		t.Fatalf("slot 0 holds %d with %d dropped, want 1030 and 2", l.bytesOf(0), l.h.droppedOf(0))
	}
}

// A frame dropped is counted on its slot only under the lease that sent
// it, and release's reset starts the next lease at zero.
func TestHeldDropsCountOnTheirLease(t *testing.T) {
	l := newHeldLab(t, 2)
	l.h.budget = 2000
	l.hold(0, 1000)
	l.hold(0, 1000)
	l.mu.Lock()
	l.leases[0] = 0 // released: closed
	l.mu.Unlock()
	l.hold(1, 500) // evicts a frame of slot 0's old lease
	if got := l.h.droppedOf(0); got != 0 || l.count("dropped") != 1 {
		t.Errorf("slot 0 counts %d for a frame of its last lease (%d dropped in all)", got, l.count("dropped"))
	}
	l.mu.Lock()
	l.leases[1] = 2<<1 | 1
	l.mu.Unlock()
	l.hold(1, 1500) // would hold more than slot 0: dropped
	if got := l.h.droppedOf(1); got != 1 {
		t.Fatalf("slot 1 counts %d dropped, want 1", got)
	}
	l.h.resetDropped(1)
	if got := l.h.droppedOf(1); got != 0 {
		t.Errorf("after reset, slot 1 counts %d", got)
	}
	l.check(t)
}

// Frames expire by age with no slot sending again: the timer, armed only
// while something is held, takes them (before: they stayed until their own
// slot sent again). Between timer runs, a new frame takes what aged.
func TestHeldFramesExpireByAge(t *testing.T) {
	l := newHeldLab(t, 3)
	// The real clock, a short age: what the timer waits for.
	l.h.now = monotonicNow
	l.h.age = 20 * time.Millisecond
	for i := range 3 {
		l.h.hold(i, 3, monotonicNow(), make([]byte, 100))
		l.h.hold(i, 3, monotonicNow(), make([]byte, 100))
	}
	wait := time.After(1000 * l.h.age)
	for l.count("expired") < 6 {
		select {
		case <-l.events:
		case <-wait:
			t.Fatalf("%d of 6 frames expired after %v", l.count("expired"), 1000*l.h.age)
		}
	}
	l.check(t)
	l.h.mu.Lock()
	armed, held := l.h.armed, l.h.bytes
	l.h.mu.Unlock()
	if armed || held != 0 {
		t.Errorf("after expiry: timer armed %t, %d bytes held", armed, held)
	}

	// On the test's clock: a frame aged past holdFor goes when the next
	// one comes, whatever slot sends it.
	l.h.now = l.now
	l.h.age = holdFor
	l.hold(0, 100)
	l.advance(holdFor + time.Nanosecond)
	l.hold(1, 100)
	l.check(t)
	if l.bytesOf(0) != 0 || l.bytesOf(1) != 100 || l.count("expired") != 7 {
		t.Errorf("slot 0 holds %d, slot 1 %d; %d expired", l.bytesOf(0), l.bytesOf(1), l.count("expired"))
	}
}

// What holding a frame costs netslotd with the budget full, each frame
// evicting the oldest of the largest holder: 4,000 leases take turns.
func BenchmarkHoldFullBudget(b *testing.B) {
	const leases, full = 4000, 1514
	var h holder
	clock := int64(0)
	h.init(leases, func() int64 { return clock }, func(int) uint32 { return 3 }, func(string, int) {})
	defer h.stop()
	frame := make([]byte, full)
	for a := range 3 * holdBytes / full {
		h.hold(a%leases, 3, 0, frame)
	}
	b.ResetTimer()
	for n := range b.N {
		h.hold(n%leases, 3, 0, frame)
	}
}
