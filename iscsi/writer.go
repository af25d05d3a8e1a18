package iscsi

import (
	"net"

	"go.uber.org/zap"

	"github.com/iserd/iserd/internal/procscale"
	"github.com/iserd/iserd/scsi"
)

// outKind says how the writer turns an outItem into PDUs.
type outKind uint8

const (
	outPDU      outKind = iota // one PDU, no new StatSN
	outStatus                  // one PDU that takes the next StatSN
	outResponse                // a task's Data-In PDUs and status
	outR2T                     // an R2T for a task
	outClose                   // close the connection after what is queued
	outShutdown                // send what is queued, then half-close (shutdown)
)

// outItem is one entry of the writer's queue.
type outItem struct {
	kind outKind
	ctl  int32 // bytes counted in conn.ctlQueued (a PDU no task accounts for)
	bhs  BHS
	data []byte
	task *task
	r2t  r2tRange
}

// enqueue hands an item to the writer; it never blocks on the network.
// Once the writer has stopped, a task response is released at once. While
// the reader works through PDUs it already holds, the writer is woken only
// when the reader runs dry (endBurst), so that one wake-up and one writev
// carry the responses of a whole burst.
func (c *conn) enqueue(it outItem) {
	c.wmu.Lock()
	if c.wstopped {
		c.wmu.Unlock()
		if it.kind == outResponse {
			c.taskSent(it.task, monoNow())
		}
		c.controlSent(it.ctl)
		return
	}
	c.wq = append(c.wq, it)
	c.wmu.Unlock()
	if !c.wdefer.Load() {
		c.wakeWriter()
	}
}

func (c *conn) wakeWriter() {
	select {
	case c.wsig <- struct{}{}:
	default:
	}
}

// beginBurst is called by the reader when it takes in a PDU after waiting
// for the network: responses queued from now on wait for endBurst.
func (c *conn) beginBurst() {
	procscale.Busy()
	c.rxTime = monoNow()
	c.wdefer.Store(true)
}

// endBurst is called by the reader before a read that may wait: it sends
// what was queued during the burst, or wakes the writer to. (An enqueue
// that saw wdefer set appended before this looks at the queue, so nothing
// is left behind.)
func (c *conn) endBurst() {
	c.wdefer.Store(false)
	c.sendFromReader()
}

// send queues a ready-made PDU; status says whether it takes a StatSN.
// Its bytes count against PeerLimits.QueuedControl until it is sent.
func (c *conn) send(bhs *BHS, data []byte, status bool) {
	k := outPDU
	if status {
		k = outStatus
	}
	n := int32(BHSLen + len(data))
	c.ctlQueued.Add(int64(n))
	c.enqueue(outItem{kind: k, ctl: n, bhs: *bhs, data: data})
}

// controlSent uncounts a PDU queued by send once the writer is done with it.
func (c *conn) controlSent(n int32) {
	if n != 0 && c.ctlQueued.Add(-int64(n)) <= int64(c.srv.opts.QueuedControl) {
		select {
		case c.ctlFree <- struct{}{}:
		default:
		}
	}
}

// waitControl holds the reader while the PDUs it queued that no task
// accounts for exceed PeerLimits.QueuedControl (an initiator that sends
// NOP-Outs or bad PDUs and does not read the answers): what is queued goes
// out first; the initiator's own sending then stops at TCP's window.
func (c *conn) waitControl() error {
	if c.ctlQueued.Load() <= int64(c.srv.opts.QueuedControl) {
		return nil
	}
	c.endBurst()
	for c.ctlQueued.Load() > int64(c.srv.opts.QueuedControl) {
		select {
		case <-c.ctlFree:
		case <-c.closing:
			return net.ErrClosed
		}
	}
	return nil
}

// The queue is sent by whichever goroutine owns the sending side
// (wowner, under wmu): usually the reader itself, at the end of a burst,
// with a write that does not wait (sendFromReader); otherwise the writer
// goroutine. The owner keeps sending until the queue is empty, so an
// enqueue that finds an owner needs to wake nobody.

// writer sends what the reader cannot: batches that might wait for the
// socket, the rest of a batch the reader only partly wrote, closes.
func (c *conn) writer() {
	for {
		select {
		case <-c.wsig:
		case <-c.closing:
			c.failQueued()
			return
		}
		c.wmu.Lock()
		if c.wowner && !c.whandoff {
			c.wmu.Unlock() // the owner empties the queue before it lets go
			continue
		}
		resume, closeAfter, halfClose := c.whandoff, c.wclose, c.whalf
		c.wowner, c.whandoff = true, false
		c.wmu.Unlock()
		if resume && !c.batchSent(c.tr.Flush(), closeAfter, halfClose) {
			return
		}
		if !c.sendQueued(false) {
			return
		}
	}
}

