package bdev

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/iserd/iserd/bdev/uring"
	"github.com/iserd/iserd/internal/procscale"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrNoUring means io_uring cannot be used on this host: the kernel lacks
// it (ENOSYS), it is disabled (sysctl kernel.io_uring_disabled, seccomp:
// EPERM) or too old for this engine. Callers fall back to NewFile.
var ErrNoUring = errors.New("io_uring unavailable")

// newRing creates a ring; tests replace it to simulate a kernel without io_uring.
var newRing = uring.New

// UringOptions configure NewUring.
type UringOptions struct {
	// FileOptions open the backing store as for NewFile; Workers is unused.
	FileOptions
	// Pool, when set, has its regions registered as fixed buffers with
	// every ring, so requests whose Buf comes from it skip the kernel's
	// per-I/O page pinning.
	Pool *Pool
	// Rings is the number of rings and workers (default procscale.Limit:
	// the CPUs iserd may use).
	Rings int
	// InlineRings is the number of further rings that Inline requests
	// borrow to run to completion on their submitter's goroutine (default
	// procscale.Limit; negative: none, every request goes to a worker).
	InlineRings int
	// Entries is the submission ring size of each ring (default 128).
	Entries int
	// Buffered disables O_DIRECT.
	Buffered bool
	// DirectOnly keeps every read and write off the page cache, for a
	// store other hosts write too (a cluster's shared device), where a
	// cached block may be stale: NewUring fails when the store refuses
	// O_DIRECT (or is tmpfs), and a request whose buffer, offset or length
	// does not fit the store's direct-I/O alignment fails with
	// ErrMisaligned instead of going through the page cache.
	DirectOnly bool
	// Log receives the one line said when a ring refuses submissions
	// (default: none).
	Log *zap.Logger
}

// Uring is a Device driven by io_uring: one ring per worker goroutine and
// one worker per core. Requests reach a worker through lock-free rings:
// a Queue (one producer, from NewQueue) or, for Submit from any goroutine,
// the worker's multi-producer ring. The worker batches them into its ring,
// submits with one io_uring_enter, reaps completions and calls Done.
//
// Reads and writes use O_DIRECT when the buffer address, offset and length
// fit the store's direct-I/O alignment, and the page cache otherwise; the
// kernel keeps both views coherent. Buffers from the configured Pool go
// out as READ_FIXED/WRITE_FIXED. FUA writes carry RWF_DSYNC, a flush is an
// fdatasync and unmap punches a hole (writing zeroes where that is not
// supported). A store on tmpfs is memory already, and tmpfs has no
// non-blocking read path (RWF_NOWAIT fails with EOPNOTSUPP), so io_uring
// would hand every copy to an io-wq thread; the worker copies with
// preadv2/pwritev2 itself instead, 2-3x faster in BenchmarkBackends.
//
// Waiting: a worker with requests in flight and nothing else to do sleeps
// in a read of an eventfd through the Go netpoller. The same eventfd is
// registered with the ring (IORING_REGISTER_EVENTFD), so it wakes for a
// completion or for a new request, whichever comes first; submitters write
// it only when the worker announced that it sleeps, so a busy worker costs
// them no system call. While busy the worker also turns the kernel's
// signal off (IORING_CQ_EVENTFD_DISABLED). This was chosen over
// io_uring_enter(GETEVENTS) on a locked OS thread because a sleeping worker
// then holds no OS thread, Done callbacks run on an ordinary goroutine and
// one wait covers both event sources; uring.BenchmarkWake measured the
// submit-to-wake round trip on the 2-core test VM at 25-31 µs through the
// netpoller against 49-56 µs through GETEVENTS on a locked thread. With
// nothing in flight only submitters can have news, so the worker parks on
// a channel instead, which wakes a goroutine faster still.
//
// Running to completion: a request marked Inline (its submitter, say a
// connection's reader with this one command in flight, has nothing else to
// do) skips the workers when one of the inline rings is idle. Submit
// claims that ring with one compare-and-swap, submits and sleeps in the
// kernel in the same io_uring_enter (GETEVENTS with a timeout) until the
// completion comes, and calls Done itself: no goroutine is woken on the
// way, and the submitter can send its response at once. These rings are
// apart from the workers' so a claimed ring never holds up other
// submitters; when none is free (many connections at once) the request
// takes the worker path. The wait is bounded by inlineWaitBudget: a
// thread sleeping in the kernel costs no CPU, but a device slower than
// that hands the request to the ring's own worker goroutine, which
// completes it as any other, and the submitter goes back to its work.
//
// Done runs on the worker goroutine, so it must not block: every other
// request of that core waits behind it. It may Submit. On tmpfs, where a
// copy never waits for a device, reads and writes are done by Submit
// itself and Done runs before Submit returns.
type Uring struct {
	file       *File        // buffered descriptor, size, Mapped, Resize, final flush
	direct     int          // O_DIRECT descriptor, or -1
	inline     bool         // memory-backed store: reads and writes are copied in Submit, see copyInline
	inlineN    atomic.Int64 // requests being served in Submit (copyInline, runInline), for Close
	directOnly bool         // misaligned reads and writes fail (UringOptions.DirectOnly)
	memAlign   uintptr
	offAlign   int64
	pool       *Pool
	unhook     func()
	workers    []*worker // take Submit and Queue requests
	lenders    []*worker // inline rings: lent to Inline requests (runInline)
	rings      []*worker // all of them: workers, then lenders
	closed     atomic.Bool
	qmu        sync.Mutex // queue registration
	nextQ      int
	path       string
	log        *zap.Logger
	enterErr   atomic.Bool // a submission failure was logged
}

