// Package testenv is the one gate of the privileged tests: they create
// namespaces, devices, nftables tables and BPF objects, so they need root,
// and skip without it. Pure tests never call it, so that go test ./... as
// any user runs every one of them. It imports nothing of netslot.
package testenv

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
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

// PrivateNetns skips tb unless privileged, then moves the calling
// goroutine, locked to its thread for good, into a new network namespace:
// the thread dies with the test, and the namespace with it, whatever the
// test leaves there.
func PrivateNetns(tb testing.TB) {
	tb.Helper()
	RequireRoot(tb)
	runtime.LockOSThread() // never unlocked
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		tb.Fatalf("unshare: %v", err)
	}
}
