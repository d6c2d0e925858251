package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

// A VM launcher's hard cases against a real daemon, with one client kept
// across the daemon's restarts: readiness, acquires with a request key
// retried after a deadline and after a kill -9 mid-call, errors matched
// with errors.Is, an acquire that waits for a slot another caller
// releases, releases retried after timeouts, and draining.
func TestLauncherHardCases(t *testing.T) {
	const slots = 400
	p := newPool(t, slots)
	// One builder: a boot long enough to be seen. A long drain, ended by
	// a second signal: the test's calls while draining never race the stop.
	args := []string{"--boot-workers", "1", "--drain-grace", "60s"}
	p.launch(args...)
	c := p.client()

	// Booting: NOT_SERVING, acquires refused with NOT_READY; an acquire
	// that waits gets a slot once the pool is ready, and by then health
	// says SERVING.
	sawBooting := false
	for {
		serving, err := c.Serving(ctx(t))
		if err != nil {
			t.Fatalf("health: %v\n%s", err, p.log)
		}
		if serving {
			break
		}
		if !sawBooting {
			sawBooting = true
			// The boot may end between the health check and these calls:
			// then the acquire succeeds and status says ready.
			early, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{})
			switch st, serr := c.Status(ctx(t)); {
			case err == nil && (serr != nil || !st.Ready):
				t.Errorf("an acquire succeeded before status said ready: %v", serr)
			case err == nil:
				if err := c.Release(ctx(t), early.Id, early.Lease.LeaseId); err != nil {
					t.Fatal(err)
				}
			case !errors.Is(err, client.ErrNotReady) || !client.Retryable(err):
				t.Errorf("acquire while booting: %v, want ErrNotReady", err)
			}
			waited, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "early", Wait: true})
			if err != nil {
				t.Fatalf("an acquire that waits for the boot: %v", err)
			}
			if serving, err := c.Serving(ctx(t)); err != nil || !serving {
				t.Errorf("health after a waiting acquire got its slot: %t, %v", serving, err)
			}
			if err := c.Release(ctx(t), waited.Id, waited.Lease.LeaseId); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawBooting {
		t.Error("health said SERVING from the first answer: the boot was not seen")
	}
	if st, err := c.Status(ctx(t)); err != nil || !st.Ready {
		t.Fatalf("SERVING before status says ready: %v, %v", st, err)
	}

	// Keys retried after a deadline: each key ends with one lease.
	leases := map[string]string{} // key -> slot
	for k := range 20 {
		key := fmt.Sprintf("deadline-%d", k)
		req := &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key}
		short, cancel := context.WithTimeout(context.Background(), 150*time.Microsecond)
		_, err := c.Acquire(short, req)
		cancel()
		if err != nil && !client.Uncertain(err) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire %s with a 150 us deadline: %v", key, err)
		}
		s, err := c.Acquire(ctx(t), req)
		if err != nil {
			t.Fatalf("retry of %s: %v", key, err)
		}
		if s.Lease.RequestKey != key || s.Lease.Owner != "launcher" {
			t.Errorf("retry of %s answered lease %+v", key, s.Lease)
		}
		leases[key] = s.Id
	}
	own, err := c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil || len(own) != 20 {
		t.Fatalf("launcher's leases after 20 keys retried: %d, %v", len(own), err)
	}

	// Acquires in flight when the daemon is killed: retried with their
	// keys after the restart, each key has one lease.
	var mu sync.Mutex
	tried := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := range 40 { // paced: the kill falls among them
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				key := fmt.Sprintf("kill-%d-%d", w, n)
				mu.Lock()
				tried[key] = true
				mu.Unlock()
				call, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := c.Acquire(call, &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key})
				cancel()
				if err != nil {
					if !client.Uncertain(err) {
						t.Errorf("acquire %s while the daemon was killed: %v (certain)", key, err)
					}
					return
				}
			}
		})
	}
	time.Sleep(40 * time.Millisecond)
	p.kill()
	close(stop)
	wg.Wait()
	if len(tried) > slots-40 {
		t.Fatalf("%d keys tried: the pool is too small for the test", len(tried))
	}
	p.launch(args...)
	p.waitReady()
	restarted := time.Now()
	if _, err := c.Status(ctx(t)); err != nil {
		t.Fatalf("the client after the restart: %v", err)
	}
	t.Logf("the client's first call after the restart answered %v after status said ready", time.Since(restarted).Round(time.Millisecond))
	for key := range tried {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: key})
		if err != nil {
			t.Fatalf("retry of %s after the restart: %v", key, err)
		}
		leases[key] = s.Id
	}
	own, err = c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil || len(own) != len(leases) {
		t.Fatalf("launcher's leases: %d for %d keys, %v", len(own), len(leases), err)
	}
	bySlot := map[string]string{}
	for key, id := range leases {
		if other, ok := bySlot[id]; ok {
			t.Errorf("keys %s and %s share slot %s", key, other, id)
		}
		bySlot[id] = key
	}
	t.Logf("%d acquires in flight or done when the daemon was killed: each key has one lease after the restart", len(tried))

	// Errors a program acts on.
	if _, err := c.Get(ctx(t), p.prefix+"-99999"); !errors.Is(err, client.ErrUnknownSlot) {
		t.Errorf("get of an unknown slot: %v", err)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{EgressAllow: []string{"garbage"}}); !errors.Is(err, client.ErrInvalid) || client.Retryable(err) {
		t.Errorf("acquire with a bad CIDR: %v", err)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "someone else", RequestKey: "deadline-0"}); !errors.Is(err, client.ErrKeyReused) {
		t.Errorf("a key reused by another request: %v", err)
	}
	first := own[0]
	if err := c.Release(ctx(t), first.Id, "0123456789abcdef0123456789abcdef"); !errors.Is(err, client.ErrLeaseMismatch) {
		t.Errorf("release with another lease id: %v", err)
	}

	// The pool emptied: ErrPoolEmpty at once, and an acquire that waits
	// gets the slot another caller releases.
	for {
		_, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "filler"})
		if errors.Is(err, client.ErrPoolEmpty) {
			break
		}
		if err != nil {
			t.Fatalf("filling the pool: %v", err)
		}
	}
	got := make(chan *netslotv1.Slot, 1)
	go func() {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "waiter", Wait: true})
		if err != nil {
			t.Errorf("the waiting acquire: %v", err)
		}
		got <- s
	}()
	time.Sleep(100 * time.Millisecond)
	if err := c.Release(ctx(t), first.Id, first.Lease.LeaseId); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s == nil || s.Id != first.Id || s.Lease.Owner != "waiter" {
		t.Fatalf("the waiter got %v, want %s", s, first.Id)
	}

	// Releases retried after timeouts: each ends its lease once.
	own, err = c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range own[:10] {
		short, cancel := context.WithTimeout(context.Background(), 100*time.Microsecond)
		err := c.Release(short, s.Id, s.Lease.LeaseId)
		cancel()
		if err != nil && !client.Uncertain(err) {
			t.Fatalf("release %s with a 100 us deadline: %v", s.Id, err)
		}
		for range 2 {
			if err := c.Release(ctx(t), s.Id, s.Lease.LeaseId); err != nil {
				t.Errorf("release %s retried: %v", s.Id, err)
			}
		}
	}
	if left, err := c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"}); err != nil || len(left) != len(own)-10 {
		t.Errorf("after 10 releases retried: %d of %d leases left, %v", len(left), len(own), err)
	}

	// Draining: SIGTERM; acquires refused, releases served, health and
	// status say so, then the daemon exits.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := c.Status(ctx(t))
		if err == nil && st.Draining {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never said draining: %v, %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{}); !errors.Is(err, client.ErrDraining) {
		t.Errorf("acquire while draining: %v", err)
	}
	if serving, err := c.Serving(ctx(t)); err != nil || serving {
		t.Errorf("health while draining: %t, %v", serving, err)
	}
	if err := c.Release(ctx(t), own[10].Id, own[10].Lease.LeaseId); err != nil {
		t.Errorf("release while draining: %v", err)
	}
	// A second signal ends the drain at once.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Errorf("netslotd did not stop at the second signal:\n%s", p.log)
	}
	p.cmd = nil
}

