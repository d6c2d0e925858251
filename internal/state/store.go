// Package state keeps netslotd's durable state in a bbolt file under the
// state directory: the pool's configuration and every lease.
//
// The kernel objects a lease refers to live exactly as long as the host's
// boot, so the store must survive a crash of the daemon (kill -9), not a
// power cut: a committed transaction is in the page cache, which outlives the
// process. The store is therefore opened without fsync, and it records the
// boot id so that leases from an earlier boot are dropped, not trusted.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/slot"
)

var (
	bucketMeta   = []byte("meta")
	bucketLeases = []byte("leases")
	// bucketEnded holds, by slot, the id of the lease a release ended
	// last: a release repeated with it (a retry after a lost answer) is
	// known done.
	bucketEnded = []byte("ended")
	keyConfig   = []byte("config")
	keyBootID   = []byte("boot_id")
)

// FileName is the store's file inside the state directory.
const FileName = "netslot.db"

// Store is the open state file.
type Store struct {
	mu   sync.RWMutex // db and id: Rebuild swaps them
	db   *bolt.DB
	path string
	id   unix.Stat_t // the file as opened (see Intact)
}

// ErrCorrupted marks a store whose pages do not hold together (bbolt would
// panic reading them).
var ErrCorrupted = errors.New("state store is corrupted")

// BootIDFile mirrors the boot id outside the database, so that a database
// that cannot be read can still be dated.
const BootIDFile = "boot_id"

// Open opens (creating if needed) the store in dir.
//
// The store is written without fsync, so a power cut can leave it torn. A
// store that cannot be opened is set aside and replaced when it was written
// during an earlier boot of the host (its leases would be dropped anyway);
// during this boot it is an error, since running VMs hold its leases.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	db, err := openChecked(path)
	if err != nil && !errors.Is(err, bolt.ErrTimeout) && writtenBeforeThisBoot(dir) {
		aside := fmt.Sprintf("%s.unreadable-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, aside); rerr == nil {
			db, err = openChecked(path)
		}
	}
	if errors.Is(err, ErrCorrupted) {
		return nil, fmt.Errorf("open state %s: %w; it holds this boot's leases, so netslotd will not guess them: "+
			"move it away and start with --adopt (slots a VM still holds stay out of the pool), or tear the pool down", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketLeases, bucketEnded} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise state: %w", err)
	}
	st := &Store{db: db, path: path}
	if err := unix.Stat(path, &st.id); err != nil {
		db.Close()
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return st, nil
}

// openChecked opens the store after checking that its pages hold
// together. The check reads every bucket and key of a read-only opening
// (bbolt's own Tx.Check, and the free-page scan of a read-write opening
// with NoFreelistSync, read pages on goroutines of their own, where a
// panic on a bad page cannot be recovered and kills the daemon).
func openChecked(path string) (*bolt.DB, error) {
	if _, err := os.Stat(path); err == nil {
		ro, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond, ReadOnly: true})
		if err != nil {
			return nil, err
		}
		err = guard(func() error { return ro.View(walk) })
		ro.Close()
		if err != nil {
			if !errors.Is(err, ErrCorrupted) {
				err = fmt.Errorf("%w: %w", ErrCorrupted, err)
			}
			return nil, err
		}
	}
	var db *bolt.DB
	err := guard(func() error {
		var err error
		db, err = openDB(path)
		return err
	})
	return db, err
}

// walk reads every key of every bucket.
func walk(tx *bolt.Tx) error {
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error { return nil })
	})
}

// guard runs fn, turning a panic of bbolt's (it panics on pages it cannot
// make sense of) into ErrCorrupted. A transaction that panics is rolled
// back by bbolt on the way out.
func guard(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupted, r)
		}
	}()
	return fn()
}

// update and view are db.Update and db.View under guard.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return guard(func() error { return s.db.Update(fn) })
}

func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return guard(func() error { return s.db.View(fn) })
}

