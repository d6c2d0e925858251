package netns

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netslot/netslot/internal/testenv"
)

// A namespace made and pinned here, entered with Do, pinned again after its
// pin was removed, and gone once unpinned and closed: with its loopback's
// index as the witness of which namespace a thread is in.
func TestPinEnterRepinRemove(t *testing.T) {
	testenv.RequireRoot(t)
	// Opened first, as the daemon does: the thread that unshares below
	// may be the thread group leader, whose namespace /proc/self shows.
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ns")
	made := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with the test's namespace
		made <- CreateHere(path)
	}()
	if err := <-made; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(path) })
	fd, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if !PinnedAs(path, fd) {
		t.Fatal("PinnedAs: the pin just made is not the namespace opened from it")
	}
	if PinnedAs(path, root) {
		t.Fatal("the pin is the root namespace")
	}
	var inside unix.Stat_t
	if err := Do(fd, func() error {
		cur, err := Current()
		if err != nil {
			return err
		}
		defer unix.Close(cur)
		return unix.Fstat(cur, &inside)
	}); err != nil {
		t.Fatal(err)
	}
	var pin unix.Stat_t
	if err := unix.Stat(path, &pin); err != nil || pin.Ino != inside.Ino {
		t.Fatalf("Do ran in namespace %d, the pin is %d (%v)", inside.Ino, pin.Ino, err)
	}
	// Removed as ip netns del does, then put back from the descriptor.
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) || PinnedAs(path, fd) {
		t.Fatalf("after Remove: %v", err)
	}
	if err := Pin(fd, path); err != nil {
		t.Fatal(err)
	}
	if !PinnedAs(path, fd) {
		t.Fatal("Pin did not put the namespace back at its path")
	}
	// Replaced by something else: Pin puts the namespace back over it.
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil {
		t.Fatal("Open took a plain file for a namespace pin")
	}
	if err := Pin(fd, path); err != nil || !PinnedAs(path, fd) {
		t.Fatalf("Pin over a plain file: %v", err)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Remove(path); err != nil {
		t.Errorf("removing a missing pin: %v", err)
	}
}
