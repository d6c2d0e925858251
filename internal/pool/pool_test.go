package pool

import (
	"errors"
	"sync"
	"testing"
)

func TestFIFOAndExhaustion(t *testing.T) {
	p := New(3)
	if _, err := p.Take(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("take from pending pool: %v", err)
	}
	for _, i := range []int{2, 0, 1} {
		if err := p.MarkFree(i); err != nil {
			t.Fatal(err)
		}
	}
	var got []int
	for range 3 {
		i, err := p.Take()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.BeginRelease(i); !errors.Is(err, ErrAcquiring) {
			t.Fatalf("release of a slot being acquired: %v", err)
		}
		p.CommitTake(i)
		got = append(got, i)
	}
	if got[0] != 2 || got[1] != 0 || got[2] != 1 {
		t.Fatalf("order %v, want ready order [2 0 1]", got)
	}
	if _, err := p.Take(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("take from empty pool: %v", err)
	}
	// A released slot goes to the back of the queue.
	if err := p.BeginRelease(0); err != nil {
		t.Fatal(err)
	}
	p.EndRelease(0, true)
	if err := p.BeginRelease(2); err != nil {
		t.Fatal(err)
	}
	p.EndRelease(2, true)
	if i, _ := p.Take(); i != 0 {
		t.Fatalf("took %d, want 0 (released first)", i)
	} else {
		p.CommitTake(i)
	}
	free, leased := p.Counts()
	if free != 1 || leased != 2 {
		t.Fatalf("counts free=%d leased=%d", free, leased)
	}
}

func TestReleaseStates(t *testing.T) {
	p := New(2)
	p.MarkFree(0)
	p.MarkLeased(1)
	if err := p.BeginRelease(0); !errors.Is(err, ErrAlreadyFree) {
		t.Fatalf("release free slot: %v", err)
	}
	if err := p.BeginRelease(1); err != nil {
		t.Fatal(err)
	}
	if err := p.BeginRelease(1); !errors.Is(err, ErrReleasing) {
		t.Fatalf("concurrent release: %v", err)
	}
	p.EndRelease(1, false) // scrub failed: still leased
	if p.State(1) != Leased {
		t.Fatalf("state after failed release: %s", p.State(1))
	}
	if err := p.BeginRelease(5); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("out of range: %v", err)
	}
	if err := p.MarkFree(0); !errors.Is(err, ErrNotPending) {
		t.Fatalf("mark free twice: %v", err)
	}
	p2 := New(3)
	for i := range 3 {
		p2.MarkFree(i)
	}
	i, _ := p2.Take()
	p2.Untake(i)
	if p2.State(i) != Free {
		t.Fatalf("untake left %s", p2.State(i))
	}
	if j, _ := p2.Take(); j == i {
		t.Fatalf("untaken slot %d vended first again", j)
	}
}

func TestNoDoubleVend(t *testing.T) {
	const n = 500
	p := New(n)
	for i := range n {
		p.MarkFree(i)
	}
	var mu sync.Mutex
	seen := map[int]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i, err := p.Take()
				if err != nil {
					return
				}
				mu.Lock()
				if seen[i] {
					t.Errorf("slot %d vended twice", i)
				}
				seen[i] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("vended %d of %d", len(seen), n)
	}
}

func TestWithdraw(t *testing.T) {
	p := New(5)
	for i := range 5 {
		if err := p.MarkFree(i); err != nil {
			t.Fatal(err)
		}
	}
	// Take two so that the ring's head has moved and it wraps.
	a, _ := p.Take()
	b, _ := p.Take()
	p.CommitTake(a)
	for _, from := range []State{Leased, Free, Acquiring} {
		if err := p.Withdraw(a, from); err == nil {
			t.Errorf("a leased slot was withdrawn as %s", from)
		}
	}
	if err := p.Withdraw(b, Free); err == nil {
		t.Error("a half-acquired slot was withdrawn as free")
	}
	if err := p.Withdraw(b, Acquiring); err != nil { // half acquired
		t.Fatal(err)
	}
	if err := p.BeginRelease(a); err != nil {
		t.Fatal(err)
	}
	p.EndRelease(a, true) // free ring: 2 3 4 0
	if err := p.Withdraw(3, Free); err != nil {
		t.Fatal(err)
	}
	if p.State(3) != Pending || p.State(b) != Pending {
		t.Errorf("states %v", p.States())
	}
	if free, leased := p.Counts(); free != 3 || leased != 0 {
		t.Errorf("counts free=%d leased=%d, want 3 0", free, leased)
	}
	// Back once repaired, at the back; never vended twice.
	for _, i := range []int{3, b} {
		if err := p.MarkFree(i); err != nil {
			t.Fatal(err)
		}
	}
	var got []int
	for {
		i, err := p.Take()
		if err != nil {
			break
		}
		got = append(got, i)
	}
	want := []int{2, 4, 0, 3, 1}
	if len(got) != len(want) {
		t.Fatalf("took %v, want %v", got, want)
	}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("took %v, want %v", got, want)
		}
	}
}

func TestFreedWakesAWaiterOnce(t *testing.T) {
	p := New(2)
	ch := p.Freed()
	select {
	case <-ch:
		t.Fatal("closed before any slot was freed")
	default:
	}
	if err := p.MarkFree(1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("not closed when a slot joined the free queue")
	}
	next := p.Freed()
	if next == ch {
		t.Fatal("the next waiter got the closed channel")
	}
	i, err := p.Take()
	if err != nil || i != 1 {
		t.Fatalf("take: %d, %v", i, err)
	}
	p.Untake(i)
	select {
	case <-next:
	default:
		t.Fatal("an untaken slot did not wake the next waiter")
	}
}

// Marked wakes a caller waiting for a pending slot when any pending slot
// is marked free or leased, and only then.
func TestMarkedWakesWhenAPendingSlotIsMarked(t *testing.T) {
	p := New(3)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch := p.Marked()
	if closed(ch) {
		t.Fatal("closed before any slot was marked")
	}
	if err := p.MarkLeased(2); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Fatal("not closed when a pending slot was marked leased")
	}
	ch = p.Marked()
	if err := p.BeginRelease(2); err != nil {
		t.Fatal(err)
	}
	p.EndRelease(2, true)
	if i, err := p.Take(); err != nil || i != 2 {
		t.Fatalf("take: %d, %v", i, err)
	}
	if closed(ch) {
		t.Fatal("closed by a release or a take: no pending slot was marked")
	}
	if err := p.MarkFree(0); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Fatal("not closed when a pending slot was marked free")
	}
}

func TestParseState(t *testing.T) {
	for s := Pending; s <= Acquiring; s++ {
		if got, err := ParseState(s.String()); err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseState("gone"); err == nil {
		t.Error("ParseState accepted an unknown state")
	}
}
