package scsi

import (
	"errors"
	"unsafe"

	"github.com/iserd/iserd/bdev"
)

// Fence says whether this process may still change shared state: the
// medium of a logical unit that other processes (cluster nodes) serve too,
// and its reservations. A cluster node that cannot renew its liveness lease
// closes its fence before the lease can expire, so that once its peers
// consider it gone it no longer writes.
type Fence interface {
	// Allowed reports whether writes may be submitted now. It runs for
	// every write, right before the write reaches the backing store, so it
	// must be cheap and must not allocate.
	Allowed() bool
}

// ErrFenced is returned by cluster hooks (see Target.OnSetPortGroups) when
// this node may not change shared state; commands refused for it end with
// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
var ErrFenced = errors.New("this node is fenced: it may not change shared state")

// fencedSense is the answer of a fenced node to a command that would change
// the medium or the reservations: NOT READY, LOGICAL UNIT NOT ACCESSIBLE,
// TARGET PORT IN UNAVAILABLE STATE (04h/0Ch). Linux fails the path (the
// SCSI layer ends the request with an I/O error, which dm-multipath takes
// for a path error) and retries the command on another path.
var fencedSense = senseData{key: keyNotReady, code: ascNotReadyUnavailable}

// fenced reports whether d may not change its medium now. Without a fence
// (a unit no other process serves) it costs one nil check.
func (d *Disk) fenced() bool {
	f := d.cfg.Fence
	return f != nil && !f.Allowed()
}

// writes reports whether op changes the medium.
func writes(op bdev.Op) bool { return op == bdev.OpWrite || op == bdev.OpUnmap }

// errConflict refuses a write of a command that the reservations, as they
// are when it leaves for the device, no longer allow.
var errConflict = errors.New("reservation conflict")

// syncIO runs req on d's device and waits for it; a write is refused with
// ErrFenced while d is fenced, and, when it is done for command c (nil:
// for the logical unit itself, as a sanitize), with errConflict once the
// reservations stop c's nexus from writing. Writes are counted in d.writes
// like the command paths' (see ioCtx.issue). Copies and sanitize run on
// their own goroutines, so waiting blocks no command path.
func (d *Disk) syncIO(c *Command, req *bdev.Request) error {
	if writes(req.Op) {
		slot := d.writes.enter()
		defer d.writes.exit(slot)
		if d.fenced() {
			return ErrFenced
		}
		if c != nil && d.conflict(c, 0) {
			return errConflict
		}
	}
	done := make(chan struct{})
	req.Done = func(*bdev.Request) { close(done) }
	d.dev.Submit(req)
	<-done
	return req.Err
}

// directAlign is the alignment of buffers the disk allocates for its own
// reads and writes: a page, which satisfies O_DIRECT on every store, so a
// backing store opened for direct I/O only (bdev.UringOptions.DirectOnly,
// as in a cluster) never sees a misaligned buffer from the disk.
const directAlign = 4096

// alignedBuf returns n zero bytes starting at a directAlign boundary.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign-1)
	off := -int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (directAlign - 1)
	return b[off : off+n : off+n]
}
