package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	nslinks "github.com/netslot/netslot/internal/links"
)

// The daemon checks what it depends on outside itself at once when the
// kernel reports a change to it (link, rule and route events of the root
// namespace, nftables events), and besides: every monitorInterval what
// costs a few system calls (the store's file, the pins, the uplink's
// state), every fullCheckEvery intervals everything, for what events miss
// (ENOBUFS, a removed pin).
const (
	monitorInterval = time.Second
	fullCheckEvery  = 10
	eventSettle     = 50 * time.Millisecond // a burst of events, one check
)

// Health is what the daemon saw of the host at its last check.
type Health struct {
	// Uplink is "up", "down" or "missing" ("" without an uplink), since
	// UplinkSince.
	Uplink      string
	UplinkSince time.Time
	// Forwarding is net.ipv4.conf.all.forwarding: off, no slot's traffic
	// is forwarded (the operator's call: netslotd reports it, and does not
	// turn it back on).
	Forwarding bool
	// Problems are what is wrong now and could not be repaired.
	Problems []string
}

type health struct {
	mu sync.Mutex
	Health
}

// Health reports what the daemon saw of the host at its last check.
func (d *Daemon) Health() Health {
	d.health.mu.Lock()
	defer d.health.mu.Unlock()
	h := d.health.Health
	h.Problems = slices.Clone(h.Problems)
	return h
}

// monitor checks the host (see monitorInterval) until stop is closed,
// calling subscribed once it follows the kernel's events. Its work does
// not grow with the pool: the objects it checks are the pool's shared
// ones.
func (d *Daemon) monitor(stop <-chan struct{}, subscribed func()) {
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	done := make(chan struct{})
	defer close(done)
	d.subscribe(done, poke)
	subscribed()
	t := time.NewTicker(monitorInterval)
	defer t.Stop()
	full := true
	for tick := 0; ; {
		d.checkHost(full)
		select {
		case <-stop:
			return
		case <-t.C:
			tick++
			full = tick%fullCheckEvery == 0
		case <-wake:
			time.Sleep(eventSettle)
			full = true
		}
	}
}

// DefaultEventBuffer is the receive buffer of the daemon's kernel event
// sockets when Options.EventBuffer is 0 (set with SO_RCVBUFFORCE, which
// the kernel doubles): room for thousands of link events at once (another
// pool torn down), where the usual default (net.core.rmem_default, 208
// KiB) holds a few hundred.
const DefaultEventBuffer = 4 << 20

// subscribe has the kernel's events about what the pool depends on poke
// the monitor until done is closed: links (the uplink, the host veths),
// policy rules, routes of the pool's table, and nftables (a firewall
// reload). When the kernel drops events (ENOBUFS: the socket's buffer
// overflowed), the subscription is made again and everything the lost
// events could have told is checked at once (see follow). It returns once
// each subscription is made (or refused: then the periodic checks stand
// in for it).
func (d *Daemon) subscribe(done <-chan struct{}, poke func()) {
	var started sync.WaitGroup
	started.Add(4)
	defer started.Wait()
	rcvbuf := d.opts.EventBuffer
	if rcvbuf <= 0 {
		rcvbuf = DefaultEventBuffer
	}
	onErr := func(error) { poke() }
	go d.follow(done, "link", started.Done, func(ready func()) error {
		links := make(chan netlink.LinkUpdate, 256)
		subDone := until(done)
		defer subDone.end()
		if err := netlink.LinkSubscribeWithOptions(links, subDone.ch, netlink.LinkSubscribeOptions{
			ErrorCallback: onErr, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: true}); err != nil {
			return err
		}
		ready()
		for u := range links {
			name := u.Attrs().Name
			if u.Header.Type == unix.RTM_DELLINK && strings.HasPrefix(name, d.cfg.Prefix) {
				d.hostVethGone(name, int(u.Index))
			}
			if name == d.opts.Uplink || strings.HasPrefix(name, d.cfg.Prefix) {
				poke()
			}
		}
		return nil
	}, func() {
		poke()
		d.sweepHostVeths()
	})
	table := nslinks.RouteTable(d.cfg.Prefix)
	go d.follow(done, "route", started.Done, func(ready func()) error {
		routes := make(chan netlink.RouteUpdate, 256)
		subDone := until(done)
		defer subDone.end()
		if err := netlink.RouteSubscribeWithOptions(routes, subDone.ch, netlink.RouteSubscribeOptions{
			ErrorCallback: onErr, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: true}); err != nil {
			return err
		}
		ready()
		for u := range routes {
			if u.Table == table {
				poke()
			}
		}
		return nil
	}, poke)
	for _, g := range []struct {
		name  string
		proto int
		group uint
	}{{"rule", unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE}, {"nftables", unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES}} {
		// Any rule change, any nftables change (rare on a host): the
		// events carry nothing the check needs, so a lost one is one
		// more poke and the socket stays.
		go d.follow(done, g.name, started.Done, func(ready func()) error {
			s, err := nl.Subscribe(g.proto, g.group)
			if err != nil {
				return err
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				select {
				case <-done:
				case <-stop:
				}
				s.Close()
			}()
			if err := s.SetReceiveBufferSize(rcvbuf, true); err != nil {
				d.log.Warn("event socket keeps the kernel's buffer size", "events", g.name, "err", err)
			}
			ready()
			for {
				_, _, err := s.Receive()
				if err != nil && !errors.Is(err, unix.ENOBUFS) {
					return nil
				}
				if err != nil {
					d.eventsLost(g.name)
				}
				poke()
			}
		}, poke)
	}
}

