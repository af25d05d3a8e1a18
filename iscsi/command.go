package iscsi

import (
	"encoding/binary"

	"github.com/iserd/iserd/bdev"
	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// maxTransfer bounds one command's data (the largest pool buffer, and the
// MAXIMUM TRANSFER LENGTH the SCSI layer reports); larger commands get
// CHECK CONDITION.
const maxTransfer = bdev.MaxBufSize

// SCSI Command flag bits (byte 1).
const (
	cmdFinal = 0x80
	cmdRead  = 0x40
	cmdWrite = 0x20
)

// noLUN stands for a LUN field the target cannot decode: no LU has it.
const noLUN = ^uint64(0)

// handleCommand starts a SCSI command: it collects immediate data, asks for
// the rest with R2Ts, and executes the command once all data is in.
func (c *conn) handleCommand(h *Header, pl *payload) error {
	s := c.sess
	flags := h.Flags()
	dsl := uint32(h.DataLen())
	edtl := h.U32(offTTT)
	p := &s.params
	protoErr := func(why string) error {
		c.log.Warn("SCSI Command rejected: "+why, zap.Uint32("itt", h.ITT()))
		if !h.Immediate() {
			s.openWindow()
		}
		return c.rejectPDU(h, pl, rejectProtocol)
	}
	switch {
	case s.discovery:
		return protoErr("SCSI commands are not allowed in a discovery session")
	case dsl > 0 && flags&cmdWrite == 0:
		return protoErr("data segment without the W bit")
	case dsl > edtl:
		return protoErr("immediate data longer than the expected transfer length")
	case dsl > 0 && !p.ImmediateData:
		return protoErr("immediate data sent but ImmediateData=No")
	case dsl > p.FirstBurstLength:
		return protoErr("immediate data longer than FirstBurstLength")
	case flags&cmdFinal == 0 && (p.InitialR2T || flags&cmdWrite == 0):
		return protoErr("F bit clear but no unsolicited data may follow")
	}
	if h.Immediate() {
		// Immediate commands take no CmdSN slot: only this bounds them.
		s.mu.Lock()
		n := len(s.tasks)
		s.mu.Unlock()
		if n >= int(c.srv.opts.CmdWindow)+c.srv.opts.ImmediateTasks {
			c.log.Warn("immediate SCSI command rejected: too many commands in flight", zap.Uint32("itt", h.ITT()),
				zap.Int("in_flight", n), zap.Int("immediate_tasks_limit", c.srv.opts.ImmediateTasks))
			return c.rejectPDU(h, pl, rejectImmediate)
		}
	}
	t := getTask(c)
	t.start = c.rxTime
	t.itt = h.ITT()
	t.lunField = h.LUN()
	t.cmdSN = h.U32(offCmdSN)
	t.immed = h.Immediate()
	t.read = flags&cmdRead != 0
	t.write = flags&cmdWrite != 0
	t.edtl = edtl
	t.readBuf, t.writeBuf = h.ReadBuf, h.WriteBuf
	n := copy(t.cdb[:], h.BHS[32:48])
	n += extendedCDB(h.AHS, t.cdb[16:])
	lun := s.targetLUN(t.lunField)
	t.cmd.Nexus = s.nexus
	t.cmd.LUN = lun
	if lun != noLUN && s.target.SCSI.HasLUN(lun) {
		t.lun = s.target.lunCounters(lun)
	}
	t.cmd.CDB = t.cdb[:n]
	t.cmd.Attr = scsi.TaskAttr(flags & 0x07)
	t.cmd.Tag = uint64(t.itt)
	s.mu.Lock() // one look-up and insert: the tag must be free
	_, busy := s.tasks[t.itt]
	if !busy {
		if s.tasks == nil {
			s.tasks = make(map[uint32]*task)
		}
		s.tasks[t.itt] = t
	}
	s.mu.Unlock()
	if busy {
		t.release()
		return protoErr("initiator task tag already in use")
	}
	s.stats.inFlight.Add(1)
	if t.lun != nil {
		t.lun.inFlight.Add(1)
	}

	if edtl > maxTransfer {
		c.log.Warn("command transfer length beyond the target's limit", zap.Uint32("edtl", edtl))
		if err := pl.discard(); err != nil {
			return err
		}
		c.checkCondition(t, 0x05, 0x24, 0x00) // INVALID FIELD IN CDB
		return nil
	}
	if (t.read || t.write) && edtl > 0 {
		b, err := c.srv.pool.Get(int(edtl))
		if err != nil {
			c.srv.noBuffer(edtl, err)
			if err := pl.discard(); err != nil {
				return err
			}
			t.executed.Store(true)
			t.cmd.Reset()
			t.cmd.Status = scsi.StatusBusy
			scsiDone(&t.cmd)
			return nil
		}
		t.pbuf, t.buf = b, b.Bytes()
	}
	if !t.write {
		if err := pl.discard(); err != nil {
			return err
		}
		t.cmd.Inline = c.inlineHint()
		c.execute(t)
		return nil
	}
	ok, err := pl.read(t.buf[:dsl])
	if err != nil {
		return err
	}
	if !ok {
		c.log.Warn("data digest error in immediate data", zap.Uint32("itt", t.itt))
		c.reject(&h.BHS, rejectDataDigest)
		t.corrupt = true
	}
	t.received = dsl
	t.unsolEnd = dsl
	if flags&cmdFinal == 0 {
		t.unsolEnd = min(p.FirstBurstLength, edtl)
	}
	t.nextOffset = t.unsolEnd
	t.cmd.Inline = c.inlineHint()
	c.progress(t)
	return nil
}

// inlineHint says whether a command the reader is about to execute may
// run to completion on the reader (scsi.Command.Inline): it is the only
// command of the session that is not answered yet (others may still have
// their responses on the way out) and no further request is received
// already, so the reader has nothing else to do until it completes, and
// then sends the response itself (endBurst) instead of waking the writer.
// It must be asked once the command's PDU has been read whole.
func (c *conn) inlineHint() bool {
	s := c.sess
	return s.stats.inFlight.Load()-s.answered.Load() == 1 && !c.tr.Buffered()
}

// extendedCDB copies the bytes of an Extended CDB AHS (type 1) into dst.
func extendedCDB(ahs []byte, dst []byte) int {
	for len(ahs) >= 4 {
		l := int(binary.BigEndian.Uint16(ahs))
		typ := ahs[2]
		total := (l + 3 + 3) &^ 3
		if total > len(ahs) {
			return 0
		}
		if typ == 1 && l > 1 {
			return copy(dst, ahs[4:3+l])
		}
		ahs = ahs[total:]
	}
	return 0
}

// progress executes a write once its data is complete, or asks for more.
func (c *conn) progress(t *task) {
	if t.aborted.Load() {
		// Ask for nothing more; end once the data already asked for is in.
		if len(t.r2ts) == 0 && t.received >= t.unsolEnd {
			c.endAborted(t)
		}
		return
	}
	if t.received >= t.edtl {
		c.execute(t)
		return
	}
	if c.mover != nil {
		// RDMA: once the unsolicited data is in, read the rest at once.
		if t.received == t.unsolEnd && t.nextOffset < t.edtl {
			t.nextOffset = t.edtl
			c.sess.mu.Lock()
			t.fetching = true
			c.sess.mu.Unlock()
			c.mover.GetData(t.itt, t.writeBuf, t.buf[t.unsolEnd:t.edtl], t)
		}
		return
	}
	p := &c.sess.params
	for len(t.r2ts) < int(p.MaxOutstandingR2T) && t.nextOffset < t.edtl {
		r := r2tRange{sn: t.r2tSN, offset: t.nextOffset, length: min(p.MaxBurstLength, t.edtl-t.nextOffset)}
		r.ttt = c.nextTTT()
		t.r2tSN++
		t.nextOffset += r.length
		t.r2ts = append(t.r2ts, r)
		c.enqueue(outItem{kind: outR2T, task: t, r2t: r})
	}
}

// nextTTT returns a fresh target transfer tag (reader-owned counter).
func (c *conn) nextTTT() uint32 {
	c.tttSeq++
	if c.tttSeq == NoTag {
		c.tttSeq = 1
	}
	return c.tttSeq
}

// execute hands a task with all its data to the SCSI layer, once the
// session's rate limiters (if any) let it.
func (c *conn) execute(t *task) {
	if t.aborted.Load() {
		c.endAborted(t)
		return
	}
	t.executed.Store(true)
	if t.corrupt {
		c.checkCondition(t, 0x0b, 0x47, 0x05) // ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR
		return
	}
	if q := c.sess.qos.Load(); q != nil {
		inline := t.cmd.Inline
		t.cmd.Inline = false // qosRelease may run it, on another goroutine
		if !q.throttle(c.sess, t) {
			return // it waits; qosRelease runs it
		}
		t.cmd.Inline = inline
	}
	c.run(t)
}

// run hands a task to the SCSI layer.
func (c *conn) run(t *task) {
	t.cmd.Reset()
	t.cmd.DataOut, t.cmd.DataIn = nil, nil
	if t.write {
		t.cmd.DataOut = t.buf[:t.received]
	} else if t.read {
		t.cmd.DataIn = t.buf
	}
	c.sess.target.SCSI.Execute(&t.cmd)
}

// handleDataOut takes one Data-Out PDU of unsolicited or solicited data.
func (c *conn) handleDataOut(h *Header, pl *payload) error {
	s := c.sess
	s.mu.Lock()
	t := s.tasks[h.ITT()]
	s.mu.Unlock()
	if t == nil || !t.write || t.executed.Load() {
		c.log.Info("Data-Out for no task waiting for data: ignored", zap.Uint32("itt", h.ITT()))
		return pl.discard()
	}
	n := uint32(h.DataLen())
	off, sn, ttt := h.U32(offOffset), h.U32(offDataSN), h.U32(offTTT)
	var r *r2tRange
	ri := -1
	var expOff, end uint32
	var expSN *uint32
	if ttt == NoTag {
		expOff, end, expSN = t.received, t.unsolEnd, &t.unsolDataSN
		if len(t.r2ts) > 0 || t.r2tSN > 0 {
			expOff = min(t.received, t.unsolEnd) // solicited data may have come first
		}
	} else {
		for i := range t.r2ts {
			if t.r2ts[i].ttt == ttt {
				r, ri = &t.r2ts[i], i
			}
		}
		if r == nil {
			c.log.Warn("Data-Out with an unknown target transfer tag: rejected",
				zap.Uint32("itt", t.itt), zap.Uint32("ttt", ttt))
			return c.rejectPDU(h, pl, rejectInvalidField)
		}
		expOff, end, expSN = r.offset+r.received, r.offset+r.length, &r.dataSN
	}
	if sn != *expSN || off != expOff || off+n > end || n == 0 && !h.Final() {
		// ErrorRecoveryLevel 0 cannot ask for the data again: reject the
		// PDU and end the command, keeping the connection usable.
		c.log.Warn("Data-Out out of sequence: PDU rejected, command ended", zap.Uint32("itt", t.itt),
			zap.Uint32("datasn", sn), zap.Uint32("expected_datasn", *expSN),
			zap.Uint32("offset", off), zap.Uint32("expected_offset", expOff), zap.Uint32("length", n))
		if err := c.rejectPDU(h, pl, rejectProtocol); err != nil {
			return err
		}
		t.executed.Store(true)
		ascq := byte(0x00) // DATA PHASE ERROR
		if off != expOff || off+n > end {
			ascq = 0x05 // DATA OFFSET ERROR
		}
		c.checkCondition(t, 0x0b, 0x4b, ascq)
		return nil
	}
	ok, err := pl.read(t.buf[off : off+n])
	if err != nil {
		return err
	}
	if !ok {
		c.log.Warn("data digest error in Data-Out", zap.Uint32("itt", t.itt))
		c.reject(&h.BHS, rejectDataDigest)
		t.corrupt = true
	}
	*expSN++
	t.received += n
	if r != nil {
		r.received += n
		if r.received == r.length {
			t.r2ts = append(t.r2ts[:ri], t.r2ts[ri+1:]...)
		}
	}
	t.cmd.Inline = c.inlineHint()
	c.progress(t)
	return nil
}

// DataDone completes a write whose solicited data a DataMover fetched, or
// releases a read whose data a DataMover has finished sending.
func (t *task) DataDone(err error) {
	if t.putting {
		t.c.taskSent(t, monoNow())
		return
	}
	t.c.sess.mu.Lock()
	t.fetching = false
	t.c.sess.mu.Unlock()
	if err != nil {
		t.c.log.Warn("fetching write data failed", zap.Uint32("itt", t.itt), zap.Error(err))
		t.executed.Store(true)
		t.c.checkCondition(t, 0x0b, 0x4b, 0x00) // ABORTED COMMAND, DATA PHASE ERROR
		return
	}
	t.received = t.edtl
	t.cmd.Inline = false // this is the data mover's goroutine, not the reader
	t.c.execute(t)
}

// targetLUN decodes a LUN field and maps it to the target's numbering;
// LUNs the initiator may not see become noLUN.
func (s *Session) targetLUN(field uint64) uint64 {
	lun, ok := DecodeLUN(field)
	if ok {
		lun, ok = s.view.target(lun)
	}
	if !ok {
		return noLUN
	}
	return lun
}