// Releases made right after a kill -9 and restart, while the new daemon
// adopts its slots (its leases are in the store; the pool knows a slot
// leased only once it is adopted): each waits for its slot's adoption
// and ends its lease. Before, one that landed in that window answered
// NOT_LEASED, which the docs and the client call final: the lease leaked.
func TestReleaseWhileTheRestartedDaemonAdopts(t *testing.T) {
	const slots, kept = 400, 30
	p := newPool(t, slots)
	args := []string{"--boot-workers", "1"} // one builder: adoption in index order, long enough to be seen
	p.start(args...)
	c := p.client()
	var held []*netslotv1.Slot
	for range slots {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "launcher"})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	// The leases kept are the last slots the restarted daemon adopts.
	slices.SortFunc(held, func(a, b *netslotv1.Slot) int { return int(a.Index) - int(b.Index) })
	for _, s := range held[:slots-kept] {
		if err := c.Release(ctx(t), s.Id, s.Lease.LeaseId); err != nil {
			t.Fatal(err)
		}
	}
	held = held[slots-kept:]

	p.kill()
	p.launch(args...)
	// The launcher releases them all at once, as soon as the daemon
	// answers; each asks first what state its slot is in. A release waits
	// for its slot's adoption: as long as a boot may take (waitReady's).
	boot, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pending atomic.Int32
	var wg sync.WaitGroup
	for _, s := range held {
		wg.Go(func() {
			got, err := c.Get(boot, s.Id)
			if err != nil {
				t.Errorf("get %s after the restart: %v", s.Id, err)
				return
			}
			if got.State == "pending" {
				pending.Add(1)
			}
			if err := c.Release(boot, s.Id, s.Lease.LeaseId); err != nil {
				t.Errorf("release %s (%s when asked just before) while the daemon adopts: %v", s.Id, got.State, err)
			}
		})
	}
	wg.Wait()
	if pending.Load() == 0 {
		t.Fatalf("every slot was adopted before its release: the boot was too quick for the test\n%s", p.log)
	}
	t.Logf("%d of %d releases made while their slot was still pending", pending.Load(), kept)
	p.waitReady()
	if left, err := c.List(ctx(t), &netslotv1.ListRequest{Owner: "launcher"}); err != nil || len(left) != 0 {
		t.Errorf("leases left after the releases: %d, %v", len(left), err)
	}
	if st, err := c.Status(ctx(t)); err != nil || st.Leased != 0 || st.Free != slots {
		t.Errorf("after the releases: %v, %v", st, err)
	}
}

