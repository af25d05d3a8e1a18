//go:build linux

package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WCStatus is enum ib_wc_status.
type WCStatus uint32

// Work completion statuses.
const (
	WCSuccess        WCStatus = 0
	WCLocLenErr      WCStatus = 1
	WCLocQPOpErr     WCStatus = 2
	WCLocProtErr     WCStatus = 4
	WCWRFlushErr     WCStatus = 5
	WCBadRespErr     WCStatus = 7
	WCLocAccessErr   WCStatus = 8
	WCRemInvReqErr   WCStatus = 9
	WCRemAccessErr   WCStatus = 10
	WCRemOpErr       WCStatus = 11
	WCRetryExcErr    WCStatus = 12
	WCRNRRetryExcErr WCStatus = 13
	WCRemAbortErr    WCStatus = 16
	WCFatalErr       WCStatus = 19
	WCRespTimeoutErr WCStatus = 20
	WCGeneralErr     WCStatus = 21
)

var wcStatusNames = map[WCStatus]string{
	WCSuccess: "success", WCLocLenErr: "local length error", WCLocQPOpErr: "local QP operation error",
	WCLocProtErr: "local protection error", WCWRFlushErr: "work request flushed",
	WCBadRespErr: "bad response", WCLocAccessErr: "local access error",
	WCRemInvReqErr: "remote invalid request", WCRemAccessErr: "remote access error",
	WCRemOpErr: "remote operation error", WCRetryExcErr: "transport retry counter exceeded",
	WCRNRRetryExcErr: "RNR retry counter exceeded", WCRemAbortErr: "remote aborted",
	WCFatalErr: "fatal error", WCRespTimeoutErr: "response timeout", WCGeneralErr: "general error",
}

// String describes the status like ibv_wc_status_str does.
func (s WCStatus) String() string {
	if n, ok := wcStatusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("status %d", uint32(s))
}

// WCOpcode is enum ib_wc_opcode.
type WCOpcode uint32

// Completion opcodes.
const (
	WCSend      WCOpcode = 0
	WCRDMAWrite WCOpcode = 1
	WCRDMARead  WCOpcode = 2
	WCBindMW    WCOpcode = 5
	WCRecv      WCOpcode = 128
)

// WCWithInvalidate is set in WorkCompletion.Flags of a receive whose SEND invalidated the rkey
// in WorkCompletion.Ex (IB_WC_WITH_INVALIDATE).
const WCWithInvalidate = 1 << 2

// WorkCompletion is one completion (ibv_wc).
type WorkCompletion struct {
	ID        uint64 // the work request's ID
	Status    WCStatus
	Opcode    WCOpcode // only valid when Status is WCSuccess
	ByteLen   uint32   // received bytes (receive completions)
	Ex        uint32   // immediate data or invalidated rkey, per Flags
	QPNum     uint32
	Flags     uint32 // ib_wc_flags
	VendorErr uint32
}

// Err returns nil for a successful completion, else an error naming the status.
func (wc *WorkCompletion) Err() error {
	if wc.Status == WCSuccess {
		return nil
	}
	return fmt.Errorf("rdma: work request %d on QP %d: %v (vendor error %#x)", wc.ID, wc.QPNum, wc.Status, wc.VendorErr)
}

// CompChannel is a completion event channel. Its fd is registered with the Go netpoller, so
// Wait parks the goroutine until the kernel signals a completion on an armed CQ.
//
// Both waiting modes read events with raw system calls: the fd is non-blocking, so a read never
// sleeps, and skipping the runtime's syscall bookkeeping matters per event. In particular, a
// goroutine that wakes from the netpoller while every P was idle would otherwise wake the
// runtime's sysmon thread with its first ordinary system call, once per completion event.
type CompChannel struct {
	ctx  *Context
	f    *os.File        // netpoller mode
	rc   syscall.RawConn // f's, for raw reads that still park in the netpoller
	sw   *syscallWaiter  // syscall-wait mode
	fd   int             // ours (with libibverbs, a duplicate of the channel's)
	lib  uintptr         // struct ibv_comp_channel * (libibverbs)
	intr interrupter     // wakes waiters whose context ended
	mu   sync.Mutex
	cqs  map[uint64]*CQ
	dead bool
	// ackArgs holds the arguments of ibv_ack_cq_events on the heap, so that acknowledging
	// allocates nothing; ackMu serializes its use.
	ackMu   sync.Mutex
	ackArgs [2]uintptr
}

