package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// TestStoreDiskFull puts the lease store on a 1 MiB tmpfs and fills it
// while the daemon runs. Acquires then succeed or fail, but every failure
// is a clean error that leaves the slot free (nothing half done: the pool's
// counts and the kernel match the acquires that succeeded); once space is
// back, everything works again, and a restart finds exactly the leases that
// were acknowledged.
func TestStoreDiskFull(t *testing.T) {
	p := newPool(t, 30)
	mnt := filepath.Join(t.TempDir(), "small")
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("netslot-test", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	p.stateDir = filepath.Join(mnt, "state")
	p.start()
	before := p.kernelObjects()

	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	c := p.client()
	var held []*netslotv1.Slot
	failed := 0
	for range 30 {
		s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "disk-full"})
		if err != nil {
			failed++
			t.Logf("acquire with the store's disk full: %v", err)
		} else {
			held = append(held, s)
		}
		if st := p.status(); int(st.Leased) != len(held) || int(st.Free) != 30-len(held) {
			t.Fatalf("after %d acquires and %d failures: %+v", len(held), failed, st)
		}
	}
	t.Logf("disk full: %d acquires succeeded, %d failed cleanly", len(held), failed)
	if failed == 0 {
		t.Fatal("the store never ran out of space: the test proved nothing")
	}
	if got := p.kernelObjects(); got != before {
		t.Errorf("kernel objects %+v, want %+v", got, before)
	}

	os.Remove(filler)
	s, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: "after"})
	if err != nil {
		t.Fatalf("acquire once space is back: %v", err)
	}
	held = append(held, s)
	p.kill()
	p.start()
	list, err := p.client().List(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	leased := map[string]string{}
	for _, s := range list {
		if s.State == "leased" {
			leased[s.Id] = s.Lease.GetLeaseId()
		}
	}
	if len(leased) != len(held) {
		t.Errorf("%d leases after restart, %d acknowledged", len(leased), len(held))
	}
	for _, s := range held {
		if leased[s.Id] != s.Lease.GetLeaseId() {
			t.Errorf("lease of %s lost across the restart", s.Id)
		}
	}
}

// TestBPFFSMissing starts netslotd where /sys/fs/bpf is not mounted (its
// own mount namespace, with bpffs unmounted there): it mounts bpffs
// itself, pins its datapath there, and serves VPC attachments. Its
// namespace pins and BPF pins live and die with that mount namespace;
// teardown from outside removes the rest.
func TestBPFFSMissing(t *testing.T) {
	p, fab, up := uplinkPool(t, 4)
	script := `umount -l /sys/fs/bpf && ! mountpoint -q /sys/fs/bpf && exec "$0" "$@"`
	p.launchCmd(exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script,
		filepath.Join(binDir, "netslotd")}, p.args(up...)...)...))
	p.waitReady()
	fsType, err := exec.Command("nsenter", "-t", strconv.Itoa(p.cmd.Process.Pid), "-m", "stat", "-f", "-c", "%T", "/sys/fs/bpf").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(fsType)); got != "bpf_fs" {
		t.Errorf("/sys/fs/bpf in the daemon's mount namespace is %q, want bpf_fs", got)
	}
	s, err := p.client().Acquire(ctx(t), &netslotv1.AcquireRequest{Vpc: &netslotv1.VpcAttachment{
		Vni: 4242, RemoteVtep: fab.VTEP.String(), VpcIp: "10.9.0.5", VpcCidrs: []string{"10.9.0.0/24"}}})
	if err != nil {
		t.Fatalf("acquire with a VPC: %v", err)
	}
	if s.GetDatapath().GetVni() != 4242 {
		t.Errorf("datapath %v, want vni 4242", s.GetDatapath())
	}
}
