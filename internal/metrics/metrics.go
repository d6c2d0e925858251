// Package metrics defines netslotd's Prometheus metrics and serves them on
// a loopback address.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Gauges reads the pool's live counts and datapath counters when scraped.
type Gauges interface {
	Counts() (total, free, leased int)
	// DatapathCounters calls emit for each leased slot, and once with
	// slot "none" for what belongs to no slot.
	DatapathCounters(emit func(slot string, c Counters))
}

// SlotHealth is what a Gauges may report of its slots besides counts.
type SlotHealth interface {
	DamagedSlots() int
	OrphanedSlots() int
}

// Counters are one slot's datapath counters.
type Counters struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	EncapPackets, DecapPackets             uint64
	ARPReplies, ARPRequests                uint64 // sent through the tunnel
	DHCPReplies                            uint64 // sent to the guest on tap0
	ICMPFragNeeded                         uint64 // sent to the guest: too big for the tunnel
	Drops                                  map[string]uint64
	HeldDropped                            uint64 // held for a VPC peer not yet known, then dropped by netslotd
}

// datapathCollector reads the datapath's per-CPU maps at scrape time:
// nothing is counted in the daemon itself but each slot's held frames
// dropped (netslotd holds them, not the datapath).
type datapathCollector struct {
	g                                               Gauges
	packets, bytes, tunnel, arp, answers, drp, held *prometheus.Desc
}

func newDatapathCollector(g Gauges) *datapathCollector {
	return &datapathCollector{
		g: g,
		packets: prometheus.NewDesc("netslot_slot_packets_total",
			"Packets through a leased slot's datapath (tx: guest to uplink, rx: uplink to guest).", []string{"slot", "direction"}, nil),
		bytes: prometheus.NewDesc("netslot_slot_bytes_total",
			"Bytes through a leased slot's datapath.", []string{"slot", "direction"}, nil),
		tunnel: prometheus.NewDesc("netslot_slot_tunnel_packets_total",
			"Of those, packets encapsulated in or decapsulated from Geneve.", []string{"slot", "op"}, nil),
		arp: prometheus.NewDesc("netslot_slot_tunnel_arp_total",
			"ARP packets a leased slot's datapath sent through its Geneve tunnel: replies for its VPC address, requests for the VPC side's MAC.", []string{"slot", "op"}, nil),
		answers: prometheus.NewDesc("netslot_slot_answers_total",
			"What a leased slot's datapath answered its guest itself: DHCP on tap0, ICMP fragmentation needed for packets too big for the tunnel.", []string{"slot", "kind"}, nil),
		drp: prometheus.NewDesc("netslot_datapath_drops_total",
			"Packets the datapath dropped, by slot (\"none\": no slot, e.g. unknown VNI) and reason.", []string{"slot", "reason"}, nil),
		held: prometheus.NewDesc("netslot_slot_held_frames_dropped_total",
			"A leased slot's frames to a VPC peer not yet known that netslotd held and dropped: evicted for another lease's fair share of the held-frame budget, over the slot's 32, or not sent (expired ones are not counted).", []string{"slot"}, nil),
	}
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.tunnel
	ch <- c.arp
	ch <- c.answers
	ch <- c.drp
	ch <- c.held
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	c.g.DatapathCounters(func(slot string, n Counters) {
		if slot != "none" {
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(n.TxPackets), slot, "tx")
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(n.RxPackets), slot, "rx")
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(n.TxBytes), slot, "tx")
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(n.RxBytes), slot, "rx")
			ch <- prometheus.MustNewConstMetric(c.tunnel, prometheus.CounterValue, float64(n.EncapPackets), slot, "encap")
			ch <- prometheus.MustNewConstMetric(c.tunnel, prometheus.CounterValue, float64(n.DecapPackets), slot, "decap")
			ch <- prometheus.MustNewConstMetric(c.arp, prometheus.CounterValue, float64(n.ARPReplies), slot, "reply")
			ch <- prometheus.MustNewConstMetric(c.arp, prometheus.CounterValue, float64(n.ARPRequests), slot, "request")
			ch <- prometheus.MustNewConstMetric(c.answers, prometheus.CounterValue, float64(n.DHCPReplies), slot, "dhcp")
			ch <- prometheus.MustNewConstMetric(c.answers, prometheus.CounterValue, float64(n.ICMPFragNeeded), slot, "icmp_frag_needed")
			ch <- prometheus.MustNewConstMetric(c.held, prometheus.CounterValue, float64(n.HeldDropped), slot)
		}
		for reason, v := range n.Drops {
			ch <- prometheus.MustNewConstMetric(c.drp, prometheus.CounterValue, float64(v), slot, reason)
		}
	})
}

