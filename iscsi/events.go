package iscsi

import (
	"sync"

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
				var wg sync.WaitGroup // nobody waits: the PR command completes at once
				ss.abortTasks(&wg, func(x *task) bool { return x.cmd.LUN == lun }, false)
			}
		}
	})
}

// announce sends a SCSI asynchronous event (RFC 7143 11.9, AsyncEvent 0)
// carrying the unit attention's sense data to each session it concerns,
// so initiators rescan without waiting for their next command. iSER
// connections are skipped: an unexpected PDU there would use up a receive
// the initiator posted for a response.
func (s *Server) announce(t *Target, ev scsi.Event) {
	for _, ss := range s.sessionsOf(t) {
		c := ss.conn
		if ss.nexus == nil || c == nil || c.mover != nil || !contains(ev.Nexuses, ss.nexus.ID) {
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
		c.send(&b, data, true)
		c.log.Info("asynchronous event sent", zap.Uint64("lun", lun), zap.Int("kind", int(ev.Kind)))
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
