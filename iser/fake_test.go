package iser

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

// fakeEP is an endpoint whose peer is the test, playing the initiator. It
// moves bytes between the connection's registered memory and buffers the
// initiator exposed, with a reliable connection's rules: send work
// requests run in the order posted, and once one fails or the peer
// disconnects, the queue pair is in error: everything outstanding, and
// everything posted later, completes as flushed. It allocates nothing per
// work request, so allocation tests can run over it.
type fakeEP struct {
	mu      sync.Mutex
	state   epState
	local   []fakeRegion // the connection's registered memory
	remote  []fakeRegion // the initiator's exposed buffers
	nextKey uint32
	recvs   []fakeWR // posted receives, oldest first
	holdOp  rdma.Opcode
	hold    bool     // work requests from the first holdOp on wait for release
	held    []fakeWR // those waiting, in order
	posted  [16]int  // send work requests posted, by opcode
	cq      chan rdma.WorkCompletion
	done    chan struct{}
	err     error

	mapped [][]byte // the slot memory, unmapped by Close

	inbox chan [2]int // the SENDs the connection made: slot of inMem, length
	inMem [][]byte    // a ring of copies of them
	inPos int
	timer *time.Timer // next's, reused
}

type epState int

const (
	epUp epState = iota
	epError
	epClosed
)

// fakeRegion is registered memory: the connection's (by LKey) or the
// initiator's (by STag, at a made-up virtual address).
type fakeRegion struct {
	key  uint32
	addr uint64
	mem  []byte
}

// fakeWR is a posted work request with its one SGE copied, as posting does.
type fakeWR struct {
	wr  rdma.SendWR
	sge rdma.SGE
}

const (
	fakeInbox = 1024    // SENDs the test can leave unread
	fakeVA    = 1 << 44 // where the initiator's buffers seem to be
)

func newFakeEP() *fakeEP {
	f := &fakeEP{nextKey: 1, cq: make(chan rdma.WorkCompletion, 4*(sqDepth+numRecv)), done: make(chan struct{}),
		inbox: make(chan [2]int, fakeInbox), inMem: make([][]byte, fakeInbox), recvs: make([]fakeWR, 0, numRecv),
		held: make([]fakeWR, 0, sqDepth)}
	for i := range f.inMem {
		f.inMem[i] = make([]byte, slotSize)
	}
	f.timer = time.NewTimer(time.Hour)
	f.timer.Stop()
	return f
}

// register makes mem the connection's registered memory (registrar).
func (f *fakeEP) register(mem []byte) (*rdma.MR, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.nextKey
	f.nextKey++
	f.local = append(f.local, fakeRegion{key: k, addr: addrOf(mem), mem: mem})
	return &rdma.MR{LKey: k, RKey: k, Addr: addrOf(mem), Len: len(mem)}, nil
}

