package iser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

// Wire constants (RFC 7145 9.2 and the Linux initiator's use of them).
const (
	hdrLen       = 28   // iSER header before every iSCSI PDU
	flagCtrl     = 0x10 // iSCSI control-type PDU follows
	flagHello    = 0x20
	flagWSV      = 0x08 // write STag valid
	flagRSV      = 0x04 // read STag valid
	repZBVANot   = 0x80 // CM reply: zero-based virtual addresses not used
	repSendWInv  = 0x40 // CM reply: send with invalidate not used
	recvDataSize = 8192 // TargetRecvDataSegmentLength over iSER
	// slotSize holds an iSER header, a BHS, an AHS and a data segment.
	slotSize = hdrLen + iscsi.BHSLen + 1024 + recvDataSize
	numRecv  = 256  // receives posted: above the initiator's command window
	numSend  = 256  // PDU send slots
	sqDepth  = 1024 // send queue entries: PDUs, RDMA WRITEs and READs
)

// Work request IDs carry their kind in the top byte.
const (
	wrRecv uint64 = iota << 56
	wrSend
	wrWrite
	wrRead
	wrKindMask = 0xff << 56
)

// stags are the initiator's buffers for one command (from its iSER header).
type stags struct {
	writeSTag, readSTag uint32
	writeVA, readVA     uint64
}

// pendingRead is an RDMA READ waiting for a slot under the initiator depth.
type pendingRead struct {
	wr     rdma.SendWR
	waiter iscsi.DataWaiter
}

// conn is one iSER connection: an iscsi.Transport and iscsi.DataMover.
type conn struct {
	p   *Portal
	rc  *rdma.Conn
	reg *regions
	log *zap.Logger

	recvMR, sendMR   *rdma.MR
	recvMem, sendMem []byte

	// receive side (reader goroutine)
	recvCh  chan uint64 // slot<<32 | byte length, from the CQ goroutine
	cur     int         // slot of the PDU being read, -1 when none
	curLen  int
	dataOff int
	wake    chan struct{}
	rdl     atomic.Int64 // read deadline, unix nanoseconds, 0 for none

	// send side
	postMu    sync.Mutex // serializes posting to the QP
	sqMu      sync.Mutex
	sqCond    *sync.Cond
	sqFree    int
	slots     []int // free send slots
	pending   []rdma.SendWR
	sgl       [][1]rdma.SGE // per send slot, backing for pending WR SGLs
	wsgl      [][1]rdma.SGE // per RDMA WRITE slot
	writes    []iscsi.DataWaiter
	freeWrite []int
	reads     []iscsi.DataWaiter // in flight, by read slot
	rsgl      [][1]rdma.SGE
	freeRead  []int
	queued    []pendingRead

	tagMu sync.Mutex
	tags  map[uint32]stags

	dead      chan struct{}
	deadOnce  sync.Once
	cqDone    chan struct{}
	cancel    context.CancelFunc
	closeOnce sync.Once
}

