package iscsi

import (
	"sort"
	"sync"

	"github.com/iserd/iserd/qos"
)

// QoS is a target's rate limits and the initiators' weights. Commands that
// move data (reads with Data-In, writes with Data-Out, by their bytes)
// pass the limiters that apply to them before they run: the initiator's,
// the LUN's, then the target's. Commands without data pass free.
type QoS struct {
	// Target limits all sessions of the target together.
	Target qos.Limits
	// LUNs limits each LU, over all sessions (target LUN numbers).
	LUNs map[uint64]qos.Limits
	// Initiator limits each initiator (its sessions together) that has no
	// limits of its own in Initiators.
	Initiator qos.Limits
	// Initiators holds what is set for one initiator: its ACL entry.
	Initiators map[string]InitiatorQoS
}

// InitiatorQoS is what one initiator's ACL entry sets.
type InitiatorQoS struct {
	// Limits replaces the target's Initiator default when set.
	Limits *qos.Limits
	// Weight is each of the initiator's sessions' share of the target's
	// and LUNs' limits when they are contended (0 counts as 1).
	Weight float64
}

// limits returns the limits of one initiator.
func (q *QoS) limits(initiator string) qos.Limits {
	if iq, ok := q.Initiators[initiator]; ok && iq.Limits != nil {
		return *iq.Limits
	}
	return q.Initiator
}

// weight returns an initiator's weight.
func (q *QoS) weight(initiator string) float64 {
	return max(q.Initiators[initiator].Weight, 1)
}

// windowTarget is how long the commands a session may have in iserd take
// at its share of its limits. Its CmdSN window is shrunk to that many, so
// that waiting happens in the initiator's queue: half of qos.MaxWait, so
// that windows sized on the average command keep a mix of sizes under it.
const windowTarget = qos.MaxWait / 2

// initialAvgBytes is the command size a session's window is sized on
// before its commands tell (a large one: the window starts small).
const initialAvgBytes = 1 << 20

// targetQoS is a target's limiters and the sessions attached to them.
type targetQoS struct {
	mu       sync.Mutex
	cfg      QoS
	target   *qos.Limiter
	luns     map[uint64]*qos.Limiter
	inits    map[string]*qos.Limiter
	sessions map[*Session]struct{}
}

// sessionQoS is the chains a session's commands pass; nil when no limit
// applies to the session.
type sessionQoS struct {
	base  *qos.Chain            // LUNs without a limiter of their own; nil: none
	luns  map[uint64]*qos.Chain // LUNs with one
	flows []*qos.Flow           // every flow of the session, for its window
}

// chain returns the chain a command to lun passes, nil for none.
func (q *sessionQoS) chain(lun uint64) *qos.Chain {
	if c, ok := q.luns[lun]; ok {
		return c
	}
	return q.base
}

// SetQoS replaces the target's limits and weights. Limiters that remain
// keep their state and waiting commands; sessions are not disturbed, and
// their CmdSN windows follow the new limits as their commands complete.
func (t *Target) SetQoS(cfg QoS) {
	q := &t.qos
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cfg = cfg
	var closing []*qos.Limiter
	keep := func(l *qos.Limiter, lim qos.Limits) *qos.Limiter {
		switch {
		case lim.Zero():
			if l != nil {
				closing = append(closing, l)
			}
			return nil
		case l == nil:
			return qos.NewLimiter(lim)
		case l.Limits() != lim:
			l.SetLimits(lim)
		}
		return l
	}
	q.target = keep(q.target, cfg.Target)
	luns := map[uint64]*qos.Limiter{}
	for lun, lim := range cfg.LUNs {
		if l := keep(q.luns[lun], lim); l != nil {
			luns[lun] = l
		}
	}
	for lun, l := range q.luns {
		if _, ok := cfg.LUNs[lun]; !ok {
			closing = append(closing, l)
		}
	}
	q.luns = luns
	for name, l := range q.inits {
		if q.inits[name] = keep(l, cfg.limits(name)); q.inits[name] == nil {
			delete(q.inits, name)
		}
	}
	for s := range q.sessions {
		q.rebuild(s)
	}
	q.sweep()
	for _, l := range closing {
		l.Close() // what still waits there goes on
	}
}

// attachQoS gives a new session its chains; the caller then sizes its
// window.
func (t *Target) attachQoS(s *Session) {
	q := &t.qos
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sessions == nil {
		q.sessions = map[*Session]struct{}{}
	}
	q.sessions[s] = struct{}{}
	q.rebuild(s)
}

// detachQoS takes an ended session off its limiters.
func (t *Target) detachQoS(s *Session) {
	q := &t.qos
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.sessions[s]; !ok {
		return
	}
	delete(q.sessions, s)
	s.qos.Store(nil)
	for _, f := range s.qosFlows {
		f.Detach()
	}
	s.qosFlows = nil
	q.sweep()
}