// deregister forgets a registration (registrar).
func (f *fakeEP) deregister(mr *rdma.MR) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.local {
		if r.key == mr.LKey {
			f.local = append(f.local[:i], f.local[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("fake: no region with key %d", mr.LKey)
}

// slots maps and registers a connection's slot memory. Close unmaps it,
// as the RDMA endpoint's Close does, so a connection that touches it after
// Close faults in tests as it would in iserd.
func (f *fakeEP) slots(t testing.TB) slots {
	t.Helper()
	var s slots
	for _, m := range []struct {
		mem *[]byte
		n   int
	}{{&s.recvMem, numRecv}, {&s.sendMem, numSend}} {
		mem, err := unix.Mmap(-1, 0, m.n*slotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatalf("fake: map slot memory: %v", err)
		}
		*m.mem = mem
		f.mapped = append(f.mapped, mem)
	}
	s.recvMR, _ = f.register(s.recvMem)
	s.sendMR, _ = f.register(s.sendMem)
	return s
}

// expose makes buf an initiator buffer the connection may read or write.
func (f *fakeEP) expose(buf []byte) iscsi.RemoteBuffer {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.nextKey
	f.nextKey++
	va := uint64(fakeVA) + uint64(k)<<24
	f.remote = append(f.remote, fakeRegion{key: k, addr: va, mem: buf})
	return iscsi.RemoteBuffer{STag: k, VA: va, Valid: true}
}

// find returns n bytes at addr of the region with key, or nil.
func find(regions []fakeRegion, key uint32, addr uint64, n int) []byte {
	for _, r := range regions {
		if r.key == key && addr >= r.addr && addr+uint64(n) <= r.addr+uint64(len(r.mem)) {
			off := int(addr - r.addr)
			return r.mem[off : off+n]
		}
	}
	return nil
}

func (f *fakeEP) PostSend(wrs ...rdma.SendWR) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == epClosed {
		return fmt.Errorf("fake: post send: %w", rdma.ErrClosed)
	}
	for i := range wrs {
		w := fakeWR{wr: wrs[i]}
		if len(w.wr.SGL) != 1 {
			return fmt.Errorf("fake: post send: %d SGEs, the QP takes 1", len(w.wr.SGL))
		}
		w.sge, w.wr.SGL = w.wr.SGL[0], nil
		f.posted[w.wr.Opcode]++
		switch {
		case f.state == epError:
			f.completeLocked(w.wr.ID, rdma.WCWRFlushErr, 0)
		case f.hold && (len(f.held) > 0 || w.wr.Opcode == f.holdOp):
			f.held = append(f.held, w)
		default:
			f.run(w)
		}
	}
	return nil
}

func (f *fakeEP) PostRecv(wrs ...rdma.RecvWR) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == epClosed {
		return fmt.Errorf("fake: post recv: %w", rdma.ErrClosed)
	}
	for _, wr := range wrs {
		if len(wr.SGL) != 1 {
			return fmt.Errorf("fake: post recv: %d SGEs, the QP takes 1", len(wr.SGL))
		}
		if f.state == epError {
			f.completeLocked(wr.ID, rdma.WCWRFlushErr, 0)
			continue
		}
		f.recvs = append(f.recvs, fakeWR{wr: rdma.SendWR{ID: wr.ID}, sge: wr.SGL[0]})
	}
	return nil
}

// Wait takes completions. Having taken one, it waits for fakeEP's lock
// before taking the rest, so that a batch the fake completes under its
// lock (deliver) comes out in one call, as a CQ poll would find it.
func (f *fakeEP) Wait(ctx context.Context, wcs []rdma.WorkCompletion) (int, error) {
	select {
	case wcs[0] = <-f.cq:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	f.mu.Lock()
	//lint:ignore SA2001 the lock is the point: a batch in progress is finished
	f.mu.Unlock()
	n := 1
	for n < len(wcs) {
		select {
		case wcs[n] = <-f.cq:
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (f *fakeEP) Done() <-chan struct{} { return f.done }

func (f *fakeEP) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Close destroys the "QP": what is outstanding is dropped without
// completions, as rdma.Conn.Close does after draining the CQ.
func (f *fakeEP) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == epClosed {
		return nil
	}
	f.state = epClosed
	f.recvs, f.held = f.recvs[:0], f.held[:0]
	for _, mem := range f.mapped {
		if err := unix.Munmap(mem); err != nil {
			panic(fmt.Sprintf("fake: unmap slot memory: %v", err))
		}
	}
	f.mapped = nil
	if f.err == nil {
		f.err = fmt.Errorf("fake: connection closed locally: %w", rdma.ErrDisconnected)
		close(f.done)
	}
	for {
		select {
		case <-f.cq:
		default:
			return nil
		}
	}
}

// run carries out a send work request; the caller holds f.mu.
func (f *fakeEP) run(w fakeWR) {
	n := int(w.sge.Length)
	local := find(f.local, w.sge.LKey, w.sge.Addr, n)
	if local == nil {
		f.completeLocked(w.wr.ID, rdma.WCLocProtErr, 0)
		f.failLocked()
		return
	}
	switch w.wr.Opcode {
	case rdma.OpSend:
		if n > slotSize {
			f.completeLocked(w.wr.ID, rdma.WCLocLenErr, 0)
			f.failLocked()
			return
		}
		i := f.inPos % fakeInbox
		f.inPos++
		copy(f.inMem[i], local)
		select {
		case f.inbox <- [2]int{i, n}:
		default:
			panic("fake: the test left more than fakeInbox SENDs unread")
		}
	case rdma.OpRDMAWrite, rdma.OpRDMARead:
		remote := find(f.remote, w.wr.RKey, w.wr.RemoteAddr, n)
		if remote == nil {
			f.completeLocked(w.wr.ID, rdma.WCRemAccessErr, 0)
			f.failLocked()
			return
		}
		if w.wr.Opcode == rdma.OpRDMAWrite {
			copy(remote, local)
		} else {
			copy(local, remote)
		}
	default:
		f.completeLocked(w.wr.ID, rdma.WCLocQPOpErr, 0)
		f.failLocked()
		return
	}
	f.completeLocked(w.wr.ID, rdma.WCSuccess, 0)
}

func (f *fakeEP) completeLocked(id uint64, st rdma.WCStatus, n int) {
	f.cq <- rdma.WorkCompletion{ID: id, Status: st, ByteLen: uint32(n)}
}

// failLocked puts the queue pair in error: what is outstanding is flushed.
func (f *fakeEP) failLocked() {
	if f.state != epUp {
		return
	}
	f.state = epError
	for _, w := range f.held {
		f.completeLocked(w.wr.ID, rdma.WCWRFlushErr, 0)
	}
	for _, w := range f.recvs {
		f.completeLocked(w.wr.ID, rdma.WCWRFlushErr, 0)
	}
	f.held, f.recvs = f.held[:0], f.recvs[:0]
}

// holdFrom makes send work requests wait for release, from the first one
// with opcode op on (those after it keep their order behind it).
func (f *fakeEP) holdFrom(op rdma.Opcode) {
	f.mu.Lock()
	f.hold, f.holdOp = true, op
	f.mu.Unlock()
}

// release runs the held work requests and stops holding.
func (f *fakeEP) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold = false
	for len(f.held) > 0 { // a failure flushes the rest (failLocked)
		w := f.held[0]
		f.held = f.held[:copy(f.held, f.held[1:])]
		f.run(w)
	}
}

// heldCount is how many send work requests wait for release.
func (f *fakeEP) heldCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// posts is how many send work requests with opcode op were posted.
func (f *fakeEP) posts(op rdma.Opcode) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posted[op]
}

// disconnect is the initiator going away: Done closes, everything
// outstanding is flushed.
func (f *fakeEP) disconnect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return
	}
	f.err = fmt.Errorf("fake: peer disconnected: %w", rdma.ErrDisconnected)
	close(f.done)
	f.failLocked()
}