func newConn(p *Portal, req *rdma.ConnRequest) (*conn, error) {
	c := &conn{p: p, cur: -1, recvCh: make(chan uint64, numRecv), wake: make(chan struct{}, 1),
		tags: map[uint32]stags{}, dead: make(chan struct{}), cqDone: make(chan struct{})}
	c.sqCond = sync.NewCond(&c.sqMu)
	if len(req.PrivateData) >= 4 && req.PrivateData[0]&flagHello != 0 {
		req.Reject(nil)
		return nil, errors.New("initiator asked for iSER hello messages, which are not supported")
	}
	cfg := rdma.ConnConfig{
		Pool: p.devs, SendWR: sqDepth, RecvWR: numRecv, SendSGE: 1, RecvSGE: 1,
		CQSize:             sqDepth + numRecv,
		ResponderResources: req.ResponderResources, InitiatorDepth: req.InitiatorDepth,
		PrivateData: []byte{repZBVANot | repSendWInv, 0, 0, 0},
		Prepare:     c.prepare,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := req.Accept(ctx, cfg)
	if err != nil {
		c.freeBuffers()
		return nil, fmt.Errorf("accept: %w", err)
	}
	c.rc = rc
	c.log = p.log.With(zap.Stringer("remote", rc.Dst))
	depth := max(1, int(rc.InitiatorDepth))
	c.reads = make([]iscsi.DataWaiter, depth)
	c.rsgl = make([][1]rdma.SGE, depth)
	for i := depth - 1; i >= 0; i-- {
		c.freeRead = append(c.freeRead, i)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	c.cancel = ccancel
	go c.completions(cctx)
	return c, nil
}

// prepare runs with the QP in INIT: buffers are registered and every
// receive is posted before the connection is accepted.
func (c *conn) prepare(rc *rdma.Conn) error {
	var err error
	if c.reg, err = c.p.poolRegions(rc.PD); err != nil {
		return err
	}
	if c.recvMR, c.recvMem, err = rc.PD.AllocBuffer(numRecv*slotSize, rdma.AccessLocalWrite); err != nil {
		return fmt.Errorf("receive buffers: %w", err)
	}
	if c.sendMR, c.sendMem, err = rc.PD.AllocBuffer(numSend*slotSize, rdma.AccessLocalWrite); err != nil {
		return fmt.Errorf("send buffers: %w", err)
	}
	c.sgl = make([][1]rdma.SGE, numSend)
	c.wsgl = make([][1]rdma.SGE, sqDepth)
	c.writes = make([]iscsi.DataWaiter, sqDepth)
	for i := sqDepth - 1; i >= 0; i-- {
		c.freeWrite = append(c.freeWrite, i)
	}
	for i := numSend - 1; i >= 0; i-- {
		c.slots = append(c.slots, i)
	}
	c.sqFree = sqDepth
	for i := 0; i < numRecv; i++ {
		if err := c.postRecv(rc, i); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) postRecv(rc *rdma.Conn, slot int) error {
	sge := c.recvMR.SGE(slot*slotSize, slotSize)
	c.postMu.Lock()
	defer c.postMu.Unlock()
	if err := rc.QP.PostRecv(rdma.RecvWR{ID: wrRecv | uint64(slot), SGL: []rdma.SGE{sge}}); err != nil {
		return fmt.Errorf("post receive: %w", err)
	}
	return nil
}

// completions dispatches the CQ until the connection is closed.
func (c *conn) completions(ctx context.Context) {
	defer close(c.cqDone)
	wcs := make([]rdma.WorkCompletion, 64)
	for {
		n, err := c.rc.CQ.Wait(ctx, wcs)
		if err != nil {
			if ctx.Err() == nil {
				c.fail(fmt.Errorf("completion queue: %w", err))
			}
			return
		}
		for i := range wcs[:n] {
			c.complete(&wcs[i])
		}
	}
}

func (c *conn) complete(wc *rdma.WorkCompletion) {
	kind, idx := wc.ID&wrKindMask, int(wc.ID&^wrKindMask)
	err := wc.Err()
	if err != nil && kind != wrRead {
		c.fail(fmt.Errorf("work completion: %w", err))
	}
	switch kind {
	case wrRecv:
		if err == nil {
			c.recvCh <- uint64(idx)<<32 | uint64(wc.ByteLen)
		}
	case wrSend:
		c.sqMu.Lock()
		c.slots = append(c.slots, idx)
		c.sqFree++
		readsWait := len(c.queued) > 0
		c.sqCond.Broadcast()
		c.sqMu.Unlock()
		if readsWait { // a send queue entry is free again: reads queued for one may start
			c.startQueuedRead()
		}
	case wrWrite:
		c.sqMu.Lock()
		c.sqFree++
		w := c.writes[idx]
		c.writes[idx] = nil
		c.freeWrite = append(c.freeWrite, idx)
		readsWait := len(c.queued) > 0
		c.sqCond.Broadcast()
		c.sqMu.Unlock()
		if readsWait {
			c.startQueuedRead()
		}
		if w != nil {
			w.DataDone(err)
		}
	case wrRead:
		c.sqMu.Lock()
		c.sqFree++
		w := c.reads[idx]
		c.reads[idx] = nil
		c.freeRead = append(c.freeRead, idx)
		var next *pendingRead
		if len(c.queued) > 0 && err == nil {
			next = &c.queued[0]
		}
		c.sqCond.Broadcast()
		c.sqMu.Unlock()
		if next != nil {
			c.startQueuedRead()
		}
		if w != nil {
			if err != nil {
				err = fmt.Errorf("RDMA READ of write data: %w", err)
			}
			w.DataDone(err)
		}
	}
}

// fail marks the connection dead: readers see EOF, writers an error.
func (c *conn) fail(err error) {
	c.deadOnce.Do(func() {
		if !errors.Is(err, rdma.ErrDisconnected) && c.log != nil {
			c.log.Info("iSER connection ended", zap.Error(err))
		}
		close(c.dead)
		c.sqMu.Lock()
		c.sqCond.Broadcast()
		c.sqMu.Unlock()
	})
}

// ReadHeader takes the next received PDU.
func (c *conn) ReadHeader(h *iscsi.Header) error {
	if c.cur >= 0 { // the previous PDU has been consumed: its buffer can receive again
		slot := c.cur
		c.cur = -1
		if err := c.postRecv(c.rc, slot); err != nil {
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
		case <-c.rc.Done():
			c.fail(c.rc.Err())
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
	msg := c.recvMem[c.cur*slotSize : c.cur*slotSize+c.curLen]
	if len(msg) < hdrLen+iscsi.BHSLen {
		return fmt.Errorf("iSER message of %d bytes is shorter than its headers", len(msg))
	}
	flags := msg[0]
	if flags&0xf0 != flagCtrl {
		return fmt.Errorf("iSER message type 0x%x is not an iSCSI control PDU", flags>>4)
	}
	copy(h.BHS[:], msg[hdrLen:])
	ahs := h.TotalAHSLen()
	c.dataOff = hdrLen + iscsi.BHSLen + ahs
	if c.dataOff+h.DataLen() > len(msg) {
		return fmt.Errorf("iSCSI PDU says %d AHS and %d data bytes but the message holds %d",
			ahs, h.DataLen(), len(msg)-hdrLen-iscsi.BHSLen)
	}
	h.AHS = msg[hdrLen+iscsi.BHSLen : c.dataOff]
	if h.Opcode() == iscsi.OpSCSICmd {
		var t stags
		if flags&flagWSV != 0 {
			t.writeSTag, t.writeVA = binary.BigEndian.Uint32(msg[4:]), binary.BigEndian.Uint64(msg[8:])
		}
		if flags&flagRSV != 0 {
			t.readSTag, t.readVA = binary.BigEndian.Uint32(msg[16:]), binary.BigEndian.Uint64(msg[20:])
		}
		c.tagMu.Lock()
		c.tags[h.ITT()] = t
		c.tagMu.Unlock()
	}
	return nil
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
	buf := c.sendMem[slot*slotSize:]
	clear(buf[:hdrLen])
	buf[0] = flagCtrl
	copy(buf[hdrLen:], bhs[:])
	n := hdrLen + iscsi.BHSLen + copy(buf[hdrLen+iscsi.BHSLen:], data)
	c.sgl[slot][0] = c.sendMR.SGE(slot*slotSize, n)
	c.pending = append(c.pending, rdma.SendWR{ID: wrSend | uint64(slot), Opcode: rdma.OpSend,
		Flags: rdma.SendSignaled, SGL: c.sgl[slot][:]})
	if bhs.Opcode() == iscsi.OpSCSIResp {
		c.tagMu.Lock()
		delete(c.tags, bhs.ITT())
		c.tagMu.Unlock()
	}
	return nil
}

// takeSlot waits for a free send slot and send queue entry.
func (c *conn) takeSlot() (int, error) {
	c.sqMu.Lock()
	defer c.sqMu.Unlock()
	for len(c.slots) == 0 || c.sqFree-len(c.pending) <= 0 {
		select {
		case <-c.dead:
			return 0, io.ErrClosedPipe
		default:
		}
		if len(c.pending) > 0 {
			c.sqMu.Unlock()
			err := c.Flush()
			c.sqMu.Lock()
			if err != nil {
				return 0, err
			}
			continue
		}
		c.sqCond.Wait()
	}
	s := c.slots[len(c.slots)-1]
	c.slots = c.slots[:len(c.slots)-1]
	return s, nil
}

// Flush posts the queued work requests with one doorbell.
func (c *conn) Flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	c.sqMu.Lock()
	c.sqFree -= len(c.pending)
	c.sqMu.Unlock()
	c.postMu.Lock()
	err := c.rc.QP.PostSend(c.pending...)
	c.postMu.Unlock()
	clear(c.pending)
	c.pending = c.pending[:0]
	if err != nil {
		c.fail(err)
		return fmt.Errorf("post send: %w", err)
	}
	return nil
}

// PutData queues the RDMA WRITE of a read command's data; the status PDU
// queued next goes out after it. done hears when the buffer is free again.
func (c *conn) PutData(itt uint32, data []byte, done iscsi.DataWaiter) error {
	c.tagMu.Lock()
	t, ok := c.tags[itt]
	c.tagMu.Unlock()
	if !ok || t.readSTag == 0 && t.readVA == 0 {
		return fmt.Errorf("read command %#x carries no read STag", itt)
	}
	sge, err := c.reg.sge(c.p.srv.Pool(), data)
	if err != nil {
		return err
	}
	c.sqMu.Lock()
	for c.sqFree-len(c.pending) <= 1 || len(c.freeWrite) == 0 {
		if c.isDead() {
			c.sqMu.Unlock()
			return io.ErrClosedPipe
		}
		if len(c.pending) > 0 {
			c.sqMu.Unlock()
			if err := c.Flush(); err != nil {
				return err
			}
			c.sqMu.Lock()
			continue
		}
		c.sqCond.Wait()
	}
	i := c.freeWrite[len(c.freeWrite)-1]
	c.freeWrite = c.freeWrite[:len(c.freeWrite)-1]
	c.writes[i] = done
	c.sqMu.Unlock()
	c.wsgl[i][0] = sge
	c.pending = append(c.pending, rdma.SendWR{ID: wrWrite | uint64(i), Opcode: rdma.OpRDMAWrite, Flags: rdma.SendSignaled,
		SGL: c.wsgl[i][:], RemoteAddr: t.readVA, RKey: t.readSTag})
	return nil
}

func (c *conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// GetData RDMA READs a write command's solicited data into dst.
func (c *conn) GetData(itt uint32, dst []byte, w iscsi.DataWaiter) {
	c.tagMu.Lock()
	t, ok := c.tags[itt]
	c.tagMu.Unlock()
	if !ok || t.writeSTag == 0 && t.writeVA == 0 {
		w.DataDone(fmt.Errorf("write command %#x carries no write STag", itt))
		return
	}
	sge, err := c.reg.sge(c.p.srv.Pool(), dst)
	if err != nil {
		w.DataDone(err)
		return
	}
	pr := pendingRead{wr: rdma.SendWR{Opcode: rdma.OpRDMARead, Flags: rdma.SendSignaled,
		RemoteAddr: t.writeVA, RKey: t.writeSTag}, waiter: w}
	pr.wr.SGL = []rdma.SGE{sge}
	c.sqMu.Lock()
	c.queued = append(c.queued, pr)
	c.sqMu.Unlock()
	c.startQueuedRead()
}

// startQueuedRead posts queued RDMA READs while the initiator depth and the
// send queue allow.
func (c *conn) startQueuedRead() {
	for {
		c.sqMu.Lock()
		if len(c.queued) == 0 || len(c.freeRead) == 0 || c.sqFree <= 0 || c.isDead() {
			c.sqMu.Unlock()
			return
		}
		pr := c.queued[0]
		c.queued = c.queued[1:]
		idx := c.freeRead[len(c.freeRead)-1]
		c.freeRead = c.freeRead[:len(c.freeRead)-1]
		c.reads[idx] = pr.waiter
		c.sqFree--
		c.sqMu.Unlock()
		c.rsgl[idx] = [1]rdma.SGE{pr.wr.SGL[0]}
		pr.wr.SGL = c.rsgl[idx][:]
		pr.wr.ID = wrRead | uint64(idx)
		c.postMu.Lock()
		err := c.rc.QP.PostSend(pr.wr)
		c.postMu.Unlock()
		if err != nil {
			c.sqMu.Lock()
			c.reads[idx] = nil
			c.freeRead = append(c.freeRead, idx)
			c.sqFree++
			c.sqMu.Unlock()
			pr.waiter.DataDone(fmt.Errorf("post RDMA READ: %w", err))
			c.fail(err)
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
func (c *conn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(c.rc.Src) }

// RemoteAddr is the initiator's address.
func (c *conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.rc.Dst) }

// Close disconnects and releases everything; pending RDMA READs fail.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.fail(rdma.ErrDisconnected)
		c.cancel()
		<-c.cqDone
		c.rc.Close()
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
			w.DataDone(fmt.Errorf("iSER connection closed: %w", rdma.ErrDisconnected))
		}
		c.freeBuffers()
	})
	return nil
}

func (c *conn) freeBuffers() {
	if c.recvMR != nil {
		c.recvMR.Dereg()
	}
	if c.sendMR != nil {
		c.sendMR.Dereg()
	}
}

// addrOf is the virtual address of a slice's first byte.
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
