package datapath

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// mmapArray is an array map created with BPF_F_MMAPABLE, mapped into the
// daemon's memory: its values are read and written in place, without a
// syscall (a map update costs about 1.5 us here; a store, nanoseconds).
// The programs see a store as soon as the CPU makes it visible; where the
// order of stores matters, the writer says so (see OpenLease).
type mmapArray struct {
	b    []byte
	elem int // the kernel rounds an array's value size up to 8 bytes
	n    int
}

func mapArray(m *ebpf.Map) (*mmapArray, error) {
	elem := (int(m.ValueSize()) + 7) &^ 7
	n := int(m.MaxEntries())
	page := os.Getpagesize()
	size := (elem*n + page - 1) &^ (page - 1)
	b, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s into memory: %w", m, err)
	}
	return &mmapArray{b: b, elem: elem, n: n}, nil
}

// at points at entry i, which must be in range.
func at[T any](a *mmapArray, i int) *T {
	if i < 0 || i >= a.n || int(unsafe.Sizeof(*new(T))) > a.elem {
		panic(fmt.Sprintf("datapath: entry %d of a %d-entry array of %d-byte values", i, a.n, a.elem))
	}
	return (*T)(unsafe.Pointer(&a.b[i*a.elem]))
}

func (a *mmapArray) close() error {
	if a == nil || a.b == nil {
		return nil
	}
	err := unix.Munmap(a.b)
	a.b = nil
	return err
}
