package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/datapath"
	nslinks "github.com/netslot/netslot/internal/links"
)

// TestLoadCycles runs acquire/release cycles through the API from 64
// concurrent callers, half of them with a VPC attachment, on a pool with an
// uplink: no call may fail, and the daemon's file descriptors and
// goroutines, the slot namespaces, the root namespace's links and nftables
// tables, and the datapath's map entries are the same after as before.
// NETSLOT_LOAD_CYCLES sets the number of cycles (default 10,000).
func TestLoadCycles(t *testing.T) {
	cycles := 10000
	if v, err := strconv.Atoi(os.Getenv("NETSLOT_LOAD_CYCLES")); err == nil && v > 0 {
		cycles = v
	}
	const callers = 64
	p, fab, up := uplinkPool(t, callers+16)
	addr := fmt.Sprintf("127.0.0.1:%d", 20000+(os.Getpid()+1)%20000)
	p.start(append(up, "--metrics-addr", addr)...)
	c := p.client()
	cycle := func(k int, lat *[]time.Duration) error {
		req := &netslotv1.AcquireRequest{Owner: "load"}
		if k%2 == 1 {
			req.Vpc = &netslotv1.VpcAttachment{Vni: 4242, RemoteVtep: fab.VTEP.String(),
				VpcIp: fmt.Sprintf("10.9.%d.%d", k/250, 1+k%250), VpcCidrs: []string{"10.9.0.0/16"}}
		}
		start := time.Now()
		s, err := c.Acquire(ctx(t), req)
		if err != nil {
			return fmt.Errorf("acquire: %w", err)
		}
		*lat = append(*lat, time.Since(start))
		if err := c.Release(ctx(t), s.Id, s.GetLease().GetLeaseId()); err != nil {
			return fmt.Errorf("release %s: %w", s.Id, err)
		}
		return nil
	}
	var warm []time.Duration
	for k := range callers {
		if err := cycle(k, &warm); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	before := p.usage(t, addr)

	start := time.Now()
	lats := make([][]time.Duration, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for w := range callers {
		wg.Go(func() {
			for k := w; k < cycles && errs[w] == nil; k += callers {
				// Each caller's VPC address is its own: attachments in
				// flight never conflict.
				errs[w] = cycle(w, &lats[w])
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	var all []time.Duration
	failed := 0
	for w := range callers {
		all = append(all, lats[w]...)
		if errs[w] != nil {
			failed++
			t.Errorf("caller %d: %v", w, errs[w])
		}
	}
	slices.Sort(all)
	pct := func(q float64) time.Duration { return all[int(float64(len(all)-1)*q)] }
	t.Logf("%d cycles from %d callers in %v (%.0f cycles/s), %d callers failed; acquire through the API p50 %v p90 %v p99 %v max %v",
		len(all), callers, took.Round(time.Millisecond), float64(len(all))/took.Seconds(), failed,
		pct(0.5), pct(0.9), pct(0.99), pct(1))
	time.Sleep(time.Second)
	after := p.usage(t, addr)
	t.Logf("before %+v\nafter  %+v", before, after)
	if after.FDs != before.FDs || after.Netns != before.Netns || after.Links != before.Links ||
		after.NftTables != before.NftTables || after.MapEntries != before.MapEntries {
		t.Errorf("resources grew over %d cycles:\nbefore %+v\nafter  %+v", cycles, before, after)
	}
	// The Go runtime and gRPC start and stop a few goroutines of their
	// own; a leak per cycle would show as thousands.
	if after.Goroutines > before.Goroutines+8 {
		t.Errorf("goroutines %d -> %d over %d cycles", before.Goroutines, after.Goroutines, cycles)
	}
}

type usage struct {
	FDs, Goroutines, Netns, Links, NftTables, MapEntries int
}

// usage measures what the daemon and its pool hold.
func (p *pool) usage(t *testing.T, metricsAddr string) usage {
	t.Helper()
	var u usage
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	u.FDs = len(fds)
	// No keep-alive: an open scrape connection would count as a descriptor.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			u.Goroutines, _ = strconv.Atoi(v)
		}
	}
	resp.Body.Close()
	u.Netns = p.kernelObjects().Pins
	// The pool's own objects only: other jobs on the host may come and go.
	links, err := nslinks.Links(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, p.prefix) {
			u.Links++
		}
	}
	if out, err := run("nft", "list", "tables"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "table ") && strings.Contains(l, p.prefix) {
				u.NftTables++
			}
		}
	}
	maps, _ := filepath.Glob(filepath.Join(datapath.PinDir("", p.prefix), "*"))
	for _, path := range maps {
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			continue // a pinned link, not a map
		}
		var key, val []byte
		it := m.Iterate()
		for it.Next(&key, &val) {
			u.MapEntries++
		}
		m.Close()
	}
	return u
}
