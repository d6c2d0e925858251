package daemon

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	nslinks "github.com/netslot/netslot/internal/links"
)

// The daemon checks what it depends on outside itself at once when the
// kernel reports a change to it (link, rule, route and IPv4 device
// configuration events of the root namespace, nftables events), and
// besides: every monitorInterval what costs a few system calls (the
// store's file, the pins, the uplink's state), every fullCheckEvery
// intervals everything, for what events miss (a removed pin). Events the
// kernel dropped (ENOBUFS) are made up for by a check of what they could
// have told; the host veths, the one part that grows with the pool, are
// checked by their index (checkHostVeths), at most once a vethCheckEvery.
const (
	monitorInterval = time.Second
	fullCheckEvery  = 10
	eventSettle     = 50 * time.Millisecond  // a burst of events, one check
	eventCheckEvery = 250 * time.Millisecond // a storm of events, a check this often
	// vethCheckEvery bounds how often the host veths are checked (see
	// checkHostVeths): however many losses of events or netconf changes
	// ask for it, one check runs at once, then the next waits this long.
	vethCheckEvery = time.Second
)

// Health is what the daemon saw of the host at its last check.
type Health struct {
	// Uplink is "up", "down" or "missing" ("" without an uplink), since
	// UplinkSince.
	Uplink      string
	UplinkSince time.Time
	// Forwarding: every host veth forwards slot traffic as the pool needs
	// it (IPv4 forwarding on with an uplink, off without), or was put
	// back so. The kernel forwards a packet by the setting of the device
	// it came in on, the host veth, which netslotd sets itself:
	// net.ipv4.ip_forward (conf.all) does not matter while it is 0, but a
	// write to it sets every device's, and netslotd then sets its veths'
	// back.
	Forwarding bool
	// Problems are what is wrong now and could not be repaired.
	Problems []string
}

type health struct {
	mu sync.Mutex
	Health
	// veths is what the last check of the host veths could not put
	// right ("": nothing; see checkHostVeths).
	veths string
}