// Rebuild writes what the store holds into a new file at its path (and
// its directory, if that went too), and goes on with the new file: for a
// store whose file was removed or replaced under the daemon (see Intact),
// which holds every lease still. Writers wait meanwhile, so nothing
// written to the old file is missing from the new one.
func (s *Store) Rebuild() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir %s: %w", dir, err)
	}
	tmp := s.path + ".rebuild"
	os.Remove(tmp)
	db, err := openDB(tmp)
	if err != nil {
		return fmt.Errorf("new state %s: %w", tmp, err)
	}
	err = guard(func() error {
		return s.db.View(func(old *bolt.Tx) error {
			return db.Update(func(tx *bolt.Tx) error {
				return old.ForEach(func(name []byte, b *bolt.Bucket) error {
					nb, err := tx.CreateBucketIfNotExists(name)
					if err != nil {
						return err
					}
					return b.ForEach(func(k, v []byte) error { return nb.Put(k, v) })
				})
			})
		})
	})
	if err == nil {
		err = db.Close()
	} else {
		db.Close()
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	var id unix.Stat_t
	if err == nil {
		db, err = openDB(s.path)
	}
	if err == nil {
		err = unix.Stat(s.path, &id)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rebuild state %s: %w", s.path, err)
	}
	s.db.Close()
	s.db, s.id = db, id
	var boot []byte
	s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			boot = b.Get(keyBootID)
		}
		return nil
	})
	return writeBootIDFile(dir, string(boot))
}

// Intact reports whether the store's file is still there, the one it
// opened: a state directory removed (or the file replaced) under a running
// daemon leaves it writing to a file nobody will read again.
func (s *Store) Intact() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var now unix.Stat_t
	if err := unix.Stat(s.path, &now); err != nil {
		return fmt.Errorf("state store %s: %w", s.path, err)
	}
	if now.Dev != s.id.Dev || now.Ino != s.id.Ino {
		return fmt.Errorf("state store %s was replaced under the daemon", s.path)
	}
	return nil
}

// Path is the store's file.
func (s *Store) Path() string { return s.path }

func openDB(path string) (*bolt.DB, error) {
	return bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        100 * time.Millisecond,
		NoSync:         true,
		NoFreelistSync: true,
	})
}

// writtenBeforeThisBoot reports whether the store in dir was last written
// during an earlier boot of the host, by the boot id file beside it.
func writtenBeforeThisBoot(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, BootIDFile))
	if err != nil {
		return false
	}
	cur, err := CurrentBootID()
	return err == nil && strings.TrimSpace(string(b)) != cur
}

// Close closes the store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

// storedConfig is the on-disk form of slot.Config.
type storedConfig struct {
	Prefix    string `json:"prefix"`
	Count     int    `json:"count"`
	SlotCIDR  string `json:"slot_cidr"`
	GuestCIDR string `json:"guest_cidr"`
	GuestMAC  string `json:"guest_mac"`
	TapMAC    string `json:"tap_mac"`
}

// Config returns the stored pool configuration, or ok=false if none.
func (s *Store) Config() (c slot.Config, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Get(keyConfig)
		if b == nil {
			return nil
		}
		var sc storedConfig
		if err := json.Unmarshal(b, &sc); err != nil {
			return fmt.Errorf("decode stored config: %w", err)
		}
		c.Prefix, c.Count = sc.Prefix, sc.Count
		if c.SlotCIDR, err = netip.ParsePrefix(sc.SlotCIDR); err != nil {
			return fmt.Errorf("decode stored config: %w", err)
		}
		if c.GuestCIDR, err = netip.ParsePrefix(sc.GuestCIDR); err != nil {
			return fmt.Errorf("decode stored config: %w", err)
		}
		if c.GuestMAC, err = net.ParseMAC(sc.GuestMAC); err != nil {
			return fmt.Errorf("decode stored config: %w", err)
		}
		if c.TapMAC, err = net.ParseMAC(sc.TapMAC); err != nil {
			return fmt.Errorf("decode stored config: %w", err)
		}
		ok = true
		return nil
	})
	return c, ok, err
}

