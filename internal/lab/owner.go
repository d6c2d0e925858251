package lab

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
)

// A test or bench process killed before its cleanups ran (go test's
// -timeout panics, a SIGKILL, a lost CI job) leaves its pools, fabrics and
// guests behind. Every name such a process makes objects under is claimed
// first (Claim), in a file of OwnerDir that the process holds locked for
// as long as it lives: the kernel drops the lock when it dies, however it
// dies. SweepDead takes back what processes that are gone claimed, and
// nothing of a process that lives (the lock says so, whatever its pid has
// become), nor anything never claimed (a user's pool, `make demo`'s).

// OwnerDir holds the claims of live and dead test and bench processes.
const OwnerDir = "/run/netslot/owners"

var owner struct {
	once sync.Once
	mu   sync.Mutex
	f    *os.File // nil: no claim can be recorded (not root)
}

// Claim records that this process makes objects named with prefix: the
// pool of that prefix (its slot namespaces, host veths, root table,
// policy rule and pinned datapath), and the namespaces and root links
// whose names are one of claimKinds followed by prefix without its first
// letter (the tag a test derives from it). It never fails: without a
// claim, a killed run's objects stay as they would have before.
func Claim(prefix string) {
	owner.once.Do(openClaims)
	owner.mu.Lock()
	defer owner.mu.Unlock()
	if owner.f != nil {
		fmt.Fprintln(owner.f, prefix)
	}
}

// claimKinds are the first letters of the lab's names for a tag: fabric
// namespaces (f), guests (g), hosts played by a namespace (h), uplinks
// (u), side links (v) and the namespaces behind a second uplink (nu).
var claimKinds = []string{"f", "g", "h", "u", "v", "nu"}

// openClaims makes this process's claim file, locked before it is
// visible under its name: a sweeper never sees it unlocked while this
// process lives.
func openClaims() {
	if err := os.MkdirAll(OwnerDir, 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(OwnerDir, ".claim-*")
	if err != nil {
		return
	}
	if unix.Flock(int(tmp.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return
	}
	name := filepath.Join(OwnerDir, strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Rename(tmp.Name(), name); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return
	}
	owner.f = tmp // held open, hence locked, until the process ends
}

// SweepDead takes back the objects claimed by processes that are gone and
// reports how many claims it swept. A claim whose process lives is left
// alone; log (nil: none) hears what was swept. Most dead claims are of
// processes that cleaned up before they ended: one look at the host
// (links, namespace pins, nftables tables, policy rules) finds the
// prefixes that left something, and only those are torn down.
func SweepDead(log *slog.Logger) int {
	owner.once.Do(openClaims)
	ents, err := os.ReadDir(OwnerDir)
	if err != nil {
		return 0
	}
	type claim struct {
		path     string
		f        *os.File
		prefixes []string
	}
	var dead []claim
	for _, e := range ents {
		path := filepath.Join(OwnerDir, e.Name())
		if owner.f != nil && path == owner.f.Name() {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close() // its process lives
			continue
		}
		if strings.HasPrefix(e.Name(), ".claim-") {
			// Made and never named: its process died before it claimed
			// anything (or is just now naming it: then it holds the lock).
			if info, err := f.Stat(); err != nil || time.Since(info.ModTime()) < time.Minute {
				f.Close()
				continue
			}
		}
		c := claim{path: path, f: f}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if p := strings.TrimSpace(sc.Text()); p != "" {
				c.prefixes = append(c.prefixes, p)
			}
		}
		dead = append(dead, c)
	}
	if len(dead) == 0 {
		return 0
	}
	left, err := lookAtHost()
	swept := 0
	for _, c := range dead {
		var errs []error
		var found []string
		for _, p := range c.prefixes {
			if err == nil && !left.has(p) {
				continue
			}
			found = append(found, p)
			errs = append(errs, sweepPrefix(p))
		}
		if err := errors.Join(errs...); err != nil {
			if log != nil {
				log.Warn("sweeping what a dead test process left", "claims", c.path, "err", err)
			}
			c.f.Close() // the next sweep tries again
			continue
		}
		if log != nil && len(found) > 0 {
			log.Info("swept what a dead test process left", "claims", c.path, "prefixes", found)
		}
		os.Remove(c.path)
		c.f.Close()
		swept++
	}
	return swept
}

// hostNames is what a sweep looks at once: the names of the host's links,
// namespace pins and nftables tables, and its policy rules' tables.
type hostNames struct {
	names  []string
	tables map[int]bool
}

func lookAtHost() (hostNames, error) {
	h := hostNames{tables: map[int]bool{}}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		h.names = append(h.names, e.Name())
	}
	ls, err := links.Links(nil)
	if err != nil {
		return h, err
	}
	for _, l := range ls {
		h.names = append(h.names, l.Attrs().Name)
	}
	rules, err := links.Rules(nil, unix.AF_INET)
	if err != nil {
		return h, err
	}
	for _, r := range rules {
		h.tables[r.Table] = true
	}
	conn, err := nftables.New()
	if err != nil {
		return h, err
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return h, err
	}
	for _, t := range tables {
		h.names = append(h.names, t.Name)
	}
	return h, nil
}

// has reports whether anything of prefix is left on the host: a pin, link
// or table of its pool or tag, its policy rule, datapath or lock file.
func (h hostNames) has(prefix string) bool {
	if len(prefix) < 2 {
		return false
	}
	for _, n := range h.names {
		if strings.HasPrefix(n, prefix) || claimedName(prefix[1:], n) {
			return true
		}
	}
	if h.tables[links.RouteTable(prefix)] || datapath.Exists("", prefix) {
		return true
	}
	_, err := os.Stat(filepath.Join(daemon.LockDir, prefix+".lock"))
	return err == nil
}

// claimedName reports whether name is one the lab makes for tag.
func claimedName(tag, name string) bool {
	for _, k := range claimKinds {
		if strings.HasPrefix(name, k+tag) {
			return true
		}
	}
	return false
}

// sweepPrefix removes what a dead process made under prefix: processes
// left running in its namespaces first (a DHCP client, a packet capture),
// then its namespaces and root links, then its pool.
func sweepPrefix(prefix string) error {
	if len(prefix) < 2 {
		return nil
	}
	tag := prefix[1:]
	var errs []error
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if !claimedName(tag, e.Name()) {
			continue
		}
		path := filepath.Join("/run/netns", e.Name())
		killIn(path)
		if err := netns.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	ls, err := links.Links(nil)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range ls {
		if claimedName(tag, l.Attrs().Name) {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
			}
		}
	}
	errs = append(errs, teardownPool(prefix))
	return errors.Join(errs...)
}

// teardownPool removes the pool of prefix, whose process is gone, and the
// lock file teardown leaves.
func teardownPool(prefix string) error {
	dir, err := os.MkdirTemp("", "netslot-sweep")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	err = daemon.Teardown(prefix, dir, time.Minute, slog.New(slog.DiscardHandler))
	os.Remove(filepath.Join(daemon.LockDir, prefix+".lock"))
	return err
}

// killIn kills the processes whose network namespace is the one pinned at
// path.
func killIn(path string) {
	var ns unix.Stat_t
	if unix.Stat(path, &ns) != nil {
		return
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+p.Name()+"/ns/net", &st) == nil && st.Dev == ns.Dev && st.Ino == ns.Ino {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}
