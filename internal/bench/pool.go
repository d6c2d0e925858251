package bench

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
)

// uplinkConfig is the configuration of a bench pool with an uplink:
// prefix, n slots, and the default addressing unless another pool on the
// host has it (lab.FreeAddressing: two pools with uplinks can share
// neither), so that the bench runs beside a host's pools and make demo.
func uplinkConfig(prefix string, n int) slot.Config {
	c := slot.DefaultConfig(prefix, n)
	if sc, gc, err := lab.FreeAddressing(n); err == nil {
		c.SlotCIDR, c.GuestCIDR = sc, gc
	}
	return c
}

// startPool boots an in-process pool of cfg with its state on tmpfs and,
// when fab is not nil, its uplink on that fabric. The returned stop closes
// the daemon and tears the pool down.
func startPool(ctx context.Context, cfg slot.Config, fab *lab.Fabric, log *slog.Logger) (d *daemon.Daemon, stop func(), err error) {
	dir, err := os.MkdirTemp("/dev/shm", "netslot-bench-state")
	if err != nil {
		return nil, nil, err
	}
	lab.ClaimPool(cfg.Prefix)
	opts := daemon.Options{Config: cfg, StateDir: dir, Logger: log}
	if fab != nil {
		opts.Uplink, opts.UnderlayIP, opts.UplinkGateway = fab.Uplink, fab.Underlay, fab.Gateway
	}
	d, err = daemon.New(opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	stop = func() {
		d.Close()
		removePool(cfg.Prefix, dir, log)
	}
	log.Info("booting netslot pool", "slots", cfg.Count)
	if err := d.Boot(ctx); err != nil {
		stop()
		return nil, nil, err
	}
	return d, stop, nil
}

// poolOnFabric boots a pool of cfg with its uplink on a new lab fabric
// named by tag; stop removes both.
func poolOnFabric(ctx context.Context, cfg slot.Config, tag string, log *slog.Logger) (d *daemon.Daemon, fab *lab.Fabric, stop func(), err error) {
	lab.ClaimPool(cfg.Prefix)
	fab, err = lab.NewFabric(tag, cfg.SlotCIDR)
	if err != nil {
		return nil, nil, nil, err
	}
	d, stopPool, err := startPool(ctx, cfg, fab, log)
	if err != nil {
		fab.Remove()
		return nil, nil, nil, err
	}
	return d, fab, func() { stopPool(); fab.Remove() }, nil
}

// removePool tears the pool of prefix down and removes its state dir and
// the lock file teardown leaves (no daemon of it is left); it returns how
// long the teardown took.
func removePool(prefix, dir string, log *slog.Logger) (time.Duration, error) {
	start := time.Now()
	err := daemon.Teardown(prefix, dir, 2*time.Minute, log)
	took := time.Since(start)
	if err != nil {
		log.Error("teardown", "prefix", prefix, "err", err)
	}
	os.Remove(filepath.Join(daemon.LockDir, prefix+".lock"))
	os.RemoveAll(dir)
	return took, err
}
