package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
)

// TestCrashChaos kills the daemon with SIGKILL at random points (during
// boot or adoption, during a burst of acquires, during a burst of
// releases) and restarts it, NETSLOT_CHAOS_TRIALS times (default 10).
// After every restart:
//   - every acquire the daemon acknowledged is still held, with its lease
//     id, and every acknowledged release is not;
//   - no slot was vended twice while held;
//   - the kernel holds exactly the pool's objects (namespace pins, host
//     veths, root nftables table, datapath pins, policy rule);
//   - once everything is released, the daemon's descriptors, the links,
//     nftables tables and datapath map entries are what a clean pool has.
//
// Acquires in flight when the daemon died may or may not have been
// recorded: the tenant finds those with list (here, by their owner label)
// and releases them.
func TestCrashChaos(t *testing.T) {
	trials := 10
	if v, err := strconv.Atoi(os.Getenv("NETSLOT_CHAOS_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("NETSLOT_CHAOS_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (NETSLOT_CHAOS_SEED reruns it)", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	const slots = 40
	p, fab, up := uplinkPool(t, slots)
	addr := fmt.Sprintf("127.0.0.1:%d", 20000+(os.Getpid()+2)%20000)
	up = append(up, "--metrics-addr", addr)
	p.start(up...)
	// As below: the server closes a finished client's connection (the
	// CLI's, here) asynchronously, so figures are taken once it settled.
	time.Sleep(500 * time.Millisecond)
	clean := p.usage(t, addr)
	want := objects{Pins: slots, HostVeths: slots, RootTables: 1, BPFPinDirs: 1, RouteRules: 1, TableRoutes: 2, Backstops: 2}

	held := map[string]string{}      // slot id -> lease id, acknowledged and not released
	releasing := map[string]string{} // releases sent, not acknowledged: done or not
	released := map[string]string{}  // releases acknowledged since the last restart
	var mu sync.Mutex
	kills := map[string]int{}
	var acked, releases, ambiguous, checked int
	for trial := range trials {
		phase := []string{"boot", "acquire", "release"}[trial%3]
		c, err := client.Dial(p.socket)
		if err != nil {
			t.Fatal(err)
		}
		// The calls in flight end at the kill: a release would otherwise
		// wait for the next daemon (the client tries it again).
		calls, endCalls := context.WithCancel(ctx(t))
		var wg sync.WaitGroup
		switch phase {
		case "boot":
			// The daemon is up: kill it, relaunch and kill it again while
			// it adopts (or rebuilds) its slots.
			p.kill()
			p.launch(up...)
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		case "acquire":
			for w := range 8 {
				wg.Go(func() {
					for k := 0; ; k++ {
						req := &netslotv1.AcquireRequest{Owner: "chaos"}
						if k%2 == 0 {
							req.Vpc = &netslotv1.VpcAttachment{Vni: 4242, RemoteVtep: fab.VTEP.String(),
								VpcIp: fmt.Sprintf("10.9.%d.%d", trial, 1+w*20+k%20), VpcCidrs: []string{"10.9.0.0/16"}}
						}
						s, err := c.Acquire(calls, req)
						if err != nil {
							return // exhausted, or the daemon is gone
						}
						mu.Lock()
						if old, ok := held[s.Id]; ok {
							t.Errorf("slot %s vended twice: lease %s still held, now %s", s.Id, old, s.Lease.GetLeaseId())
						}
						held[s.Id] = s.Lease.GetLeaseId()
						acked++
						mu.Unlock()
					}
				})
			}
			time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		case "release":
			mu.Lock()
			var ids []string
			for id := range held {
				ids = append(ids, id)
			}
			mu.Unlock()
			for w := range 8 {
				wg.Go(func() {
					for k := w; k < len(ids); k += 8 {
						mu.Lock()
						lease := held[ids[k]]
						mu.Unlock()
						err := c.Release(calls, ids[k], lease)
						mu.Lock()
						if err != nil {
							releasing[ids[k]] = lease
							ambiguous++
						} else {
							released[ids[k]] = lease
							releases++
						}
						delete(held, ids[k])
						mu.Unlock()
						if err != nil {
							return
						}
					}
				})
			}
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		}
		p.kill()
		kills[phase]++
		endCalls()
		wg.Wait()
		c.Close()

		p.start(up...)
		if got := p.kernelObjects(); got != want {
			t.Fatalf("trial %d (%s): kernel objects %+v, want %+v", trial, phase, got, want)
		}
		c, err = client.Dial(p.socket)
		if err != nil {
			t.Fatal(err)
		}
		list, err := c.List(ctx(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		leased := map[string]string{}
		for _, s := range list {
			if s.State == "leased" {
				leased[s.Id] = s.Lease.GetLeaseId()
			}
		}
		checked += len(held)
		for id, lease := range held {
			if leased[id] != lease {
				t.Errorf("trial %d (%s): acknowledged lease %s of %s lost (slot now has %q)", trial, phase, lease, id, leased[id])
			}
		}
		// An acknowledged release stays done.
		for id, lease := range released {
			if leased[id] == lease {
				t.Errorf("trial %d (%s): acknowledged release of %s (lease %s) undone by the restart", trial, phase, id, lease)
			}
			delete(released, id)
		}
		// A release the daemon died during happened or not, nothing else.
		for id, lease := range releasing {
			switch leased[id] {
			case "":
			case lease:
				held[id] = lease
			default:
				t.Errorf("trial %d (%s): slot %s, released during the kill, has lease %s", trial, phase, id, leased[id])
			}
			delete(releasing, id)
		}
		// Leases recorded but not acknowledged: released by their tenant.
		for id, lease := range leased {
			if _, ok := held[id]; !ok {
				if err := c.Release(ctx(t), id, lease); err != nil {
					t.Errorf("trial %d: release unacknowledged lease of %s: %v", trial, id, err)
				}
			}
		}
		// Every third trial ends with everything released: the pool must
		// be back to what a clean one holds (no client connected).
		if trial%3 == 2 {
			for id, lease := range held {
				if err := c.Release(ctx(t), id, lease); err != nil {
					t.Errorf("trial %d: release %s: %v", trial, id, err)
				}
				delete(held, id)
			}
			c.Close()
			c = nil
			same := func(got usage) bool {
				return got.FDs == clean.FDs && got.Links == clean.Links && got.NftTables == clean.NftTables &&
					got.MapEntries == clean.MapEntries && got.Netns == clean.Netns
			}
			got := p.usage(t, addr)
			for deadline := time.Now().Add(3 * time.Second); !same(got) && time.Now().Before(deadline); got = p.usage(t, addr) {
				time.Sleep(100 * time.Millisecond)
			}
			if !same(got) {
				t.Errorf("trial %d: after releasing everything %+v, a clean pool has %+v", trial, got, clean)
			}
		}
		if c != nil {
			c.Close()
		}
	}
	t.Logf("%d trials, kills by phase %v; %d acquires and %d releases acknowledged, %d releases cut by a kill; %d held leases checked after restarts",
		trials, kills, acked, releases, ambiguous, checked)

	// Teardown killed half way, then run again, leaves nothing (checked by
	// the pool's cleanup).
	p.kill()
	td := p.teardownCmd()
	if err := td.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
	td.Process.Kill()
	td.Wait()
}
