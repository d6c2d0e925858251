// Package pool tracks which slots are free, leased or busy. It is pure
// bookkeeping: the daemon does the kernel work and tells the pool about it.
package pool

import (
	"errors"
	"fmt"
	"sync"
)

// State of one slot.
type State uint8

const (
	Pending   State = iota // not ready yet (being created or repaired)
	Free                   // ready and vendable
	Leased                 // held by a tenant
	Releasing              // being scrubbed, not vendable
	Acquiring              // taken, lease not yet complete: not releasable
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Free:
		return "free"
	case Leased:
		return "leased"
	case Releasing:
		return "releasing"
	case Acquiring:
		return "acquiring"
	}
	return fmt.Sprintf("state(%d)", s)
}

// ParseState is the inverse of State.String.
func ParseState(name string) (State, error) {
	for s := Pending; s <= Acquiring; s++ {
		if s.String() == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("unknown slot state %q (want pending, free, leased, releasing or acquiring)", name)
}

// Errors callers map to API status codes.
var (
	ErrExhausted   = errors.New("no free slot")
	ErrNotLeased   = errors.New("slot is not leased")
	ErrOutOfRange  = errors.New("slot index out of range")
	ErrReleasing   = errors.New("slot is being released")
	ErrAcquiring   = errors.New("slot is being acquired")
	ErrNotPending  = errors.New("slot is not pending")
	ErrAlreadyFree = errors.New("slot is already free")
)

// Pool is a FIFO of free slots plus the state of every slot. A slot freed
// last is vended last, which gives a released slot the longest rest before a
// new tenant sees it. All methods are O(1) and safe for concurrent use.
type Pool struct {
	mu    sync.Mutex
	state []State
	// free is a ring buffer of free indices.
	free       []int
	head, size int
	leased     int
	// freed is closed at the next slot that joins the free queue, marked
	// at the next pending slot marked free or leased (nil: no one waits).
	freed, marked chan struct{}
}

// New returns a pool of n slots, all pending.
func New(n int) *Pool {
	return &Pool{state: make([]State, n), free: make([]int, n)}
}

func (p *Pool) push(i int) {
	p.free[(p.head+p.size)%len(p.free)] = i
	p.size++
	if p.freed != nil {
		close(p.freed)
		p.freed = nil
	}
}

// Freed returns a channel closed when a slot next joins the free queue:
// a caller that found the pool empty takes it before trying again, so
// that no slot freed in between goes unnoticed.
func (p *Pool) Freed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freed == nil {
		p.freed = make(chan struct{})
	}
	return p.freed
}

// Marked returns a channel closed when a pending slot is next marked
// free or leased: a caller that found a slot pending (a release while
// the daemon boots) takes it before looking again, so that no marking in
// between goes unnoticed.
func (p *Pool) Marked() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.marked == nil {
		p.marked = make(chan struct{})
	}
	return p.marked
}

func (p *Pool) mark(i int, s State) {
	p.state[i] = s
	if p.marked != nil {
		close(p.marked)
		p.marked = nil
	}
}

// MarkFree makes a pending slot vendable.
func (p *Pool) MarkFree(i int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < 0 || i >= len(p.state) {
		return ErrOutOfRange
	}
	if p.state[i] != Pending {
		return fmt.Errorf("mark slot %d free: %w (is %s)", i, ErrNotPending, p.state[i])
	}
	p.mark(i, Free)
	p.push(i)
	return nil
}

// MarkLeased records a pending slot as leased (used when adopting leases at
// restart).
func (p *Pool) MarkLeased(i int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < 0 || i >= len(p.state) {
		return ErrOutOfRange
	}
	if p.state[i] != Pending {
		return fmt.Errorf("mark slot %d leased: %w (is %s)", i, ErrNotPending, p.state[i])
	}
	p.mark(i, Leased)
	p.leased++
	return nil
}

// Take removes the oldest free slot from the pool and marks it Acquiring:
// counted as leased, but not releasable until CommitTake (a late release
// from a previous tenant must not free a slot whose new lease is half made).
func (p *Pool) Take() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.size > 0 {
		i := p.free[p.head]
		p.head = (p.head + 1) % len(p.free)
		p.size--
		if p.state[i] != Free { // cannot happen; keep the ring honest
			continue
		}
		p.state[i] = Acquiring
		p.leased++
		return i, nil
	}
	return 0, ErrExhausted
}

// CommitTake completes a Take: the slot is Leased.
func (p *Pool) CommitTake(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[i] == Acquiring {
		p.state[i] = Leased
	}
}

// Untake undoes a Take whose lease could not be completed: the slot goes
// to the back of the free queue, so that a slot that failed is not the
// next one tried.
func (p *Pool) Untake(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[i] != Acquiring {
		return
	}
	p.state[i] = Free
	p.leased--
	p.push(i)
}

// BeginRelease moves a leased slot to Releasing so that no one else can
// release or lease it while it is scrubbed.
func (p *Pool) BeginRelease(i int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < 0 || i >= len(p.state) {
		return ErrOutOfRange
	}
	switch p.state[i] {
	case Leased:
		p.state[i] = Releasing
		return nil
	case Releasing:
		return ErrReleasing
	case Acquiring:
		return ErrAcquiring
	case Free:
		return ErrAlreadyFree
	default:
		return fmt.Errorf("%w (is %s)", ErrNotLeased, p.state[i])
	}
}

// EndRelease finishes a release: ok returns the slot to the free queue; !ok
// (the scrub failed) puts it back to Leased so the release can be retried.
func (p *Pool) EndRelease(i int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[i] != Releasing {
		return
	}
	if !ok {
		p.state[i] = Leased
		return
	}
	p.state[i] = Free
	p.leased--
	p.push(i)
}

// Withdraw takes slot i out of the pool (Pending) for repair if it is in
// state from: Free, or Acquiring (by the caller that took it); MarkFree
// returns it. It is O(free slots): for the rare slot found damaged.
func (p *Pool) Withdraw(i int, from State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < 0 || i >= len(p.state) {
		return ErrOutOfRange
	}
	if p.state[i] != from {
		return fmt.Errorf("withdraw slot %d: is %s, not %s", i, p.state[i], from)
	}
	switch p.state[i] {
	case Acquiring:
		p.leased--
	case Free:
		kept := 0
		for k := range p.size {
			if j := p.free[(p.head+k)%len(p.free)]; j != i {
				p.free[(p.head+kept)%len(p.free)] = j
				kept++
			}
		}
		p.size = kept
	default:
		return fmt.Errorf("withdraw slot %d: is %s", i, p.state[i])
	}
	p.state[i] = Pending
	return nil
}

// State reports slot i's state.
func (p *Pool) State(i int) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state[i]
}

// States copies every slot's state.
func (p *Pool) States() []State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]State(nil), p.state...)
}

// Counts reports the number of free and leased slots (releasing slots count
// as leased until they are back in the pool).
func (p *Pool) Counts() (free, leased int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size, p.leased
}
