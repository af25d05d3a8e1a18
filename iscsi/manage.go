package iscsi

import (
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Limits bound what one target accepts; zero means no limit.
type Limits struct {
	// MaxSessions is the most sessions logged in to the target at once.
	MaxSessions int
	// MaxSessionsPerInitiator is the most sessions one initiator name may
	// hold to the target (one per ISID).
	MaxSessionsPerInitiator int
}

// SetLimits replaces the target's limits for logins after the call.
func (t *Target) SetLimits(l Limits) { t.limits.Store(&l) }

// checkLimits refuses a new session beyond the target's limits. A login
// that reinstates an existing session does not count against them.
func (s *Server) checkLimits(t *Target, initiator string, isid [6]byte) *LoginError {
	l := t.limits.Load()
	if l == nil || (l.MaxSessions == 0 && l.MaxSessionsPerInitiator == 0) {
		return nil
	}
	total, mine := 0, 0
	for _, ss := range s.sessionsOf(t) {
		if ss.sameNexus(initiator, isid, t) {
			return nil
		}
		total++
		if ss.params.InitiatorName == initiator {
			mine++
		}
	}
	if l.MaxSessions > 0 && total >= l.MaxSessions {
		return loginErr(LoginTooManyConnections, "target %s has its maximum of %d sessions", t.Name, l.MaxSessions)
	}
	if l.MaxSessionsPerInitiator > 0 && mine >= l.MaxSessionsPerInitiator {
		return loginErr(LoginTooManyConnections, "initiator already holds %d sessions to %s, the most allowed", mine, t.Name)
	}
	return nil
}

// Targets lists the targets by name.
func (s *Server) Targets() []*Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Target, 0, len(s.targets))
	for _, t := range s.targets {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Target returns the target with that name, or nil.
func (s *Server) Target(name string) *Target { return s.target(name) }

// RemoveTarget stops new logins to the target and closes its sessions.
func (s *Server) RemoveTarget(name string) (*Target, error) {
	s.mu.Lock()
	t := s.targets[name]
	delete(s.targets, name)
	s.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("no target named %s", name)
	}
	for _, ss := range s.sessionsOf(t) {
		ss.Close()
	}
	return t, nil
}

// Session returns the session with that TSIH, or nil.
func (s *Server) Session(tsih uint16) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[tsih]
}

// Close ends the session at once: its connection closes and its commands
// are aborted.
func (s *Session) Close() {
	if c := s.conn; c != nil {
		c.close()
	}
}

// RequestLogout asks the initiator to log out (an Asynchronous Message,
// RFC 7143 11.9.1; not sent while maxAsyncUnacked others are outstanding)
// and closes the session if it has not within wait.
func (s *Session) RequestLogout(wait time.Duration) {
	c := s.conn
	if c == nil {
		return
	}
	var b BHS
	b[0] = byte(OpAsync)
	b[1] = 0x80
	b.SetU32(offITT, NoTag)
	b[36] = 1 // AsyncEvent: the target requests logout
	b.SetU16(42, uint16(wait/time.Second))
	if c.sendAsync(&b, nil) {
		c.log.Info("asked the initiator to log out", zap.Duration("deadline", wait))
	}
	time.AfterFunc(wait, s.Close)
}

// SessionStats are a session's (or a LUN's) counters.
type SessionStats struct {
	Commands   uint64 // SCSI commands completed
	ReadBytes  uint64 // data sent to the initiator
	WriteBytes uint64 // data received from the initiator
	Errors     uint64 // commands that ended with a status other than GOOD
	InFlight   int64  // commands received and not yet answered
	// LatencyNanos is the sum of the completed commands' latencies.
	LatencyNanos uint64
	// LatencyBuckets counts completed commands by latency: bucket i holds
	// those under LatencyBounds[i]; the last one the rest.
	LatencyBuckets [len(LatencyBounds) + 1]uint64
}

// LatencyBounds are the upper bounds of the latency buckets.
var LatencyBounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second,
}

// sessionCounters are updated without locks as commands complete.
type sessionCounters struct {
	commands, readBytes, writeBytes, errors atomic.Uint64
	inFlight                                atomic.Int64
	latencyNanos                            atomic.Uint64
	latency                                 [len(LatencyBounds) + 1]atomic.Uint64
}

// record counts one finished command.
func (sc *sessionCounters) record(t *task, now monoTime) {
	sc.commands.Add(1)
	sc.inFlight.Add(-1)
	if t.read {
		sc.readBytes.Add(uint64(t.cmd.InLen))
	}
	if t.write {
		sc.writeBytes.Add(uint64(t.received))
	}
	if t.cmd.Status != 0 {
		sc.errors.Add(1)
	}
	d := time.Duration(now - t.start)
	sc.latencyNanos.Add(uint64(d))
	i := 0
	for i < len(LatencyBounds) && d >= LatencyBounds[i] {
		i++
	}
	sc.latency[i].Add(1)
}

// Stats returns the session's counters since login.
func (s *Session) Stats() SessionStats { return s.stats.snapshot() }

// LUNStats returns the counters of one of the target's LUNs since the
// process started, over all sessions.
func (t *Target) LUNStats(lun uint64) SessionStats {
	if sc, ok := t.lunStats.Load(lun); ok {
		return sc.(*sessionCounters).snapshot()
	}
	return SessionStats{}
}

// lunCounters returns the counters of a LUN, creating them on first use.
func (t *Target) lunCounters(lun uint64) *sessionCounters {
	if sc, ok := t.lunStats.Load(lun); ok {
		return sc.(*sessionCounters)
	}
	sc, _ := t.lunStats.LoadOrStore(lun, new(sessionCounters))
	return sc.(*sessionCounters)
}

func (sc *sessionCounters) snapshot() SessionStats {
	st := SessionStats{Commands: sc.commands.Load(), ReadBytes: sc.readBytes.Load(),
		WriteBytes: sc.writeBytes.Load(), Errors: sc.errors.Load(), InFlight: sc.inFlight.Load(),
		LatencyNanos: sc.latencyNanos.Load()}
	for i := range st.LatencyBuckets {
		st.LatencyBuckets[i] = sc.latency[i].Load()
	}
	return st
}

// LoginTime is when the session logged in.
func (s *Session) LoginTime() time.Time { return s.loginAt }

// RemoteAddr is the initiator's address on the session's connection.
func (s *Session) RemoteAddr() string {
	if c := s.conn; c != nil {
		return c.tr.RemoteAddr().String()
	}
	return ""
}

// LUNs lists the LUN numbers the session's initiator sees mapped to the
// target's, nil when it sees the target's own numbering.
func (s *Session) LUNs() map[uint64]uint64 {
	if s.view == nil {
		return nil
	}
	return s.view.toTarget
}