// subscription is the done channel of one subscription: closed when the
// daemon's done is, or when the subscription ends (end), so that the
// library closes its socket then too (it closes it on done only, and a
// subscription ended by ENOBUFS would keep its socket and buffer).
type subscription struct {
	ch   chan struct{}
	stop chan struct{}
	once sync.Once
}

func until(done <-chan struct{}) *subscription {
	s := &subscription{ch: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		select {
		case <-done:
		case <-s.stop:
		}
		close(s.ch)
	}()
	return s
}

func (s *subscription) end() { s.once.Do(func() { close(s.stop) }) }

// follow runs sub, a subscription to the kernel's events that calls
// ready once subscribed and returns when the events end, until done is
// closed; it calls started after the first subscription is made or
// refused. An end before done means events were lost (the kernel ends a
// subscription on ENOBUFS): follow subscribes again and, once
// subscribed, runs resync, which checks what the lost events could have
// told. A subscription refused is tried again every monitorInterval;
// meanwhile the periodic checks stand in for it.
func (d *Daemon) follow(done <-chan struct{}, what string, started func(), sub func(ready func()) error, resync func()) {
	started = sync.OnceFunc(started)
	defer started()
	for lost := false; ; {
		ready := started
		if lost {
			ready = func() { go resync() }
		}
		err := sub(ready)
		select {
		case <-done:
			return
		default:
		}
		if err != nil {
			started()
			d.log.Warn("no kernel events; the host is checked every interval only until they are back", "events", what, "err", err)
			select {
			case <-done:
				return
			case <-time.After(monitorInterval):
			}
			lost = true // what happened meanwhile is checked once subscribed
			continue
		}
		d.eventsLost(what)
		lost = true
	}
}

// eventsLost counts a loss of the kernel's events of kind what, and logs
// it at most once a second (a burst overflows a buffer again and again).
func (d *Daemon) eventsLost(what string) {
	d.Metrics.ReconcileAction.WithLabelValues("events_lost").Inc()
	d.lost.mu.Lock()
	d.lost.n++
	n := d.lost.n
	if time.Since(d.lost.logged) < time.Second {
		d.lost.mu.Unlock()
		return
	}
	d.lost.n, d.lost.logged = 0, time.Now()
	d.lost.mu.Unlock()
	d.log.Warn("kernel events lost (ENOBUFS); checking what they could have told", "events", what, "losses_since_last_report", n)
}

// lossReports rate-limits eventsLost's log.
type lossReports struct {
	mu     sync.Mutex
	logged time.Time
	n      int
}

// sweepHostVeths makes damaged every slot whose host veth is gone (as
// the link events that were lost would have): one link dump, on a loss of
// link events only.
func (d *Daemon) sweepHostVeths() {
	ls, err := nslinks.Links(nil)
	if err != nil {
		d.log.Warn("host veths not checked after lost link events; the next loss or release checks them", "err", err)
		return
	}
	have := make(map[int]string, len(ls))
	for _, l := range ls {
		have[l.Attrs().Index] = l.Attrs().Name
	}
	d.mu.Lock()
	idx := slices.Clone(d.hostIdx)
	d.mu.Unlock()
	for i, ifindex := range idx {
		if name := d.cfg.HostVeth(i); ifindex != 0 && have[ifindex] != name {
			d.hostVethGone(name, ifindex)
		}
	}
}

