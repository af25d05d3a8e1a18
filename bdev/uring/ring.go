// Package uring is a minimal io_uring ring over raw system calls: setup,
// the shared submission and completion rings, fixed buffer and eventfd
// registration. It knows nothing about block devices; bdev drives it.
//
// A Ring is not safe for concurrent use: one goroutine fills SQEs, submits
// and reaps completions. Register calls may come from any goroutine; they
// take the ring's lock.
package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Opcodes used by this package's callers (include/uapi/linux/io_uring.h).
const (
	OpNop        uint8 = 0
	OpFsync      uint8 = 3
	OpReadFixed  uint8 = 4
	OpWriteFixed uint8 = 5
	OpFallocate  uint8 = 17
	OpRead       uint8 = 22
	OpWrite      uint8 = 23
)

// FsyncDatasync in SQE.OpFlags makes OpFsync an fdatasync.
const FsyncDatasync = 1

// Setup flags, features, ring flags and register opcodes.
const (
	setupClamp = 1 << 4

	featSingleMmap = 1 << 0
	featNoDrop     = 1 << 1
	featRWCurPos   = 1 << 3 // 5.6: the kernel also has IORING_OP_READ/WRITE
	featExtArg     = 1 << 8 // 5.11: io_uring_enter takes a wait timeout

	enterGetEvents = 1 << 0
	enterExtArg    = 1 << 3

	sqCQOverflow      = 1 << 1
	cqEventfdDisabled = 1 << 0

	regEventfd       = 4
	regBuffers2      = 15
	regBuffersUpdate = 16
	rsrcSparse       = 1 << 0

	offSQRing = 0
	offSQEs   = 0x10000000
)

// SQE is a submission queue entry (struct io_uring_sqe, 64 bytes).
type SQE struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	OpFlags     uint32 // rw_flags, fsync_flags, ...
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	Addr3       uint64
	_           uint64
}

// CQE is a completion queue entry (struct io_uring_cqe, 16 bytes).
type CQE struct {
	UserData uint64
	Res      int32 // result, or -errno
	Flags    uint32
}

type sqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type params struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqRingOffsets
	CQOff                                                                  cqRingOffsets
}

type rsrcRegister struct {
	Nr, Flags  uint32
	Resv2      uint64
	Data, Tags uint64
}

type rsrcUpdate2 struct {
	Offset, Resv uint32
	Data, Tags   uint64
	Nr, Resv2    uint32
}

// iovec is struct iovec with the base as a plain address: it lives outside
// the Go heap (regArgs), where the collector does not look for pointers.
type iovec struct {
	Base, Len uint64
}

// regArgs is the memory io_uring_register reads its arguments from. Some
// arguments hold the address of others (an update names its iovec as an
// integer), and the kernel reads them during the call: were they on a
// goroutine stack, a stack move between taking the address and the system
// call would leave the kernel reading where the stack used to be. So they
// live in a small anonymous mapping that Go never moves, one per ring,
// used under Ring.regMu; a register call allocates nothing.
type regArgs struct {
	iov    iovec
	update rsrcUpdate2
	reg    rsrcRegister
	fd     int32

	// SubmitAndWait's arguments: the ring's one user writes them, outside
	// regMu (register calls do not touch them).
	wait    getEventsArg
	timeout timespec
}

// getEventsArg is struct io_uring_getevents_arg; Ts holds the address of
// a timespec.
type getEventsArg struct {
	Sigmask     uint64
	SigmaskSz   uint32
	MinWaitUsec uint32
	Ts          uint64
}

// timespec is struct __kernel_timespec.
type timespec struct {
	Sec, Nsec int64
}

// ErrUnsupported means the kernel has io_uring but lacks what this package
// needs (a single ring mapping, no-drop completions, IORING_OP_READ/WRITE).
var ErrUnsupported = errors.New("io_uring lacks required features")

// Ring is one io_uring instance with its mapped rings.
type Ring struct {
	fd    int
	ring  []byte // SQ and CQ rings, one mapping
	sqeMm []byte

	sqHead, sqTail, sqFlags *uint32
	sqMask                  uint32
	sqes                    []SQE
	sqeTail                 uint32 // next SQE to hand out, not yet published

	cqHead, cqTail, cqFlags *uint32
	cqMask                  uint32
	cqes                    []CQE

	extArg bool // io_uring_enter takes a timeout (SubmitAndWait)

	regMu  sync.Mutex // register calls and the args mapping
	argsMm []byte
	args   *regArgs // in argsMm; nil once closed
}

