// Package bdev executes block I/O asynchronously against a backing store.
//
// A caller fills a Request and hands it to Device.Submit, which never waits
// for the I/O itself: the request's Done callback runs, from any goroutine,
// once the operation has finished. Backends are interchangeable: a file or
// block device (NewFile) and memory (NewMemory).
package bdev

import (
	"errors"
	"fmt"
)

// Op is the operation a Request performs.
type Op uint8

// Operations understood by every Device.
const (
	// OpRead reads len(Buf) bytes at Offset into Buf.
	OpRead Op = iota
	// OpWrite writes Buf at Offset; with FUA it is on stable storage before Done.
	OpWrite
	// OpFlush makes every completed write stable (SYNCHRONIZE CACHE).
	OpFlush
	// OpUnmap deallocates Length bytes at Offset; they read back as zeroes.
	OpUnmap
)

// String names the operation for logs.
func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpUnmap:
		return "unmap"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Request is one asynchronous I/O. Its owner may pool and reuse it once Done
// has been called.
type Request struct {
	Op     Op
	Offset int64  // byte offset on the device
	Length int64  // bytes to unmap (OpUnmap only)
	Buf    []byte // data to write or buffer to read into
	FUA    bool   // write through to stable storage before completing
	// Inline says that the submitting goroutine has nothing else to do
	// until r completes: a Device may then run r to completion inside
	// Submit and call Done before Submit returns (Uring does, when one of
	// its rings for this is free), sparing the hand-offs to and from a
	// worker goroutine. It is a hint; Done may still come from elsewhere.
	Inline bool

	// Err is set before Done runs: nil on success, else an error that
	// errors.Is one of ErrMedium, ErrNoSpace, ErrRange or ErrClosed.
	Err error
	// Done is called exactly once when the request has finished.
	Done func(*Request)
	// Ctx is for the submitter; the device never touches it.
	Ctx any
}

// Device is an asynchronous block store addressed in bytes.
type Device interface {
	// Submit starts r; r.Done is called when it finishes. Submit never
	// blocks on the I/O itself.
	Submit(r *Request)
	// Size is the capacity in bytes.
	Size() int64
	// Close waits for in-flight requests, flushes, and releases the store.
	Close() error
}

// Resizer is implemented by devices whose capacity can change while in use.
type Resizer interface {
	// Resize sets the capacity to size bytes.
	Resize(size int64) error
}

// Mapper is implemented by thin-provisioned devices that can tell which
// ranges hold allocated data (GET LBA STATUS).
type Mapper interface {
	// Mapped reports whether the range starting at off is allocated and how
	// many bytes (at most length) share that state.
	Mapped(off, length int64) (mapped bool, n int64, err error)
}

// Errors classifying why a request failed; a SCSI layer maps them to sense data.
var (
	// ErrMedium is an unrecoverable read or write error of the backing store (EIO).
	ErrMedium = errors.New("medium error")
	// ErrNoSpace means the backing store ran out of space (ENOSPC, EDQUOT).
	ErrNoSpace = errors.New("no space left on backing store")
	// ErrRange means the request lies outside the device.
	ErrRange = errors.New("request outside the device")
	// ErrClosed means the device has been closed.
	ErrClosed = errors.New("device closed")
	// ErrMisaligned fails a request that a direct-I/O-only device cannot
	// serve without the page cache (see UringOptions.DirectOnly).
	ErrMisaligned = errors.New("request does not fit the store's direct I/O alignment")
)

// checkRange returns ErrRange when [off, off+n) is not within size.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrRange, off, n, size)
	}
	return nil
}

// length is the byte count a request covers.
func (r *Request) length() int64 {
	if r.Op == OpUnmap {
		return r.Length
	}
	return int64(len(r.Buf))
}
