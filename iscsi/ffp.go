package iscsi

import (
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// Reject reasons (RFC 7143 11.17.1).
const (
	rejectDataDigest    = 0x02
	rejectSNACK         = 0x03
	rejectProtocol      = 0x04
	rejectNotSupported  = 0x05
	rejectImmediate     = 0x06
	rejectTaskInProg    = 0x07
	rejectInvalidField  = 0x09
	rejectOutOfResource = 0x0a
	rejectWaitLogout    = 0x0c
)

// payload is the data segment of a request: still on the wire, or read
// ahead (for a command held back by CmdSN ordering).
type payload struct {
	c   *conn
	n   int
	pre []byte // read-ahead data, or nil when it is on the wire
}

// read fills dst (len n) with the data; ok is false on a data digest error.
func (p *payload) read(dst []byte) (ok bool, err error) {
	if p.pre != nil {
		copy(dst, p.pre)
		return true, nil
	}
	return p.c.tr.ReadData(dst, p.n)
}

// bytes returns the data in a new buffer.
func (p *payload) bytes() ([]byte, bool, error) {
	if p.pre != nil || p.n == 0 {
		return p.pre, true, nil
	}
	b := make([]byte, p.n)
	ok, err := p.read(b)
	return b, ok, err
}

// discard consumes data nobody wants.
func (p *payload) discard() error {
	if p.pre != nil {
		return nil
	}
	_, err := p.c.tr.ReadData(nil, p.n)
	return err
}

// maxBurstPDUs bounds how many PDUs the reader takes in before it sends
// the responses they produced, however fast the initiator keeps sending.
const maxBurstPDUs = 64

// readLoop handles requests in full feature phase until the connection ends.
func (c *conn) readLoop() error {
	var h Header
	inBurst, burst := false, 0
	defer func() {
		if inBurst {
			c.endBurst()
		}
	}()
	for {
		if inBurst && (burst >= maxBurstPDUs || !c.tr.Buffered()) {
			c.endBurst()
			inBurst = false
		}
		if err := c.tr.ReadHeader(&h); err != nil {
			if c.draining.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return c.drain()
			}
			if errors.Is(err, errHeaderDigest) {
				c.log.Warn("header digest error: closing connection (ErrorRecoveryLevel 0)")
			}
			return err
		}
		if !inBurst {
			c.beginBurst()
			inBurst, burst = true, 0
		}
		burst++
		c.received.Add(1)
		c.asyncAcked(h.U32(offExpStatSN))
		if err := c.dispatch(&h); err != nil {
			return err
		}
		select {
		case <-c.closing:
			return nil
		default:
		}
	}
}

// drain waits for in-flight commands during shutdown, sends their
// responses and half-closes; then it discards what the initiator still
// sends until it closes too (at most 2 s), so that closing does not reset
// the connection under responses the initiator has not read yet.
func (c *conn) drain() error {
	c.waitTasks(func(*task) bool { return true })
	c.enqueue(outItem{kind: outShutdown})
	c.discardUntilClosed()
	return nil
}

// discardUntilClosed reads and drops what the initiator still sends until
// it closes its side (at most 2 s), so that closing ours does not reset the
// connection under data it has not read.
func (c *conn) discardUntilClosed() {
	c.tr.SetReadDeadline(time.Now().Add(2 * time.Second))
	var h Header
	for c.tr.ReadHeader(&h) == nil {
		if _, err := c.tr.ReadData(nil, h.DataLen()); err != nil {
			return
		}
	}
}

