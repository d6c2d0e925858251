package daemon_test

import (
	"testing"

	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/testutil"
)

func BenchmarkAcquireRelease(b *testing.B) {
	p := testutil.StartPool(b, 16)
	b.ResetTimer()
	for b.Loop() {
		s, err := p.D.Acquire(daemon.AcquireRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.D.Release(s.ID, ""); err != nil {
			b.Fatal(err)
		}
	}
}
