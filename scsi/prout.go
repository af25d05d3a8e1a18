package scsi

import (
	"encoding/binary"
	"errors"
)

// proParams is a decoded PERSISTENT RESERVE OUT parameter list.
type proParams struct {
	rk, sark                uint64
	specIPT, allTgPt, aptpl bool
	tids                    []transportID // SPEC_I_PT, or the REGISTER AND MOVE destination
	unreg                   bool          // REGISTER AND MOVE: unregister the source
	rel                     uint16        // REGISTER AND MOVE: destination target port
}

// prNote is a unit attention for every nexus some registration covers.
// Its fields are exported for the records a PRStore keeps.
type prNote struct {
	Code asc
	Regs []registration
}

// prOp carries one PERSISTENT RESERVE OUT through its service action.
type prOp struct {
	n     *Nexus
	s     *prState // the copy being edited
	me    int      // index of the issuer's registration, -1 if none
	p     proParams
	typ   byte
	notes []prNote
	// preempted lists the registrations PREEMPT AND ABORT removed; their
	// nexuses' tasks are aborted.
	preempted []registration
	changed   bool
}

// errPRTooMany is returned when a registration would exceed maxPRRegs.
var errPRTooMany = errors.New("too many registrations")

var (
	conflictResult = result{status: StatusReservationConflict}
	// abortedResult ends a command whose task a reset aborted.
	abortedResult = result{status: StatusTaskAborted}
	insufficient  = senseData{key: keyIllegalRequest, code: ascInsufficientRegRes}
)

// prOut implements PERSISTENT RESERVE OUT (SPC-4 6.16, 5.13).
func (d *Disk) prOut(c *Command) result {
	cdb := c.CDB
	sa, scope, typ := cdb[1]&0x1f, cdb[2]>>4, cdb[2]&0x0f
	plen := int(binary.BigEndian.Uint32(cdb[5:]))
	c.Wanted = plen
	switch sa {
	case proReserve, proRelease:
		if scope != 0 {
			return fail(invalidCDB(2, 7))
		}
		if !validType(typ) {
			return fail(invalidCDB(2, 3))
		}
	case proPreempt, proPreemptAbort:
		if scope != 0 {
			return fail(invalidCDB(2, 7))
		}
	}
	if len(c.DataOut) < plen {
		return fail(illegal(ascParamListLength))
	}
	p, s, ok := parsePROut(sa, c.DataOut[:plen])
	if !ok {
		return fail(s)
	}
	if p.aptpl && d.cfg.StateDir == "" && d.cfg.PRStore == nil {
		return fail(invalidParam(20, 0))
	}
	if d.cfg.PRStore != nil {
		return d.prOutShared(c, sa, typ, p)
	}
	d.prMu.Lock()
	op := newPROp(c.Nexus, d.pr.Load(), p, typ)
	r := op.run(sa)
	if r.status == StatusGood && op.changed {
		if err := d.savePR(op.s); err != nil {
			d.prMu.Unlock()
			return fail(senseData{key: keyAbortedCommand, code: ascInternalTargetFailure})
		}
		d.pr.Store(op.s)
	}
	d.prMu.Unlock()
	if r.status != StatusGood {
		return r
	}
	d.prNotify(op.n, op.notes, op.preempted, 0)
	if len(op.preempted) == 0 {
		return r
	}
	// PREEMPT AND ABORT completes once no write of the preempted nexuses
	// can reach the medium any more: those still queued see the new state
	// when they are issued, those in the device are waited for, on a
	// goroutine of its own rather than the transport's.
	go func() { d.complete(c, d.drainWrites()) }()
	return pending
}

// newPROp starts service action parameters p (reservation type typ) from
// nexus n on a copy of cur (nil: no state yet).
func newPROp(n *Nexus, cur *prState, p proParams, typ byte) *prOp {
	if cur == nil {
		cur = &prState{}
	}
	if n == nil {
		n = &Nexus{}
	}
	op := &prOp{n: n, s: cur.clone(), p: p, typ: typ}
	op.me = op.s.find(op.n)
	return op
}