// New sets up a ring with at least entries submission slots (rounded up
// to a power of two, clamped by the kernel); the completion ring is twice
// as large. Errors from io_uring_setup wrap the errno, so callers can tell
// ENOSYS and EPERM (io_uring absent or disabled) apart.
func New(entries uint32) (*Ring, error) {
	var p params
	p.Flags = setupClamp
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd), extArg: p.Features&featExtArg != 0}
	const need = featSingleMmap | featNoDrop | featRWCurPos
	if p.Features&need != need {
		r.Close()
		return nil, fmt.Errorf("%w: features %#x", ErrUnsupported, p.Features)
	}
	size := max(p.SQOff.Array+p.SQEntries*4, p.CQOff.CQEs+p.CQEntries*uint32(unsafe.Sizeof(CQE{})))
	var err error
	r.ring, err = unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("mmap io_uring rings: %w", err)
	}
	r.sqeMm, err = unix.Mmap(r.fd, offSQEs, int(p.SQEntries)*int(unsafe.Sizeof(SQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("mmap io_uring SQEs: %w", err)
	}
	r.argsMm, err = unix.Mmap(-1, 0, int(unsafe.Sizeof(regArgs{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("mmap io_uring register arguments: %w", err)
	}
	r.args = (*regArgs)(unsafe.Pointer(&r.argsMm[0]))
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.ring[off])) }
	r.sqHead, r.sqTail, r.sqFlags = u32(p.SQOff.Head), u32(p.SQOff.Tail), u32(p.SQOff.Flags)
	r.sqMask = *u32(p.SQOff.RingMask)
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&r.sqeMm[0])), p.SQEntries)
	// SQEs are always consumed in order, so the indirection array is the
	// identity and is written once.
	array := unsafe.Slice(u32(p.SQOff.Array), p.SQEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.cqHead, r.cqTail, r.cqFlags = u32(p.CQOff.Head), u32(p.CQOff.Tail), u32(p.CQOff.Flags)
	r.cqMask = *u32(p.CQOff.RingMask)
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&r.ring[p.CQOff.CQEs])), p.CQEntries)
	return r, nil
}

// Entries is the number of submission slots.
func (r *Ring) Entries() int { return len(r.sqes) }

// CQEntries is the number of completion slots; keeping no more requests in
// flight than this means completions never overflow.
func (r *Ring) CQEntries() int { return len(r.cqes) }

// GetSQE returns a zeroed SQE to fill, or nil when the submission ring is
// full. Filled SQEs reach the kernel at the next Submit.
func (r *Ring) GetSQE() *SQE {
	head := atomic.LoadUint32(r.sqHead)
	if r.sqeTail-head >= uint32(len(r.sqes)) {
		return nil
	}
	sqe := &r.sqes[r.sqeTail&r.sqMask]
	*sqe = SQE{}
	r.sqeTail++
	return sqe
}

// Pending is the number of SQEs handed out but not yet submitted.
func (r *Ring) Pending() int { return int(r.sqeTail - *r.sqTail) }

// Submit publishes the filled SQEs and makes one io_uring_enter call that
// submits them all; with wait > 0 it also waits until that many
// completions are ready. It returns the number of SQEs consumed.
func (r *Ring) Submit(wait uint32) (int, error) {
	atomic.StoreUint32(r.sqTail, r.sqeTail) // release: SQE contents before the tail
	// Everything published and not yet consumed, including SQEs a previous
	// call left behind (the kernel may take fewer than offered).
	n := r.sqeTail - atomic.LoadUint32(r.sqHead)
	flags := uintptr(0)
	if wait > 0 || atomic.LoadUint32(r.sqFlags)&sqCQOverflow != 0 {
		flags = enterGetEvents
	}
	if n == 0 && flags == 0 {
		return 0, nil
	}
	for {
		got, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			return int(got), nil
		case unix.EINTR:
			continue
		}
		return 0, fmt.Errorf("io_uring_enter: %w", errno)
	}
}

// CanWait reports whether SubmitAndWait is available (Linux 5.11).
func (r *Ring) CanWait() bool { return r.extArg }

// SubmitAndWait publishes the filled SQEs and, in one io_uring_enter call,
// submits them and waits until a completion is ready or timeout has
// passed, whichever comes first; the calling thread sleeps in the kernel
// meanwhile. It returns the number of SQEs consumed; a timeout is no
// error (Ready tells what came). It needs CanWait.
func (r *Ring) SubmitAndWait(timeout time.Duration) (int, error) {
	atomic.StoreUint32(r.sqTail, r.sqeTail) // release: SQE contents before the tail
	n := r.sqeTail - atomic.LoadUint32(r.sqHead)
	a := r.args
	a.timeout = timespec{Sec: int64(timeout / time.Second), Nsec: int64(timeout % time.Second)}
	a.wait = getEventsArg{Ts: uint64(uintptr(unsafe.Pointer(&a.timeout)))}
	for {
		got, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), 1,
			enterGetEvents|enterExtArg, uintptr(unsafe.Pointer(&a.wait)), unsafe.Sizeof(a.wait))
		switch errno {
		case 0:
			return int(got), nil
		case unix.ETIME: // nothing was submitted (else the count is returned) and nothing completed
			return 0, nil
		case unix.EINTR:
			continue
		}
		return 0, fmt.Errorf("io_uring_enter: %w", errno)
	}
}

