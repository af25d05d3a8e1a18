//go:build linux

package rdma

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmem is anonymous mmap'd memory for structures C code keeps pointers into (work requests,
// SGEs, completions, attribute blocks): the Go garbage collector neither moves nor frees it.
// take hands out aligned pieces of it; free unmaps all of it.
type cmem struct {
	mem  []byte
	used int
}

// newCmem maps at least size bytes (whole pages).
func newCmem(size int) (*cmem, error) {
	page := unix.Getpagesize()
	size = max(page, (size+page-1)/page*page)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("rdma: mmap %d bytes for libibverbs structures: %w", size, err)
	}
	return &cmem{mem: mem}, nil
}

// take returns n zeroed bytes aligned to 16 (enough for every libibverbs structure).
func (m *cmem) take(n int) unsafe.Pointer {
	off := (m.used + 15) &^ 15
	if off+n > len(m.mem) {
		panic(fmt.Sprintf("rdma: cmem of %d bytes cannot take %d more at %d", len(m.mem), n, off))
	}
	m.used = off + n
	return unsafe.Pointer(&m.mem[off])
}

// takeN returns a slice of n zeroed T in the mapping.
func takeN[T any](m *cmem, n int) []T {
	var t T
	return unsafe.Slice((*T)(m.take(n*int(unsafe.Sizeof(t)))), n)
}

// cmemSize is the bytes takeN[T](n) needs, alignment included.
func cmemSize[T any](n int) int {
	var t T
	return (n*int(unsafe.Sizeof(t)) + 15) &^ 15
}

func (m *cmem) free() error {
	if m == nil || m.mem == nil {
		return nil
	}
	err := unix.Munmap(m.mem)
	m.mem = nil
	if err != nil {
		return fmt.Errorf("rdma: munmap libibverbs structures: %w", err)
	}
	return nil
}