// run applies service action sa to the copy.
func (op *prOp) run(sa byte) result {
	switch sa {
	case proRegister, proRegisterIgnore:
		return op.register(sa == proRegisterIgnore)
	case proReserve:
		return op.reserve()
	case proRelease:
		return op.release()
	case proClear:
		return op.clear()
	case proPreempt, proPreemptAbort:
		return op.preempt(sa == proPreemptAbort)
	case proRegisterMove:
		return op.registerMove()
	}
	return fail(invalidCDB(1, 4))
}

// parsePROut decodes and checks the parameter list of service action sa.
func parsePROut(sa byte, b []byte) (proParams, senseData, bool) {
	var p proParams
	if len(b) < proBasicLen {
		return p, illegal(ascParamListLength), false
	}
	p.rk, p.sark = binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])
	if sa == proRegisterMove {
		p.unreg, p.aptpl = b[17]&0x02 != 0, b[17]&0x01 != 0
		p.rel = binary.BigEndian.Uint16(b[18:])
		tl := int(binary.BigEndian.Uint32(b[20:]))
		if proBasicLen+tl > len(b) {
			return p, illegal(ascParamListLength), false
		}
		tid, _, ok := parseTransportID(b[proBasicLen : proBasicLen+tl])
		if !ok {
			return p, invalidParam(proBasicLen, 7), false
		}
		p.tids = []transportID{tid}
		return p, senseData{}, true
	}
	p.specIPT, p.allTgPt, p.aptpl = b[20]&0x08 != 0, b[20]&0x04 != 0, b[20]&0x01 != 0
	if !p.specIPT {
		if len(b) != proBasicLen {
			return p, illegal(ascParamListLength), false
		}
		if p.allTgPt && sa != proRegister && sa != proRegisterIgnore {
			return p, invalidParam(20, 2), false
		}
		return p, senseData{}, true
	}
	if sa != proRegister {
		return p, invalidParam(20, 3), false
	}
	if len(b) < proBasicLen+4 {
		return p, illegal(ascParamListLength), false
	}
	tl := int(binary.BigEndian.Uint32(b[proBasicLen:]))
	if tl > maxTIDsBytes || proBasicLen+4+tl != len(b) {
		return p, illegal(ascParamListLength), false
	}
	for off := proBasicLen + 4; off < len(b); {
		tid, n, ok := parseTransportID(b[off:])
		if !ok {
			return p, invalidParam(off, 7), false
		}
		p.tids = append(p.tids, tid)
		off += n
	}
	return p, senseData{}, true
}

// note queues code for the nexuses covered by regs.
func (op *prOp) note(code asc, regs ...registration) {
	if len(regs) > 0 {
		op.notes = append(op.notes, prNote{Code: code, Regs: regs})
	}
}

// newReg adds a registration with key for tid on target port rel.
func (op *prOp) newReg(key uint64, name, port string, rel uint16) error {
	if len(op.s.Regs) >= maxPRRegs {
		return errPRTooMany
	}
	op.s.NextID++
	op.s.Regs = append(op.s.Regs, registration{ID: op.s.NextID, Key: key, Name: name, Port: port, Rel: rel})
	return nil
}

// remove deletes the registrations for which drop is true and returns
// them. A removed holder releases a reservation that is not
// all-registrants; the last registrant leaving releases any reservation.
func (op *prOp) remove(drop func(*registration) bool) []registration {
	var gone []registration
	kept := op.s.Regs[:0]
	for _, r := range op.s.Regs {
		if drop(&r) {
			gone = append(gone, r)
			if !op.s.allRegistrants() && r.ID == op.s.Holder {
				op.s.Type = 0
			}
		} else {
			kept = append(kept, r)
		}
	}
	op.s.Regs = kept
	if len(kept) == 0 {
		op.s.Type = 0
	}
	op.me = op.s.find(op.n)
	op.changed = op.changed || len(gone) > 0
	return gone
}

