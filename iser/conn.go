package iser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

// Wire constants (RFC 7145 9.2 and the Linux initiator's use of them).
const (
	hdrLen       = 28   // iSER header before every iSCSI PDU
	flagOpMask   = 0xf0 // the message type in the flags byte
	flagCtrl     = 0x10 // iSCSI control-type PDU follows
	flagHello    = 0x20
	flagWSV      = 0x08 // write STag valid
	flagRSV      = 0x04 // read STag valid
	repZBVANot   = 0x80 // CM reply: zero-based virtual addresses not used
	repSendWInv  = 0x40 // CM reply: send with invalidate not used
	offWriteSTag = 4    // header fields, after the flags and 3 reserved bytes
	offWriteVA   = 8
	offReadSTag  = 16
	offReadVA    = 20
	recvDataSize = 8192 // TargetRecvDataSegmentLength over iSER
	// slotSize holds an iSER header, a BHS, an AHS and a data segment.
	slotSize = hdrLen + iscsi.BHSLen + 1024 + recvDataSize
	numRecv  = 256     // receives posted: above the initiator's command window
	numSend  = 256     // PDU send slots
	sqDepth  = 1024    // send queue entries: PDUs, RDMA WRITEs and READs
	maxAHS   = 255 * 4 // TotalAHSLength counts 4-byte words in one byte
)

// Work request IDs carry their kind in the top byte.
const (
	wrRecv uint64 = iota << 56
	wrSend
	wrWrite
	wrRead
	wrKindMask = 0xff << 56
)

// pendingRead is an RDMA READ waiting for a slot under the initiator depth.
type pendingRead struct {
	sge    rdma.SGE
	from   iscsi.RemoteBuffer
	waiter iscsi.DataWaiter
}

// errClosed is what data moves that cannot finish end with.
var errClosed = fmt.Errorf("iSER connection closed: %w", rdma.ErrDisconnected)

// slots is a connection's own registered memory: numRecv receive slots
// and numSend send slots of slotSize bytes each.
type slots struct {
	recvMR, sendMR   *rdma.MR
	recvMem, sendMem []byte
}

// conn is one iSER connection: an iscsi.Transport and iscsi.DataMover.
type conn struct {
	ep       endpoint
	pool     *bdev.Pool
	reg      *regions
	log      *zap.Logger
	src, dst netip.AddrPort
	slots

	// receive side (reader goroutine)
	recvCh  chan uint64 // slot<<32 | byte length, from the CQ goroutine
	cur     int         // slot of the PDU being read, -1 when none
	curLen  int
	dataOff int
	ahs     []byte // the current PDU's AHS, copied out of its slot
	wake    chan struct{}
	rdl     atomic.Int64 // read deadline, unix nanoseconds, 0 for none

	// send side, owned by whoever sends (iscsi serializes it)
	pending []rdma.SendWR // queued, posted by Flush
	sgl     [][1]rdma.SGE // per send slot, backing for pending SGLs
	wsgl    [][1]rdma.SGE // per RDMA WRITE slot

	postMu  sync.Mutex     // serializes posting; guards the staging below
	recvWR  [1]rdma.RecvWR // staging for a receive
	recvSGE [1]rdma.SGE    // (posting copies both)
	readWR  [1]rdma.SendWR // staging for an RDMA READ
	readSGE [1]rdma.SGE

	sqMu      sync.Mutex         // guards what follows up to queued
	sqCond    *sync.Cond         // signalled when send resources free up or the connection dies
	sqFree    int                // send queue entries not taken
	slotFree  []int              // free send slots
	writes    []iscsi.DataWaiter // RDMA WRITEs in flight, by write slot
	freeWrite []int
	reads     []iscsi.DataWaiter // RDMA READs in flight, by read slot
	freeRead  []int
	queued    []pendingRead // RDMA READs beyond the initiator depth

	// memMu is held shared by whoever copies from or into the slot memory
	// (the reader's ReadHeader and ReadData, Queue) and exclusively by
	// Close while the endpoint releases that memory: Close may run beside
	// them (a session logout, a dropped initiator) and must not unmap
	// memory a copy is using. memGone is set under it.
	memMu   sync.RWMutex
	memGone bool

	dead      chan struct{}
	deadOnce  sync.Once
	cqDone    chan struct{}
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
}

