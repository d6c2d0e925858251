package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/firewall"
	"github.com/netslot/netslot/internal/links"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/state"
)

// Teardown removes every namespace, device, nftables table and state file of
// prefix. It refuses while a daemon holds the state dir or the prefix, and it
// returns only when the kernel has dismantled the namespaces (or after wait,
// naming what is still held, typically by a process still inside a slot).
func Teardown(prefix, stateDir string, wait time.Duration, log *slog.Logger) error {
	cfg := slot.Config{Prefix: prefix}
	if !slot.ValidPrefix(prefix) {
		return fmt.Errorf("invalid prefix %q", prefix)
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	d := &Daemon{cfg: cfg, opts: Options{StateDir: stateDir}, rootSys: links.NoSysctlDir}
	if err := d.lock(); err != nil {
		return fmt.Errorf("teardown refused: %w", err)
	}
	defer d.unlock()

	var errs []error
	removed := 0
	pins, err := pinsOf(cfg)
	if err != nil {
		errs = append(errs, err)
	}
	for name := range pins {
		if err := netns.Remove(filepath.Join(slot.NetnsDir, name)); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	if err := (firewall.Root{Prefix: prefix}).Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := links.RemoveUplinkRoute(prefix); err != nil {
		errs = append(errs, err)
	}
	if err := datapath.RemoveBackstop(prefix, datapath.UplinkIndex("", prefix)); err != nil {
		errs = append(errs, err)
	}
	if err := datapath.Remove("", prefix); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{state.FileName, state.BootIDFile} {
		if err := os.Remove(filepath.Join(stateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
		}
	}
	// The kernel dismantles unpinned namespaces in the background, in
	// batches; their veths leave the root namespace with them.
	deadline := time.Now().Add(wait)
	for {
		left, err := hostVeths(cfg)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			// Still held (a process inside a slot keeps its namespace alive):
			// delete the veths so nothing of ours stays in the root namespace.
			for _, l := range left {
				if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
				}
			}
			names := make([]string, 0, len(left))
			for _, l := range left {
				names = append(names, l.Attrs().Name)
			}
			log.Warn("namespaces still held by processes (a VM still running?); deleted their host veths", "veths", names)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The lock files stay: unlinking a held lock would let two daemons lock
	// two different files of one name.
	log.Info("teardown done", "prefix", prefix, "namespaces", removed)
	return errors.Join(errs...)
}

// pinsOf maps the names of namespace pins of the prefix to their index.
func pinsOf(cfg slot.Config) (map[string]int, error) {
	ents, err := os.ReadDir(slot.NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", slot.NetnsDir, err)
	}
	out := map[string]int{}
	for _, e := range ents {
		if i, ok := cfg.IndexOfName(e.Name(), "-"); ok {
			out[e.Name()] = i
		}
	}
	return out, nil
}

// hostVeths lists root-namespace veths named like host veths of prefix.
func hostVeths(cfg slot.Config) ([]netlink.Link, error) {
	all, err := links.Links(nil)
	if err != nil {
		return nil, fmt.Errorf("list root links: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		if _, ok := cfg.IndexOfName(l.Attrs().Name, ""); ok && l.Type() == "veth" {
			out = append(out, l)
		}
	}
	return out, nil
}
