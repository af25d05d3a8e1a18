package scsi

import (
	"sync"

	"github.com/iserd/iserd/bdev"
)

// maxKeptScratch bounds the scratch buffer a pooled ioCtx keeps.
const maxKeptScratch = 1 << 20

// ioCtx carries one command through its asynchronous I/O steps. It is
// pooled, and its bdev.Request callback and lock continuation are bound
// once, so the READ/WRITE path allocates nothing in steady state.
type ioCtx struct {
	req  bdev.Request
	lock lockReq
	d    *Disk
	c    *Command // nil for fire-and-forget work (SYNCHRONIZE CACHE IMMED)

	locked bool
	// inline: the next submission may run to completion on the calling
	// goroutine (Command.Inline); only the first, made on the goroutine
	// that called Execute, and not one deferred by the range lock.
	inline bool
	// start runs once the range lock is granted; next runs when req
	// completes. Either returns pending after submitting the next request.
	start func(io *ioCtx) result
	next  func(io *ioCtx, err error) result

	// gated: the request in flight is a write counted in d.writes, in
	// slot gateSlot, until it completes.
	gated    bool
	gateSlot uint32
	// resets is d.resets when the command started: a reset shared by
	// another node since aborted its task.
	resets uint64

	lba     uint64 // per-command cursor for multi-step commands
	left    uint64 // blocks still to process
	fua     bool
	scratch []byte

	// cawToken is the CAWLock token a COMPARE AND WRITE holds, 0 for none;
	// cawGrant is its continuation, bound once like lock.grant.
	cawToken uint64
	cawGrant func(tok uint64, err error)
}

// ioPool recycles ioCtx values; New is set in init because the callbacks
// it binds refer back to the pool.
var ioPool sync.Pool

func init() {
	ioPool.New = func() any {
		io := &ioCtx{}
		io.req.Done = io.done
		io.lock.grant = io.granted
		io.cawGrant = io.cawGranted
		return io
	}
}

// newIO takes a pooled context for command c on d.
func (d *Disk) newIO(c *Command) *ioCtx {
	io := ioPool.Get().(*ioCtx)
	io.d, io.c = d, c
	io.inline = c != nil && c.Inline
	io.resets = d.resets.Load()
	return io
}

// buf returns an n-byte scratch buffer owned by io.
func (io *ioCtx) buf(n int) []byte {
	if cap(io.scratch) < n {
		io.scratch = alignedBuf(n)
	}
	io.scratch = io.scratch[:n]
	return io.scratch
}

// submit starts req; next runs when it completes.
func (io *ioCtx) submit(op bdev.Op, off int64, buf []byte, next func(*ioCtx, error) result) result {
	io.req.Op, io.req.Offset, io.req.Buf, io.req.Length = op, off, buf, 0
	io.req.FUA = op == bdev.OpWrite && io.fua
	return io.issue(next)
}

// unmapRange starts an OpUnmap of n bytes at off.
func (io *ioCtx) unmapRange(off, n int64, next func(*ioCtx, error) result) result {
	io.req.Op, io.req.Offset, io.req.Buf, io.req.Length, io.req.FUA = bdev.OpUnmap, off, nil, n, false
	return io.issue(next)
}

// issue hands the prepared request to the device; next runs when it
// completes. A write is checked here, the last moment before it leaves for
// the device, against the disk's fence (a fenced write completes at once
// with ErrFenced), against the resets other nodes shared since the command
// started (it ends in TASK ABORTED: the reset aborted its task) and against
// the reservations as they are now: a write that waited for the range
// lock, or a step of a multi-step command, after a reservation change that
// fences its nexus off (PREEMPT AND ABORT, a SCSI-2 RESERVE) ends in
// RESERVATION CONFLICT. The transport does not answer either when it
// aborted the task. The write is counted in d.writes before these checks,
// so a change either refuses it or waits for it (drainWrites).
func (io *ioCtx) issue(next func(*ioCtx, error) result) result {
	io.req.Inline, io.inline = io.inline, false
	io.next = next
	if writes(io.req.Op) {
		d := io.d
		io.gateSlot, io.gated = d.writes.enter(), true
		if d.fenced() {
			io.req.Err = ErrFenced
			io.done(&io.req)
			return pending
		}
		if r, refused := io.refused(); refused {
			d.writes.exit(io.gateSlot)
			io.gated = false
			io.finish(r)
			return pending
		}
	}
	io.d.dev.Submit(&io.req)
	return pending
}

// refused reports whether a write of io's command may no longer be issued,
// and the result it ends with.
func (io *ioCtx) refused() (result, bool) {
	switch {
	case io.c == nil:
		return result{}, false
	case io.resets != io.d.resets.Load():
		return abortedResult, true
	case io.d.conflict(io.c, 0):
		return conflictResult, true
	}
	return result{}, false
}

// done is the bdev completion callback.
func (io *ioCtx) done(r *bdev.Request) {
	if io.gated {
		io.gated = false
		io.d.writes.exit(io.gateSlot)
	}
	if res := io.next(io, r.Err); !res.pending {
		io.finish(res)
	}
}

// lockAndRun takes the range lock for [lba, lba+n) (exclusively for
// read-modify-write) and runs start once it is granted.
func (io *ioCtx) lockAndRun(lba, n uint64, excl bool, start func(*ioCtx) result) result {
	io.lock.lba, io.lock.n = lba, n
	io.start = start
	io.locked = true
	var now bool
	if excl {
		io.lock.excl = true
		now = io.d.locks.acquire(&io.lock)
	} else {
		now = io.d.locks.beginWrite(&io.lock)
	}
	if !now {
		return pending
	}
	if res := start(io); !res.pending {
		io.finish(res)
	}
	return pending
}

// granted is the range lock continuation.
func (io *ioCtx) granted() {
	io.inline = false // this is the goroutine that released the range, not the submitter's
	if res := io.start(io); !res.pending {
		io.finish(res)
	}
}

// finish releases the lock, recycles io and completes its command.
func (io *ioCtx) finish(res result) {
	d, c := io.d, io.c
	if io.locked {
		io.releaseCAW() // its write is done: before the range lock runs waiters
		d.locks.release(&io.lock)
		io.locked = false
	}
	io.d, io.c, io.start, io.next = nil, nil, nil, nil
	io.req.Buf, io.req.Err = nil, nil
	io.lba, io.left, io.fua, io.inline = 0, 0, false, false
	if cap(io.scratch) > maxKeptScratch {
		io.scratch = nil
	}
	ioPool.Put(io)
	if c != nil {
		d.complete(c, res)
	}
}

// ioResult ends an I/O step: CHECK CONDITION for err, else GOOD.
func ioResult(err error, write bool) result {
	if err != nil {
		return fail(ioError(err, write))
	}
	return good
}
