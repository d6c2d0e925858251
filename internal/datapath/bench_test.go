package datapath

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/slot"
)

// BenchmarkAttach times the flip of a slot to a VPC (map updates only) and
// reports percentiles; detaches run outside the timed part.
func BenchmarkAttach(b *testing.B) {
	e := newEnv(b, 16)
	var atts []*slot.Attachment
	for i := range 16 {
		a, err := slot.ParseAttachment(4242, vtep.String(), fmt.Sprintf("10.9.0.%d", 10+i), []string{"10.9.0.0/24", "10.10.0.0/16"})
		if err != nil {
			b.Fatal(err)
		}
		atts = append(atts, a)
	}
	var lat []time.Duration
	n := 0
	for b.Loop() {
		i := n % 16
		start := time.Now()
		if err := e.dp.Attach(i, atts[i]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		n++
		if i == 15 {
			b.StopTimer()
			for j := range 16 {
				if err := e.dp.Detach(j, atts[j]); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-us")
}

// BenchmarkLeasePolicy times what acquire and release add to the
// datapath besides the tunnel flip: opening a slot's lease (with two
// inbound rules), closing it and clearing its flow table.
func BenchmarkLeasePolicy(b *testing.B) {
	e := newEnv(b, 16)
	rules, err := slot.ParseInboundSpecs([]string{"tcp/8080", "udp/53,198.18.0.0/15"})
	if err != nil {
		b.Fatal(err)
	}
	for _, step := range []struct {
		name string
		fn   func(i int)
	}{
		// Opening a closed lease: its flow table is cleared too.
		{"close-open", func(i int) { e.dp.CloseLease(i); e.dp.OpenLease(i, rules) }},
		{"close-open-no-rules", func(i int) { e.dp.CloseLease(i); e.dp.OpenLease(i, nil) }},
		{"close", e.dp.CloseLease},
		{"clear-flows", e.dp.ClearFlows},
	} {
		b.Run(step.name, func(b *testing.B) {
			n := 0
			for b.Loop() {
				step.fn(n % 16)
				n++
			}
		})
	}
}
