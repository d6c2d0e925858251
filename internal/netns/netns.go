// Package netns creates, pins, enters and removes network namespaces.
//
// A namespace switch only ever happens on a goroutine locked to its OS
// thread; a thread that cannot return to the root namespace is never
// unlocked, so the Go runtime retires it instead of reusing it.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

var (
	rootOnce sync.Once
	rootFD   int
	rootErr  error
)

// Root returns a file descriptor of the namespace the process started in.
// It is opened once, from the thread group leader's namespace
// (/proc/self), and never closed: its first call must come before any
// thread leaves the root namespace, since that thread may be the leader
// (the daemon calls it first thing at boot).
func Root() (int, error) {
	rootOnce.Do(func() {
		rootFD, rootErr = unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if rootErr != nil {
			rootErr = fmt.Errorf("open root netns: %w", rootErr)
		}
	})
	return rootFD, rootErr
}

// EnsureDir makes dir (normally /run/netns) a shared mount point, as
// iproute2 does, so that namespaces pinned there are visible to processes
// in other mount namespaces (ip netns exec, Firecracker's jailer).
//
// If dir is not a mount point yet and holds nothing, a tmpfs is mounted
// there rather than dir bound onto itself: pins are empty files, and on a
// host whose /run is a disk file system creating thousands of them costs
// inode allocation (measured here on ext4: a tenth of boot CPU time).
func EnsureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	// Not a mount point yet.
	if ents, rerr := os.ReadDir(dir); rerr == nil && len(ents) == 0 {
		err = unix.Mount("netslot-netns", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755")
	} else {
		err = unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// CreateHere moves the calling thread into a new network namespace and pins
// that namespace at path. The caller must hold runtime.LockOSThread and must
// return the thread to its namespace afterwards (see Enter).
func CreateHere(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns pin %s: %w", path, err)
	}
	f.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		os.Remove(path)
		return fmt.Errorf("unshare netns: %w", err)
	}
	src := "/proc/thread-self/ns/net"
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("pin netns at %s: %w", path, err)
	}
	return nil
}

// Open returns a file descriptor for the namespace pinned at path, after
// checking that path really is a network namespace.
func Open(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil || st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return -1, fmt.Errorf("open netns %s: not a namespace pin", path)
	}
	return fd, nil
}

// Remove unpins the namespace at path. The kernel destroys the namespace,
// and every device in it, once nothing else holds it. Removing a missing pin
// is not an error.
func Remove(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns pin %s: %w", path, err)
	}
	return nil
}

// Enter switches the calling thread into the namespace fd. The caller must
// hold runtime.LockOSThread.
func Enter(fd int) error {
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	return nil
}

// Do runs fn on a locked OS thread inside namespace fd and returns the
// thread to the root namespace afterwards. If it cannot return, the thread
// is left locked so that it dies with the goroutine.
func Do(fd int, fn func() error) error {
	root, err := Root()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := Enter(fd); err != nil {
			errc <- err
			// The thread never left; it is safe to reuse.
			runtime.UnlockOSThread()
			return
		}
		err := fn()
		if rerr := Enter(root); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to root netns: %w", rerr))
			return // thread stays locked and is retired
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// Current returns a file descriptor for the calling thread's namespace.
func Current() (int, error) {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open own netns: %w", err)
	}
	return fd, nil
}

// PinnedAs reports whether path is a pin of the namespace fd.
func PinnedAs(path string, fd int) bool {
	var p, f unix.Stat_t
	if unix.Stat(path, &p) != nil || unix.Fstat(fd, &f) != nil {
		return false
	}
	return p.Dev == f.Dev && p.Ino == f.Ino
}

// Pin pins the namespace fd at path again (the pin was removed, or
// replaced by something else), replacing whatever is at path.
func Pin(fd int, path string) error {
	if err := Remove(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns pin %s: %w", path, err)
	}
	f.Close()
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", fd), path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("pin netns at %s: %w", path, err)
	}
	return nil
}