// NewUring opens path as an io_uring Device. When the kernel cannot run
// io_uring it fails with an error that errors.Is ErrNoUring; other errors
// concern the backing store.
func NewUring(path string, o UringOptions) (*Uring, error) {
	if o.Rings <= 0 {
		o.Rings = procscale.Limit()
	}
	if o.Entries <= 0 {
		o.Entries = 128
	}
	fo := o.FileOptions
	fo.Workers = 1 // the File serves only as descriptor and metadata holder
	f, err := NewFile(path, fo)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.InlineRings == 0 {
		o.InlineRings = procscale.Limit()
	}
	d := &Uring{file: f, direct: -1, pool: o.Pool, path: path, log: o.Log, directOnly: o.DirectOnly}
	for i := range o.Rings + max(o.InlineRings, 0) {
		w, err := newWorker(d, o.Entries)
		if err != nil && i >= o.Rings {
			break // inline rings are an optimization: fewer (or none) will do
		}
		if err != nil {
			d.release()
			return nil, err
		}
		if i >= o.Rings && !w.ring.CanWait() {
			w.close() // the kernel cannot bound the wait: no inline rings
			break
		}
		d.rings = append(d.rings, w)
	}
	d.workers, d.lenders = d.rings[:o.Rings], d.rings[o.Rings:]
	var fs unix.Statfs_t
	// A block device's node lives on devtmpfs, which reports TMPFS_MAGIC
	// too: only a regular file can be memory.
	if err := unix.Fstatfs(f.fd, &fs); err == nil && fs.Type == unix.TMPFS_MAGIC && !f.block {
		d.inline = true
		f.rawCopies = true
	} else if !o.Buffered || o.DirectOnly {
		d.openDirect(path, o.ReadOnly)
	}
	if o.DirectOnly && d.direct < 0 {
		d.release()
		return nil, fmt.Errorf("backing store %s cannot be opened with O_DIRECT (tmpfs, or a file system without direct I/O), "+
			"which a LUN shared by several gateways needs", path)
	}
	if o.Pool != nil {
		d.unhook = o.Pool.OnRegion(d.registerRegion)
	}
	for _, w := range d.rings {
		go w.run()
	}
	return d, nil
}

