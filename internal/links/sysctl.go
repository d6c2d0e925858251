package links

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// SysctlDir is an open /proc/sys/net of one namespace (the namespace of the
// thread that opened it).
//
// Why a directory fd: the dentries of /proc/sys/net/ipv4 and ipv6 of every
// namespace hang in one hash chain (see devconf.go), so a lookup from
// /proc/sys walks as many entries as there are namespaces. Below
// net/ipv6/conf the parents differ per namespace: a path relative to an open
// net/ipv6/conf costs the same at any pool size.
type SysctlDir struct{ fd int }

// NoSysctlDir is a closed SysctlDir.
var NoSysctlDir = SysctlDir{-1}

// OpenSysctlDir opens /proc/sys/net/<dir> of the calling thread's namespace.
func OpenSysctlDir(dir string) (SysctlDir, error) {
	fd, err := unix.Open("/proc/sys/net/"+dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return SysctlDir{-1}, fmt.Errorf("open /proc/sys/net/%s: %w", dir, err)
	}
	return SysctlDir{fd}, nil
}

// Close closes the directory.
func (s SysctlDir) Close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
	}
}

// Set writes value to path (relative to the directory).
func (s SysctlDir) Set(path, value string) error {
	fd, err := unix.Openat(s.fd, path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", path, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(value)); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// Get reads path (relative to the directory).
func (s SysctlDir) Get(path string) (string, error) {
	fd, err := unix.Openat(s.fd, path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", path, err)
	}
	defer unix.Close(fd)
	var buf [64]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", path, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}