// Metrics holds every metric netslotd exports.
type Metrics struct {
	Registry        *prometheus.Registry
	BootSeconds     prometheus.Gauge
	SlotsReady      prometheus.Gauge
	AcquireSeconds  *prometheus.HistogramVec
	ReleaseSeconds  prometheus.Histogram
	AcquireErrors   *prometheus.CounterVec
	ScrubFailures   prometheus.Counter
	ReconcileAction *prometheus.CounterVec
	// HeldFrames counts guests' frames to a VPC peer whose MAC was not
	// known yet, by what became of them.
	HeldFrames *prometheus.CounterVec
}

// latencyBuckets span 10 us to 1 s.
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 2, 17)

// New registers netslotd's metrics; g supplies the slot counts.
func New(g Gauges) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		BootSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "netslot_boot_duration_seconds", Help: "Time from start until every slot was ready."}),
		SlotsReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "netslot_slots_ready", Help: "Slots created or adopted so far during boot."}),
		AcquireSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "netslot_acquire_duration_seconds", Help: "Latency of Acquire inside the daemon.", Buckets: latencyBuckets},
			[]string{"kind"}),
		ReleaseSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "netslot_release_duration_seconds", Help: "Latency of Release, scrub included.", Buckets: latencyBuckets}),
		AcquireErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netslot_acquire_errors_total", Help: "Failed acquires by reason."}, []string{"reason"}),
		ScrubFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "netslot_scrub_failures_total", Help: "Releases whose scrub failed (the slot is rebuilt; if that fails too it stays leased)."}),
		ReconcileAction: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netslot_reconcile_actions_total", Help: "What reconciliation and repair did, at start-up and since, by action."}, []string{"action"}),
		HeldFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netslot_vpc_held_frames_total", Help: "Guest frames to a VPC peer whose MAC was unknown, held until it was learned: by outcome (held; sent; expired: older than 1 s; dropped: evicted for another lease's fair share of the 4 MiB budget, over a slot's 32, or the lease over)."}, []string{"outcome"}),
	}
	for _, o := range []string{"held", "sent", "expired", "dropped"} {
		m.HeldFrames.WithLabelValues(o)
	}
	// Export every known label at zero, so that dashboards see the series
	// before the first event.
	for _, a := range []string{"adopt", "repair", "remove_netns", "remove_link", "firewall_rewrite", "drop_stale_leases", "drop_bad_lease", "replace_datapath",
		"orphan", "orphan_reclaimed", "store", "root_table", "uplink_route", "backstop", "datapath", "socket",
		"netns_pin", "slot_damaged", "events_lost", "veth_check", "host_forwarding", "migrate_datapath", "tap_owner"} {
		m.ReconcileAction.WithLabelValues(a)
	}
	for _, r := range []string{"exhausted", "store", "firewall", "datapath", "no_uplink", "invalid", "deadline", "draining", "not_ready", "tap_owner"} {
		m.AcquireErrors.WithLabelValues(r)
	}
	r.MustRegister(m.BootSeconds, m.SlotsReady, m.AcquireSeconds, m.ReleaseSeconds, m.AcquireErrors,
		m.ScrubFailures, m.ReconcileAction, m.HeldFrames,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.MustRegister(newDatapathCollector(g))
	gauge := func(name, help string, f func(total, free, leased int) int) {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			return float64(f(g.Counts()))
		}))
	}
	gauge("netslot_slots_total", "Slots in the pool.", func(t, _, _ int) int { return t })
	gauge("netslot_slots_free", "Slots ready to be acquired.", func(_, f, _ int) int { return f })
	gauge("netslot_slots_leased", "Slots held by a tenant (or being released).", func(_, _, l int) int { return l })
	if h, ok := g.(SlotHealth); ok {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "netslot_slots_damaged",
			Help: "Slots found broken (a host veth deleted, a namespace pin not put back): leased ones until released, free ones until rebuilt."},
			func() float64 { return float64(h.DamagedSlots()) }))
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "netslot_slots_orphaned",
			Help: "Slots with no lease whose tap a VMM holds: out of the pool until it lets go."},
			func() float64 { return float64(h.OrphanedSlots()) }))
	}
	return m
}

// CheckLoopback refuses a metrics address that is not on loopback.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid metrics address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("invalid metrics address %q: want a loopback address such as 127.0.0.1:9464", addr)
	}
	return nil
}

// Serve listens on addr (which must be loopback) and serves /metrics until
// ctx ends. The listener is bound before Serve returns; a later failure is
// logged (the API keeps serving without metrics).
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) (net.Addr, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return ln.Addr(), nil
}
