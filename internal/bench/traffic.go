package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netslot/netslot/internal/lab"
)

// Ports of the outside host's servers.
const (
	udpEchoPort = 7
	tcpPort     = 80
)

// servers are the outside host's UDP echo and TCP request/response
// servers; the TCP server answers one line and closes first, so the
// client side keeps no TIME_WAIT and its ports never run out.
type servers struct {
	udp *net.UDPConn
	tcp net.Listener
	wg  sync.WaitGroup
}

func startServers(f *lab.Fabric) (*servers, error) {
	s := &servers{}
	err := lab.InNS(f.NetnsPath(), func() error {
		var err error
		if s.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.Outside, udpEchoPort))); err != nil {
			return err
		}
		s.tcp, err = net.Listen("tcp4", netip.AddrPortFrom(f.Outside, tcpPort).String())
		return err
	})
	if err != nil {
		if s.udp != nil {
			s.udp.Close()
		}
		return nil, fmt.Errorf("outside servers: %w", err)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := s.udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.udp.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.tcp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nok\n")
				}
			}()
		}
	}()
	return s, nil
}

func (s *servers) close() {
	s.udp.Close()
	s.tcp.Close()
	s.wg.Wait()
}

// RTT sends n UDP requests one at a time to dst and returns the
// round-trip times (after a warm-up of 50).
func RTT(dst netip.AddrPort, n int) ([]time.Duration, error) {
	var out []time.Duration
	err := func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		msg := []byte("netslot-rtt")
		lost := 0
		for i := 0; i < n+50; i++ {
			start := time.Now()
			c.SetDeadline(start.Add(500 * time.Millisecond))
			if _, err := c.Write(msg); err != nil {
				return err
			}
			if _, err := c.Read(buf); err != nil {
				if lost++; lost > n/10+5 {
					return fmt.Errorf("rtt to %s: %d requests lost", dst, lost)
				}
				continue
			}
			if i >= 50 {
				out = append(out, time.Since(start))
			}
		}
		return nil
	}()
	return out, err
}

// PairedRTT measures round trips to dst from several namespaces at once:
// one UDP socket is opened in each, then requests go round-robin, one at a
// time, so that every namespace is sampled under the same conditions on
// this shared machine (the noise between two separate runs here is larger
// than the effect being measured). It returns n round trips per namespace,
// after a warm-up.
func PairedRTT(nsPaths []string, dst netip.AddrPort, n int) ([][]time.Duration, error) {
	conns := make([]*net.UDPConn, len(nsPaths))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for k, path := range nsPaths {
		err := lab.InNS(path, func() error {
			var err error
			conns[k], err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("socket in %s: %w", path, err)
		}
	}
	out := make([][]time.Duration, len(nsPaths))
	buf := make([]byte, 64)
	msg := []byte("netslot-rtt")
	const warmup = 50
	lost := 0
	for i := 0; i < n+warmup; i++ {
		// The order rotates: whoever goes after a slow round trip finds
		// caches and CPUs colder.
		for j := range conns {
			k := (i + j) % len(conns)
			c := conns[k]
			start := time.Now()
			c.SetDeadline(start.Add(500 * time.Millisecond))
			if _, err := c.Write(msg); err != nil {
				return nil, err
			}
			if _, err := c.Read(buf); err != nil {
				if lost++; lost > n/10+5 {
					return nil, fmt.Errorf("rtt from %s to %s: %d requests lost", nsPaths[k], dst, lost)
				}
				continue
			}
			if i >= warmup {
				out[k] = append(out[k], time.Since(start))
			}
		}
	}
	return out, nil
}

// runWorkers runs n copies of fn at once and returns the first error.
func runWorkers(n int, fn func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- fn()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// CPS runs workers loops of connect, request, response (the server
// closes) to dst for d and returns completed connections per second.
func CPS(ctx context.Context, dst netip.AddrPort, d time.Duration, workers int) (float64, error) {
	var done, failed atomic.Int64
	deadline := time.Now().Add(d)
	err := runWorkers(workers, func() error {
		buf := make([]byte, 256)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			c, err := net.DialTimeout("tcp4", dst.String(), 2*time.Second)
			if err != nil {
				failed.Add(1)
				continue
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			_, err = io.WriteString(c, "GET / HTTP/1.0\r\n")
			if err == nil {
				_, err = io.ReadAtLeast(c, buf, 1)
				for err == nil {
					_, err = c.Read(buf)
				}
				if errors.Is(err, io.EOF) {
					err = nil
				}
			}
			c.Close()
			if err != nil {
				failed.Add(1)
				continue
			}
			done.Add(1)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if f := failed.Load(); f > done.Load()/100+10 {
		return 0, fmt.Errorf("cps to %s: %d of %d connections failed", dst, f, f+done.Load())
	}
	return float64(done.Load()) / d.Seconds(), nil
}

// PPS keeps window UDP requests in flight to dst's echo server for d and
// returns answered requests per second (each is two packets through the
// slot, one each way).
func PPS(ctx context.Context, dst netip.AddrPort, d time.Duration, window int) (float64, error) {
	var got atomic.Int64
	deadline := time.Now().Add(d)
	err := runWorkers(window, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		msg := make([]byte, 64)
		buf := make([]byte, 128)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			c.SetDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Write(msg); err != nil {
				continue
			}
			if _, err := c.Read(buf); err == nil {
				got.Add(1)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return float64(got.Load()) / d.Seconds(), nil
}

// percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// LoadResult is what one load generator run reports (as JSON on stdout
// when run as a separate process in a guest's namespace).
type LoadResult struct {
	Rate float64         `json:"rate,omitempty"`
	RTT  []time.Duration `json:"rtt_ns,omitempty"`
}

// Load runs one load generator in the calling process's namespace.
func Load(ctx context.Context, mode string, dst netip.AddrPort, d time.Duration, workers, samples int) (LoadResult, error) {
	var r LoadResult
	var err error
	switch mode {
	case "cps":
		r.Rate, err = CPS(ctx, dst, d, workers)
	case "pps":
		r.Rate, err = PPS(ctx, dst, d, workers)
	case "rtt":
		r.RTT, err = RTT(dst, samples)
	default:
		err = fmt.Errorf("unknown load mode %q (cps, pps, rtt)", mode)
	}
	return r, err
}
