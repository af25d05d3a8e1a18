package iscsi

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/qos"
)

// Task management functions and responses (RFC 7143 11.5, 11.6).
const (
	tmfAbortTask       = 1
	tmfAbortTaskSet    = 2
	tmfClearACA        = 3
	tmfClearTaskSet    = 4
	tmfLUReset         = 5
	tmfTargetWarmReset = 6
	tmfTargetColdReset = 7
	tmfTaskReassign    = 8

	tmfComplete       = 0
	tmfNoTask         = 1
	tmfNoLUN          = 2
	tmfNotSupported   = 5
	tmfRejected       = 255
	tmfReassignNotSup = 4
)

var tmfNames = map[byte]string{
	tmfAbortTask: "ABORT TASK", tmfAbortTaskSet: "ABORT TASK SET", tmfClearACA: "CLEAR ACA",
	tmfClearTaskSet: "CLEAR TASK SET", tmfLUReset: "LOGICAL UNIT RESET", tmfTargetWarmReset: "TARGET WARM RESET",
	tmfTargetColdReset: "TARGET COLD RESET", tmfTaskReassign: "TASK REASSIGN",
}

// handleTMF runs a task management function. Aborted tasks finish before
// the response is sent; the reader goes on meanwhile.
func (c *conn) handleTMF(h *Header, pl *payload) error {
	if err := pl.discard(); err != nil {
		return err
	}
	s := c.sess
	fn := h.Flags() & 0x7f
	lunField := h.LUN()
	lun := c.sess.targetLUN(lunField)
	log := c.log.With(zap.String("function", tmfNames[fn]), zap.Uint32("itt", h.ITT()))
	itt := h.ITT() // h is reused by the reader before an asynchronous respond runs
	respond := func(code byte) {
		var b BHS
		b[0] = byte(OpTaskResp)
		b[1] = 0x80
		b[2] = code
		b.SetU32(offITT, itt)
		c.send(&b, nil, true)
	}
	if s.discovery {
		respond(tmfRejected)
		return nil
	}
	scsiT := s.target.SCSI
	hasLUN := lun != noLUN && scsiT.HasLUN(lun)
	var wg sync.WaitGroup
	var after func() error // the SCSI side, once the tasks ended
	var owing []*Session   // other sessions whose aborted tasks still wait for their initiator's data
	switch fn {
	case tmfAbortTask:
		ref := h.U32(offTTT)
		s.mu.Lock()
		t := s.tasks[ref]
		s.mu.Unlock()
		if t == nil {
			refSN := h.U32(offMaxCmdSN)
			// A command not yet received within the window counts as
			// received and aborted (RFC 7143 11.5.1).
			if snLess(refSN, h.U32(offCmdSN)) && !snLess(refSN, s.expCmdSN.Load()) {
				s.mu.Lock()
				if s.held == nil {
					s.held = make(map[uint32]*heldPDU)
				}
				s.held[refSN] = &heldPDU{aborted: true} // its CmdSN counts as received
				s.mu.Unlock()
				respond(tmfComplete)
				return nil
			}
			respond(tmfNoTask)
			return nil
		}
		if t.lunField != lunField {
			respond(tmfNoTask)
			return nil
		}
		s.abortTasks(&wg, func(x *task) bool { return x == t }, true)
	case tmfAbortTaskSet, tmfClearTaskSet:
		if !hasLUN {
			respond(tmfNoLUN)
			return nil
		}
		s.abortTasks(&wg, func(x *task) bool { return x.cmd.LUN == lun && x.itt != h.ITT() }, true)
		if fn == tmfClearTaskSet {
			for _, o := range c.srv.sessionsOf(s.target) {
				if o != s && o.conn != nil && o.abortTasks(&wg, func(x *task) bool { return x.cmd.LUN == lun }, false) {
					owing = append(owing, o)
				}
			}
			after = func() error { scsiT.ClearTaskSet(s.nexus, lun); return nil }
		}
	case tmfLUReset:
		if !hasLUN {
			respond(tmfNoLUN)
			return nil
		}
		for _, o := range c.srv.sessionsOf(s.target) {
			if o.conn != nil && o.abortTasks(&wg, func(x *task) bool { return x.cmd.LUN == lun }, o == s) {
				owing = append(owing, o)
			}
		}
		after = func() error { return scsiT.LogicalUnitReset(s.nexus, lun) }
	case tmfTargetWarmReset, tmfTargetColdReset:
		for _, o := range c.srv.sessionsOf(s.target) {
			if o.conn != nil && o.abortTasks(&wg, func(*task) bool { return true }, o == s) {
				owing = append(owing, o)
			}
		}
		cold := fn == tmfTargetColdReset
		after = func() error { return scsiT.TargetReset(s.nexus, cold) }
	case tmfClearACA:
		respond(tmfComplete) // NACA is not supported, so there is never an ACA
		return nil
	case tmfTaskReassign:
		respond(tmfReassignNotSup)
		return nil
	default:
		log.Warn("unknown task management function")
		respond(tmfRejected)
		return nil
	}
	log.Info("task management function")
	go func() {
		c.srv.waitAborted(&wg, owing, log)
		if after != nil {
			if err := after(); err != nil {
				log.Warn("task management function", zap.Error(err))
			}
		}
		respond(tmfComplete)
		if fn == tmfTargetColdReset {
			for _, o := range c.srv.sessionsOf(s.target) {
				if o.conn != nil && o.conn != c {
					o.conn.close()
				}
			}
			c.enqueue(outItem{kind: outClose})
		}
	}()
	return nil
}