// openDirect opens a second, O_DIRECT descriptor and learns its alignment;
// a store that refuses O_DIRECT is simply served through the page cache.
func (d *Uring) openDirect(path string, readOnly bool) {
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(path, flags|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d.direct, d.memAlign, d.offAlign = fd, 4096, 4096
	var st unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st) == nil &&
		st.Mask&unix.STATX_DIOALIGN != 0 && st.Dio_offset_align != 0 {
		d.memAlign, d.offAlign = uintptr(st.Dio_mem_align), int64(st.Dio_offset_align)
	} else if d.file.block {
		if lbs, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && lbs > 0 {
			d.memAlign, d.offAlign = uintptr(lbs), int64(lbs)
		}
	}
}

// registerRegion installs a pool region as a fixed buffer in every ring
// that has a fixed-buffer table; a ring that refuses keeps using plain
// reads and writes for it.
func (d *Uring) registerRegion(idx int, mem []byte) {
	for _, w := range d.rings {
		if w.fixed == nil || idx >= len(w.fixed) {
			continue
		}
		if mem == nil { // the pool unmaps the region: no buffer of it is in use
			w.fixed[idx].Store(false)
			w.ring.UpdateBuffer(idx, nil)
			continue
		}
		if w.ring.UpdateBuffer(idx, mem) == nil {
			w.fixed[idx].Store(true)
		}
	}
}

// Direct reports whether an O_DIRECT path exists and its alignment (of
// buffer addresses, and of offsets and lengths).
func (d *Uring) Direct() (ok bool, memAlign, offAlign int) {
	return d.direct >= 0, int(d.memAlign), int(d.offAlign)
}

// Size reports the capacity in bytes.
func (d *Uring) Size() int64 { return d.file.Size() }

// Mapped reports whether data is allocated at off (see File.Mapped).
func (d *Uring) Mapped(off, length int64) (bool, int64, error) { return d.file.Mapped(off, length) }

// Resize changes the capacity of a regular file.
func (d *Uring) Resize(size int64) error { return d.file.Resize(size) }

// Submit hands r to a worker picked at random (a per-thread generator, no
// shared state) through that worker's multi-producer ring. Connections
// that submit from one goroutine should use NewQueue instead.
func (d *Uring) Submit(r *Request) {
	if d.copiesInline(r) {
		d.copyInline(r)
		return
	}
	if r.Inline && d.runInline(r) {
		return
	}
	w := d.workers[rand.N(len(d.workers))]
	w.submitters.Add(1)
	if d.closed.Load() {
		w.submitters.Add(-1)
		fail(r, ErrClosed)
		return
	}
	if !w.shared.push(r) {
		w.spill(r)
	}
	w.submitters.Add(-1)
	w.wake()
}

// Queue is a submission path from one goroutine to one worker: a
// single-producer/single-consumer ring, so Submit costs two atomic stores
// and, only if the worker sleeps, one eventfd write.
type Queue struct {
	d    *Uring
	w    *worker
	q    *spsc[*Request]
	busy atomic.Bool // a Submit is between its closed check and its push
}

// NewQueue registers a submitter (for instance a connection's reader) and
// binds it to a worker, spreading queues round-robin. Its Submit must not
// be called from two goroutines at once.
func (d *Uring) NewQueue() *Queue {
	d.qmu.Lock()
	defer d.qmu.Unlock()
	w := d.workers[d.nextQ%len(d.workers)]
	d.nextQ++
	q := &Queue{d: d, w: w, q: newSPSC[*Request](1024)}
	w.setQueues(append(w.queueList(), q))
	return q
}

// Submit starts r on the queue's worker; Done runs on that worker.
func (q *Queue) Submit(r *Request) {
	if q.d.copiesInline(r) {
		q.d.copyInline(r)
		return
	}
	if r.Inline && q.d.runInline(r) {
		return
	}
	q.busy.Store(true)
	if q.d.closed.Load() {
		q.busy.Store(false)
		fail(r, ErrClosed)
		return
	}
	if !q.q.push(r) {
		q.w.spill(r)
	}
	q.busy.Store(false)
	q.w.wake()
}

