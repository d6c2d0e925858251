package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/netns"
	"github.com/netslot/netslot/internal/server"
	"github.com/netslot/netslot/internal/slot"
)

// CNIPluginsVersion is the release of the CNI reference plugins measured.
const CNIPluginsVersion = "v1.10.0"

// AttachOptions size the attach-latency benchmark.
type AttachOptions struct {
	Slots   int // pool size
	Samples int // per method
	CNIDir  string
	Log     *slog.Logger
}

// AttachResult holds latency samples per method, in the order of Methods.
type AttachResult struct {
	Opts    AttachOptions
	Methods []string
	Samples map[string][]time.Duration
}

// netslotSampleFactor: netslot's methods are sampled this many times as
// often as the others.
const netslotSampleFactor = 5

// settle is the pause after a batch of releases (see RunAttach).
const settle = 20 * time.Millisecond

// Method names, netslot's first.
const (
	mAcquire       = "netslot acquire, in-process"
	mAcquireVPC    = "netslot acquire + VPC attach, in-process"
	mAPI           = "netslot acquire through the API"
	mAPIVPC        = "netslot acquire + VPC through the API"
	mOnDemand      = "on-demand: build the slot at request time"
	mCNIAdd        = "CNI ADD (ptp + tap), new namespace"
	mCNINetnsAdd   = "CNI: namespace creation + ADD"
	mCNIDel        = "CNI DEL"
	mReleaseScrub  = "netslot release (scrub), in-process"
	cniNetworkName = "netslot-bench"
)

// InstallCNIPlugins builds the reference plugins into dir with go install
// (a no-op when they are there).
func InstallCNIPlugins(dir string) error {
	need := []string{"ptp", "tap", "host-local"}
	missing := false
	for _, p := range need {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	args := []string{"install"}
	for _, p := range need {
		kind := "main"
		if p == "host-local" {
			kind = "ipam"
		}
		args = append(args, "github.com/containernetworking/plugins/plugins/"+kind+"/"+p+"@"+CNIPluginsVersion)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go install CNI plugins %s: %w: %s", CNIPluginsVersion, err, out)
	}
	return nil
}

// RunAttach measures what it costs to give a VM its network: netslot's
// acquire (in-process and through the API, with and without a VPC), the
// design a pre-built pool replaces (building the slot on demand, the same work
// netslotd does for one slot at boot), and what Firecracker users get from
// firecracker-go-sdk today: a CNI ADD of the reference plugins (ptp with
// host-local IPAM, then tap) for a new namespace, through libcni.
func RunAttach(ctx context.Context, o AttachOptions) (*AttachResult, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if err := InstallCNIPlugins(o.CNIDir); err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	cfg := uplinkConfig("na"+tag, o.Slots)
	var cleanup []func()
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	d, fab, stopPool, err := poolOnFabric(ctx, cfg, "a"+tag, o.Log)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, stopPool)
	dir, err := os.MkdirTemp("", "netslot-bench-api")
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := server.Listen(sock)
	if err != nil {
		return nil, err
	}
	g := server.New(d).GRPC()
	go g.Serve(ln)
	cleanup = append(cleanup, g.Stop)
	c, err := client.Dial(sock)
	if err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() { c.Close() })

	var vpcs []*slot.Attachment
	for j := range 16 {
		a, err := slot.ParseAttachment(4242, fab.VTEP.String(), fmt.Sprintf("10.254.0.%d", 5+j), []string{"10.254.0.0/16"})
		if err != nil {
			return nil, err
		}
		vpcs = append(vpcs, a)
	}
	res := &AttachResult{Opts: o, Samples: map[string][]time.Duration{},
		Methods: []string{mAcquire, mAcquireVPC, mAPI, mAPIVPC, mReleaseScrub, mOnDemand, mCNIAdd, mCNINetnsAdd, mCNIDel}}
	add := func(m string, dur time.Duration) { res.Samples[m] = append(res.Samples[m], dur) }

	// netslot's methods take microseconds: they get more samples, for a
	// p99 that is not just the worst few, after a few unrecorded rounds
	// that warm caches and the store.
	const warmup = 10
	acquireSamples := o.Samples * netslotSampleFactor
	o.Log.Info("netslot acquire", "samples", acquireSamples)
	// Acquires run in batches that hold several slots at once, as a busy
	// host does; the batch is then released (a scrub each) and the
	// kernel's work that a scrub leaves behind (link watch, RCU) is given
	// a moment to finish, so that it is not timed as the next acquire's.
	batch := max(1, min(16, o.Slots/2))
	for done := -warmup; done < acquireSamples; done += batch {
		add := add
		if done < 0 {
			add = func(string, time.Duration) {}
		}
		// Which kind comes first after the pause alternates from batch to
		// batch: the first acquire after a pause runs on cold caches.
		first := (done / batch) & 1
		type held struct{ id, lease string }
		var ids []held
		for j := range batch {
			req := daemon.AcquireRequest{}
			m := mAcquire
			if (j+first)%2 == 1 {
				req.VPC, m = vpcs[j], mAcquireVPC
			}
			start := time.Now()
			s, err := d.Acquire(context.Background(), req)
			add(m, time.Since(start))
			if err != nil {
				return nil, err
			}
			ids = append(ids, held{s.ID, s.Lease.ID})
		}
		for _, h := range ids {
			start := time.Now()
			if err := d.Release(h.id, h.lease); err != nil {
				return nil, err
			}
			add(mReleaseScrub, time.Since(start))
		}
		time.Sleep(settle)
		ids = ids[:0]
		for j := range batch {
			req := &netslotv1.AcquireRequest{}
			m := mAPI
			if (j+first)%2 == 1 {
				req.Vpc, m = &netslotv1.VpcAttachment{Vni: vpcs[j].VNI, RemoteVtep: fab.VTEP.String(), VpcIp: vpcs[j].VPCIP.String(), VpcCidrs: []string{"10.254.0.0/16"}}, mAPIVPC
			}
			start := time.Now()
			s, err := c.Acquire(ctx, req)
			add(m, time.Since(start))
			if err != nil {
				return nil, err
			}
			ids = append(ids, held{s.Id, s.GetLease().GetLeaseId()})
		}
		for _, h := range ids {
			if err := c.Release(ctx, h.id, h.lease); err != nil {
				return nil, err
			}
		}
		time.Sleep(settle)
	}

	o.Log.Info("on-demand slot builds", "samples", o.Samples)
	for k := 0; k < o.Samples; k++ {
		start := time.Now()
		if _, err := d.RebuildFree(); err != nil {
			return nil, err
		}
		add(mOnDemand, time.Since(start))
	}

	o.Log.Info("CNI ADD/DEL", "plugins", CNIPluginsVersion, "samples", o.Samples)
	if err := runCNI(ctx, o, tag, add); err != nil {
		return nil, err
	}
	return res, nil
}