// register implements REGISTER and REGISTER AND IGNORE EXISTING KEY.
func (op *prOp) register(ignore bool) result {
	s, p := op.s, &op.p
	if op.me < 0 {
		if !ignore && p.rk != 0 {
			return conflictResult
		}
		if p.sark == 0 {
			return good
		}
		rel := relOf(op.n)
		if p.allTgPt {
			rel = 0
		}
		mine := registration{Name: nameOf(op.n), Port: op.n.InitiatorPort, Rel: rel}
		for _, tid := range p.tids {
			r := registration{Name: tid.name, Port: tid.port, Rel: rel}
			if r.overlaps(&mine) {
				continue
			}
			for i := range s.Regs {
				if s.Regs[i].overlaps(&r) {
					return fail(invalidParam(proBasicLen+4, 7))
				}
			}
			if op.newReg(p.sark, r.Name, r.Port, r.Rel) != nil {
				return fail(insufficient)
			}
		}
		if op.newReg(p.sark, mine.Name, mine.Port, mine.Rel) != nil {
			return fail(insufficient)
		}
		op.bump()
		return good
	}
	if !ignore && p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	if p.specIPT {
		return fail(invalidParam(20, 3))
	}
	if p.sark != 0 {
		s.Regs[op.me].Key = p.sark
		op.bump()
		return good
	}
	me := s.Regs[op.me]
	wasHolder := s.holds(op.me) && !s.allRegistrants()
	t := s.Type
	op.remove(func(r *registration) bool { return r.ID == me.ID })
	if wasHolder && (t == prWERO || t == prEARO) {
		op.note(ascReservationsReleased, s.Regs...)
	}
	op.bump()
	return good
}

// bump ends a successful registration change: PRgeneration advances and
// the APTPL bit of the command takes effect.
func (op *prOp) bump() {
	op.s.Gen++
	op.s.APTPL = op.p.aptpl
	op.changed = true
}

// reserve implements RESERVE.
func (op *prOp) reserve() result {
	s := op.s
	if op.me < 0 || op.p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	if s.Type != 0 {
		if s.holds(op.me) && s.Type == op.typ {
			return good
		}
		return conflictResult
	}
	s.Type, s.Holder = op.typ, s.Regs[op.me].ID
	op.changed = true
	return good
}

// release implements RELEASE.
func (op *prOp) release() result {
	s := op.s
	if op.me < 0 || op.p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	if !s.holds(op.me) {
		return good
	}
	if s.Type != op.typ {
		return fail(illegal(ascInvalidRelease))
	}
	t := s.Type
	s.Type, s.Holder = 0, 0
	op.changed = true
	if t != prWE && t != prEA {
		op.note(ascReservationsReleased, s.Regs...)
	}
	return good
}

// clear implements CLEAR: every registration and the reservation go.
func (op *prOp) clear() result {
	s := op.s
	if op.me < 0 || op.p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	op.note(ascReservationsPreempted, s.Regs...)
	op.remove(func(*registration) bool { return true })
	s.Type, s.Holder = 0, 0
	s.Gen++
	return good
}