// newConn sets up a connection's logic over ep, whose receive and send
// slots are s, for data buffers from pool as registered in reg. Receives
// are posted by postReceives; start begins taking completions.
func newConn(ep endpoint, s slots, pool *bdev.Pool, reg *regions, log *zap.Logger) *conn {
	c := &conn{ep: ep, slots: s, pool: pool, reg: reg, log: log, cur: -1, recvCh: make(chan uint64, numRecv),
		wake: make(chan struct{}, 1), dead: make(chan struct{}), cqDone: make(chan struct{})}
	c.sqCond = sync.NewCond(&c.sqMu)
	c.ahs = make([]byte, 0, maxAHS)
	c.sgl = make([][1]rdma.SGE, numSend)
	c.wsgl = make([][1]rdma.SGE, sqDepth)
	c.writes = make([]iscsi.DataWaiter, sqDepth)
	for i := sqDepth - 1; i >= 0; i-- {
		c.freeWrite = append(c.freeWrite, i)
	}
	for i := numSend - 1; i >= 0; i-- {
		c.slotFree = append(c.slotFree, i)
	}
	c.sqFree = sqDepth
	return c
}

// postReceives posts a receive for every slot; with an RDMA connection
// this runs while its QP is in INIT, before the initiator can send.
func (c *conn) postReceives() error {
	for i := range numRecv {
		if err := c.postRecv(i); err != nil {
			return err
		}
	}
	return nil
}

