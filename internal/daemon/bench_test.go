package daemon_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testutil"
)

func BenchmarkAcquireRelease(b *testing.B) {
	p := testutil.StartPool(b, 16)
	b.ResetTimer()
	for b.Loop() {
		s, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.D.Release(s.ID, s.Lease.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquireVPC times Acquire with a VPC attachment (the flip from
// the dummy VNI: map updates only) and reports its percentiles; releases
// run outside the timed part.
func BenchmarkAcquireVPC(b *testing.B) {
	// The store on tmpfs, as on a host whose /run is one.
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testutil.NewConfig(16)
	fab := testutil.NewFabric(b, cfg.Prefix[1:], cfg.SlotCIDR)
	p := testutil.StartPoolOpts(b, daemon.Options{Config: cfg, StateDir: dir,
		Uplink: fab.Uplink, UnderlayIP: fab.Underlay, UplinkGateway: fab.Gateway})
	var atts []*slot.Attachment
	for i := range 16 {
		a, err := slot.ParseAttachment(4242, "198.18.0.9", fmt.Sprintf("10.9.0.%d", 10+i), []string{"10.9.0.0/24", "10.10.0.0/16"})
		if err != nil {
			b.Fatal(err)
		}
		atts = append(atts, a)
	}
	timeAcquires(b, p, 16, func(k int) daemon.AcquireRequest { return daemon.AcquireRequest{VPC: atts[k]} })
}

// timeAcquires times the acquires of b's loop, req(k) the k-th of each
// batch of n (the pool's size), releases each batch outside the timed
// part, and reports the percentiles.
func timeAcquires(b *testing.B, p *testutil.Pool, n int, req func(k int) daemon.AcquireRequest) {
	var lat []time.Duration
	var held []daemon.SlotInfo
	release := func() {
		b.StopTimer()
		for _, s := range held {
			if err := p.D.Release(s.ID, s.Lease.ID); err != nil {
				b.Fatal(err)
			}
		}
		held = held[:0]
		b.StartTimer()
	}
	for b.Loop() {
		start := time.Now()
		s, err := p.D.Acquire(context.Background(), req(len(held)))
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if held = append(held, s); len(held) == n {
			release()
		}
	}
	release()
	reportPercentiles(b, lat)
}

// reportPercentiles reports the median and the 99th percentile of lat.
func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}

// BenchmarkRelease times Release of a slot just acquired (the scrub: tap0
// attached and reset, the devices, neighbours, firewall and datapath
// entries), the acquires outside the timed part, and reports its
// percentiles.
func BenchmarkRelease(b *testing.B) {
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	p := testutil.StartPoolWith(b, testutil.NewConfig(16), dir, "")
	var lat []time.Duration
	for b.Loop() {
		b.StopTimer()
		s, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		err = p.D.Release(s.ID, s.Lease.ID)
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	reportPercentiles(b, lat)
}

// BenchmarkAcquireTapOwner times Acquire without and with a tap owner
// (acquire --tap-uid/--tap-gid: the slot's tap is attached, given and
// detached, and the detach waits for an RCU grace period), side by side,
// with their percentiles; releases run outside the timed part.
func BenchmarkAcquireTapOwner(b *testing.B) {
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	const n = 16
	p := testutil.StartPoolWith(b, testutil.NewConfig(n), dir, "")
	for _, bc := range []struct {
		name string
		req  daemon.AcquireRequest
	}{
		{"plain", daemon.AcquireRequest{}},
		{"tap_owner", daemon.AcquireRequest{TapOwner: &slot.TapOwner{UID: 4242, GID: 4243}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			timeAcquires(b, p, n, func(int) daemon.AcquireRequest { return bc.req })
		})
	}
}

// BenchmarkHostVethCheck times what a loss of link events, or a write to
// net.ipv4.ip_forward, costs the daemon: a check of every host veth of a
// 1,000-slot pool by ifindex ("probe"), against the root-namespace link
// dump it replaced ("dump", which reads every link of the host: run it
// beside another pool to see that grow). Each reports links in the root
// namespace.
func BenchmarkHostVethCheck(b *testing.B) {
	p := testutil.StartPool(b, 1000)
	all, err := links.Links(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("probe", func(b *testing.B) {
		for b.Loop() {
			p.D.CheckHostVeths()
		}
		b.ReportMetric(float64(len(all)), "root-links")
	})
	b.Run("dump", func(b *testing.B) {
		for b.Loop() {
			ls, err := links.Links(nil)
			if err != nil {
				b.Fatal(err)
			}
			have := make(map[int]string, len(ls))
			for _, l := range ls {
				have[l.Attrs().Index] = l.Attrs().Name
			}
		}
		b.ReportMetric(float64(len(all)), "root-links")
	})
}