// syscallWaiter lets one goroutine at a time sleep in epoll_wait(2) on the channel fd and an
// eventfd that Close and context cancellation write to. The epoll set is built once, so a wait
// costs the kernel no per-call registration of the two fds as poll(2) would.
type syscallWaiter struct {
	ep     int
	wake   int
	mu     sync.Mutex // held by the waiter; Close takes it after waking the waiter
	closed atomic.Bool
	// yielded is when the waiter last went through the scheduler (guarded by mu); see yield.
	yielded time.Time
}

// yieldEvery is how often a syscall waiter passes through the scheduler. A goroutine that only
// sleeps in system calls never does otherwise, and after 10 ms on the same scheduling tick the
// runtime's sysmon thread treats it as running too long: it signals the thread, takes its P
// away and goes back to polling every 20 us, which under load costs more than the yield.
const yieldEvery = 2 * time.Millisecond

// yield lets the scheduler see the waiter once per yieldEvery; sw.mu must be held.
func (sw *syscallWaiter) yield() {
	if now := time.Now(); now.Sub(sw.yielded) >= yieldEvery {
		sw.yielded = now
		runtime.Gosched()
	}
}

// newSyscallWaiter builds the epoll set for the channel fd, which it makes non-blocking.
func newSyscallWaiter(fd int) (*syscallWaiter, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(wake)
		return nil, err
	}
	for _, f := range []int{fd, wake} {
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, f, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(f)}); err != nil {
			unix.Close(ep)
			unix.Close(wake)
			return nil, err
		}
	}
	return &syscallWaiter{ep: ep, wake: wake}, nil
}

func (sw *syscallWaiter) interrupt() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(sw.wake, one[:])
}

func (sw *syscallWaiter) close() error {
	return errors.Join(unix.Close(sw.ep), unix.Close(sw.wake))
}

// NewCompChannel creates a completion event channel whose fd is registered with the Go netpoller:
// any number of goroutines can Wait, and a sleeping waiter costs no thread.
func (c *Context) NewCompChannel() (*CompChannel, error) {
	return c.newCompChannel(false)
}

// NewCompChannelSyscallWait creates a completion event channel for one waiting goroutine at a
// time, which sleeps in epoll_wait(2) (holding an OS thread) instead of the netpoller: the kernel
// wakes the waiting thread directly, as it does for a C program. It needs a spare P (GOMAXPROCS
// of 2 or more) to pay off; under rdma_rxe in the test VM it measured as fast as the netpoller
// channel within run-to-run noise (see cmd/rdmaping), so NewCompChannel stays the default.
func (c *Context) NewCompChannelSyscallWait() (*CompChannel, error) {
	return c.newCompChannel(true)
}

func (c *Context) newCompChannel(syscallWait bool) (*CompChannel, error) {
	var r uverbsCreateCompChannelResp
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("rdma: create completion channel: %w", ErrClosed)
	}
	if c.lib != nil {
		return c.ibvChannelLocked(syscallWait)
	}
	if err := c.executeLocked(cmdCreateCompChannel, asBytes(&r), asBytes(&uverbsRespCmd{})); err != nil {
		return nil, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
	}
	return c.adoptChannelLocked(int(r.FD), syscallWait)
}

// ibvChannelLocked creates a completion channel through libibverbs and waits on a duplicate of
// its fd; c.mu must be held.
func (c *Context) ibvChannelLocked(syscallWait bool) (*CompChannel, error) {
	l := c.lib.lib
	p, err := l.callErrno(l.createCompChannel, c.lib.ctx)
	if err != nil {
		return nil, fmt.Errorf("rdma: %s: ibv_create_comp_channel: %w", c.Device.Name, err)
	}
	fd, err := dupFD((*ibvCompChannel)(cptr(p)).FD, "completion channel")
	if err != nil {
		call(l.destroyCompChannel, p)
		return nil, err
	}
	ch, err := c.adoptChannelLocked(fd, syscallWait)
	if err != nil {
		call(l.destroyCompChannel, p)
		return nil, err
	}
	ch.lib = p
	return ch, nil
}

