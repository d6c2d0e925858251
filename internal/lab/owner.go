package lab

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
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
	"github.com/netslot/netslot/internal/slot"
)

// A test or bench process killed before its cleanups ran (go test's
// -timeout panics, a SIGKILL, a lost CI job) leaves its pools, fabrics and
// guests behind. What such a process makes is claimed first, in a file of
// OwnerDir that the process holds locked for as long as it lives: the
// kernel drops the lock when it dies, however it dies. SweepDead takes
// back what processes that are gone claimed, and nothing of a process
// that lives (the lock says so, whatever its pid has become), nothing
// that a live process claimed too, and nothing never claimed (a user's
// pool, `make demo`'s).
//
// A claim names exactly what it covers, one per line:
//   - "pool P": the pool of prefix P, taken down as `netslotd teardown`
//     does (which a daemon running P refuses);
//   - "name N": the namespace pin or root link named N, nothing else;
//   - "tag T": the names a test makes from its tag T, one of claimKinds
//     followed by T. T has the shape of testutil.Prefix's tags (the
//     claiming process's pid, then two letters: "674ab"), which no host's
//     own names have; other tags are refused.
//
// A bare line (the claims of older runs) is a pool.

// OwnerDir holds the claims of live and dead test and bench processes.
const OwnerDir = "/run/netslot/owners"

// dirLock serialises claiming and sweeping: a claim is never made of
// something a sweep is taking down.
const dirLock = ".lock"

var owner struct {
	once sync.Once
	mu   sync.Mutex
	f    *os.File // nil: no claim can be recorded (not root)
}

// claimKinds are the first letters of the names tests make from a tag:
// fabric namespaces (f), guests (g), hosts played by a namespace (h),
// uplinks (u), side links (v), side namespaces (s) and the namespaces
// behind a second uplink (nu).
var claimKinds = []string{"f", "g", "h", "u", "v", "s", "nu"}

// tagShape is a tag's: a pid modulo 1,000 and two letters.
var tagShape = regexp.MustCompile(`^[0-9]{1,3}[a-z]{2}$`)

// ClaimPool records that this process makes the pool of prefix. It
// reports false if a live process claimed it too (the caller had better
// pick another). Without a claim file (not root), it records nothing and
// reports true: a killed run's objects then stay as they would have
// before.
func ClaimPool(prefix string) bool { return claim("pool", prefix) }

// ClaimName records that this process makes the namespace pin or root
// link named name.
func ClaimName(name string) { claim("name", name) }

// ClaimTag records that this process makes names of claimKinds followed
// by tag; a tag not of tagShape is refused (false).
func ClaimTag(tag string) bool {
	if !tagShape.MatchString(tag) {
		return false
	}
	return claim("tag", tag)
}

func claim(kind, what string) bool {
	owner.once.Do(openClaims)
	owner.mu.Lock()
	defer owner.mu.Unlock()
	if owner.f == nil {
		return true
	}
	unique := true
	withDirLock(func() {
		live, dead := readClaims()
		for _, c := range dead {
			c.f.Close() // a lock held would make it look alive
		}
		unique = !live[kind+" "+what]
		fmt.Fprintf(owner.f, "%s %s\n", kind, what)
	})
	return unique
}

