package iscsi

import (
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/qos"
	"github.com/iserd/iserd/scsi"
)

// Session is an iSCSI session: one initiator port (initiator name + ISID)
// logged in to one target (or to discovery).
type Session struct {
	srv       *Server
	target    *Target // nil for discovery
	isid      [6]byte
	tsih      uint16
	params    Params
	nexus     *scsi.Nexus
	discovery bool
	view      *lunView // the initiator's LUN numbering, nil when it is the target's
	loginAt   time.Time
	stats     sessionCounters
	// answered counts the tasks whose response is queued (scsiDone) and
	// that have not left yet (taskSent): stats.inFlight less this is what
	// the SCSI layer still executes (see conn.inlineHint).
	answered atomic.Int64

	// Command numbering (RFC 7143 4.2.2.1). expCmdSN and maxCmdSN are read
	// by the writer when it stamps outgoing PDUs.
	expCmdSN atomic.Uint32
	maxCmdSN atomic.Uint32
	// slots is the CmdSN window granted: commands outstanding plus those
	// the initiator may still send (see openWindow).
	slots atomic.Uint32

	// Rate limits: the chains its commands pass (nil: none), its flows by
	// limiter (under the target's qos lock), and the average size of its
	// limited commands, which its window is sized on.
	qos      atomic.Pointer[sessionQoS]
	qosFlows map[*qos.Limiter]*qos.Flow
	avgBytes atomic.Int64

	mu        sync.Mutex
	held      map[uint32]*heldPDU // commands that arrived ahead of ExpCmdSN
	heldBytes int                 // their data, bounded by PeerLimits.HeldBytes
	tasks     map[uint32]*task    // by ITT
	conn      *conn               // the session's one connection
}

// heldPDU is a non-immediate command received ahead of a gap in CmdSN, or
// a tombstone for a CmdSN whose command ABORT TASK ended before it ran.
type heldPDU struct {
	hdr     Header
	ahs     []byte
	data    []byte
	aborted bool
}

// InitiatorName is the name the initiator logged in with.
func (s *Session) InitiatorName() string { return s.params.InitiatorName }

// TargetName is the target's name, empty for discovery sessions.
func (s *Session) TargetName() string { return s.params.TargetName }

// ISID is the initiator session identifier, as hex.
func (s *Session) ISID() string { return hex.EncodeToString(s.isid[:]) }

// TSIH is the target session identifying handle.
func (s *Session) TSIH() uint16 { return s.tsih }

// Params returns the negotiated parameters.
func (s *Session) Params() Params { return s.params }

func (s *Session) String() string {
	return fmt.Sprintf("%s,i,0x%s tsih %d", s.params.InitiatorName, s.ISID(), s.tsih)
}

// sessionsSame reports whether a new leading login by the same initiator
// port to the same target reinstates s (RFC 7143 6.3.5).
func (s *Session) sameNexus(initiator string, isid [6]byte, t *Target) bool {
	return !s.discovery && s.params.InitiatorName == initiator && s.isid == isid && s.target == t
}

// register adds a new session, replacing (reinstating) an older one of the
// same initiator port and target, whose connection is closed and whose
// tasks are aborted.
func (srv *Server) register(s *Session) {
	srv.mu.Lock()
	var old []*Session
	if !s.discovery {
		for _, o := range srv.sessions {
			if o.sameNexus(s.params.InitiatorName, s.isid, s.target) {
				old = append(old, o)
				delete(srv.sessions, o.tsih)
			}
		}
	}
	for {
		srv.lastTSIH++
		if srv.lastTSIH == 0 {
			continue
		}
		if _, used := srv.sessions[srv.lastTSIH]; !used {
			break
		}
	}
	s.tsih = srv.lastTSIH
	srv.sessions[s.tsih] = s
	srv.mu.Unlock()
	for _, o := range old {
		srv.log.Info("session reinstated: closing the old one", sessionFields(o)...)
		if c := o.conn; c != nil {
			c.close()
			<-c.done
		}
	}
}

// unregister forgets s and its nexus.
func (srv *Server) unregister(s *Session) {
	srv.mu.Lock()
	if srv.sessions[s.tsih] == s {
		delete(srv.sessions, s.tsih)
	}
	srv.mu.Unlock()
	if s.target != nil && s.nexus != nil {
		s.target.detachQoS(s)
		s.target.SCSI.RemoveNexus(s.nexus)
	}
}

// sessionFields names a session in log lines.
func sessionFields(s *Session) []zap.Field {
	return []zap.Field{zap.String("initiator", s.params.InitiatorName), zap.String("isid", s.ISID()),
		zap.Uint16("tsih", s.tsih), zap.String("target", s.params.TargetName)}
}
