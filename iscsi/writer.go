package iscsi

import (
	"go.uber.org/zap"

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
	bhs  BHS
	data []byte
	task *task
	r2t  r2tRange
}

// enqueue hands an item to the writer; it never blocks on the network.
// Once the writer has stopped, a task response is released at once.
func (c *conn) enqueue(it outItem) {
	c.wmu.Lock()
	if c.wstopped {
		c.wmu.Unlock()
		if it.kind == outResponse {
			c.taskSent(it.task)
		}
		return
	}
	c.wq = append(c.wq, it)
	c.wmu.Unlock()
	select {
	case c.wsig <- struct{}{}:
	default:
	}
}

// send queues a ready-made PDU; status says whether it takes a StatSN.
func (c *conn) send(bhs *BHS, data []byte, status bool) {
	k := outPDU
	if status {
		k = outStatus
	}
	c.enqueue(outItem{kind: k, bhs: *bhs, data: data})
}

// writer drains the queue in batches, one writev per batch.
func (c *conn) writer() {
	for {
		select {
		case <-c.wsig:
		case <-c.closing:
			c.failQueued()
			return
		}
		c.wmu.Lock()
		batch := c.wq
		c.wq = c.wspare[:0]
		c.wmu.Unlock()
		closeAfter, halfClose := false, false
		var err error
		i := 0
		for ; i < len(batch) && err == nil; i++ {
			it := &batch[i]
			switch it.kind {
			case outResponse:
				err = c.writeResponse(it.task)
				if !it.task.putting {
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
				err = c.tr.Queue(&it.bhs, it.data)
			}
		}
		for _, it := range batch[i:] { // not sent after an error: release them all the same
			if it.kind == outResponse {
				c.sent = append(c.sent, it.task)
			}
		}
		if err == nil {
			err = c.tr.Flush()
		}
		for _, t := range c.sent {
			c.taskSent(t)
		}
		clear(c.sent)
		c.sent = c.sent[:0]
		clear(batch)
		c.wspare = batch[:0]
		if err != nil {
			c.log.Info("send failed: closing connection", zap.Error(err))
			c.close()
			c.failQueued()
			return
		}
		if halfClose {
			if hc, ok := c.tr.(interface{ CloseWrite() error }); ok {
				hc.CloseWrite() // the initiator reads everything, then sees the end
			} else {
				c.close()
			}
			c.failQueued()
			return
		}
		if closeAfter {
			c.close()
			c.failQueued()
			return
		}
	}
}

// failQueued releases the tasks of responses that will never be sent.
func (c *conn) failQueued() {
	c.wmu.Lock()
	q := c.wq
	c.wq = nil
	c.wstopped = true
	c.wmu.Unlock()
	for i := range q {
		if q[i].kind == outResponse {
			c.taskSent(q[i].task)
		}
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
func (c *conn) writeResponse(t *task) error {
	if t.aborted.Load() {
		return nil // aborted tasks are not answered (TAS=0)
	}
	cmd := &t.cmd
	data := t.dataIn()
	residual, resFlags := t.residual()
	collapse := len(data) > 0 && cmd.Status == scsi.StatusGood
	if c.mover != nil && len(data) > 0 {
		if err := c.mover.PutData(t.itt, data, t); err != nil {
			return err
		}
		t.putting = true
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
			return err
		}
		off += n
	}
	if collapse {
		return nil
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
	return c.tr.Queue(b, sense)
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