func runCNI(ctx context.Context, o AttachOptions, tag string, add func(string, time.Duration)) error {
	ipamDir, err := os.MkdirTemp("", "netslot-bench-ipam")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ipamDir)
	cacheDir, err := os.MkdirTemp("", "netslot-bench-cni-cache")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cacheDir)
	// 198.18.128.0/18: benchmark range, routed nowhere, one /32 per ADD.
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[
 {"type":"ptp","ipMasq":false,"ipam":{"type":"host-local","subnet":"198.18.128.0/18","dataDir":%q}},
 {"type":"tap"}]}`, cniNetworkName, ipamDir)
	list, err := libcni.NetworkConfFromBytes([]byte(conf))
	if err != nil {
		return fmt.Errorf("cni conflist: %w", err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{o.CNIDir}, cacheDir, nil)
	if err := netns.EnsureDir("/run/netns"); err != nil {
		return err
	}
	for k := 0; k < o.Samples; k++ {
		name := fmt.Sprintf("c%s-%d", tag, k)
		path := "/run/netns/" + name
		start := time.Now()
		if err := lab.InNewNS(path, func() error { return nil }); err != nil {
			return err
		}
		made := time.Now()
		rt := &libcni.RuntimeConf{ContainerID: name, NetNS: path, IfName: "eth0"}
		_, err := cni.AddNetworkList(ctx, list, rt)
		done := time.Now()
		if err != nil {
			netns.Remove(path)
			return fmt.Errorf("cni add: %w", err)
		}
		add(mCNIAdd, done.Sub(made))
		add(mCNINetnsAdd, done.Sub(start))
		start = time.Now()
		err = cni.DelNetworkList(ctx, list, rt)
		add(mCNIDel, time.Since(start))
		if rerr := netns.Remove(path); err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("cni del: %w", err)
		}
	}
	return nil
}

// Write prints percentiles per method and how many times slower than
// netslot's in-process acquire each is.
func (r *AttachResult) Write(w io.Writer) {
	fmt.Fprintf(w, "Time to give a VM its network: %d samples per method (about %d for each of netslot's, in batches of held slots), a %d-slot pool, CNI plugins %s through libcni\n\n",
		len(r.Samples[mOnDemand]), len(r.Samples[mAcquire]), r.Opts.Slots, CNIPluginsVersion)
	fmt.Fprintln(w, "| method | p50 | p99 | p50 / netslot acquire | p99 / netslot acquire |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	base := sortedCopy(r.Samples[mAcquire])
	b50, b99 := percentile(base, 0.5), percentile(base, 0.99)
	for _, m := range r.Methods {
		s := sortedCopy(r.Samples[m])
		p50, p99 := percentile(s, 0.5), percentile(s, 0.99)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", m, fmtDur(p50), fmtDur(p99),
			ratio(float64(p50)/float64(b50)), ratio(float64(p99)/float64(b99)))
	}
}

// ratio prints a factor with sensible precision ("3.2x", "1,242x").
func ratio(f float64) string {
	if f < 100 {
		return fmt.Sprintf("%.3gx", f)
	}
	n := fmt.Sprintf("%.0f", f)
	for i := len(n) - 3; i > 0; i -= 3 {
		n = n[:i] + "," + n[i:]
	}
	return n + "x"
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f us", float64(d.Nanoseconds())/1e3)
	default:
		return fmt.Sprintf("%.2f ms", float64(d.Nanoseconds())/1e6)
	}
}