// sendFromReader is endBurst's way to send: the reader sends the queue
// itself when nobody else is and the transport can write without
// waiting, which spares the writer goroutine's wake-up. What would wait
// for a full socket buffer it hands over to the writer.
func (c *conn) sendFromReader() {
	c.wmu.Lock()
	if c.wowner || c.wstopped || len(c.wq) == 0 {
		c.wmu.Unlock()
		return
	}
	c.wowner = true
	c.wmu.Unlock()
	c.sendQueued(true)
}

// sendQueued sends batches until the queue is empty, then gives up
// ownership; the caller owns the sending side. The reader (fromReader)
// writes without waiting and leaves a partly written batch to the writer.
// It reports false when the connection has ended.
func (c *conn) sendQueued(fromReader bool) bool {
	for {
		c.wmu.Lock()
		if len(c.wq) == 0 {
			c.wowner = false
			c.wmu.Unlock()
			return true
		}
		batch := c.wq
		c.wq = c.wspare[:0]
		c.wmu.Unlock()
		closeAfter, halfClose, err := c.queueBatch(batch)
		clear(batch)
		c.wspare = batch[:0]
		if err == nil && fromReader {
			var done bool
			if done, err = c.tr.TryFlush(); err == nil && !done {
				c.wmu.Lock()
				stopped := c.wstopped
				c.whandoff = !stopped // the writer flushes the rest and releases c.sent
				c.wclose, c.whalf = closeAfter, halfClose
				c.wmu.Unlock()
				if stopped { // the writer is gone: nobody will send the rest
					c.releaseSent()
					return false
				}
				c.wakeWriter()
				return true
			}
		} else if err == nil {
			err = c.tr.Flush()
		}
		if !c.batchSent(err, closeAfter, halfClose) {
			return false
		}
	}
}

// queueBatch hands a batch's PDUs to the transport; the tasks whose
// responses it holds go to c.sent, to be released once it is flushed.
func (c *conn) queueBatch(batch []outItem) (closeAfter, halfClose bool, err error) {
	i := 0
	for ; i < len(batch) && err == nil; i++ {
		it := &batch[i]
		switch it.kind {
		case outResponse:
			var putting bool
			putting, err = c.writeResponse(it.task)
			if !putting {
				// after the flush; a task whose data a DataMover
				// still sends ends in DataDone instead
				c.sent = append(c.sent, it.task)
			}
		case outR2T:
			err = c.writeR2T(it.task, it.r2t)
		case outClose:
			closeAfter = true
		case outShutdown:
			halfClose = true
		default:
			c.stamp(&it.bhs, it.kind == outStatus)
			if it.bhs.Opcode() == OpAsync {
				c.asyncStamped(it.bhs.U32(offCmdSN))
			}
			err = c.tr.Queue(&it.bhs, it.data)
			c.controlSent(it.ctl)
		}
	}
	for _, it := range batch[i:] { // not sent after an error: release them all the same
		if it.kind == outResponse {
			c.sent = append(c.sent, it.task)
		}
		c.controlSent(it.ctl)
	}
	return closeAfter, halfClose, err
}

// batchSent finishes a flushed batch: its tasks are released, and an
// error or a close ends the connection (false).
func (c *conn) batchSent(err error, closeAfter, halfClose bool) bool {
	c.releaseSent()
	switch {
	case err != nil:
		c.log.Info("send failed: closing connection", zap.Error(err))
		c.close()
	case halfClose:
		if hc, ok := c.tr.(interface{ CloseWrite() error }); ok {
			hc.CloseWrite() // the initiator reads everything, then sees the end
		} else {
			c.close()
		}
	case closeAfter:
		c.close()
	default:
		return true
	}
	c.failQueued()
	return false
}

// releaseSent releases the tasks of the batch just sent (or abandoned).
func (c *conn) releaseSent() {
	if len(c.sent) == 0 {
		return
	}
	now := monoNow()
	for _, t := range c.sent {
		c.taskSent(t, now)
	}
	clear(c.sent)
	c.sent = c.sent[:0]
}

