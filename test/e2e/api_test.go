package e2e

import (
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// TestAPIRefusesAbuse: what a confused or hostile local root client can
// send is answered or cut off, and changes nothing: a request over the size
// limit (RESOURCE_EXHAUSTED), bytes that are not HTTP/2 and a connection
// that says nothing (both closed by the daemon); the daemon serves on and
// the pool and the kernel are as before. (A non-root client is refused at
// accept, see TestLifecycleThroughCLI.)
func TestAPIRefusesAbuse(t *testing.T) {
	p := newPool(t, 8)
	p.start()
	before := p.kernelObjects()
	c := p.client()

	huge := make([]string, 8000) // ~100 KiB, over the 64 KiB limit
	for i := range huge {
		huge[i] = "198.18.100.0/24"
	}
	_, err := c.Acquire(ctx(t), &netslotv1.AcquireRequest{EgressAllow: huge})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized acquire: %v, want ResourceExhausted", err)
	}
	_, err = c.Acquire(ctx(t), &netslotv1.AcquireRequest{Owner: strings.Repeat("\xff", 10)})
	if status.Code(err) == codes.OK {
		t.Errorf("acquire with an owner that is not UTF-8 succeeded")
	}

	closedByDaemon := func(name string, send []byte) {
		t.Helper()
		conn, err := net.Dial("unix", p.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if len(send) > 0 {
			if _, err := conn.Write(send); err != nil {
				t.Fatalf("%s: write: %v", name, err)
			}
		}
		// A hang bound, not a timing assertion: the daemon's handshake
		// timeout is 5 s.
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		// EOF or a reset: closed. A timeout: still open.
		var ne net.Error
		if _, err := io.Copy(io.Discard, conn); errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the daemon did not close the connection: %v", name, err)
		}
	}
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	closedByDaemon("garbage", garbage)
	closedByDaemon("silence", nil)

	if st := p.status(); st.Free != 8 || st.Leased != 0 {
		t.Errorf("abuse changed the pool: %+v", st)
	}
	if after := p.kernelObjects(); after != before {
		t.Errorf("abuse changed the kernel: %+v -> %+v", before, after)
	}
	if _, err := p.cli("release", p.acquireJSON().ID); err != nil {
		t.Errorf("the daemon no longer serves: %v", err)
	}
}
