package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// fakeSlots answers Acquire with a leased slot and keeps the request.
type fakeSlots struct {
	netslotv1.UnimplementedSlotServiceServer
	got []*netslotv1.AcquireRequest
}

func (f *fakeSlots) Acquire(_ context.Context, req *netslotv1.AcquireRequest) (*netslotv1.AcquireResponse, error) {
	f.got = append(f.got, req)
	return &netslotv1.AcquireResponse{Slot: &netslotv1.Slot{Id: "nslot-0", Netns: "/run/netns/nslot-0", Tap: "tap0",
		Firecracker: &netslotv1.FirecrackerInterface{IfaceId: "eth0", HostDevName: "tap0", GuestMac: "06:00:ac:10:00:02"},
		Lease:       &netslotv1.Lease{LeaseId: "abc", TapOwner: req.TapOwner}}}, nil
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