// failQueued stops sending: queued responses, and a batch the reader
// left to the writer, will never go out; their tasks are released.
func (c *conn) failQueued() {
	c.wmu.Lock()
	q := c.wq
	c.wq = nil
	c.wstopped = true
	orphaned := c.whandoff
	c.whandoff = false
	c.wmu.Unlock()
	if orphaned {
		c.releaseSent()
	}
	now := monoNow()
	for i := range q {
		if q[i].kind == outResponse {
			c.taskSent(q[i].task, now)
		}
		c.controlSent(q[i].ctl)
	}
}

// stamp fills StatSN, ExpCmdSN and MaxCmdSN of an outgoing PDU.
func (c *conn) stamp(b *BHS, status bool) {
	b.SetU32(offCmdSN, c.statSN)
	if status {
		c.statSN++
	}
	if s := c.sess; s != nil {
		b.SetU32(offExpStatSN, s.expCmdSN.Load())
		b.SetU32(offMaxCmdSN, s.maxCmdSN.Load())
	}
}

// writeResponse emits a task's Data-In PDUs, split by the initiator's
// MaxRecvDataSegmentLength and MaxBurstLength, with the status collapsed
// into the last one when it is GOOD, or a SCSI Response otherwise.
// putting says that a DataMover holds the data and ends the task in
// DataDone; the caller must not look at t.putting instead, since once the
// status is queued (the transport may post the data on the way) DataDone
// may have released t.
func (c *conn) writeResponse(t *task) (putting bool, err error) {
	if t.aborted.Load() {
		return false, nil // aborted tasks are not answered (TAS=0)
	}
	cmd := &t.cmd
	data := t.dataIn()
	residual, resFlags := t.residual()
	collapse := len(data) > 0 && cmd.Status == scsi.StatusGood
	if c.mover != nil && len(data) > 0 {
		if err := c.mover.PutData(t.itt, t.readBuf, data, t); err != nil {
			return false, err
		}
		t.putting, putting = true, true
		data, collapse = nil, false
	}
	maxSeg := int(c.params.MaxXmitDataSegmentLength)
	maxBurst := int(c.sess.params.MaxBurstLength)
	b := &c.wbhs // writer-owned: a local would escape through the Transport interface
	for off := 0; off < len(data); {
		n := min(maxSeg, len(data)-off, maxBurst-off%maxBurst)
		last := off+n == len(data)
		*b = BHS{}
		b[0] = byte(OpDataIn)
		if last || (off+n)%maxBurst == 0 {
			b[1] |= 0x80
		}
		b.SetLUN(t.lunField)
		b.SetU32(offITT, t.itt)
		b.SetU32(offTTT, NoTag)
		b.SetU32(offDataSN, t.dataSN)
		b.SetU32(offOffset, uint32(off))
		t.dataSN++
		if last && collapse {
			b[1] |= 0x01 | resFlags
			b[3] = byte(cmd.Status)
			b.SetU32(offResidual, residual)
			c.stamp(b, true)
		} else {
			c.stamp(b, false)
			b.SetU32(offCmdSN, 0)
		}
		if err := c.tr.Queue(b, data[off:off+n]); err != nil {
			return false, err
		}
		off += n
	}
	if collapse {
		return false, nil
	}
	*b = BHS{}
	b[0] = byte(OpSCSIResp)
	b[1] = 0x80 | resFlags
	b[3] = byte(cmd.Status)
	b.SetU32(offITT, t.itt)
	b.SetU32(offDataSN, t.dataSN+t.r2tSN)
	b.SetU32(offResidual, residual)
	c.stamp(b, true)
	var sense []byte
	if cmd.SenseLen > 0 {
		t.senseBuf[0], t.senseBuf[1] = byte(cmd.SenseLen>>8), byte(cmd.SenseLen)
		copy(t.senseBuf[2:], cmd.Sense[:cmd.SenseLen])
		sense = t.senseBuf[:2+cmd.SenseLen]
	}
	return putting, c.tr.Queue(b, sense)
}

// writeR2T emits one R2T for a range of a task's data.
func (c *conn) writeR2T(t *task, r r2tRange) error {
	b := &c.wbhs
	*b = BHS{}
	b[0] = byte(OpR2T)
	b[1] = 0x80
	b.SetLUN(t.lunField)
	b.SetU32(offITT, t.itt)
	b.SetU32(offTTT, r.ttt)
	b.SetU32(offDataSN, r.sn)
	b.SetU32(offOffset, r.offset)
	b.SetU32(offResidual, r.length)
	c.stamp(b, false)
	return c.tr.Queue(b, nil)
}