// A rolling restart under a launcher's waiting acquires: SIGTERM drains
// the daemon, which answers them DRAINING, then stops; a second daemon
// starts on the same state dir and socket; the acquires, from the Go
// client and from the CLI, each with its request key, get their slots
// from it. Before, the waiting acquire failed at once with DRAINING.
func TestWaitingAcquireRidesARollingRestart(t *testing.T) {
	p := newPool(t, 2)
	// A long drain, ended by a second signal once the acquires are
	// seen refused: the test's calls never race the stop.
	args := []string{"--drain-grace", "60s"}
	p.start(args...)
	var drained atomic.Int32
	c, err := client.Dial(p.socket, client.WithDialOptions(grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			for _, d := range status.Convert(err).Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok && info.Reason == netslotv1.ReasonDraining {
					drained.Add(1)
				}
			}
			return err
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !testutil.Wait(30*time.Second, func() bool { st, err := c.Status(ctx(t)); return err == nil && st.Draining }) {
		t.Fatalf("status never said draining:\n%s", p.log)
	}
	type result struct {
		key, id string
		err     error
	}
	got := make(chan result, 2)
	call, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli := exec.CommandContext(call, filepath.Join(binDir, "netslot"), "--socket", p.socket, "--timeout", "2m",
		"acquire", "--wait", "--key", "vm-cli", "--owner", "launcher", "-o", "json")
	var cliOut bytes.Buffer
	cli.Stdout, cli.Stderr = &cliOut, &cliOut
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cli.Wait()
		var s slotJSON
		if err == nil {
			err = json.Unmarshal(cliOut.Bytes(), &s)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s", err, cliOut.String())
		}
		got <- result{"vm-cli", s.ID, err}
	}()
	go func() {
		s, err := c.Acquire(call, &netslotv1.AcquireRequest{Owner: "launcher", RequestKey: "vm-go", Wait: true})
		got <- result{"vm-go", s.GetId(), err}
	}()
	stillWaiting := func(when string) {
		t.Helper()
		select {
		case r := <-got:
			t.Fatalf("%s, the acquire with key %s gave up: %v", when, r.key, r.err)
		default:
		}
	}
	if !testutil.Wait(30*time.Second, func() bool { stillWaiting("on the draining daemon"); return drained.Load() >= 2 }) {
		t.Fatal("the draining daemon never answered the waiting acquire DRAINING")
	}
	// A second signal ends the drain: the daemon stops.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("netslotd did not stop at the second signal:\n%s", p.log)
	}
	stillWaiting("with no daemon")

	// The next daemon, on the same state dir and socket.
	p.launch(args...)
	ids := map[string]string{}
	for range 2 {
		r := <-got
		if r.err != nil {
			t.Fatalf("the acquire with key %s across the restart: %v\n%s", r.key, r.err, p.log)
		}
		ids[r.key] = r.id
	}
	if ids["vm-go"] == ids["vm-cli"] {
		t.Errorf("both keys got slot %s", ids["vm-go"])
	}
	for key, id := range ids {
		l, err := c.List(ctx(t), &netslotv1.ListRequest{RequestKey: key})
		if err != nil || len(l) != 1 || l[0].Id != id || l[0].Lease.Owner != "launcher" {
			t.Errorf("the lease of key %s on the next daemon: %v, %v; want slot %s", key, l, err, id)
		}
	}
	t.Logf("the draining daemon answered DRAINING %d times; both acquires got their slot from the next daemon", drained.Load())
}