// dispatch handles one request whose header has been read.
func (c *conn) dispatch(h *Header) error {
	op := h.Opcode()
	pl := payload{c: c, n: h.DataLen()}
	if pl.n > c.maxRecvData {
		// Nothing of it is read: its sender does not follow the
		// negotiation, and its data may be up to 16 MiB.
		c.log.Warn("PDU data segment longer than the target's MaxRecvDataSegmentLength: rejected, closing connection",
			zap.Stringer("opcode", op), zap.Int("length", pl.n), zap.Int("max_recv_data_segment_length", c.maxRecvData))
		c.reject(&h.BHS, rejectProtocol)
		c.enqueue(outItem{kind: outClose})
		return nil
	}
	if err := c.waitControl(); err != nil {
		return err
	}
	switch op {
	case OpDataOut:
		return c.handleDataOut(h, &pl)
	case OpSCSICmd, OpTaskMgmt, OpTextReq, OpLogoutReq, OpNOPOut:
	case OpSNACK:
		c.log.Warn("SNACK received but ErrorRecoveryLevel is 0: rejected")
		return c.rejectPDU(h, &pl, rejectNotSupported)
	case OpLoginReq:
		c.log.Warn("Login Request in full feature phase: rejected")
		return c.rejectPDU(h, &pl, rejectProtocol)
	default:
		c.log.Warn("unknown opcode: rejected", zap.Stringer("opcode", op))
		return c.rejectPDU(h, &pl, rejectNotSupported)
	}
	s := c.sess
	if h.Immediate() || (op == OpNOPOut && h.ITT() == NoTag) {
		return c.handleRequest(h, &pl)
	}
	sn, exp := h.U32(offCmdSN), s.expCmdSN.Load()
	s.mu.Lock()
	tomb := s.held[sn]
	s.mu.Unlock()
	if tomb != nil && tomb.aborted { // ABORT TASK ended this command before it came
		if err := pl.discard(); err != nil {
			return err
		}
		if sn != exp {
			return nil // its tombstone moves the window on when the gap fills
		}
		return c.runHeld()
	}
	if snLess(s.maxCmdSN.Load(), sn) || snLess(sn, exp) {
		return c.ignore(h, &pl, exp)
	}
	if sn != exp {
		return c.hold(h, &pl)
	}
	s.expCmdSN.Store(exp + 1)
	if err := c.handleRequest(h, &pl); err != nil {
		return err
	}
	return c.runHeld()
}

// ignore drops a command outside the CmdSN window, as RFC 7143 4.2.2.1
// requires; the log line is kept for the 1st, 2nd, 4th, 8th... of a
// connection, so a flood does not flood the log.
func (c *conn) ignore(h *Header, pl *payload, exp uint32) error {
	c.ignored++
	if c.ignored&(c.ignored-1) == 0 {
		c.log.Warn("command outside the CmdSN window ignored", zap.Uint32("cmdsn", h.U32(offCmdSN)),
			zap.Uint32("expcmdsn", exp), zap.Uint32("maxcmdsn", c.sess.maxCmdSN.Load()),
			zap.Stringer("opcode", h.Opcode()), zap.Uint64("ignored_on_connection", c.ignored))
	}
	return pl.discard()
}

// hold keeps a command that came ahead of a CmdSN gap until the gap fills.
// Beyond PeerLimits.HeldBytes of held data it is dropped instead, as if it
// had been lost: the initiator's timeout and ABORT TASK end it.
func (c *conn) hold(h *Header, pl *payload) error {
	s := c.sess
	s.mu.Lock()
	full := s.heldBytes+pl.n > c.srv.opts.HeldBytes
	if !full {
		s.heldBytes += pl.n
	}
	s.mu.Unlock()
	if full {
		c.log.Warn("command ahead of a CmdSN gap dropped: the session holds too much data already",
			zap.Uint32("cmdsn", h.U32(offCmdSN)), zap.Uint32("expcmdsn", s.expCmdSN.Load()),
			zap.Int("length", pl.n), zap.Int("held_bytes_limit", c.srv.opts.HeldBytes))
		return pl.discard()
	}
	data, _, err := pl.bytes()
	if err != nil {
		return err
	}
	hp := &heldPDU{hdr: *h, ahs: append([]byte(nil), h.AHS...), data: data}
	s.mu.Lock()
	if s.held == nil {
		s.held = make(map[uint32]*heldPDU)
	}
	s.held[h.U32(offCmdSN)] = hp
	s.mu.Unlock()
	return nil
}

// runHeld runs the held commands that are next in CmdSN order. A
// tombstone left by ABORT TASK only moves the window on.
func (c *conn) runHeld() error {
	s := c.sess
	for {
		exp := s.expCmdSN.Load()
		s.mu.Lock()
		hp := s.held[exp]
		delete(s.held, exp)
		if hp != nil {
			s.heldBytes -= len(hp.data)
		}
		s.mu.Unlock()
		if hp == nil {
			return nil
		}
		s.expCmdSN.Store(exp + 1)
		if hp.aborted {
			s.openWindow()
			continue
		}
		hp.hdr.AHS = hp.ahs
		if err := c.handleRequest(&hp.hdr, &payload{c: c, n: len(hp.data), pre: hp.data}); err != nil {
			return err
		}
	}
}