// Close detaches the queue once the worker has taken everything submitted
// through it; requests already started still complete.
func (q *Queue) Close() {
	for !q.q.empty() && !q.w.exited() {
		q.w.wake()
		runtime.Gosched()
	}
	q.d.qmu.Lock()
	defer q.d.qmu.Unlock()
	old := q.w.queueList()
	list := make([]*Queue, 0, len(old))
	for _, o := range old {
		if o != q {
			list = append(list, o)
		}
	}
	q.w.setQueues(list)
}

// Close stops accepting requests, waits for those in flight, flushes and
// releases the rings and the store.
func (d *Uring) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	// Every submitter either saw closed or finished its push: after this
	// the workers can drain to empty and stop.
	for d.inlineN.Load() != 0 {
		runtime.Gosched()
	}
	for _, w := range d.workers {
		for w.submitters.Load() != 0 {
			runtime.Gosched()
		}
		for _, q := range w.queueList() {
			for q.busy.Load() {
				runtime.Gosched()
			}
		}
	}
	for _, w := range d.rings {
		w.stop.Store(true)
		w.signal()
		w.kick()
	}
	for _, w := range d.rings {
		<-w.done
	}
	return d.release()
}

// release frees rings, descriptors and the pool hook.
func (d *Uring) release() error {
	if d.unhook != nil {
		d.unhook()
	}
	var errs []error
	for _, w := range d.rings {
		if err := w.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.direct >= 0 {
		if err := unix.Close(d.direct); err != nil {
			errs = append(errs, fmt.Errorf("close direct descriptor: %w", err))
		}
	}
	if err := d.file.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func fail(r *Request, err error) {
	r.Err = err
	r.Done(r)
}

// worker owns one ring. Only its goroutine touches ring, slots and free.
type worker struct {
	d          *Uring
	ring       *uring.Ring
	efd        int
	ev         *os.File // efd, read through the netpoller
	evbuf      [8]byte
	fixed      []atomic.Bool // pool region registered in this ring; nil: no table
	shared     *mpsc[*Request]
	queues     atomic.Pointer[[]*Queue]
	rr         int // queue to look at first, for fairness
	submitters atomic.Int64
	sleeping   atomic.Int32 // awake, idleOnChan, idleOnEvents or lent
	wakeCh     chan struct{}
	stop       atomic.Bool
	done       chan struct{}

	// Overflow for full rings, so Submit never blocks (a Done callback
	// submitting to its own worker would otherwise deadlock). Rarely used.
	spillMu sync.Mutex
	spilled []*Request
	nSpill  atomic.Int64

	slots   []slot
	free    []uint32
	cqes    []uring.CQE
	backoff enterBackoff
}

// slot tracks one request in flight; the ring's user data is its index.
type slot struct {
	r       *Request
	off     int64  // where the next step reads or writes
	buf     []byte // what the next step reads or writes
	zeroing int64  // unmap by writing zeroes: bytes left after buf
}

// zeroes is the source of the writes that stand in for an unsupported hole punch.
var zeroes = make([]byte, 1<<20)

// wakeVal is what submitters add to the eventfd.
var wakeVal = [8]byte{1}

func newWorker(d *Uring, entries int) (*worker, error) {
	ring, err := newRing(uint32(entries))
	if err != nil {
		return nil, noUring(err)
	}
	w := &worker{d: d, ring: ring, efd: -1, shared: newMPSC[*Request](1024), done: make(chan struct{}), wakeCh: make(chan struct{}, 1)}
	w.setQueues(nil)
	if w.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		w.close()
		return nil, fmt.Errorf("io_uring worker eventfd: %w", err)
	}
	w.ev = os.NewFile(uintptr(w.efd), "io_uring-eventfd")
	if err := ring.RegisterEventfd(w.efd); err != nil {
		w.close()
		return nil, noUring(err)
	}
	if d.pool != nil && ring.RegisterSparseBuffers(d.pool.MaxRegions()) == nil {
		w.fixed = make([]atomic.Bool, d.pool.MaxRegions())
	}
	ring.SetEventfdEnabled(false)
	n := ring.CQEntries() // never more in flight than completion slots
	w.slots = make([]slot, n)
	w.free = make([]uint32, n)
	for i := range w.free {
		w.free[i] = uint32(n - 1 - i)
	}
	w.cqes = make([]uring.CQE, ring.CQEntries())
	return w, nil
}

// noUring marks a ring setup failure as ErrNoUring, naming the sysctl when
// it is what forbids io_uring.
func noUring(err error) error {
	if b, rerr := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); rerr == nil && len(b) > 0 && b[0] != '0' {
		return fmt.Errorf("%w (kernel.io_uring_disabled=%c): %w", ErrNoUring, b[0], err)
	}
	return fmt.Errorf("%w: %w", ErrNoUring, err)
}

