package links

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/testenv"
)

func TestRetryDumpRetriesInterruptedDumps(t *testing.T) {
	key := strconv.Itoa
	calls := 0
	out, err := retryDump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{0}, netlink.ErrDumpInterrupted // partial results: not the answer
		}
		return []int{1, 2}, nil
	}, key)
	if err != nil || !slices.Equal(out, []int{1, 2}) || calls != 3 {
		t.Errorf("got %v, %v after %d calls; want the third, whole dump", out, err, calls)
	}
	// Never whole: the union of the reads, each object once.
	calls = 0
	out, err = retryDump(func() ([]int, error) {
		calls++
		return []int{7, 100 + calls%2}, netlink.ErrDumpInterrupted
	}, key)
	slices.Sort(out)
	if err != nil || calls != dumpAttempts || !slices.Equal(out, []int{7, 100, 101}) {
		t.Errorf("always interrupted: %v, %v after %d calls; want the union of %d reads", out, err, calls, dumpAttempts)
	}
	other := errors.New("netlink: boom")
	calls = 0
	if _, err := retryDump(func() ([]int, error) { calls++; return nil, other }, key); !errors.Is(err, other) || calls != 1 {
		t.Errorf("other error: %v after %d calls, want it at once", err, calls)
	}
}

// TestLinksWhileLinksChange dumps the links of a namespace (its own,
// made for the test) while another thread creates and deletes veths there,
// which makes the kernel mark dumps interrupted now and then: every dump
// must come back whole, and no error reach the caller.
func TestLinksWhileLinksChange(t *testing.T) {
	testenv.PrivateNetns(t)
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	// Enough links that a dump takes many messages, so that changes land
	// in the middle of it.
	for k := range 300 {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("base%d", k)}, PeerName: fmt.Sprintf("bpeer%d", k)}); err != nil {
			t.Fatal(err)
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	defer func() { stop.Store(true); wg.Wait() }()
	wg.Go(func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		for k := 0; !stop.Load(); k++ {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("ch%d", k%50)}, PeerName: fmt.Sprintf("cp%d", k%50)}
			if netlink.LinkAdd(v) == nil && k%2 == 1 {
				netlink.LinkDel(v)
			}
		}
	})
	interrupted := 0
	for range 200 {
		_, err := netlink.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			interrupted++
		}
		links, err := Links(nil)
		if err != nil {
			t.Fatalf("Links: %v", err)
		}
		base := 0
		for _, l := range links {
			if n := l.Attrs().Name; strings.HasPrefix(n, "base") || strings.HasPrefix(n, "bpeer") {
				base++
			}
		}
		if base != 600 {
			t.Fatalf("Links returned %d of the 600 links that never changed", base)
		}
	}
	t.Logf("200 dumps of %d+ links during churn: %d plain dumps were interrupted; every Links came back whole", 600, interrupted)
}
