package daemon_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/daemon"
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
	var lat []time.Duration
	var held []daemon.SlotInfo
	for b.Loop() {
		start := time.Now()
		s, err := p.D.Acquire(context.Background(), daemon.AcquireRequest{VPC: atts[len(held)]})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		held = append(held, s)
		if len(held) == 16 {
			// Release the batch outside the timed part.
			b.StopTimer()
			for _, s := range held {
				if err := p.D.Release(s.ID, s.Lease.ID); err != nil {
					b.Fatal(err)
				}
			}
			held = held[:0]
			b.StartTimer()
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}