// deliver sends the connection messages from the initiator, each into the
// oldest receive it posted, and completes them together.
func (f *fakeEP) deliver(msgs ...[]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != epUp {
		return errors.New("fake: the connection is down")
	}
	if len(msgs) > len(f.recvs) {
		return fmt.Errorf("fake: %d messages for %d posted receives (the initiator would see RNR NAKs)", len(msgs), len(f.recvs))
	}
	for _, m := range msgs {
		r := f.recvs[0]
		f.recvs = f.recvs[:copy(f.recvs, f.recvs[1:])]
		dst := find(f.local, r.sge.LKey, r.sge.Addr, int(r.sge.Length))
		if dst == nil || len(m) > len(dst) {
			return fmt.Errorf("fake: a %d-byte message does not fit receive %#x", len(m), r.wr.ID)
		}
		copy(dst, m)
		f.completeLocked(r.wr.ID, rdma.WCSuccess, len(m))
	}
	return nil
}

// next returns the next message the connection sent. It stays valid
// until fakeInbox more have been sent. It allocates nothing.
func (f *fakeEP) next(t testing.TB) []byte {
	select {
	case m := <-f.inbox:
		return f.inMem[m[0]][:m[1]]
	default:
	}
	f.timer.Reset(10 * time.Second)
	defer f.timer.Stop()
	select {
	case m := <-f.inbox:
		return f.inMem[m[0]][:m[1]]
	case <-f.timer.C:
		t.Fatal("fake: the connection sent nothing for 10 s")
		return nil
	}
}