// Withdraw takes back every SQE the kernel has not consumed, after Submit
// failed, and calls f with the UserData of each, oldest first; their slots
// are free again. f must not use the ring.
func (r *Ring) Withdraw(f func(userData uint64)) {
	head := atomic.LoadUint32(r.sqHead)
	tail := r.sqeTail
	// Nothing enters the kernel between here and the store, so it cannot
	// consume what is being withdrawn.
	r.sqeTail = head
	atomic.StoreUint32(r.sqTail, head)
	for i := head; i != tail; i++ {
		f(r.sqes[i&r.sqMask].UserData)
	}
}

// Ready is the number of completions waiting to be reaped.
func (r *Ring) Ready() int {
	return int(atomic.LoadUint32(r.cqTail) - *r.cqHead)
}

// Reap copies up to len(dst) completions into dst, releases their slots
// to the kernel and returns how many it copied.
func (r *Ring) Reap(dst []CQE) int {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail) // acquire: CQE contents after the tail
	n := min(int(tail-head), len(dst))
	for i := range n {
		dst[i] = r.cqes[(head+uint32(i))&r.cqMask]
	}
	atomic.StoreUint32(r.cqHead, head+uint32(n))
	return n
}

// SetEventfdEnabled turns the registered eventfd's notification on or off
// (IORING_CQ_EVENTFD_DISABLED); a busy reaper turns it off to spare the
// kernel the signal.
func (r *Ring) SetEventfdEnabled(on bool) {
	for {
		old := atomic.LoadUint32(r.cqFlags)
		nw := old | cqEventfdDisabled
		if on {
			nw = old &^ cqEventfdDisabled
		}
		if old == nw || atomic.CompareAndSwapUint32(r.cqFlags, old, nw) {
			return
		}
	}
}

// RegisterEventfd makes the kernel signal efd whenever a completion is posted.
func (r *Ring) RegisterEventfd(efd int) error {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.args == nil {
		return errClosed
	}
	r.args.fd = int32(efd)
	return r.register(regEventfd, unsafe.Pointer(&r.args.fd), 1, "register eventfd")
}

// RegisterSparseBuffers reserves n empty fixed-buffer slots, filled later
// by UpdateBuffer (Linux 5.19).
func (r *Ring) RegisterSparseBuffers(n int) error {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.args == nil {
		return errClosed
	}
	r.args.reg = rsrcRegister{Nr: uint32(n), Flags: rsrcSparse}
	return r.register(regBuffers2, unsafe.Pointer(&r.args.reg), unsafe.Sizeof(r.args.reg), "register sparse buffers")
}

// UpdateBuffer installs buf as fixed buffer number idx; OpReadFixed and
// OpWriteFixed with BufIndex idx may then address any part of it. An empty
// buf clears the slot: the kernel lets go of the memory it pinned.
func (r *Ring) UpdateBuffer(idx int, buf []byte) error {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.args == nil {
		return errClosed
	}
	a := r.args
	a.iov = iovec{}
	if len(buf) > 0 {
		a.iov = iovec{Base: uint64(uintptr(unsafe.Pointer(&buf[0]))), Len: uint64(len(buf))}
	}
	a.update = rsrcUpdate2{Offset: uint32(idx), Data: uint64(uintptr(unsafe.Pointer(&a.iov))), Nr: 1}
	err := r.register(regBuffersUpdate, unsafe.Pointer(&a.update), unsafe.Sizeof(a.update), "update fixed buffer")
	runtime.KeepAlive(buf) // the iovec holds its address as an integer
	return err
}

// errClosed is what a register call on a closed ring returns.
var errClosed = errors.New("io_uring: ring closed")

// register makes one io_uring_register call; arg must point into r.args.
func (r *Ring) register(op uintptr, arg unsafe.Pointer, nr uintptr, what string) error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), op, uintptr(arg), nr, 0, 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("io_uring %s: %w", what, errno)
	}
}

// Close unmaps the rings and closes the ring descriptor; the kernel
// cancels or finishes whatever is still in flight. Register calls made
// after Close fail.
func (r *Ring) Close() error {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	var errs []error
	for _, m := range [][]byte{r.sqeMm, r.ring, r.argsMm} {
		if m != nil {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, fmt.Errorf("unmap io_uring: %w", err))
			}
		}
	}
	r.sqeMm, r.ring, r.argsMm, r.args, r.sqes, r.cqes = nil, nil, nil, nil, nil, nil
	if r.fd >= 0 {
		if err := unix.Close(r.fd); err != nil {
			errs = append(errs, fmt.Errorf("close io_uring: %w", err))
		}
		r.fd = -1
	}
	return errors.Join(errs...)
}