// SetConfig records the pool configuration.
func (s *Store) SetConfig(c slot.Config) error {
	b, err := json.Marshal(storedConfig{
		Prefix: c.Prefix, Count: c.Count, SlotCIDR: c.SlotCIDR.String(),
		GuestCIDR: c.GuestCIDR.String(), GuestMAC: c.GuestMAC.String(), TapMAC: c.TapMAC.String(),
	})
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyConfig, b) })
}

// BootID returns the boot id recorded with the leases ("" if none).
func (s *Store) BootID() (string, error) {
	var id string
	err := s.view(func(tx *bolt.Tx) error {
		id = string(tx.Bucket(bucketMeta).Get(keyBootID))
		return nil
	})
	return id, err
}

// SetBootID records the boot id of the running kernel, in the store and in
// a file beside it.
func (s *Store) SetBootID(id string) error {
	if err := s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyBootID, []byte(id)) }); err != nil {
		return err
	}
	return writeBootIDFile(filepath.Dir(s.path), id)
}

func writeBootIDFile(dir, id string) error {
	tmp := filepath.Join(dir, BootIDFile+".tmp")
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return fmt.Errorf("write boot id: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, BootIDFile))
}

// CurrentBootID is the running kernel's boot id.
func CurrentBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

type storedAttachment struct {
	VNI        uint32   `json:"vni"`
	RemoteVTEP string   `json:"remote_vtep"`
	VPCIP      string   `json:"vpc_ip"`
	VPCCIDRs   []string `json:"vpc_cidrs"`
	PeerMAC    string   `json:"peer_mac,omitempty"`
}

type storedLease struct {
	ID            string            `json:"id,omitempty"`
	Owner         string            `json:"owner,omitempty"`
	AcquiredNs    int64             `json:"acquired_ns"`
	VPC           *storedAttachment `json:"vpc,omitempty"`
	EgressAllow   []string          `json:"egress_allow,omitempty"`
	EgressDenyAll bool              `json:"egress_deny_all,omitempty"`
	Inbound       []string          `json:"inbound,omitempty"` // slot.ParseInboundSpec's form
	Key           string            `json:"key,omitempty"`
	DNS           []string          `json:"dns,omitempty"`
	Hostname      string            `json:"hostname,omitempty"`
	TapOwner      *storedTapOwner   `json:"tap_owner,omitempty"`
}

type storedTapOwner struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

func leaseKey(i int) []byte { return []byte(strconv.Itoa(i)) }

func prefixesToStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func encodeLease(l *slot.Lease) ([]byte, error) {
	sl := storedLease{ID: l.ID, Owner: l.Owner, Key: l.Key, AcquiredNs: l.AcquiredNs, Hostname: l.Hostname,
		EgressAllow: prefixesToStrings(l.Egress.Allow), EgressDenyAll: l.Egress.DenyAll}
	for _, r := range l.Inbound {
		sl.Inbound = append(sl.Inbound, r.String())
	}
	for _, a := range l.DNS {
		sl.DNS = append(sl.DNS, a.String())
	}
	if o := l.TapOwner; o != nil {
		sl.TapOwner = &storedTapOwner{UID: o.UID, GID: o.GID}
	}
	if a := l.VPC; a != nil {
		sl.VPC = &storedAttachment{VNI: a.VNI, RemoteVTEP: a.RemoteVTEP.String(), VPCIP: a.VPCIP.String(), VPCCIDRs: prefixesToStrings(a.VPCCIDRs)}
		if a.PeerMAC != nil {
			sl.VPC.PeerMAC = a.PeerMAC.String()
		}
	}
	return json.Marshal(sl)
}

func decodeLease(b []byte) (*slot.Lease, error) {
	var sl storedLease
	if err := json.Unmarshal(b, &sl); err != nil {
		return nil, err
	}
	l := &slot.Lease{ID: sl.ID, Owner: sl.Owner, Key: sl.Key, AcquiredNs: sl.AcquiredNs, Egress: slot.Egress{DenyAll: sl.EgressDenyAll}}
	var err error
	if l.Egress.Allow, err = slot.ParseCIDRs("egress cidr", sl.EgressAllow); err != nil {
		return nil, err
	}
	if l.Inbound, err = slot.ParseInboundSpecs(sl.Inbound); err != nil {
		return nil, err
	}
	if l.DNS, err = slot.ParseDNS(sl.DNS); err != nil {
		return nil, err
	}
	if err := slot.CheckHostname(sl.Hostname); err != nil {
		return nil, err
	}
	l.Hostname = sl.Hostname
	if o := sl.TapOwner; o != nil {
		l.TapOwner = &slot.TapOwner{UID: o.UID, GID: o.GID}
		if err := slot.ValidateTapOwner(*l.TapOwner); err != nil {
			return nil, err
		}
	}
	if a := sl.VPC; a != nil {
		if l.VPC, err = slot.ParseAttachment(a.VNI, a.RemoteVTEP, a.VPCIP, a.VPCCIDRs); err != nil {
			return nil, err
		}
		if l.VPC.PeerMAC, err = slot.ParsePeerMAC(a.PeerMAC); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// ErrLeaseExists is returned by PutLease for a slot that already has one.
var ErrLeaseExists = errors.New("slot already leased in store")

// PutLease records a new lease on slot i; it refuses to overwrite one.
func (s *Store) PutLease(i int, l *slot.Lease) error {
	b, err := encodeLease(l)
	if err != nil {
		return fmt.Errorf("encode lease: %w", err)
	}
	return s.update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		if bk.Get(leaseKey(i)) != nil {
			return ErrLeaseExists
		}
		return bk.Put(leaseKey(i), b)
	})
}

// DeleteLease removes slot i's lease (one that never was: an acquire
// undone).
func (s *Store) DeleteLease(i int) error {
	return s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLeases).Delete(leaseKey(i)) })
}

