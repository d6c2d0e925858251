// Package testenv is the one gate of the privileged tests: they create
// namespaces, devices, nftables tables and BPF objects, so they need root,
// and skip without it. Pure tests never call it, so that go test ./... as
// any user runs every one of them. It imports nothing of netslot.
package testenv

import (
	"os"
	"testing"
)

// Privileged reports whether this process may run the privileged tests.
func Privileged() bool { return os.Geteuid() == 0 }

// RequireRoot skips tb unless the process is privileged (see Privileged).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if !Privileged() {
		tb.Skip("needs root: creates namespaces, devices, nftables tables or BPF objects")
	}
}