// rebuild (re)makes a session's chains from the target's limiters,
// keeping the flows it has on limiters that remain; the caller holds q.mu.
func (q *targetQoS) rebuild(s *Session) {
	name := s.InitiatorName()
	if lim := q.cfg.limits(name); !lim.Zero() && q.inits[name] == nil {
		if q.inits == nil {
			q.inits = map[string]*qos.Limiter{}
		}
		q.inits[name] = qos.NewLimiter(lim)
	}
	w := q.cfg.weight(name)
	flows := map[*qos.Limiter]*qos.Flow{}
	flow := func(l *qos.Limiter, w float64) *qos.Flow {
		if l == nil {
			return nil
		}
		f := s.qosFlows[l]
		if f == nil {
			f = l.Attach(w)
		} else {
			f.SetWeight(w)
		}
		flows[l] = f
		return f
	}
	ini := flow(q.inits[name], 1) // an initiator's sessions share its limits equally
	tgt := flow(q.target, w)
	var sq *sessionQoS
	if ini != nil || tgt != nil || len(q.luns) > 0 {
		sq = &sessionQoS{luns: map[uint64]*qos.Chain{}}
		if ini != nil || tgt != nil {
			sq.base = qos.NewChain(qosRelease, ini, tgt)
		}
		for lun, l := range q.luns {
			sq.luns[lun] = qos.NewChain(qosRelease, ini, flow(l, w), tgt)
		}
		for _, f := range flows {
			sq.flows = append(sq.flows, f)
		}
	}
	for l, f := range s.qosFlows {
		if flows[l] != f {
			f.Detach()
		}
	}
	s.qosFlows = flows
	s.qos.Store(sq)
}

// sweep closes the initiator limiters no session uses; the caller holds
// q.mu.
func (q *targetQoS) sweep() {
	used := map[string]bool{}
	for s := range q.sessions {
		used[s.InitiatorName()] = true
	}
	for name, l := range q.inits {
		if !used[name] {
			l.Close()
			delete(q.inits, name)
		}
	}
}

// QoSStat is one limiter's limits and counters.
type QoSStat struct {
	Scope     string // target, lun or initiator
	LUN       uint64 // for scope lun
	Initiator string // for scope initiator
	Limits    qos.Limits
	Stats     qos.Stats
}

// QoSStats lists the target's limiters: the target's, the LUNs' in order,
// then the initiators' in name order.
func (t *Target) QoSStats() []QoSStat {
	q := &t.qos
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []QoSStat
	if q.target != nil {
		out = append(out, QoSStat{Scope: "target", Limits: q.target.Limits(), Stats: q.target.Stats()})
	}
	var luns []QoSStat
	for lun, l := range q.luns {
		luns = append(luns, QoSStat{Scope: "lun", LUN: lun, Limits: l.Limits(), Stats: l.Stats()})
	}
	sort.Slice(luns, func(i, j int) bool { return luns[i].LUN < luns[j].LUN })
	var inits []QoSStat
	for name, l := range q.inits {
		inits = append(inits, QoSStat{Scope: "initiator", Initiator: name, Limits: l.Limits(), Stats: l.Stats()})
	}
	sort.Slice(inits, func(i, j int) bool { return inits[i].Initiator < inits[j].Initiator })
	return append(append(out, luns...), inits...)
}

// throttle passes t through its limiters; false means it waits and
// qosRelease runs it later.
func (q *sessionQoS) throttle(s *Session, t *task) bool {
	c := q.chain(t.cmd.LUN)
	if c == nil {
		return true
	}
	var n int64
	switch {
	case t.write:
		n = int64(t.received)
	case t.read:
		n = int64(t.edtl)
	}
	if n == 0 {
		return true // no data: TEST UNIT READY, SYNCHRONIZE CACHE...
	}
	avg := s.avgBytes.Load() // racing updates may lose one: it is an estimate
	s.avgBytes.Store(avg + (n-avg)/8)
	return c.Admit(&t.qe, qos.Cost{Bytes: n, Write: t.write})
}

// qosRelease runs a command its limiters held back, on a pacer's
// goroutine.
func qosRelease(e *qos.Entry) {
	t := e.Owner.(*task)
	if t.aborted.Load() {
		t.c.endAborted(t)
		return
	}
	t.c.run(t)
}

// window is the CmdSN window the session should have: the commands its
// limits admit in windowTarget at its share (at least 1), or the server's
// CmdWindow when none applies.
func (s *Session) window() uint32 {
	cw := s.srv.opts.CmdWindow
	q := s.qos.Load()
	if q == nil {
		return cw
	}
	w, avg := float64(cw), float64(s.avgBytes.Load())
	for _, f := range q.flows {
		w = min(w, f.Window(avg, windowTarget))
	}
	return uint32(max(w, 1))
}

// openWindow returns the CmdSN slot of a non-immediate command that has
// been answered: MaxCmdSN moves on by one. When the session's window
// should be smaller, the slot is withheld instead; when it should be
// larger, MaxCmdSN moves on by the difference too. MaxCmdSN never goes
// back, and the initiator always keeps at least one slot. Without limits
// this is one atomic add and one load.
func (s *Session) openWindow() {
	if s.qos.Load() == nil && s.slots.Load() == s.srv.opts.CmdWindow {
		s.maxCmdSN.Add(1)
		return
	}
	want := s.window()
	for {
		cur := s.slots.Load()
		switch {
		case cur > want:
			if s.slots.CompareAndSwap(cur, cur-1) {
				return
			}
		case cur < want:
			if s.slots.CompareAndSwap(cur, want) {
				s.maxCmdSN.Add(1 + want - cur)
				return
			}
		default:
			s.maxCmdSN.Add(1)
			return
		}
	}
}

// Window is the CmdSN window the session has now (commands it may have
// outstanding), and whether limits shrink it.
func (s *Session) Window() (slots uint32, limited bool) {
	return s.slots.Load(), s.qos.Load() != nil
}