// adoptChannelLocked wraps the completion channel fd (closing it on failure) for the chosen
// waiting mode and records the channel in c; c.mu must be held.
func (c *Context) adoptChannelLocked(fd int, syscallWait bool) (*CompChannel, error) {
	ch := &CompChannel{ctx: c, fd: fd, cqs: map[uint64]*CQ{}}
	if syscallWait {
		sw, err := newSyscallWaiter(fd)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("rdma: completion channel: %w", err)
		}
		ch.sw = sw
		ch.intr.set = ch.sw.interrupt
	} else {
		f, err := pollableFile(fd, c.Device.Name+"-comp")
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		if ch.rc, err = f.SyscallConn(); err != nil {
			f.Close()
			return nil, fmt.Errorf("rdma: completion channel: %w", err)
		}
		ch.f = f
		// A read deadline in the past wakes every waiter parked in the netpoller.
		ch.intr.set = func() { _ = f.SetReadDeadline(time.Unix(1, 0)) }
		ch.intr.clear = func() { _ = f.SetReadDeadline(time.Time{}) }
	}
	c.chans[ch] = struct{}{}
	return ch, nil
}

// rawRead reads from the non-blocking fd without the runtime's syscall bookkeeping; it retries
// EINTR.
func rawRead(fd int, buf []byte) (int, unix.Errno) {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if errno != unix.EINTR {
			return int(n), errno
		}
	}
}

// cqFor returns the CQ of a completion event (nil for one whose CQ is gone).
func (ch *CompChannel) cqFor(ev []byte) *CQ {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	cq := ch.cqs[binary.NativeEndian.Uint64(ev)]
	if ch.lib != 0 {
		ch.countEventLocked(binary.NativeEndian.Uint64(ev), cq)
	}
	return cq
}

// ackBatch bounds the completion events of a libibverbs CQ left unacknowledged.
const ackBatch = 1 << 16

// countEventLocked accounts for a completion event read for the struct ibv_cq at addr (cq is its
// CQ, nil when unknown); ch.mu must be held. libibverbs' ibv_destroy_cq waits until every event
// read for the CQ was acknowledged, and the C object lives until then, so acknowledging can wait:
// events are counted and acknowledged in batches, and all at once by CQ.Destroy before it
// destroys; an event for a CQ being destroyed (or unknown) is acknowledged at once. That saves a
// call into C per event.
func (ch *CompChannel) countEventLocked(addr uint64, cq *CQ) {
	if cq == nil || cq.destroying {
		ch.ackLib(uintptr(addr), 1)
		return
	}
	cq.unacked++
	if cq.unacked >= ackBatch {
		ch.ackLib(uintptr(addr), cq.unacked)
		cq.unacked = 0
	}
}

// ackLib acknowledges n completion events of the struct ibv_cq at addr (ibv_ack_cq_events).
func (ch *CompChannel) ackLib(addr uintptr, n uint32) {
	ch.ackMu.Lock()
	ch.ackArgs = [2]uintptr{addr, uintptr(n)}
	call(ch.ctx.lib.lib.ackCQEvents, ch.ackArgs[:]...)
	ch.ackMu.Unlock()
}

// ackPending acknowledges the events counted for cq and makes later ones be acknowledged at
// once; CQ.Destroy calls it before ibv_destroy_cq.
func (ch *CompChannel) ackPending(cq *CQ) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	cq.destroying = true
	if cq.unacked > 0 {
		ch.ackLib(uintptr(cq.lib), cq.unacked)
		cq.unacked = 0
	}
}

// event checks what a read of the channel returned: the event's CQ, nil to read on (no event,
// or one for a CQ that is gone), or an error.
func (ch *CompChannel) event(buf []byte, n int, errno unix.Errno) (*CQ, error) {
	switch {
	case errno == unix.EAGAIN:
		return nil, nil
	case errno != 0:
		return nil, fmt.Errorf("rdma: read completion channel: %w", errno)
	case n != len(buf):
		return nil, fmt.Errorf("rdma: completion channel returned %d bytes", n)
	}
	return ch.cqFor(buf), nil
}

