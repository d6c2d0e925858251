package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
)

// fakeSlots answers Acquire with a leased slot and keeps the request;
// the errors in fail come first, one a call (Acquire or Release).
type fakeSlots struct {
	netslotv1.UnimplementedSlotServiceServer
	mu       sync.Mutex
	got      []*netslotv1.AcquireRequest
	releases int
	fail     []error
}

func (f *fakeSlots) failure() error {
	if len(f.fail) == 0 {
		return nil
	}
	err := f.fail[0]
	f.fail = f.fail[1:]
	return err
}

func (f *fakeSlots) Acquire(_ context.Context, req *netslotv1.AcquireRequest) (*netslotv1.AcquireResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, req)
	if err := f.failure(); err != nil {
		return nil, err
	}
	return &netslotv1.AcquireResponse{Slot: &netslotv1.Slot{Id: "nslot-0", Netns: "/run/netns/nslot-0", Tap: "tap0",
		Firecracker: &netslotv1.FirecrackerInterface{IfaceId: "eth0", HostDevName: "tap0", GuestMac: "06:00:ac:10:00:02"},
		Lease:       &netslotv1.Lease{LeaseId: "abc", TapOwner: req.TapOwner}}}, nil
}

func (f *fakeSlots) Release(_ context.Context, req *netslotv1.ReleaseRequest) (*netslotv1.ReleaseResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
	if err := f.failure(); err != nil {
		return nil, err
	}
	return &netslotv1.ReleaseResponse{}, nil
}

func withReason(code codes.Code, reason string) error {
	st, err := status.New(code, "the daemon's message").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: netslotv1.ErrorDomain})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// acquire --wait rides out a draining daemon and release --lease an
// outcome it does not know, until --timeout; acquire without --wait, and
// a forced release, answer at once. A daemon that is not there is named,
// with its socket.
func TestTheCommandLineTriesAgain(t *testing.T) {
	draining := withReason(codes.Unavailable, netslotv1.ReasonDraining)
	f := &fakeSlots{fail: []error{draining}}
	sock := serveFake(t, f)
	if out, err := runNetslot(sock, "acquire", "--key", "vm-1"); !errors.Is(err, client.ErrDraining) {
		t.Errorf("acquire without --wait on a draining daemon: %v: %s", err, out)
	}
	f.fail = []error{draining, draining}
	if out, err := runNetslot(sock, "--timeout", "30s", "acquire", "--key", "vm-1", "--wait"); err != nil || len(f.got) != 4 {
		t.Errorf("acquire --wait on a daemon that drains, then serves: %v after %d tries: %s", err, len(f.got), out)
	}
	lost := status.Error(codes.Unavailable, "connection reset")
	f.fail = []error{lost, withReason(codes.Aborted, netslotv1.ReasonInProgress)}
	if out, err := runNetslot(sock, "--timeout", "30s", "release", "nslot-0", "--lease", "abc"); err != nil || f.releases != 3 {
		t.Errorf("release --lease after an unknown outcome: %v after %d tries: %s", err, f.releases, out)
	}
	f.fail = []error{lost}
	if _, err := runNetslot(sock, "release", "nslot-0"); !client.Uncertain(err) || f.releases != 4 {
		t.Errorf("a forced release tried again: %v, %d tries", err, f.releases)
	}

	missing := filepath.Join(t.TempDir(), "none.sock")
	_, err := runNetslot(missing, "status")
	if want := "netslotd is not reachable on " + missing + ": no such socket"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("status with no daemon: %v, want %q", err, want)
	}
}

// serveFake serves f on a unix socket for the test's duration.
func serveFake(t *testing.T, f *fakeSlots) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	netslotv1.RegisterSlotServiceServer(g, f)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return sock
}

func runNetslot(sock string, args ...string) (string, error) {
	cmd := Netslot()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"--socket", sock}, args...))
	err := cmd.Execute()
	return out.String(), err
}

// acquire --tap-uid U --tap-gid G asks for the tap owner, and -o
// firecracker gives the jailer's --uid and --gid; one without the other
// is refused before the daemon is asked.
func TestAcquireTapOwnerFlags(t *testing.T) {
	f := &fakeSlots{}
	sock := serveFake(t, f)
	out, err := runNetslot(sock, "acquire", "--tap-uid", "4242", "--tap-gid", "4243", "-o", "firecracker")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(f.got) != 1 || f.got[0].GetTapOwner().GetUid() != 4242 || f.got[0].GetTapOwner().GetGid() != 4243 {
		t.Fatalf("request: %v", f.got)
	}
	var fc struct {
		UID   *uint32 `json:"jailer_uid"`
		GID   *uint32 `json:"jailer_gid"`
		Netns string  `json:"jailer_netns"`
	}
	if err := json.Unmarshal([]byte(out), &fc); err != nil || fc.UID == nil || *fc.UID != 4242 || fc.GID == nil || *fc.GID != 4243 || fc.Netns != "/run/netns/nslot-0" {
		t.Fatalf("-o firecracker: %v: %s", err, out)
	}

	// Without the flags: no tap owner asked, none printed.
	if out, err = runNetslot(sock, "acquire", "-o", "firecracker"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(f.got) != 2 || f.got[1].GetTapOwner() != nil || strings.Contains(out, "jailer_uid") {
		t.Fatalf("acquire without --tap-uid: %v: %s", f.got, out)
	}
	if out, err = runNetslot(sock, "acquire", "--tap-uid", "4242", "--tap-gid", "4243"); err != nil || !strings.Contains(out, "uid=4242 gid=4243") {
		t.Fatalf("table: %v: %s", err, out)
	}

	for _, args := range [][]string{
		{"acquire", "--tap-uid", "4242"},
		{"acquire", "--tap-gid", "4242"},
		{"acquire", "--tap-uid", "-1", "--tap-gid", "4242"},
	} {
		if _, err := runNetslot(sock, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if len(f.got) != 3 {
		t.Errorf("refused command lines reached the daemon: %v", f.got[3:])
	}
}