// checkHost looks at what the pool depends on outside the daemon and puts
// back what is missing: the state store's file, the datapath's pins, the
// uplink's state and, with full, the root table, the uplink's route and
// rule and the datapath's attachments. Each repair is logged and counted
// by kind; what cannot be repaired is reported (Health, status).
func (d *Daemon) checkHost(full bool) {
	var problems []string
	repaired := func(kind, what string, args ...any) {
		d.log.Warn("repaired: "+what, args...)
		d.Metrics.ReconcileAction.WithLabelValues(kind).Inc()
	}
	if err := d.store.Intact(); err != nil {
		d.log.Error("the state store's file is gone; writing it anew", "err", err)
		if rerr := d.store.Rebuild(); rerr != nil {
			d.log.Error("cannot write the state store anew: leases are not kept", "err", rerr)
			problems = append(problems, fmt.Sprintf("state store: %v", rerr))
		} else {
			repaired("store", "state store written anew", "path", d.store.Path())
		}
	}
	if full {
		if err := d.rootFirewall().Verify(); err != nil {
			if aerr := d.rootFirewall().Apply(); aerr != nil {
				problems = append(problems, fmt.Sprintf("root table: %v", aerr))
			} else {
				repaired("root_table", "root table rewritten", "reason", err)
			}
		}
	}
	if d.opts.Uplink != "" {
		d.checkUplink(full, &problems, repaired)
	}
	if done, err := d.dp.Repair(full); err != nil {
		problems = append(problems, fmt.Sprintf("datapath: %v", err))
	} else {
		for _, what := range done {
			repaired("datapath", "datapath: "+what)
		}
	}
	fwd := sysctlOn("/proc/sys/net/ipv4/conf/all/forwarding")
	d.health.mu.Lock()
	if !fwd && d.health.Forwarding != fwd {
		d.log.Error("IPv4 forwarding is off (net.ipv4.conf.all.forwarding=0): no slot's traffic is forwarded until it is turned back on; netslotd leaves that to the operator")
	}
	d.health.Forwarding = fwd
	if !fwd {
		problems = append(problems, "IPv4 forwarding is off")
	}
	d.health.Problems = problems
	d.health.mu.Unlock()
}

// checkUplink tracks the uplink's state and puts the pool's route and
// rule back once it is up.
func (d *Daemon) checkUplink(full bool, problems *[]string, repaired func(kind, what string, args ...any)) {
	state := "missing"
	l, err := netlink.LinkByName(d.opts.Uplink)
	if err == nil {
		if old := d.uplinkMTU.Swap(int64(l.Attrs().MTU)); old != int64(l.Attrs().MTU) && d.dp != nil {
			d.refreshDHCPMTU()
		}
		state = "down"
		if l.Attrs().Flags&net.FlagUp != 0 && l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			state = "up"
		}
	}
	d.health.mu.Lock()
	if d.health.Uplink != state {
		if d.health.Uplink != "" {
			d.log.Warn("uplink state changed", "uplink", d.opts.Uplink, "from", d.health.Uplink, "to", state,
				"after", time.Since(d.health.UplinkSince).Round(time.Millisecond))
		}
		d.health.Uplink, d.health.UplinkSince = state, time.Now()
	}
	d.health.mu.Unlock()
	if state != "up" {
		*problems = append(*problems, fmt.Sprintf("uplink %s is %s", d.opts.Uplink, state))
	}
	if !full {
		return
	}
	// While the uplink is down or missing, Apply still puts back the rule
	// and the blackhole route that keep slot traffic off the host's other
	// routes; its failure to route through the uplink is the problem
	// reported above.
	r := d.uplinkRoute()
	if err := r.Check(); err != nil {
		if aerr := r.Apply(); aerr != nil && state == "up" {
			*problems = append(*problems, fmt.Sprintf("uplink route: %v", aerr))
		} else if aerr == nil {
			repaired("uplink_route", "the pool's route through the uplink", "reason", err)
		}
	}
	if state == "missing" {
		return
	}
	b := d.backstop()
	if err := b.Check(); err != nil {
		if changed, aerr := b.Apply(); aerr != nil {
			*problems = append(*problems, fmt.Sprintf("backstop: %v", aerr))
		} else if changed {
			repaired("backstop", "the uplink's backstop filters", "reason", err)
		}
	}
}

func sysctlOn(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) != "0"
}