// waitSyscall sleeps in epoll_wait(2) until the channel or the wake-up eventfd is readable,
// then reads without blocking: per event one blocking system call and one raw read.
func (ch *CompChannel) waitSyscall(ctx context.Context) (*CQ, error) {
	sw := ch.sw
	sw.mu.Lock()
	defer sw.mu.Unlock()
	defer ch.intr.leave(ch.intr.enter(ctx))
	var (
		buf [unsafe.Sizeof(uverbsCompEventDesc{})]byte
		evs [2]unix.EpollEvent
	)
	for {
		sw.yield()
		if sw.closed.Load() {
			return nil, fmt.Errorf("rdma: completion channel: %w", ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := unix.EpollWait(sw.ep, evs[:], -1)
		if err != nil && err != unix.EINTR {
			return nil, fmt.Errorf("rdma: wait for completion channel: %w", err)
		}
		readable := false
		for _, ev := range evs[:max(n, 0)] {
			if int(ev.Fd) == sw.wake {
				_, _ = rawRead(sw.wake, buf[:])
			} else {
				readable = true
			}
		}
		if !readable {
			continue
		}
		rn, errno := rawRead(ch.fd, buf[:])
		if cq, err := ch.event(buf[:], rn, errno); cq != nil || err != nil {
			return cq, err
		}
	}
}

// Wait blocks until a completion event arrives and returns the CQ it is for. The CQ must be
// re-armed (CQ.Arm) to get another event. Wait returns ctx.Err() when ctx ends and ErrClosed
// after Close.
func (ch *CompChannel) Wait(ctx context.Context) (*CQ, error) {
	if ch.sw != nil {
		return ch.waitSyscall(ctx)
	}
	defer ch.intr.leave(ch.intr.enter(ctx))
	r := eventReaders.Get().(*eventReader)
	defer eventReaders.Put(r)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// r.read runs first without waiting; on EAGAIN the goroutine parks in the netpoller
		// until the fd is readable (or the read deadline passes), then it runs again.
		if err := ch.rc.Read(r.read); err != nil {
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case ch.isDead():
				return nil, fmt.Errorf("rdma: completion channel: %w", ErrClosed)
			case errors.Is(err, os.ErrDeadlineExceeded):
				// Another waiter's context ended; let that waiter leave, then sleep again.
				runtime.Gosched()
				continue
			}
			return nil, fmt.Errorf("rdma: read completion channel: %w", err)
		}
		if cq, err := ch.event(r.buf[:], r.n, r.errno); cq != nil || err != nil {
			return cq, err
		}
	}
}

// eventReader is a netpoller-mode read of one completion event, with its function for
// RawConn.Read bound once: pooled, a wait allocates nothing for it.
type eventReader struct {
	buf   [unsafe.Sizeof(uverbsCompEventDesc{})]byte
	n     int
	errno unix.Errno
	read  func(fd uintptr) bool
}

var eventReaders = sync.Pool{New: func() any {
	r := &eventReader{}
	r.read = func(fd uintptr) bool {
		r.n, r.errno = rawRead(int(fd), r.buf[:])
		return r.errno != unix.EAGAIN
	}
	return r
}}

func (ch *CompChannel) isDead() bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.dead
}

// Close closes the channel; its CQs must be destroyed first.
func (ch *CompChannel) Close() error {
	c := ch.ctx
	c.mu.Lock()
	delete(c.chans, ch)
	c.mu.Unlock()
	ch.mu.Lock()
	if ch.dead {
		ch.mu.Unlock()
		return nil
	}
	if n := len(ch.cqs); n != 0 {
		ch.mu.Unlock()
		return fmt.Errorf("rdma: close completion channel: %d CQs still use it", n)
	}
	ch.dead = true
	ch.mu.Unlock()
	var err error
	if sw := ch.sw; sw != nil {
		sw.closed.Store(true)
		sw.interrupt()
		sw.mu.Lock() // the waiter has left
		defer sw.mu.Unlock()
		ch.intr.close()
		err = errors.Join(unix.Close(ch.fd), sw.close())
	} else {
		err = ch.f.Close()
		ch.intr.close()
	}
	if ch.lib != 0 {
		if e := callInt(c.lib.lib.destroyCompChannel, ch.lib); e != nil {
			err = errors.Join(err, fmt.Errorf("ibv_destroy_comp_channel: %w", e))
		}
	}
	if err != nil {
		return fmt.Errorf("rdma: close completion channel: %w", err)
	}
	return nil
}