func (w *worker) close() error {
	var errs []error
	if w.ring != nil {
		if err := w.ring.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if w.ev != nil {
		if err := w.ev.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close worker eventfd: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (w *worker) queueList() []*Queue { return *w.queues.Load() }

func (w *worker) setQueues(list []*Queue) { w.queues.Store(&list) }

func (w *worker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *worker) spill(r *Request) {
	w.spillMu.Lock()
	w.spilled = append(w.spilled, r)
	w.nSpill.Add(1)
	w.spillMu.Unlock()
}

// How a worker sleeps (worker.sleeping).
const (
	awake        = iota
	idleOnChan   // nothing in flight: only a submitter can wake it
	idleOnEvents // requests in flight: the eventfd wakes it for either
	lent         // parked on its channel, its ring in a submitter's hands (runInline)
)

// wake rouses the worker if, and only if, it announced that it sleeps.
// (A lent worker takes no requests: it is only ever an inline ring.)
func (w *worker) wake() {
	if m := w.sleeping.Load(); m != awake && m != lent && w.sleeping.CompareAndSwap(m, awake) {
		if m == idleOnChan {
			w.kick()
		} else {
			w.signal()
		}
	}
}

// kick wakes a worker parked on its channel; a token left over from a
// race costs one spurious loop.
func (w *worker) kick() {
	select {
	case w.wakeCh <- struct{}{}:
	default:
	}
}

func (w *worker) signal() {
	// An eventfd write fails only when the counter would overflow, and
	// then the worker is already due to wake.
	unix.Write(w.efd, wakeVal[:])
}

func (w *worker) run() {
	defer close(w.done)
	for {
		busy := w.reap()
		busy = w.pull() || busy
		w.submit()
		if busy {
			continue
		}
		if w.stop.Load() && len(w.free) == len(w.slots) && !w.hasWork() {
			return
		}
		w.sleep()
	}
}

// sleep parks the worker until a completion or a submitter's wakeup. The
// mode is announced before the last look at the sources, and submitters
// publish their ring index before looking at the mode, so a request is
// never left behind with the worker asleep. With nothing in flight only
// submitters can have news, and a channel handoff wakes a goroutine faster
// than an eventfd write through the netpoller.
func (w *worker) sleep() {
	if len(w.free) == len(w.slots) {
		w.sleeping.Store(idleOnChan)
		if !w.hasWork() && !w.stop.Load() {
			<-w.wakeCh
		}
		// Take the ring back, unless a submitter has borrowed it: it
		// hands it back awake with a kick, or idle, needing nobody.
		for !w.sleeping.CompareAndSwap(idleOnChan, awake) && w.sleeping.Load() != awake {
			<-w.wakeCh
		}
		return
	}
	w.ring.SetEventfdEnabled(true)
	w.sleeping.Store(idleOnEvents)
	if w.ring.Ready() == 0 && !w.hasWork() && !w.stop.Load() {
		for {
			_, err := w.ev.Read(w.evbuf[:])
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
	}
	w.sleeping.Store(awake)
	w.ring.SetEventfdEnabled(false)
}

func (w *worker) hasWork() bool {
	if !w.shared.empty() || w.nSpill.Load() != 0 {
		return true
	}
	for _, q := range w.queueList() {
		if !q.q.empty() {
			return true
		}
	}
	return false
}

// next takes one request from the sources, queues round-robin first.
func (w *worker) next() *Request {
	qs := w.queueList()
	for i := range qs {
		q := qs[(w.rr+i)%len(qs)]
		if r, ok := q.q.pop(); ok {
			w.rr = (w.rr + i + 1) % len(qs)
			return r
		}
	}
	if r, ok := w.shared.pop(); ok {
		return r
	}
	if w.nSpill.Load() != 0 {
		w.spillMu.Lock()
		defer w.spillMu.Unlock()
		if n := len(w.spilled); n > 0 {
			r := w.spilled[n-1]
			w.spilled[n-1] = nil
			w.spilled = w.spilled[:n-1]
			w.nSpill.Add(-1)
			return r
		}
	}
	return nil
}

// pull starts new requests while slots are free; it reports whether it
// found any.
func (w *worker) pull() bool {
	got := false
	for len(w.free) > 0 {
		r := w.next()
		if r == nil {
			break
		}
		got = true
		w.start(r)
	}
	return got
}

func (w *worker) start(r *Request) {
	r.Err = nil
	if r.Op != OpFlush {
		if err := checkRange(r.Offset, r.length(), w.d.Size()); err != nil {
			fail(r, err)
			return
		}
	}
	switch r.Op {
	case OpRead, OpWrite:
		if len(r.Buf) == 0 {
			fail(r, nil)
			return
		}
		s := w.alloc(r)
		s.off, s.buf = r.Offset, r.Buf
		w.issueRW(s)
	case OpFlush:
		s := w.alloc(r)
		sqe := w.sqe(s)
		sqe.Opcode, sqe.Fd, sqe.OpFlags = uring.OpFsync, int32(w.d.file.fd), uring.FsyncDatasync
	case OpUnmap:
		if r.Length == 0 {
			fail(r, nil)
			return
		}
		s := w.alloc(r)
		sqe := w.sqe(s)
		sqe.Opcode, sqe.Fd, sqe.Off = uring.OpFallocate, int32(w.d.file.fd), uint64(r.Offset)
		sqe.Addr, sqe.Len = uint64(r.Length), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE
	default:
		fail(r, fmt.Errorf("bdev: unknown operation %v", r.Op))
	}
}

// copiesInline says whether Submit serves r itself (see copyInline).
func (d *Uring) copiesInline(r *Request) bool {
	return d.inline && (r.Op == OpRead || r.Op == OpWrite)
}

// copyInline serves a read or write of a memory-backed store in the
// caller's goroutine: the copy cannot wait for a device, so handing it to a
// worker would only add two goroutine switches.
func (d *Uring) copyInline(r *Request) {
	d.inlineN.Add(1)
	if d.closed.Load() {
		d.inlineN.Add(-1)
		fail(r, ErrClosed)
		return
	}
	r.Err = checkRange(r.Offset, r.length(), d.Size())
	if r.Err == nil && len(r.Buf) > 0 {
		r.Err = d.copyNow(r)
	}
	d.inlineN.Add(-1)
	r.Done(r)
}

// inlineWaitBudget bounds how long runInline keeps its caller sleeping in
// the kernel for a completion (several times a flash read) before it
// leaves the request to the ring's worker. Tests shorten it.
var inlineWaitBudget = 2 * time.Millisecond

// runInline runs r to completion on the caller's goroutine in an idle
// inline ring, if there is one (see Uring); false leaves r to the caller.
func (d *Uring) runInline(r *Request) bool {
	if len(d.lenders) == 0 {
		return false
	}
	d.inlineN.Add(1) // before the closed check, as in copyInline
	defer d.inlineN.Add(-1)
	if d.closed.Load() {
		fail(r, ErrClosed)
		return true
	}
	first := rand.N(len(d.lenders))
	for i := range d.lenders {
		w := d.lenders[(first+i)%len(d.lenders)]
		if w.sleeping.CompareAndSwap(idleOnChan, lent) {
			w.serveLent(r)
			return true
		}
	}
	return false
}

// serveLent does a worker's job on the borrower's goroutine: starts r,
// submits and waits for completions (each step of a request in pieces)
// until nothing is in flight or inlineWaitBudget has passed, then gives the
// ring back: idle, or awake with a kick when the worker is to finish what
// is still in flight or could not be submitted.
func (w *worker) serveLent(r *Request) {
	w.start(r)
	deadline := time.Now().Add(inlineWaitBudget)
	for len(w.free) < len(w.slots) {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if _, err := w.ring.SubmitAndWait(left); err != nil {
			break // the worker's submit retries or fails the SQEs
		}
		w.reap()
	}
	if len(w.free) == len(w.slots) && w.ring.Pending() == 0 {
		w.sleeping.Store(idleOnChan)
		return
	}
	w.sleeping.Store(awake)
	w.kick()
}

// copyNow performs a read or write with a positioned system call.
func (d *Uring) copyNow(r *Request) error {
	if r.Op == OpRead {
		return d.file.read(r.Buf, r.Offset)
	}
	flags := 0
	if r.FUA {
		flags = unix.RWF_DSYNC
	}
	return d.file.write(r.Buf, r.Offset, flags)
}

func (w *worker) alloc(r *Request) *slot {
	i := w.free[len(w.free)-1]
	w.free = w.free[:len(w.free)-1]
	s := &w.slots[i]
	*s = slot{r: r}
	return s
}

// sqe returns an SQE tagged with s, submitting first when the ring is full.
func (w *worker) sqe(s *slot) *uring.SQE {
	for {
		if sqe := w.ring.GetSQE(); sqe != nil {
			sqe.UserData = uint64(w.index(s))
			return sqe
		}
		w.submit()
	}
}

func (w *worker) index(s *slot) uintptr {
	return (uintptr(unsafe.Pointer(s)) - uintptr(unsafe.Pointer(&w.slots[0]))) / unsafe.Sizeof(slot{})
}

// maxStep bounds one read or write SQE (its length is 32 bits).
const maxStep = 1 << 30

// issueRW queues the next read or write step of s: direct when aligned,
// fixed when the buffer is a registered pool region.
func (w *worker) issueRW(s *slot) {
	buf := s.buf[:min(len(s.buf), maxStep)]
	write := s.r.Op != OpRead
	addr := uint64(uintptr(unsafe.Pointer(&buf[0])))
	direct := w.d.direct >= 0 && addr%uint64(w.d.memAlign) == 0 &&
		s.off%w.d.offAlign == 0 && int64(len(buf))%w.d.offAlign == 0
	if !direct && w.d.directOnly {
		w.finish(s, fmt.Errorf("%s of %d bytes at offset %d from buffer %#x: %w", s.r.Op, len(buf), s.off, addr, ErrMisaligned))
		return
	}
	sqe := w.sqe(s)
	sqe.Fd, sqe.Off = int32(w.d.file.fd), uint64(s.off)
	sqe.Addr, sqe.Len = addr, uint32(len(buf))
	if direct {
		sqe.Fd = int32(w.d.direct)
	}
	sqe.Opcode = uring.OpRead
	if write {
		sqe.Opcode = uring.OpWrite
		if s.r.FUA {
			sqe.OpFlags = unix.RWF_DSYNC
		}
	}
	if w.fixed != nil {
		if idx, ok := w.d.pool.Index(buf); ok && w.fixed[idx].Load() {
			sqe.BufIndex = uint16(idx)
			if write {
				sqe.Opcode = uring.OpWriteFixed
			} else {
				sqe.Opcode = uring.OpReadFixed
			}
		}
	}
}

// submit hands queued SQEs to the kernel. When io_uring_enter fails with a
// transient error the SQEs stay queued and are offered again on the next
// call, after a backoff (enterBackoff). Any other error (EBADF, EINVAL: a
// ring that will never take them), or transient errors that outlast the
// backoff, fail the requests whose SQEs the kernel did not take with
// ErrMedium, which the SCSI layer reports as a MEDIUM ERROR; the first such
// failure of a device is logged.
func (w *worker) submit() {
	if w.ring.Pending() == 0 {
		return
	}
	_, err := w.ring.Submit(0)
	if err == nil {
		w.backoff.reset()
		return
	}
	if wait, ok := w.backoff.next(err); ok {
		time.Sleep(wait)
		return
	}
	if !w.d.enterErr.Swap(true) {
		w.d.log.Error("io_uring refuses submissions: failing the I/Os it did not take",
			zap.String("path", w.d.path), zap.Error(err))
	}
	failed := fmt.Errorf("io_uring submit: %w (%v)", ErrMedium, err)
	w.ring.Withdraw(func(userData uint64) { w.finish(&w.slots[userData], failed) })
}

// Retry pacing for io_uring_enter's transient failures (EAGAIN: the kernel
// is short of memory; EBUSY: completions must be reaped first, which the
// worker does between attempts): the wait doubles from enterWaitMin to
// enterWaitMax, and the SQEs fail once the waits add up to enterGiveUp,
// well inside an initiator's command timeout (30 s on Linux).
const (
	enterWaitMin = time.Millisecond
	enterWaitMax = 100 * time.Millisecond
	enterGiveUp  = 5 * time.Second
)

// enterBackoff paces retries of io_uring_enter after transient failures.
type enterBackoff struct {
	wait, slept time.Duration
}

// next says how long to wait before offering the SQEs again after err, or
// false when they are to fail now.
func (b *enterBackoff) next(err error) (time.Duration, bool) {
	transient := errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EINTR)
	if !transient || b.slept >= enterGiveUp {
		b.reset()
		return 0, false
	}
	b.wait = min(max(2*b.wait, enterWaitMin), enterWaitMax)
	b.slept += b.wait
	return b.wait, true
}

// reset starts the next failure's pacing afresh.
func (b *enterBackoff) reset() { *b = enterBackoff{} }

// reap handles every ready completion; it reports whether there were any.
func (w *worker) reap() bool {
	got := false
	for {
		n := w.ring.Reap(w.cqes)
		if n == 0 {
			return got
		}
		got = true
		for _, c := range w.cqes[:n] {
			w.complete(&w.slots[c.UserData], c.Res)
		}
	}
}

func (w *worker) complete(s *slot, res int32) {
	if res == -int32(unix.EAGAIN) || res == -int32(unix.EINTR) {
		w.retry(s)
		return
	}
	r := s.r
	switch {
	case r.Op == OpFlush:
		w.finish(s, errnoErr("flush", res))
	case r.Op == OpUnmap && s.buf == nil && res == -int32(unix.EOPNOTSUPP):
		s.off, s.zeroing = r.Offset, r.Length
		w.nextZeroes(s)
	case r.Op == OpUnmap && s.buf == nil:
		w.finish(s, errnoErr("unmap", res))
	case res < 0:
		w.finish(s, errnoErr(r.Op.String(), res))
	case res == 0 && r.Op == OpRead: // past the end of a file that shrank
		clear(s.buf)
		w.finish(s, nil)
	case res == 0:
		w.finish(s, fmt.Errorf("write: %w (no progress at offset %d)", ErrMedium, s.off))
	default:
		s.buf, s.off = s.buf[res:], s.off+int64(res)
		switch {
		case len(s.buf) > 0:
			w.issueRW(s)
		case s.zeroing > 0:
			w.nextZeroes(s)
		default:
			w.finish(s, nil)
		}
	}
}

// retry reissues the step of s that the kernel asked to repeat.
func (w *worker) retry(s *slot) {
	if s.buf == nil { // flush or hole punch
		r := s.r
		w.free = append(w.free, uint32(w.index(s)))
		w.start(r)
		return
	}
	w.issueRW(s)
}

func (w *worker) nextZeroes(s *slot) {
	n := min(s.zeroing, int64(len(zeroes)))
	s.buf, s.zeroing = zeroes[:n], s.zeroing-n
	w.issueRW(s)
}

func (w *worker) finish(s *slot, err error) {
	r := s.r
	*s = slot{}
	w.free = append(w.free, uint32(w.index(s)))
	r.Err = err
	r.Done(r)
}

func errnoErr(what string, res int32) error {
	if res >= 0 {
		return nil
	}
	return classify(what, unix.Errno(-res))
}