// drain forgets the messages the connection sent and the test did not read.
func (f *fakeEP) drain() {
	for {
		select {
		case <-f.inbox:
		default:
			return
		}
	}
}

// recvsPosted is how many receives the connection has posted.
func (f *fakeEP) recvsPosted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.recvs)
}

// testConn is a connection over a fake endpoint, with depth RDMA READs in
// flight at most, serving buffers from a pool of its own.
type testConn struct {
	*conn
	f    *fakeEP
	pool *bdev.Pool
}

var testAddr = netip.MustParseAddrPort("192.0.2.1:3260")

func newTestConn(t testing.TB, depth int) *testConn {
	t.Helper()
	pool, err := bdev.NewPool(bdev.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tc := newConnOver(t, pool, depth)
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Errorf("close buffer pool: %v", err)
		}
	})
	return tc
}

// newConnOver makes a connection over a fake endpoint for buffers from
// pool; it is closed at cleanup, and its pool registrations dropped.
func newConnOver(t testing.TB, pool *bdev.Pool, depth int) *testConn {
	t.Helper()
	f := newFakeEP()
	log := zap.NewNop()
	reg := trackRegions(pool, f, log)
	c := newConn(f, f.slots(t), pool, reg, log)
	if err := c.postReceives(); err != nil {
		t.Fatal(err)
	}
	c.start(depth, netip.MustParseAddrPort("192.0.2.2:3260"), testAddr)
	t.Cleanup(func() {
		c.Close()
		reg.close()
	})
	return &testConn{conn: c, f: f, pool: pool}
}

// idle fails the test unless every send slot, send queue entry and RDMA
// READ and WRITE slot is free and nothing is queued: no data move, and so
// no STag or buffer of a task, is left in the connection.
func (c *testConn) idle(t testing.TB) {
	t.Helper()
	c.sqMu.Lock()
	defer c.sqMu.Unlock()
	busy := func(ws []iscsi.DataWaiter) (n int) {
		for _, w := range ws {
			if w != nil {
				n++
			}
		}
		return n
	}
	if c.sqFree != sqDepth || len(c.slotFree) != numSend || len(c.freeWrite) != sqDepth || len(c.freeRead) != len(c.reads) ||
		len(c.queued) != 0 || busy(c.reads) != 0 || busy(c.writes) != 0 {
		t.Errorf("connection not idle: %d of %d send queue entries free, %d of %d send slots, %d of %d write slots (%d busy), "+
			"%d of %d read slots (%d busy), %d reads queued", c.sqFree, sqDepth, len(c.slotFree), numSend, len(c.freeWrite), sqDepth,
			busy(c.writes), len(c.freeRead), len(c.reads), busy(c.reads), len(c.queued))
	}
}

// waiter records DataDone calls.
type waiter struct {
	mu    sync.Mutex
	calls int
	err   error
	done  chan struct{}
}

func newWaiter() *waiter { return &waiter{done: make(chan struct{})} }

func (w *waiter) DataDone(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	w.err = err
	if w.calls == 1 {
		close(w.done)
	}
}

// result returns how often DataDone was called so far, and its error.
func (w *waiter) result() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls, w.err
}

// wait waits for the first DataDone and returns its error.
func (w *waiter) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("DataDone not called within 10 s")
	}
	_, err := w.result()
	return err
}
