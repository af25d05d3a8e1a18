package iscsi

import (
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// watchTarget connects a target's SCSI events to its sessions: unit
// attentions are also announced as asynchronous messages, and PREEMPT AND
// ABORT aborts the preempted nexus's tasks.
func (s *Server) watchTarget(t *Target) {
	t.SCSI.OnEvent(func(ev scsi.Event) { s.announce(t, ev) })
	t.SCSI.OnAbort(func(n *scsi.Nexus, lun uint64) {
		for _, ss := range s.sessionsOf(t) {
			if ss.nexus != nil && ss.nexus.ID == n.ID && ss.conn != nil {
				// Nobody waits for them here: the SCSI layer refuses their
				// writes not yet issued and waits for those in the backing
				// store before the PR OUT completes.
				var wg sync.WaitGroup
				ss.abortTasks(&wg, func(x *task) bool { return x.cmd.LUN == lun }, false)
			}
		}
	})
}

// maxAsyncUnacked bounds the Asynchronous Messages (RFC 7143 11.9) that a
// connection has queued or sent and the initiator has not acknowledged
// yet, that is, whose StatSN its ExpStatSN has not passed. Over iSER each
// takes one of the few receive buffers an initiator keeps for PDUs it did
// not ask for (the Linux iSER drivers count on two asynchronous events);
// one more could find none posted and break the connection. A message
// beyond the bound is dropped and logged: the unit attention it announced
// still comes with the initiator's next command, and a logout request
// still has its deadline.
const maxAsyncUnacked = 2

// asyncState tracks a connection's unacknowledged Asynchronous Messages.
type asyncState struct {
	mu      sync.Mutex
	sn      [maxAsyncUnacked]uint32 // StatSNs of the stamped ones, oldest first
	stamped int                     // how many of sn are set
	out     atomic.Int32            // queued or sent, not yet acknowledged
}

// sendAsync queues an Asynchronous Message unless maxAsyncUnacked are
// outstanding already; it reports whether it did.
func (c *conn) sendAsync(b *BHS, data []byte) bool {
	a := &c.async
	a.mu.Lock()
	full := a.out.Load() >= maxAsyncUnacked
	if !full {
		a.out.Add(1)
	}
	a.mu.Unlock()
	if full {
		c.log.Warn("asynchronous message dropped: the initiator has not acknowledged the ones before",
			zap.Int("unacknowledged", maxAsyncUnacked), zap.Uint8("event", b[36]))
		return false
	}
	c.send(b, data, true)
	return true
}

// asyncStamped records the StatSN the writer gave an Asynchronous Message.
func (c *conn) asyncStamped(sn uint32) {
	a := &c.async
	a.mu.Lock()
	if a.stamped < len(a.sn) { // always: each one was counted in out first
		a.sn[a.stamped] = sn
		a.stamped++
	}
	a.mu.Unlock()
}

// asyncAcked forgets the Asynchronous Messages that the initiator's
// ExpStatSN exp acknowledges. The reader calls it for every PDU.
func (c *conn) asyncAcked(exp uint32) {
	a := &c.async
	if a.out.Load() == 0 {
		return
	}
	a.mu.Lock()
	n := 0
	for n < a.stamped && snLess(a.sn[n], exp) {
		n++
	}
	if n > 0 {
		a.stamped = copy(a.sn[:], a.sn[n:a.stamped])
		a.out.Add(-int32(n))
	}
	a.mu.Unlock()
}

// announce sends a SCSI asynchronous event (RFC 7143 11.9, AsyncEvent 0)
// carrying the unit attention's sense data to each session it concerns,
// so initiators rescan without waiting for their next command; at most
// maxAsyncUnacked per connection are outstanding.
func (s *Server) announce(t *Target, ev scsi.Event) {
	for _, ss := range s.sessionsOf(t) {
		c := ss.conn
		if ss.nexus == nil || c == nil || !contains(ev.Nexuses, ss.nexus.ID) {
			continue
		}
		lun, visible := ss.view.initiatorLUN(ev.LUN)
		if !visible {
			continue
		}
		var b BHS
		b[0] = byte(OpAsync)
		b[1] = 0x80
		b.SetLUN(EncodeLUN(lun))
		b.SetU32(offITT, NoTag)
		data := make([]byte, 2+len(ev.Sense))
		data[0], data[1] = byte(len(ev.Sense)>>8), byte(len(ev.Sense))
		copy(data[2:], ev.Sense)
		if c.sendAsync(&b, data) {
			c.log.Info("asynchronous event sent", zap.Uint64("lun", lun), zap.Int("kind", int(ev.Kind)))
		}
	}
}

func contains(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