// snLess compares sequence numbers in serial number arithmetic (RFC 1982).
func snLess(a, b uint32) bool { return a != b && int32(b-a) > 0 }

// handleRequest handles a request in CmdSN order. A non-immediate request
// that completes here opens the CmdSN window by one.
func (c *conn) handleRequest(h *Header, pl *payload) error {
	op := h.Opcode()
	if op == OpSCSICmd {
		return c.handleCommand(h, pl) // the window opens when the task ends
	}
	if !h.Immediate() && !(op == OpNOPOut && h.ITT() == NoTag) {
		defer c.sess.openWindow()
	}
	switch op {
	case OpNOPOut:
		return c.handleNOPOut(h, pl)
	case OpTaskMgmt:
		return c.handleTMF(h, pl)
	case OpTextReq:
		return c.handleText(h, pl)
	case OpLogoutReq:
		return c.handleLogout(h, pl)
	}
	return fmt.Errorf("internal: unexpected %v in handleRequest", op)
}

// rejectPDU discards a request's data and answers it with a Reject.
func (c *conn) rejectPDU(h *Header, pl *payload, reason byte) error {
	if err := pl.discard(); err != nil {
		return err
	}
	c.reject(&h.BHS, reason)
	return nil
}

// reject sends a Reject PDU carrying the offending header.
func (c *conn) reject(bad *BHS, reason byte) {
	var b BHS
	b[0] = byte(OpReject)
	b[1] = 0x80
	b[2] = reason
	b.SetU32(offITT, NoTag)
	data := make([]byte, BHSLen)
	copy(data, bad[:])
	c.send(&b, data, true)
}

// readAll reads a request's data segment; ok is false when its digest
// failed, in which case the request has been rejected.
func (c *conn) readAll(h *Header, pl *payload) (data []byte, ok bool, err error) {
	data, ok, err = pl.bytes()
	if err == nil && !ok {
		c.reject(&h.BHS, rejectDataDigest)
	}
	return data, ok, err
}

// handleNOPOut answers pings and takes answers to ours.
func (c *conn) handleNOPOut(h *Header, pl *payload) error {
	data, ok, err := c.readAll(h, pl)
	if err != nil || !ok {
		return err
	}
	if h.ITT() == NoTag { // an answer to our NOP-In, or a one-way ping
		if ttt := h.U32(offTTT); ttt != NoTag && ttt == c.nopTTT.Load() {
			c.nopPending.Store(0)
		}
		return nil
	}
	var b BHS
	b[0] = byte(OpNOPIn)
	b[1] = 0x80
	b.SetLUN(h.LUN())
	b.SetU32(offITT, h.ITT())
	b.SetU32(offTTT, NoTag)
	c.send(&b, data[:min(len(data), int(c.params.MaxXmitDataSegmentLength))], true)
	return nil
}

// sendPing sends a NOP-In that asks the initiator for a NOP-Out.
func (c *conn) sendPing() {
	ttt := c.nopTTT.Add(1)
	if ttt == NoTag {
		ttt = c.nopTTT.Add(1)
	}
	c.nopPending.Store(1)
	var b BHS
	b[0] = byte(OpNOPIn)
	b[1] = 0x80
	b.SetU32(offITT, NoTag)
	b.SetU32(offTTT, ttt)
	c.send(&b, nil, false)
}

// checkCondition completes t at once with CHECK CONDITION and fixed sense.
func (c *conn) checkCondition(t *task, key, asc, ascq byte) {
	t.executed.Store(true) // answered: no Data-Out or abort may answer it again
	t.cmd.Reset()
	t.cmd.Status = scsi.StatusCheckCondition
	s := t.cmd.Sense[:18]
	clear(s)
	s[0], s[2], s[7], s[12], s[13] = 0x70, key, 10, asc, ascq
	t.cmd.SenseLen = 18
	scsiDone(&t.cmd)
}