// Health reports what the daemon saw of the host at its last check.
func (d *Daemon) Health() Health {
	d.health.mu.Lock()
	defer d.health.mu.Unlock()
	h := d.health.Health
	h.Problems = slices.Clone(h.Problems)
	if d.health.veths != "" {
		h.Problems = append(h.Problems, d.health.veths)
	}
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
	full, last := true, time.Time{}
	for tick := 0; ; {
		if full {
			last = time.Now()
		}
		d.checkHost(full)
		select {
		case <-stop:
			return
		case <-t.C:
			tick++
			full = tick%fullCheckEvery == 0
		case <-wake:
			// A burst of events is one check, and a storm of them (or of
			// losses) one every eventCheckEvery.
			select {
			case <-stop:
				return
			case <-time.After(max(eventSettle, eventCheckEvery-time.Since(last))):
			}
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
// policy rules, routes of the pool's table, nftables (a firewall reload)
// and IPv4 device configuration (the host veths' forwarding). When the
// kernel drops events (ENOBUFS: the socket's buffer overflowed), what the
// lost events could have told is checked at once (see follow), the host
// veths by one coalesced check (requestVethCheck) whatever the number of
// losses. It returns once each subscription is made (or refused: then the
// periodic checks stand in for it).
func (d *Daemon) subscribe(done <-chan struct{}, poke func()) {
	var started sync.WaitGroup
	started.Add(5)
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
			_, ours := d.cfg.IndexOfName(name, "")
			if u.Header.Type == unix.RTM_DELLINK && ours {
				d.hostVethGone(name, int(u.Index))
			}
			if name == d.opts.Uplink || ours {
				poke()
			}
		}
		return nil
	}, func() {
		poke()
		d.requestVethCheck()
	})
	table, resolve := nslinks.RouteTable(d.cfg.Prefix), nslinks.ResolveTable(d.cfg.Prefix)
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
			if u.Table == table || u.Table == resolve {
				poke()
			}
		}
		return nil
	}, poke)
	// Any rule change, any nftables change (rare on a host): the events
	// carry nothing the check needs, so a lost one is one more poke and
	// the socket stays.
	anyEvent := func([]syscall.NetlinkMessage) { poke() }
	// A host veth's forwarding changed, or every device's (a write to
	// net.ipv4.ip_forward, which the kernel reports once for conf.all,
	// then once per device: thousands of events, one check).
	netconf := func(msgs []syscall.NetlinkMessage) {
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWNETCONF {
				continue
			}
			if c, err := nslinks.ParseNetconf(m.Data); err == nil && (c.Ifindex == nslinks.NetconfAll || d.ownsHostIndex(c.Ifindex)) {
				d.requestVethCheck()
				return
			}
		}
	}
	for _, g := range []struct {
		name   string
		proto  int
		group  uint
		onMsgs func([]syscall.NetlinkMessage)
		lost   func()
	}{
		{"rule", unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE, anyEvent, poke},
		{"nftables", unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES, anyEvent, poke},
		{"netconf", unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_NETCONF, netconf, d.requestVethCheck},
	} {
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
				msgs, _, err := s.Receive()
				if err != nil && !errors.Is(err, unix.ENOBUFS) {
					return nil
				}
				if err != nil {
					d.eventsLost(g.name)
					g.lost()
					continue
				}
				g.onMsgs(msgs)
			}
		}, g.lost)
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
	down := false // counted in eventsDown
	defer func() {
		if down {
			d.eventsDown.Add(-1)
		}
	}()
	for lost := false; ; {
		ready := started
		if lost {
			ready = func() { go resync() }
		}
		err := sub(func() {
			if down {
				down = false
				d.eventsDown.Add(-1)
			}
			ready()
		})
		select {
		case <-done:
			return
		default:
		}
		if err != nil {
			if !down {
				down = true
				d.eventsDown.Add(1)
			}
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

// requestVethCheck asks for a check of the host veths (checkHostVeths)
// by runVethChecks: asks made while one waits are the same check.
func (d *Daemon) requestVethCheck() {
	select {
	case d.vethCheckWake <- struct{}{}:
	default:
	}
}

// runVethChecks runs checkHostVeths when asked, at most once every
// vethCheckEvery, until stop is closed. A storm of lost events (a minimal
// buffer, another pool torn down) costs one check per interval, and a
// check costs what the pool owns, not what the host has. A check that
// could not finish, or left a veth it could not set back, is asked for
// again, at intervals doubling up to vethRetryMax.
func (d *Daemon) runVethChecks(stop <-chan struct{}) {
	retry := time.Duration(0)
	for {
		var again <-chan time.Time
		if retry > 0 {
			again = time.After(retry)
		}
		select {
		case <-stop:
			return
		case <-d.vethCheckWake:
		case <-again:
		}
		if d.checkHostVeths() {
			retry = 0
		} else {
			retry = min(max(2*retry, vethCheckEvery), vethRetryMax)
		}
		select {
		case <-stop:
			return
		case <-time.After(vethCheckEvery):
		}
	}
}

// vethRetryMax bounds the wait between checks of host veths that failed.
const vethRetryMax = 30 * time.Second

// checkHostVeths asks the kernel about every slot's host veth by its
// ifindex (links.DevProbe: no dump of the root namespace, whose links
// may be thousands of another pool's): one that is gone makes its slot
// damaged (as the link event that was lost would have), one whose IPv4
// forwarding or rp_filter is not what the pool set (a write to
// net.ipv4.ip_forward sets every device's) is set back. Before either, the
// device at that index is asked its name: a veth is gone only if nothing,
// or something else, has its index, and nothing but the pool's veth is
// ever changed. It reports whether the check finished with every veth as
// the pool needs; checks never run at once (boot's and runVethChecks').
func (d *Daemon) checkHostVeths() bool {
	d.vethCheckMu.Lock()
	defer d.vethCheckMu.Unlock()
	d.Metrics.ReconcileAction.WithLabelValues("veth_check").Inc()
	p, err := nslinks.OpenDevProbe()
	if err != nil {
		d.log.Warn("host veths not checked; asking again", "err", err)
		return false
	}
	defer p.Close()
	d.mu.Lock()
	idx := slices.Clone(d.hostIdx)
	d.mu.Unlock()
	forward := d.opts.Uplink != ""
	var slots, ifindexes []int
	for i, ifindex := range idx {
		if ifindex != 0 {
			slots, ifindexes = append(slots, i), append(ifindexes, ifindex)
		}
	}
	var reset, failed []string
	var failure error
	err = p.Netconfs(ifindexes, func(k int, c nslinks.Netconf, err error) {
		i, ifindex := slots[k], ifindexes[k]
		name := d.cfg.HostVeth(i)
		if err == nil && c.Forwarding == forward && c.RPFilter == 0 {
			return
		}
		switch got, nerr := p.Name(ifindex); {
		case errors.Is(nerr, nslinks.ErrNoDevice) || nerr == nil && got != name:
			d.hostVethGone(name, ifindex)
			return
		case nerr != nil:
			err = nerr
		}
		if err == nil {
			err = nslinks.SetHostDevConf(ifindex, forward)
		}
		switch {
		case err == nil:
			reset = append(reset, name)
		case d.hostIndex(i) == ifindex: // not rebuilt meanwhile
			failed, failure = append(failed, name), err
		}
	})
	if err != nil {
		d.log.Warn("host veths not checked; asking again", "err", err)
		return false
	}
	if len(reset) > 0 {
		d.log.Warn("repaired: host veths' IPv4 forwarding and rp_filter set back (a write to net.ipv4.ip_forward sets every device's)",
			"veths", len(reset), "first", reset[0], "forwarding", forward)
		d.Metrics.ReconcileAction.WithLabelValues("host_forwarding").Add(float64(len(reset)))
	}
	problem := ""
	if len(failed) > 0 {
		problem = fmt.Sprintf("IPv4 forwarding of %d host veths (%s...) is not as the pool needs and cannot be set back: %v", len(failed), failed[0], failure)
	}
	d.health.mu.Lock()
	if problem != "" && d.health.veths == "" {
		d.log.Error(problem)
	}
	d.health.veths, d.health.Forwarding = problem, problem == ""
	d.health.mu.Unlock()
	return problem == ""
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
	// The host veths are checked on the kernel's events; without them,
	// with the full check.
	if full && d.eventsDown.Load() > 0 {
		d.requestVethCheck()
	}
	// Slot traffic comes into the root namespace with the guest address
	// as source, which no route leads back to: strict reverse-path
	// filtering (the kernel applies the larger of conf.all's and the host
	// veth's) drops it. The operator's setting: reported, not changed.
	if rp, err := nslinks.RPFilterAll(); err == nil && rp == 1 && d.opts.Uplink != "" {
		problems = append(problems, rpFilterStrict)
	}
	d.health.mu.Lock()
	if slices.Contains(problems, rpFilterStrict) && !slices.Contains(d.health.Problems, rpFilterStrict) {
		d.log.Error(rpFilterStrict + "; netslotd leaves that setting to the operator")
	}
	d.health.Problems = problems
	d.health.mu.Unlock()
}

const rpFilterStrict = "net.ipv4.conf.all.rp_filter is 1 (strict): the root namespace drops slot traffic, which comes in with the guest address as source; set it to 0 or 2"

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