// preempt implements PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4).
func (op *prOp) preempt(abort bool) result {
	s, p := op.s, &op.p
	if op.me < 0 || p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	myID := s.Regs[op.me].ID
	others := func(key uint64, all bool) func(*registration) bool {
		return func(r *registration) bool { return r.ID != myID && (all || r.Key == key) }
	}
	var gone []registration
	switch {
	case s.Type == 0 || !s.allRegistrants() && s.holderKey() != p.sark:
		// Only registrations are preempted; the reservation stays.
		if p.sark == 0 {
			return fail(invalidParam(8, 7))
		}
		gone = op.remove(others(p.sark, false))
		if len(gone) == 0 {
			return conflictResult
		}
	case s.allRegistrants() && p.sark != 0:
		gone = op.remove(others(p.sark, false))
		if len(gone) == 0 {
			return conflictResult
		}
	default:
		// The reservation is preempted: SARK names the holder, or is 0
		// under an all-registrants reservation (everyone else goes).
		if !validType(op.typ) {
			return fail(invalidCDB(2, 3))
		}
		oldType := s.Type
		gone = op.remove(others(p.sark, s.allRegistrants()))
		s.Type, s.Holder = op.typ, myID
		if oldType != op.typ {
			op.note(ascReservationsReleased, s.Regs...)
		}
	}
	op.note(ascRegistrationsPreempted, gone...)
	if abort {
		op.preempted = gone
	}
	s.Gen++
	op.changed = true
	return good
}

// registerMove implements REGISTER AND MOVE (SPC-4 5.13.8).
func (op *prOp) registerMove() result {
	s, p := op.s, &op.p
	if op.me < 0 || p.rk != s.Regs[op.me].Key {
		return conflictResult
	}
	if s.Type == 0 || !s.holds(op.me) {
		return conflictResult
	}
	if s.allRegistrants() {
		return fail(invalidCDB(2, 3))
	}
	if p.sark == 0 {
		return fail(invalidParam(8, 7))
	}
	tid := p.tids[0]
	if tid.port == "" {
		return fail(invalidParam(proBasicLen, 7))
	}
	dst := &Nexus{InitiatorName: tid.name, InitiatorPort: tid.port, RelativePort: max(p.rel, 1)}
	if samePort(tid.port, op.n.InitiatorPort) && relOf(dst) == relOf(op.n) {
		return fail(invalidParam(18, 7))
	}
	src := s.Regs[op.me].ID
	if i := s.find(dst); i >= 0 {
		s.Regs[i].Key = p.sark
		s.Holder = s.Regs[i].ID
	} else {
		if op.newReg(p.sark, tid.name, tid.port, relOf(dst)) != nil {
			return fail(insufficient)
		}
		s.Holder = s.NextID
	}
	if p.unreg {
		op.remove(func(r *registration) bool { return r.ID == src })
	}
	op.bump()
	return good
}

// prNotify queues the unit attentions notes name for the nexuses of this
// process their registrations cover, but not skip (the nexus that issued
// the command, nil when it is not on this process), and aborts the tasks
// of the nexuses the preempted registrations cover. A reset (its unit
// attention, 0 for none) done on another node releases the SCSI-2
// reservation, queues its unit attention for every nexus and aborts all
// their tasks on the unit.
func (d *Disk) prNotify(skip *Nexus, notes []prNote, preempted []registration, reset asc) {
	t := d.tgt.Load()
	if t == nil || len(notes) == 0 && len(preempted) == 0 && reset == 0 {
		return
	}
	covered := func(regs []registration, n *Nexus) bool {
		for i := range regs {
			if regs[i].covers(n) {
				return true
			}
		}
		return false
	}
	var aborted []*Nexus
	t.mu.Lock()
	if reset != 0 {
		d.res.Store(nil)
		d.resets.Add(1) // the writes of the tasks it aborts are not issued any more
	}
	for id, n := range t.nexuses {
		if skip != nil && id == skip.ID {
			continue
		}
		for _, nt := range notes {
			if covered(nt.Regs, n) {
				d.ua.add(id, nt.Code)
			}
		}
		if reset != 0 {
			d.ua.add(id, reset)
		}
		if reset != 0 || covered(preempted, n) {
			aborted = append(aborted, n)
		}
	}
	lun, ok := t.lunOf(d)
	t.mu.Unlock()
	if hook := t.onAbort.Load(); hook != nil && ok {
		for _, n := range aborted {
			(*hook)(n, lun)
		}
	}
}