// CQ is a completion queue.
type CQ struct {
	ctx    *Context
	ch     *CompChannel
	handle uint32
	uh     uint64  // user handle: with libibverbs, the struct ibv_cq *
	lib    uintptr // struct ibv_cq * (libibverbs)
	ring   CQRing
	// Completion events read but not yet acknowledged to libibverbs, and whether Destroy has
	// begun; both guarded by the channel's mu (see CompChannel.countEventLocked).
	unacked    uint32
	destroying bool
	// Size is the number of completions the CQ holds (as granted by the kernel).
	Size int
	// Spin is how many empty polls Wait makes before it arms the CQ and sleeps; 0 (the default)
	// sleeps at once. A few hundred suits a loaded connection.
	Spin int

	mu    sync.Mutex
	dead  bool
	stage [32]WorkCompletion // guarded by mu
	arm   [2]armCmd          // REQ_NOTIFY_CQ for all and for solicited completions
}

// CreateCQ creates a completion queue of at least cqe entries whose events go to ch (nil for a
// CQ that is only polled), on completion vector vector.
func (c *Context) CreateCQ(cqe int, ch *CompChannel, vector int) (*CQ, error) {
	if cqe < 1 {
		return nil, fmt.Errorf("rdma: bad CQ size %d", cqe)
	}
	if ch != nil && ch.ctx != c {
		return nil, errors.New("rdma: completion channel belongs to another device")
	}
	if c.lib != nil {
		return c.createIbvCQ(cqe, ch, vector)
	}
	drvIn, drvOutLen := c.prov.CQDriverData()
	resp := make([]byte, int(unsafe.Sizeof(uverbsCreateCQResp{}))+drvOutLen)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("rdma: create CQ: %w", ErrClosed)
	}
	uh := c.newUserHandle()
	cmd := uverbsCreateCQ{UserHandle: uh, CQE: uint32(cqe), CompVector: uint32(vector), CompChannel: -1}
	if ch != nil {
		cmd.CompChannel = int32(ch.fd)
	}
	err := c.executeLocked(cmdCreateCQ, resp, asBytes(&cmd), drvIn)
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
	}
	core := (*uverbsCreateCQResp)(unsafe.Pointer(&resp[0]))
	cq := &CQ{ctx: c, ch: ch, handle: core.CQHandle, uh: uh, Size: int(core.CQE)}
	for i := range cq.arm {
		cq.arm[i] = armCmd{Hdr: uverbsCmdHdr{Command: cmdReqNotifyCQ, InWords: uint16(unsafe.Sizeof(armCmd{}) / 4)},
			Req: uverbsReqNotifyCQ{CQHandle: cq.handle, SolicitedOnly: uint32(i)}}
	}
	cq.ring, err = c.prov.NewCQRing(c, resp[unsafe.Sizeof(*core):])
	if err != nil {
		_ = c.execute(cmdDestroyCQ, make([]byte, 8), asBytes(&uverbsDestroyObj{Handle: cq.handle}))
		return nil, err
	}
	c.addCQ(cq)
	return cq, nil
}

// createIbvCQ creates a CQ through libibverbs.
func (c *Context) createIbvCQ(cqe int, ch *CompChannel, vector int) (*CQ, error) {
	l := c.lib.lib
	var chp uintptr
	if ch != nil {
		chp = ch.lib
	}
	if c.isClosed() {
		return nil, fmt.Errorf("rdma: create CQ: %w", ErrClosed)
	}
	p, err := l.callErrno(l.createCQ, c.lib.ctx, uintptr(cqe), 0, chp, uintptr(vector))
	if err != nil {
		return nil, fmt.Errorf("rdma: %s: ibv_create_cq: %w", c.Device.Name, err)
	}
	v := (*ibvCQ)(cptr(p))
	cq := &CQ{ctx: c, ch: ch, handle: v.Handle, uh: uint64(p), lib: p, Size: int(v.CQE)}
	ring, err := newIbvCQRing(p, &c.lib.c.Ops, len(cq.stage))
	if err != nil {
		call(l.destroyCQ, p)
		return nil, err
	}
	cq.ring = ring
	c.addCQ(cq)
	return cq, nil
}

func (c *Context) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// addCQ records a new CQ in the context and its channel.
func (c *Context) addCQ(cq *CQ) {
	ch := cq.ch
	uh := cq.uh
	c.mu.Lock()
	c.cqs[uh] = cq
	c.mu.Unlock()
	if ch != nil {
		ch.mu.Lock()
		ch.cqs[uh] = cq
		ch.mu.Unlock()
	}
}