// start begins taking completions once the connection is established;
// depth is the number of RDMA READs it may have in flight.
func (c *conn) start(depth int, src, dst netip.AddrPort) {
	c.src, c.dst = src, dst
	c.log = c.log.With(zap.Stringer("remote", dst))
	depth = max(1, depth)
	c.reads = make([]iscsi.DataWaiter, depth)
	for i := depth - 1; i >= 0; i-- {
		c.freeRead = append(c.freeRead, i)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.completions(ctx)
}

func (c *conn) postRecv(slot int) error {
	c.postMu.Lock()
	c.recvSGE[0] = c.recvMR.SGE(slot*slotSize, slotSize)
	c.recvWR[0] = rdma.RecvWR{ID: wrRecv | uint64(slot), SGL: c.recvSGE[:]}
	err := c.ep.PostRecv(c.recvWR[:]...)
	c.postMu.Unlock()
	if err != nil {
		return fmt.Errorf("post receive: %w", err)
	}
	return nil
}

// completions dispatches the CQ until the connection is closed.
func (c *conn) completions(ctx context.Context) {
	defer close(c.cqDone)
	wcs := make([]rdma.WorkCompletion, 64)
	for {
		// A post in progress brings completions: wait for it to end,
		// parked, and take them in one batch, not a few of them before
		// arming the CQ and sleeping until the next event. A provider
		// called through C (libibverbs) gives its P away during a long
		// post, and this goroutine would otherwise run in the middle of
		// it; the native one posts without giving it up.
		c.postMu.Lock()
		//lint:ignore SA2001 the critical section waited for is the post
		c.postMu.Unlock()
		n, err := c.ep.Wait(ctx, wcs)
		if err != nil {
			if ctx.Err() == nil {
				c.fail(fmt.Errorf("completion queue: %w", err))
			}
			return
		}
		received := false
		for i := range wcs[:n] {
			received = c.complete(&wcs[i]) || received
		}
		if received {
			// The reader was made runnable on this P: let it take the
			// command now, before this goroutine arms the CQ (a system
			// call) and parks. With one P it would otherwise wait for that.
			runtime.Gosched()
		}
	}
}

// complete dispatches one work completion; it reports whether it handed a
// received PDU to the reader.
func (c *conn) complete(wc *rdma.WorkCompletion) bool {
	kind, idx := wc.ID&wrKindMask, int(wc.ID&^wrKindMask)
	err := wc.Err()
	if err != nil && kind != wrRead { // a failed READ fails its command; the QP's errors follow
		c.fail(fmt.Errorf("work completion: %w", err))
	}
	if kind == wrRecv {
		if err == nil {
			c.recvCh <- uint64(idx)<<32 | uint64(wc.ByteLen)
		}
		return err == nil
	}
	var w iscsi.DataWaiter
	c.sqMu.Lock()
	switch kind {
	case wrSend:
		c.slotFree = append(c.slotFree, idx)
	case wrWrite:
		w, c.writes[idx] = c.writes[idx], nil
		c.freeWrite = append(c.freeWrite, idx)
	case wrRead:
		w, c.reads[idx] = c.reads[idx], nil
		c.freeRead = append(c.freeRead, idx)
		if err != nil {
			err = fmt.Errorf("RDMA READ of write data: %w", err)
		}
	}
	c.sqFree++
	readsWait := len(c.queued) > 0
	c.sqCond.Broadcast()
	c.sqMu.Unlock()
	if readsWait { // a send queue entry or a read slot is free again
		c.startQueuedRead()
	}
	if w != nil {
		w.DataDone(err)
	}
	return false
}

// fail marks the connection dead: readers see EOF, writers an error, and
// no data move starts any more.
func (c *conn) fail(err error) {
	c.deadOnce.Do(func() {
		if !errors.Is(err, rdma.ErrDisconnected) {
			c.log.Info("iSER connection ended", zap.Error(err))
		}
		close(c.dead)
		c.sqMu.Lock()
		c.sqCond.Broadcast()
		c.sqMu.Unlock()
	})
}

func (c *conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// parseMessage decodes a received iSER message (RFC 7145 9.2): the iSER
// header, whose STags go to h.WriteBuf and h.ReadBuf, then an iSCSI
// control PDU, whose BHS goes to h and whose AHS h points to in msg. The
// PDU's data segment starts at dataOff.
func parseMessage(msg []byte, h *iscsi.Header) (dataOff int, err error) {
	if len(msg) < hdrLen+iscsi.BHSLen {
		return 0, fmt.Errorf("iSER message of %d bytes is shorter than its headers", len(msg))
	}
	flags := msg[0]
	if flags&flagOpMask != flagCtrl {
		return 0, fmt.Errorf("iSER message type 0x%x is not an iSCSI control PDU", flags>>4)
	}
	copy(h.BHS[:], msg[hdrLen:])
	ahs := h.TotalAHSLen()
	dataOff = hdrLen + iscsi.BHSLen + ahs
	if dataOff+h.DataLen() > len(msg) {
		return 0, fmt.Errorf("iSCSI PDU says %d AHS and %d data bytes but the message holds %d",
			ahs, h.DataLen(), len(msg)-hdrLen-iscsi.BHSLen)
	}
	h.AHS = msg[hdrLen+iscsi.BHSLen : dataOff]
	h.WriteBuf, h.ReadBuf = iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{}
	if flags&flagWSV != 0 {
		h.WriteBuf = iscsi.RemoteBuffer{STag: binary.BigEndian.Uint32(msg[offWriteSTag:]),
			VA: binary.BigEndian.Uint64(msg[offWriteVA:]), Valid: true}
	}
	if flags&flagRSV != 0 {
		h.ReadBuf = iscsi.RemoteBuffer{STag: binary.BigEndian.Uint32(msg[offReadSTag:]),
			VA: binary.BigEndian.Uint64(msg[offReadVA:]), Valid: true}
	}
	return dataOff, nil
}

// ReadHeader takes the next received PDU.
func (c *conn) ReadHeader(h *iscsi.Header) error {
	if c.cur >= 0 { // the previous PDU has been consumed: its buffer can receive again
		slot := c.cur
		c.cur = -1
		if err := c.postRecv(slot); err != nil {
			return err
		}
	}
	var v uint64
	select {
	case v = <-c.recvCh:
	default:
		var timeout <-chan time.Time
		if dl := c.rdl.Load(); dl != 0 {
			t := time.NewTimer(time.Until(time.Unix(0, dl)))
			defer t.Stop()
			timeout = t.C
		}
		select {
		case v = <-c.recvCh:
		case <-c.dead:
			return io.EOF
		case <-c.ep.Done():
			c.fail(c.ep.Err())
			return io.EOF
		case <-timeout:
			return os.ErrDeadlineExceeded
		case <-c.wake:
			if dl := c.rdl.Load(); dl != 0 && time.Now().UnixNano() >= dl {
				return os.ErrDeadlineExceeded
			}
			return c.ReadHeader(h)
		}
	}
	c.cur, c.curLen = int(v>>32), int(uint32(v))
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.memGone {
		return io.EOF
	}
	var err error
	c.dataOff, err = parseMessage(c.recvMem[c.cur*slotSize:c.cur*slotSize+c.curLen], h)
	h.AHS = append(c.ahs[:0], h.AHS...) // the engine may keep it past a concurrent Close
	return err
}

// Buffered reports whether another received PDU is waiting, so that the
// connection's reader holds its responses back until it has none left.
func (c *conn) Buffered() bool { return len(c.recvCh) > 0 }

// TryFlush posts the queued work requests; posting never waits for the
// peer, so the reader may send its own responses.
func (c *conn) TryFlush() (bool, error) { return true, c.Flush() }

// ReadData copies the data segment of the current PDU.
func (c *conn) ReadData(dst []byte, n int) (bool, error) {
	if dst != nil {
		c.memMu.RLock()
		defer c.memMu.RUnlock()
		if c.memGone {
			return false, io.EOF
		}
		base := c.cur*slotSize + c.dataOff
		copy(dst[:n], c.recvMem[base:base+n])
	}
	return true, nil
}

// Queue builds a PDU in a send slot; Flush posts it.
func (c *conn) Queue(bhs *iscsi.BHS, data []byte) error {
	if hdrLen+iscsi.BHSLen+len(data) > slotSize {
		return fmt.Errorf("PDU with %d data bytes does not fit an iSER send buffer", len(data))
	}
	slot, err := c.takeSlot()
	if err != nil {
		return err
	}
	bhs.SetDataLen(len(data))
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.memGone {
		return errClosed
	}
	buf := c.sendMem[slot*slotSize:]
	clear(buf[:hdrLen])
	buf[0] = flagCtrl
	copy(buf[hdrLen:], bhs[:])
	n := hdrLen + iscsi.BHSLen + copy(buf[hdrLen+iscsi.BHSLen:], data)
	c.sgl[slot][0] = c.sendMR.SGE(slot*slotSize, n)
	c.pending = append(c.pending, rdma.SendWR{ID: wrSend | uint64(slot), Opcode: rdma.OpSend,
		Flags: rdma.SendSignaled, SGL: c.sgl[slot][:]})
	return nil
}

// waitSend waits until a send slot (when slot) and more than spare send
// queue entries are free, posting the queued work requests when that is
// what it takes. It returns with sqMu held, or with an error once the
// connection is dead.
func (c *conn) waitSend(slot bool, spare int) error {
	c.sqMu.Lock()
	for {
		if c.isDead() {
			c.sqMu.Unlock()
			return errClosed
		}
		if (!slot || len(c.slotFree) > 0) && c.sqFree > spare {
			return nil
		}
		if len(c.pending) > 0 { // their completions free what we wait for
			c.sqMu.Unlock()
			if err := c.Flush(); err != nil {
				return err
			}
			c.sqMu.Lock()
			continue
		}
		c.sqCond.Wait()
	}
}

// takeSlot waits for a free send slot and takes it with a send queue entry.
func (c *conn) takeSlot() (int, error) {
	if err := c.waitSend(true, 0); err != nil {
		return 0, err
	}
	s := c.slotFree[len(c.slotFree)-1]
	c.slotFree = c.slotFree[:len(c.slotFree)-1]
	c.sqFree--
	c.sqMu.Unlock()
	return s, nil
}

// Flush posts the queued work requests with one doorbell.
func (c *conn) Flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	c.postMu.Lock()
	err := c.ep.PostSend(c.pending...)
	c.postMu.Unlock()
	clear(c.pending)
	c.pending = c.pending[:0]
	if err != nil {
		c.fail(err)
		return fmt.Errorf("post send: %w", err)
	}
	return nil
}

// PutData queues the RDMA WRITE of a read command's data to the
// initiator's buffer to; the status PDU queued next goes out after it.
// done hears when the buffer is free again.
func (c *conn) PutData(itt uint32, to iscsi.RemoteBuffer, data []byte, done iscsi.DataWaiter) error {
	if !to.Valid {
		return fmt.Errorf("read command %#x carries no read STag", itt)
	}
	sge, err := c.reg.sge(c.pool, data)
	if err != nil {
		return fmt.Errorf("read command %#x: %w", itt, err)
	}
	if err := c.waitSend(false, 1); err != nil { // one entry stays for the status
		return err
	}
	i := c.freeWrite[len(c.freeWrite)-1]
	c.freeWrite = c.freeWrite[:len(c.freeWrite)-1]
	c.writes[i] = done
	c.sqFree--
	c.sqMu.Unlock()
	c.wsgl[i][0] = sge
	c.pending = append(c.pending, rdma.SendWR{ID: wrWrite | uint64(i), Opcode: rdma.OpRDMAWrite, Flags: rdma.SendSignaled,
		SGL: c.wsgl[i][:], RemoteAddr: to.VA, RKey: to.STag})
	return nil
}

// GetData RDMA READs a write command's solicited data from the
// initiator's buffer from into dst; w hears when it is there or has
// failed, at once when the connection is dead already.
func (c *conn) GetData(itt uint32, from iscsi.RemoteBuffer, dst []byte, w iscsi.DataWaiter) {
	if !from.Valid {
		w.DataDone(fmt.Errorf("write command %#x carries no write STag", itt))
		return
	}
	sge, err := c.reg.sge(c.pool, dst)
	if err != nil {
		w.DataDone(fmt.Errorf("write command %#x: %w", itt, err))
		return
	}
	c.sqMu.Lock()
	if c.isDead() { // Close may have failed the queue already: it would stay forever
		c.sqMu.Unlock()
		w.DataDone(fmt.Errorf("write command %#x: %w", itt, errClosed))
		return
	}
	c.queued = append(c.queued, pendingRead{sge: sge, from: from, waiter: w})
	c.sqMu.Unlock()
	c.startQueuedRead()
}

// startQueuedRead posts queued RDMA READs while the initiator depth and the
// send queue allow. Once the connection is dead they stay queued: Close
// fails them.
func (c *conn) startQueuedRead() {
	for {
		c.sqMu.Lock()
		if len(c.queued) == 0 || len(c.freeRead) == 0 || c.sqFree <= 0 || c.isDead() {
			c.sqMu.Unlock()
			return
		}
		pr := c.queued[0]
		c.queued = c.queued[:copy(c.queued, c.queued[1:])]
		idx := c.freeRead[len(c.freeRead)-1]
		c.freeRead = c.freeRead[:len(c.freeRead)-1]
		c.reads[idx] = pr.waiter
		c.sqFree--
		c.sqMu.Unlock()
		c.postMu.Lock()
		c.readSGE[0] = pr.sge
		c.readWR[0] = rdma.SendWR{ID: wrRead | uint64(idx), Opcode: rdma.OpRDMARead, Flags: rdma.SendSignaled,
			SGL: c.readSGE[:], RemoteAddr: pr.from.VA, RKey: pr.from.STag}
		err := c.ep.PostSend(c.readWR[:]...)
		c.postMu.Unlock()
		if err != nil {
			c.sqMu.Lock()
			w := c.reads[idx] // nil when Close has failed it already
			c.reads[idx] = nil
			c.freeRead = append(c.freeRead, idx)
			c.sqFree++
			c.sqMu.Unlock()
			c.fail(err)
			if w != nil {
				w.DataDone(fmt.Errorf("post RDMA READ: %w", err))
			}
			return
		}
	}
}

// FullFeature is called when login succeeds. Receive buffers are sized for
// full feature phase from the start, so nothing needs re-posting.
func (c *conn) FullFeature(p *iscsi.Params) error {
	if !p.RDMAExtensions {
		return errors.New("initiator did not agree to RDMAExtensions=Yes on an iSER connection")
	}
	return nil
}

// SetDigests is a no-op: iSER carries no digests (RDMA has its own CRCs).
func (c *conn) SetDigests(header, data bool) {}

// SetDeadline bounds ReadHeader; writes never block on the network.
func (c *conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline bounds ReadHeader; a time in the past wakes it at once.
func (c *conn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		c.rdl.Store(0)
		return nil
	}
	c.rdl.Store(t.UnixNano())
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// LocalAddr is the address the initiator connected to.
func (c *conn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(c.src) }

// RemoteAddr is the initiator's address.
func (c *conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.dst) }

// Close disconnects and releases everything. Every data move not finished
// by then (RDMA READs and WRITEs in flight or queued) ends with an error,
// and none starts afterwards.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.fail(rdma.ErrDisconnected)
		if c.cancel != nil {
			c.cancel()
			<-c.cqDone
		}
		c.memMu.Lock()
		c.memGone = true
		c.closeErr = c.ep.Close()
		c.memMu.Unlock()
		c.sqMu.Lock()
		var waiters []iscsi.DataWaiter
		for _, table := range [][]iscsi.DataWaiter{c.reads, c.writes} {
			for i, w := range table {
				if w != nil {
					waiters = append(waiters, w)
					table[i] = nil
				}
			}
		}
		for _, q := range c.queued {
			waiters = append(waiters, q.waiter)
		}
		c.queued = nil
		c.sqMu.Unlock()
		for _, w := range waiters {
			w.DataDone(errClosed)
		}
	})
	return c.closeErr
}

// addrOf is the virtual address of a slice's first byte.
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

var _ iscsi.DataMover = (*conn)(nil) // iscsi finds the DataMover by a type assertion