// EndLease removes slot i's lease, id, and records it as the slot's last
// ended lease, in one transaction.
func (s *Store) EndLease(i int, id string) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketLeases).Delete(leaseKey(i)); err != nil {
			return err
		}
		return tx.Bucket(bucketEnded).Put(leaseKey(i), []byte(id))
	})
}

// EndedLeases returns, by slot index, the id of the lease each slot's last
// release ended.
func (s *Store) EndedLeases() (map[int]string, error) {
	ended := map[int]string{}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEnded).ForEach(func(k, v []byte) error {
			if i, err := strconv.Atoi(string(k)); err == nil && i >= 0 {
				ended[i] = string(v)
			}
			return nil
		})
	})
	return ended, err
}

// DeleteAllLeases drops every lease (used when the boot id changed).
func (s *Store) DeleteAllLeases() error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketLeases); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucketLeases)
		return err
	})
}

// Leases returns every lease by slot index. Undecodable entries are
// reported in bad (by key) rather than failing the whole load.
func (s *Store) Leases() (leases map[int]*slot.Lease, bad []string, err error) {
	leases = map[int]*slot.Lease{}
	err = s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			i, err := strconv.Atoi(string(k))
			if err != nil || i < 0 {
				bad = append(bad, string(k))
				return nil
			}
			l, err := decodeLease(v)
			if err != nil {
				bad = append(bad, string(k))
				return nil
			}
			leases[i] = l
			return nil
		})
	})
	return leases, bad, err
}

// DeleteLeaseKey removes an entry by its raw key (for undecodable ones).
func (s *Store) DeleteLeaseKey(k string) error {
	return s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLeases).Delete([]byte(k)) })
}
