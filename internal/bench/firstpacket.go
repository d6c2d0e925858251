package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
)

// FirstPacketOptions size the first-packet benchmark.
type FirstPacketOptions struct {
	Rounds    int           // acquires per case
	SlowARP   time.Duration // the slow peer's ARP answer delay
	Log       *slog.Logger
	AnswerFor time.Duration // how long a first datagram's answer is waited for (0: 2 s)
}

// FirstPacketCase is one way the VPC peer is met.
type FirstPacketCase struct {
	Name    string
	Samples []time.Duration // answered first datagrams
	Lost    int             // first datagrams never answered
}

// FirstPacketResult is the benchmark's figures.
type FirstPacketResult struct {
	Opts  FirstPacketOptions
	Cases []FirstPacketCase
}

// RunFirstPacket measures a guest's first datagram to its VPC, sent at
// once after acquire, as a VM restored from a snapshot sends it: the time
// to its answer, through netslot's datapath (Geneve to a userspace VPC host
// on the lab fabric), with the peer's MAC given at acquire (no resolution:
// the baseline), unknown with a peer that answers ARP at once, and unknown
// with one that answers after o.SlowARP. Each round is a new lease (the
// peer is forgotten at release); the guest is on the slot's tap before
// the acquire.
func RunFirstPacket(ctx context.Context, o FirstPacketOptions) (*FirstPacketResult, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Rounds < 1 {
		return nil, errors.New("the first-packet benchmark needs at least 1 round")
	}
	if o.AnswerFor == 0 {
		o.AnswerFor = 2 * time.Second
	}
	tag := fmt.Sprintf("%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	cfg := uplinkConfig("nf"+tag, 1) // one slot: every acquire gets it
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	d, fab, stopPool, err := poolOnFabric(ctx, cfg, "f"+tag, o.Log)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, stopPool)
	vpcHost, peerMAC := netip.MustParseAddr("10.9.0.1"), net.HardwareAddr{0x02, 0x76, 0x70, 0x63, 0, 1}
	vtep, err := lab.StartVTEP(fab, 4242, vpcHost, peerMAC)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, vtep.Close)
	res := &FirstPacketResult{Opts: o}
	cases := []struct {
		name  string
		known bool
		delay time.Duration
	}{
		{"peer MAC given at acquire (no resolution)", true, 0},
		{"peer unknown, ARP answered at once", false, 0},
		{fmt.Sprintf("peer unknown, ARP answered after %v", o.SlowARP), false, o.SlowARP},
	}
	for _, c := range cases {
		res.Cases = append(res.Cases, FirstPacketCase{Name: c.name})
	}
	// Rounds alternate the cases, so that drift spreads over all.
	for r := 0; r < o.Rounds && ctx.Err() == nil; r++ {
		for k, c := range cases {
			vtep.SetARPDelay(c.delay)
			a, err := slot.ParseAttachment(4242, fab.VTEP.String(), "10.9.0.5", []string{"10.9.0.0/24"})
			if err != nil {
				return nil, err
			}
			if c.known {
				a.PeerMAC = peerMAC
			}
			took, answered, err := firstDatagram(d, "f"+tag, a, netip.AddrPortFrom(vpcHost, 9), o.AnswerFor)
			if err != nil {
				return nil, err
			}
			if answered {
				res.Cases[k].Samples = append(res.Cases[k].Samples, took)
			} else {
				res.Cases[k].Lost++
			}
		}
	}
	return res, ctx.Err()
}

// firstDatagram puts a guest (namespace g<tag>) on the pool's only slot,
// acquires it attached by a, sends one datagram from the guest to dst at
// once and waits up to wait for its echo; then the guest goes (its VMM
// exits) and the slot is released.
func firstDatagram(d *daemon.Daemon, tag string, a *slot.Attachment, dst netip.AddrPort, wait time.Duration) (took time.Duration, answered bool, err error) {
	cfg := d.Config()
	g, err := lab.NewGuestNS(tag, cfg.NetnsPath(0), cfg)
	if err != nil {
		return 0, false, err
	}
	defer g.Close()
	c, err := g.Dial("udp4", dst)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	info, err := d.Acquire(context.Background(), daemon.AcquireRequest{VPC: a, Owner: "bench"})
	if err != nil {
		return 0, false, err
	}
	defer func() {
		c.Close()
		g.Close()
		if rerr := d.Release(info.ID, info.Lease.ID); rerr != nil && err == nil {
			err = fmt.Errorf("release: %w", rerr)
		}
	}()
	start := time.Now()
	if _, err := c.Write([]byte("first")); err != nil {
		return 0, false, err
	}
	c.SetReadDeadline(start.Add(wait))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	took = time.Since(start)
	if err != nil || string(buf[:n]) != "first" {
		return 0, false, nil
	}
	return took, true, nil
}

// Write prints the result as a table.
func (r *FirstPacketResult) Write(w io.Writer) {
	fmt.Fprintf(w, "A guest's first UDP datagram to its VPC host, sent at once after acquire (%d acquires per case, alternating), through Geneve to a userspace VPC host on the lab fabric: the time to its echo. While the peer's MAC is unknown the datapath sends an ARP request through the tunnel and netslotd holds the datagram until the answer, then sends it; before, the datagram was lost (the guest's own retry, or a TCP SYN's 1 s retransmit, was the cost).\n\n", r.Opts.Rounds)
	fmt.Fprintln(w, "| case | p50 | p99 | max | lost |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, c := range r.Cases {
		s := sortedCopy(c.Samples)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d |\n", c.Name, fmtDur(percentile(s, 0.5)), fmtDur(percentile(s, 0.99)), fmtDur(percentile(s, 1)), c.Lost)
	}
	fmt.Fprintln(w)
}