// withDirLock runs fn holding OwnerDir's lock (or without it, if it
// cannot be had: a claim is still better recorded).
func withDirLock(fn func()) {
	f, err := os.OpenFile(filepath.Join(OwnerDir, dirLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		defer f.Close()
		unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	fn()
}

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

// deadClaim is the claim file of a process that is gone, held locked.
type deadClaim struct {
	path   string
	f      *os.File
	claims []string // "kind what"
}

// readClaims reads every claim file but this process's own: the claims
// of live processes as a set, and the files of dead ones, locked (the
// caller closes them).
func readClaims() (live map[string]bool, dead []deadClaim) {
	live = map[string]bool{}
	ents, err := os.ReadDir(OwnerDir)
	if err != nil {
		return live, nil
	}
	for _, e := range ents {
		path := filepath.Join(OwnerDir, e.Name())
		if e.Name() == dirLock || owner.f != nil && path == owner.f.Name() {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		alive := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
		if !alive && strings.HasPrefix(e.Name(), ".claim-") {
			// Made and never named: its process died before it claimed
			// anything (or is just now naming it: then it holds the lock).
			if info, err := f.Stat(); err != nil || time.Since(info.ModTime()) < time.Minute {
				f.Close()
				continue
			}
		}
		var claims []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if c := normalClaim(sc.Text()); c != "" {
				claims = append(claims, c)
			}
		}
		if alive {
			for _, c := range claims {
				live[c] = true
			}
			f.Close()
			continue
		}
		dead = append(dead, deadClaim{path: path, f: f, claims: claims})
	}
	return live, dead
}

// normalClaim is a claim file's line as "kind what" ("" if it is none).
func normalClaim(line string) string {
	f := strings.Fields(line)
	switch {
	case len(f) == 1:
		return "pool " + f[0]
	case len(f) == 2 && (f[0] == "pool" || f[0] == "name" || f[0] == "tag"):
		return f[0] + " " + f[1]
	}
	return ""
}

// SweepDead takes back the objects claimed by processes that are gone and
// reports how many claims it swept. A claim whose process lives is left
// alone, and so is whatever a live process claimed too; log (nil: none)
// hears what was swept. Most dead claims are of processes that cleaned up
// before they ended: one look at the host (links, namespace pins,
// nftables tables, policy rules) finds what is left, and only that is
// taken down.
func SweepDead(log *slog.Logger) int {
	owner.once.Do(openClaims)
	swept := 0
	withDirLock(func() {
		live, dead := readClaims()
		if len(dead) == 0 {
			return
		}
		left, err := lookAtHost()
		for _, c := range dead {
			var errs []error
			var found []string
			for _, cl := range c.claims {
				if live[cl] || err == nil && !left.has(cl) {
					continue
				}
				found = append(found, cl)
				errs = append(errs, sweepClaim(cl))
			}
			if err := errors.Join(errs...); err != nil {
				if log != nil {
					log.Warn("sweeping what a dead test process left", "claims", c.path, "err", err)
				}
				c.f.Close() // the next sweep tries again
				continue
			}
			if log != nil && len(found) > 0 {
				log.Info("swept what a dead test process left", "claims", c.path, "swept", found)
			}
			os.Remove(c.path)
			c.f.Close()
			swept++
		}
	})
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
	ents, _ := os.ReadDir(slot.NetnsDir)
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

// has reports whether anything claim c covers is left on the host.
func (h hostNames) has(c string) bool {
	kind, what, _ := strings.Cut(c, " ")
	switch kind {
	case "pool":
		if !slot.ValidPrefix(what) {
			return false
		}
		for _, n := range h.names {
			if strings.HasPrefix(n, what) { // its pins, host veths, table
				return true
			}
		}
		if h.tables[links.RouteTable(what)] || datapath.Exists("", what) {
			return true
		}
		_, err := os.Stat(filepath.Join(daemon.LockDir, what+".lock"))
		return err == nil
	case "name":
		for _, n := range h.names {
			if n == what {
				return true
			}
		}
	case "tag":
		for _, n := range h.names {
			if tagged(what, n) {
				return true
			}
		}
	}
	return false
}

// tagged reports whether name is one tests make from tag.
func tagged(tag, name string) bool {
	if !tagShape.MatchString(tag) {
		return false
	}
	for _, k := range claimKinds {
		if strings.HasPrefix(name, k+tag) {
			return true
		}
	}
	return false
}

// sweepClaim removes what claim c of a dead process covers.
func sweepClaim(c string) error {
	kind, what, _ := strings.Cut(c, " ")
	switch kind {
	case "pool":
		return teardownPool(what)
	case "name":
		return removeNames(func(n string) bool { return n == what })
	case "tag":
		return removeNames(func(n string) bool { return tagged(what, n) })
	}
	return nil
}

// removeNames removes the namespace pins and root links whose names match:
// processes left running in the namespaces first (a DHCP client, a packet
// capture), then the namespaces, then the links.
func removeNames(match func(string) bool) error {
	var errs []error
	ents, _ := os.ReadDir(slot.NetnsDir)
	for _, e := range ents {
		if !match(e.Name()) {
			continue
		}
		path := filepath.Join(slot.NetnsDir, e.Name())
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
		if match(l.Attrs().Name) {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// teardownPool removes the pool of prefix, whose process is gone, and
// then the lock file teardown leaves (never when teardown was refused: a
// daemon holds that lock).
func teardownPool(prefix string) error {
	dir, err := os.MkdirTemp("", "netslot-sweep")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := daemon.Teardown(prefix, dir, time.Minute, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}
	os.Remove(filepath.Join(daemon.LockDir, prefix+".lock"))
	return nil
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