// Poll moves up to len(wc) completions into wc and returns how many; it never blocks.
// Completions pass through a CQ-owned buffer, so wc does not escape and polling allocates nothing.
func (cq *CQ) Poll(wc []WorkCompletion) (int, error) {
	cq.mu.Lock()
	defer cq.mu.Unlock()
	if cq.dead {
		return 0, fmt.Errorf("rdma: poll CQ: %w", ErrClosed)
	}
	n := cq.ring.Poll(cq.stage[:min(len(wc), len(cq.stage))])
	return copy(wc, cq.stage[:n]), nil
}

// Arm asks for a completion event on the channel for the next completion (or the next
// solicited one). Completions that arrived before Arm raise no event: poll after arming.
//
// Like the rxe doorbell, the REQ_NOTIFY_CQ write never sleeps and goes out as a raw system call
// from a command prepared at CreateCQ.
func (cq *CQ) Arm(solicitedOnly bool) error {
	cmd := &cq.arm[0]
	if solicitedOnly {
		cmd = &cq.arm[1]
	}
	cq.mu.Lock()
	defer cq.mu.Unlock()
	if cq.dead {
		return fmt.Errorf("rdma: arm CQ: %w", ErrClosed)
	}
	if r, ok := cq.ring.(*ibvCQRing); ok {
		if err := r.arm(solicitedOnly); err != nil {
			return fmt.Errorf("rdma: arm CQ: %w", err)
		}
		return nil
	}
	size := unsafe.Sizeof(*cmd)
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(cq.ctx.fd), uintptr(unsafe.Pointer(cmd)), size)
	if errno != 0 {
		return fmt.Errorf("rdma: arm CQ: uverbs REQ_NOTIFY_CQ: %w", errno)
	}
	if n != size {
		return fmt.Errorf("rdma: arm CQ: short write %d", n)
	}
	return nil
}

// armCmd is a complete REQ_NOTIFY_CQ command.
type armCmd struct {
	Hdr uverbsCmdHdr
	Req uverbsReqNotifyCQ
}

// Wait returns at least one completion: it polls (Spin times), then arms the CQ, polls again and
// sleeps on the completion channel until an event comes. The CQ must have a channel of its own.
func (cq *CQ) Wait(ctx context.Context, wc []WorkCompletion) (int, error) {
	if cq.ch == nil {
		return 0, errors.New("rdma: CQ has no completion channel")
	}
	for {
		for i := 0; i <= cq.Spin; i++ {
			if n, err := cq.Poll(wc); n > 0 || err != nil {
				return n, err
			}
		}
		if err := cq.Arm(false); err != nil {
			return 0, err
		}
		if n, err := cq.Poll(wc); n > 0 || err != nil {
			return n, err
		}
		if _, err := cq.ch.Wait(ctx); err != nil {
			return 0, err
		}
	}
}

// Destroy destroys the CQ; QPs using it must be destroyed first.
func (cq *CQ) Destroy() error {
	c := cq.ctx
	cq.mu.Lock()
	defer cq.mu.Unlock()
	if cq.dead {
		return nil
	}
	var err error
	if c.lib != nil {
		// Not under c.mu: ibv_destroy_cq waits for the acknowledgement of every event read
		// for the CQ, which the async reader gives before it takes c.mu.
		if cq.ch != nil {
			cq.ch.ackPending(cq)
		}
		if err = callInt(c.lib.lib.destroyCQ, cq.lib); err == nil {
			c.mu.Lock()
			delete(c.cqs, cq.uh)
			c.mu.Unlock()
		}
	} else {
		var r uverbsDestroyCQResp
		c.mu.Lock()
		if !c.closed {
			err = deviceGone(c.executeLocked(cmdDestroyCQ, asBytes(&r), asBytes(&uverbsDestroyObj{Handle: cq.handle})))
		}
		if err == nil {
			delete(c.cqs, cq.uh)
		}
		c.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("rdma: destroy CQ: %w", err)
	}
	cq.dead = true
	if cq.ch != nil {
		cq.ch.mu.Lock()
		delete(cq.ch.cqs, cq.uh)
		cq.ch.mu.Unlock()
	}
	return cq.ring.Close()
}