// A launcher whose VMM runs jailed: acquire through the CLI with
// --tap-uid and --tap-gid, take the jailer's arguments from -o
// firecracker, and attach as that uid and gid, with no capabilities, in
// the slot's namespace, through a tun node the jailer made in a mount
// namespace of the VMM's own, as Firecracker's jailer does in its
// chroot. Through the host's /dev/net/tun, which is root's only here,
// the tap's owner cannot even open the device: the owner alone is not
// enough. After the release, the tap is root's again.
func TestLauncherJailedVMM(t *testing.T) {
	p := newPool(t, 2)
	p.start()
	out, err := p.cli("acquire", "--key", "vm-jailed", "--tap-uid", "4242", "--tap-gid", "4243", "-o", "firecracker")
	if err != nil {
		t.Fatal(err)
	}
	var fc struct {
		NetworkInterface struct {
			HostDevName string `json:"host_dev_name"`
		} `json:"network_interface"`
		Netns   string  `json:"jailer_netns"`
		UID     *uint32 `json:"jailer_uid"`
		GID     *uint32 `json:"jailer_gid"`
		SlotID  string  `json:"slot_id"`
		LeaseID string  `json:"lease_id"`
	}
	if err := json.Unmarshal([]byte(out), &fc); err != nil || fc.UID == nil || fc.GID == nil {
		t.Fatalf("-o firecracker: %v\n%s", err, out)
	}
	if fc.Netns != filepath.Join(slot.NetnsDir, fc.SlotID) {
		t.Errorf("the jailer's --netns is %q, want the namespace's path %s", fc.Netns, filepath.Join(slot.NetnsDir, fc.SlotID))
	}
	vmm := testutil.NewJailedVMM(t)
	if err := vmm.Attach(fc.Netns, fc.NetworkInterface.HostDevName, *fc.UID, *fc.GID); err != nil {
		t.Fatalf("the jailed VMM, through its jailer's tun node: %v", err)
	}
	var host unix.Stat_t
	if err := unix.Stat("/dev/net/tun", &host); err != nil {
		t.Fatal(err)
	}
	err = vmm.AttachHostTun(fc.Netns, fc.NetworkInterface.HostDevName, *fc.UID, *fc.GID)
	switch {
	case host.Mode&0o006 == 0 && !errors.Is(err, unix.EACCES):
		t.Errorf("the jailed VMM, through the host's /dev/net/tun (mode %#o): %v, want EACCES", host.Mode&0o777, err)
	case host.Mode&0o006 != 0 && err != nil:
		t.Errorf("the jailed VMM, through the host's /dev/net/tun (mode %#o, open to all): %v", host.Mode&0o777, err)
	default:
		t.Logf("through the host's /dev/net/tun (mode %#o): %v", host.Mode&0o777, err)
	}
	if _, err := p.cli("release", fc.SlotID, "--lease", fc.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := vmm.Attach(fc.Netns, fc.NetworkInterface.HostDevName, *fc.UID, *fc.GID); !errors.Is(err, unix.EPERM) {
		t.Errorf("the last lease's jailed VMM on the released tap: %v, want EPERM", err)
	}
}