// abortTasks marks the matching tasks of session s aborted; wg counts them
// until they have ended. Tasks in the SCSI layer end when it completes them;
// it is told of the abort, so that one waiting for a long operation (a
// SANITIZE) ends now. Tasks waiting for their rate limiters end at once.
// Tasks still collecting data end at once when the caller is s's own reader
// (reap), even those another session's task management aborted before;
// otherwise only that reader may end them, which it does when their
// outstanding data has arrived (the initiator still sends it). owing
// reports such tasks: see waitAborted.
func (s *Session) abortTasks(wg *sync.WaitGroup, match func(*task) bool, reap bool) (owing bool) {
	var idle []*task
	s.mu.Lock()
	for _, t := range s.tasks {
		if !match(t) {
			continue
		}
		if !t.aborted.Load() {
			t.aborted.Store(true)
			if t.abortWG == nil {
				t.abortWG = wg
				wg.Add(1)
			}
		}
		switch {
		case t.executed.Load():
			if qos.Remove(&t.qe) {
				idle = append(idle, t) // it was waiting for its rate limiters: it ends now
			} else {
				s.target.SCSI.Abort(&t.cmd) // never completes it synchronously: s.mu may be held
			}
		case t.fetching:
		case reap:
			idle = append(idle, t)
		default:
			owing = true
		}
	}
	s.mu.Unlock()
	for _, t := range idle {
		t.c.endAborted(t)
	}
	return owing
}

// waitAborted waits until the tasks a task management function aborted
// have ended. When some still wait for data from their initiator after
// PeerLimits.AbortDataTimeout (it never sends the Data-Out it owes), their
// connections are closed: their teardown ends the tasks.
func (srv *Server) waitAborted(wg *sync.WaitGroup, owing []*Session, log *zap.Logger) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if len(owing) == 0 {
		<-done
		return
	}
	select {
	case <-done:
		return
	case <-time.After(srv.opts.AbortDataTimeout):
	}
	for _, o := range owing {
		if o.owesData(wg) {
			log.Warn("initiator did not send the data of a task that task management aborted: closing its connection",
				append(sessionFields(o), zap.Duration("waited", srv.opts.AbortDataTimeout))...)
			o.Close()
		}
	}
	<-done
}

// owesData reports whether a task that wg counts still waits for Data-Out.
func (s *Session) owesData(wg *sync.WaitGroup) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tasks {
		if t.abortWG == wg && !t.executed.Load() && !t.fetching {
			return true
		}
	}
	return false
}

// endAborted ends an aborted task that never reached the SCSI layer; it is
// released without a response. Only the task's reader calls it.
func (c *conn) endAborted(t *task) {
	t.executed.Store(true)
	c.enqueue(outItem{kind: outResponse, task: t})
}

// waitTasks waits until the matching tasks of this connection have ended;
// tasks still collecting data are aborted. Only the reader calls it.
func (c *conn) waitTasks(match func(*task) bool) {
	c.endBurst() // what the writer still holds back may be what we wait for
	var wg sync.WaitGroup
	s := c.sess
	var idle []*task
	s.mu.Lock()
	for _, t := range s.tasks {
		if !match(t) || t.abortWG != nil {
			continue
		}
		if !t.executed.Load() && !t.fetching {
			idle = append(idle, t)
			t.aborted.Store(true)
		}
		t.abortWG = &wg
		wg.Add(1)
	}
	s.mu.Unlock()
	for _, t := range idle {
		c.endAborted(t)
	}
	wg.Wait()
}

// teardown ends the connection's session: every task ends, the session is
// forgotten.
func (c *conn) teardown() {
	s := c.sess
	if s == nil {
		return
	}
	var wg sync.WaitGroup
	s.abortTasks(&wg, func(*task) bool { return true }, true) // the reader has stopped: this goroutine owns the tasks
	c.close()                                                 // the writer stops; responses still queued are released
	wg.Wait()
	c.srv.unregister(s)
}
