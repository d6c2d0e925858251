package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// linkBatch writes an `ip -batch` file of n veth pairs named
// <name><k>a/<name><k>b, added (add) or deleted.
func linkBatch(t *testing.T, name string, n int, add bool) string {
	t.Helper()
	var b strings.Builder
	for k := range n {
		if add {
			fmt.Fprintf(&b, "link add %s%da type veth peer name %s%db\n", name, k, name, k)
		} else {
			fmt.Fprintf(&b, "link del %s%da\n", name, k)
		}
	}
	path := filepath.Join(t.TempDir(), fmt.Sprintf("%s-%t", name, add))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStartWhileLinksChurn starts a 1,000-slot pool, and restarts it with
// leases held, on a host with 4,000 other links in the root namespace
// while a loop adds and deletes 200 veth pairs the whole time (as another
// pool booting, a CNI plugin or other VMs do): no root-namespace dump
// comes back whole then. Both starts must succeed, the restart must adopt
// every slot (none rebuilt under its tenant) and keep every lease.
func TestStartWhileLinksChurn(t *testing.T) {
	p := newPool(t, 1000)
	tag := p.prefix[1:]
	static, churn := "zs"+tag, "zc"+tag
	// 4,000 links that stay: 2,000 veth pairs.
	if out, err := exec.Command("ip", "-batch", linkBatch(t, static, 2000, true)).CombinedOutput(); err != nil {
		t.Fatalf("static links: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "-force", "-batch", linkBatch(t, static, 2000, false)).Run() })
	add, del := linkBatch(t, churn, 200, true), linkBatch(t, churn, 200, false)
	var stop atomic.Bool
	var rounds atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			exec.Command("ip", "-force", "-batch", add).Run()
			exec.Command("ip", "-force", "-batch", del).Run()
			rounds.Add(1)
		}
	})
	stopChurn := func() {
		if !stop.Swap(true) {
			wg.Wait()
			exec.Command("ip", "-force", "-batch", del).Run()
		}
	}
	t.Cleanup(stopChurn)
	// The churn must be what it is meant to be: root link dumps that do
	// not come back whole.
	interrupted := 0
	for range 20 {
		var stderr strings.Builder
		cmd := exec.Command("ip", "-o", "link", "show")
		cmd.Stderr = &stderr
		cmd.Run()
		if strings.Contains(stderr.String(), "Dump was interrupted") {
			interrupted++
		}
	}
	if interrupted == 0 {
		t.Fatal("20 root link dumps during the churn, none interrupted: the test would prove nothing")
	}
	t.Logf("during the churn, %d of 20 root link dumps were interrupted", interrupted)

	start := time.Now()
	p.start()
	t.Logf("1,000 slots ready in %v with 4,000 other links churning", time.Since(start).Round(time.Millisecond))
	c := p.client()
	leases := map[string]string{}
	for range 50 {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "churn"})
		if err != nil {
			t.Fatal(err)
		}
		leases[s.Id] = s.GetLease().GetLeaseId()
	}
	p.kill()
	start = time.Now()
	p.start()
	t.Logf("restart with 50 leases in %v", time.Since(start).Round(time.Millisecond))
	st := p.status()
	if st.Boot.Adopted != 1000 || st.Boot.Created != 0 || st.Boot.Repaired != 0 || st.Leased != 50 {
		t.Fatalf("restart under churn: %+v, want all 1,000 slots adopted and 50 leased", st)
	}
	for id, lease := range leases {
		if err := c.Release(ctx(t), id, lease); err != nil {
			t.Errorf("release %s: %v", id, err)
		}
	}
	stopChurn()
	t.Logf("churn: %d rounds of 200 veth pairs added and deleted", rounds.Load())
	if o := p.kernelObjects(); o.Pins != 1000 || o.HostVeths != 1000 {
		t.Errorf("objects after the churn: %+v", o)
	}
}
