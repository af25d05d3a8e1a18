package scsi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// PRRecord is the persistent reservation record of a logical unit as a
// PRStore keeps it: a value this package encodes and decodes, and the
// store's revision of it.
type PRRecord struct {
	// Rev is the revision of the record in the store, increasing with
	// every change; 0 when there is no record.
	Rev int64
	// Value is the encoded record; nil when there is none.
	Value []byte
}

// PRStore keeps the persistent reservations of one logical unit outside the
// process, shared by every process (cluster node) that serves the unit, so
// that their I_T nexuses see one reservation state. cluster/prstore
// implements it on etcd.
//
// A Disk with a store keeps a local copy of the record that its I/O
// conflict checks and PERSISTENT RESERVE IN read, updated by Open's
// deliveries. PERSISTENT RESERVE OUT reads the record, applies its service
// action to a copy and commits it with Commit, retrying from the current
// record when another node got there first; the committed record carries
// the unit attentions the change raises and the registrations PREEMPT AND
// ABORT preempted, so every node raises them on its own nexuses and aborts
// the preempted nexuses' tasks when the record reaches it. Every node
// acknowledges each record another node committed once it installed it and
// handled its events, and the change completes only when every other live
// node did: a PR OUT that completed is what every node enforces and reports.
type PRStore interface {
	// Open reads the current record and then calls apply with every later
	// record, in revision order, from one goroutine, until Close.
	//
	// When no live node serves the unit (this one included), the unit is
	// powering on as far as its initiators can tell: Open then calls
	// powerOn with the current record, before it returns. A non-nil result
	// replaces that record in the same change that makes this node serve
	// the unit (once it may), unless the record changed by then; so no
	// node, this one or another, works from the record of before the power
	// on once this node takes part. Open returns the record powerOn saw.
	//
	// Open also calls members, from a goroutine of its own, with the
	// names (as Node returns them) of the nodes that serve the unit: once
	// with those it read, then after every change, until Close.
	Open(apply func(PRRecord), powerOn func(cur PRRecord) []byte, members func(nodes []string)) (PRRecord, error)
	// Node names this node among those that serve the unit.
	Node() string
	// Get reads the current record.
	Get(ctx context.Context) (PRRecord, error)
	// Commit replaces the record with value if its revision is still prev.
	// It returns the new record and true, or the current record and false
	// when the revision moved on.
	Commit(ctx context.Context, prev int64, value []byte) (PRRecord, bool, error)
	// Ack records that this node installed the record of revision rev
	// and handled its events (unit attentions queued, tasks aborted).
	Ack(ctx context.Context, rev int64) error
	// WaitAcks returns nil once every other live node serving the unit
	// acknowledged revision rev, or left (its lease expired); it fails when
	// that takes longer than the store's bound.
	WaitAcks(ctx context.Context, rev int64) error
	// Allowed reports whether this node may change reservations: false
	// while it cannot be sure its lease is still valid.
	Allowed() bool
	// Close stops the deliveries: apply is not called once Close returned.
	Close() error
}

// Bounds of a PERSISTENT RESERVE OUT through a PRStore.
const (
	// prCommitTimeout bounds reading and committing the record, retries
	// included: a store that does not answer within it fails the command
	// with NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN
	// UNAVAILABLE STATE.
	prCommitTimeout = 5 * time.Second
	// maxPRAttempts bounds the commits retried because another node changed
	// the record in between.
	maxPRAttempts = 32
)

var (
	// prUnavailable refuses a reservation change this node cannot make
	// now: it may not write (its lease is not known valid) or the store
	// does not answer. Multipath initiators retry on another path.
	prUnavailable = senseData{key: keyNotReady, code: ascNotReadyUnavailable}
	// prAbortTimeout ends a change that is committed when a live node did
	// not acknowledge it (installed, unit attentions queued, preempted
	// tasks aborted) within the store's bound.
	prAbortTimeout = senseData{key: keyAbortedCommand, code: ascCommandTimeoutDuring}
	// prStoreBroken ends a change when the stored record does not decode.
	prStoreBroken = senseData{key: keyAbortedCommand, code: ascInternalTargetFailure}
)

// prRecordMagic names the records a PRStore keeps; they are framed like
// the APTPL state file (magic line, length, JSON payload, CRC-32C).
const prRecordMagic = "iserd-pr-record-1\n"

// prRecord is the decoded value of a PRRecord: the state, and the event of
// the PERSISTENT RESERVE OUT that made it.
type prRecord struct {
	State prState
	// Origin names the Disk (its prInstance) that committed the record,
	// and Issuer the ID of the nexus the command came from there: the one
	// nexus that gets none of the unit attentions.
	Origin, Issuer uint64
	Notes          []prNote
	Preempted      []registration
	// Reset is the unit attention of the reset that made the record
	// (LOGICAL UNIT RESET or a target reset; 0 for none), which left the
	// state as it was: every node but the origin, which did it already,
	// releases the SCSI-2 reservation, queues Reset for each of its nexuses
	// and aborts their tasks on the unit, as SAM-5 requires of a reset for
	// every I_T nexus of the logical unit, whichever target port it is on.
	Reset asc `json:",omitempty"`
	// Reserved is the SCSI-2 reservation (RESERVE (6) or (10)), nil when
	// there is none: every node enforces it. A reset, a RELEASE or the
	// loss of the holder's I_T nexus drops it, and so does the holder's
	// node leaving the unit; it does not survive a power on.
	Reserved *scsi2Holder `json:",omitempty"`
}

// maxPRNotes bounds the unit attention notes of a record: one PERSISTENT
// RESERVE OUT queues at most two.
const maxPRNotes = 4

// encodePRRecord frames r as the value of a PRRecord.
func encodePRRecord(r *prRecord) ([]byte, error) {
	b, err := encodeState(prRecordMagic, r)
	if err != nil {
		return nil, fmt.Errorf("encode reservation record: %w", err)
	}
	return b, nil
}

// decodePRRecord checks and decodes the value of a PRRecord; nil is the
// empty record of a unit nobody registered with yet.
func decodePRRecord(b []byte) (*prRecord, error) {
	var r prRecord
	if b == nil {
		return &r, nil
	}
	if err := decodeState(b, prRecordMagic, &r); err != nil {
		return nil, fmt.Errorf("reservation record: %w", err)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("reservation record: %w", err)
	}
	return &r, nil
}

// validate checks a decoded record: a valid state, and notes and preempted
// registrations a node can act on.
func (r *prRecord) validate() error {
	if err := r.State.validate(); err != nil {
		return err
	}
	if len(r.Notes) > maxPRNotes {
		return fmt.Errorf("%d notes, at most %d", len(r.Notes), maxPRNotes)
	}
	for _, n := range r.Notes {
		switch n.Code {
		case ascReservationsPreempted, ascReservationsReleased, ascRegistrationsPreempted:
		default:
			return fmt.Errorf("note with unit attention %04x", uint16(n.Code))
		}
		if err := validRegs(n.Regs); err != nil {
			return fmt.Errorf("note: %w", err)
		}
	}
	if err := validRegs(r.Preempted); err != nil {
		return fmt.Errorf("preempted: %w", err)
	}
	switch r.Reset {
	case 0, ascBusDeviceReset, ascPowerOnReset, ascPowerOnOccurred:
	default:
		return fmt.Errorf("reset with unit attention %04x", uint16(r.Reset))
	}
	return nil
}

// validRegs checks registrations an event names.
func validRegs(regs []registration) error {
	if len(regs) > maxPRRegs {
		return fmt.Errorf("%d registrations, at most %d", len(regs), maxPRRegs)
	}
	for _, r := range regs {
		if !r.valid() {
			return fmt.Errorf("invalid registration %+v", r)
		}
	}
	return nil
}

// prShared is the part of a Disk that works with its PRStore.
type prShared struct {
	store    PRStore
	instance uint64 // names this Disk in the records it commits
	ctx      context.Context
	cancel   context.CancelFunc
	lifeMu   sync.Mutex     // orders prBegin against Close
	wg       sync.WaitGroup // PERSISTENT RESERVE OUT commands in flight

	// mu orders the installation of records and the handling of their
	// events: rev is the revision of the record Disk.pr holds, watchRev
	// the last one delivered, ownRev the last one this Disk committed and
	// handled the events of itself.
	mu                    sync.Mutex
	rev, watchRev, ownRev int64
	reserved              *scsi2Holder // the installed record's Reserved
}

// openPRStore loads the record of d's store and starts its deliveries.
// When no node serves the unit, a record without APTPL is cleared: the
// logical unit powers on, and the local copy is the cleared state at once.
func (d *Disk) openPRStore() error {
	st := d.cfg.PRStore
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("reservation store: draw instance: %w", err)
	}
	d.prs.store, d.prs.instance = st, binary.BigEndian.Uint64(b[:])
	d.prs.ctx, d.prs.cancel = context.WithCancel(context.Background())
	var cleared []byte
	cur, err := st.Open(d.delivered, func(cur PRRecord) []byte {
		cleared = d.powerOnRecord(cur)
		return cleared
	}, d.membersChanged)
	if err != nil {
		return fmt.Errorf("reservation store: %w", err)
	}
	if cleared != nil {
		cur.Value = cleared
	}
	rec, err := decodePRRecord(cur.Value)
	if err != nil {
		d.prs.cancel()
		st.Close()
		return err
	}
	d.prs.mu.Lock()
	d.installState(cur.Rev, rec)
	d.prs.watchRev = max(d.prs.watchRev, cur.Rev)
	d.prs.mu.Unlock()
	return nil
}

// powerOnRecord is the record that replaces cur when the logical unit
// powers on: without the SCSI-2 reservation, and empty (generation 0)
// when cur holds a state without APTPL; nil when cur is to be kept (APTPL
// or nothing to clear, and no SCSI-2 reservation; or a record that does
// not decode, which openPRStore reports).
func (d *Disk) powerOnRecord(cur PRRecord) []byte {
	rec, err := decodePRRecord(cur.Value)
	if err != nil {
		return nil
	}
	keep := rec.State.APTPL || len(rec.State.Regs) == 0 && rec.State.Gen == 0
	if keep && rec.Reserved == nil {
		return nil
	}
	next := &prRecord{Origin: d.prs.instance}
	if rec.State.APTPL {
		next.State = rec.State
	}
	v, err := encodePRRecord(next)
	if err != nil {
		return nil
	}
	return v
}

// closePRStore ends the PERSISTENT RESERVE OUT commands in flight and the
// deliveries of d's store.
func (d *Disk) closePRStore() error {
	if d.prs.store == nil {
		return nil
	}
	d.prs.cancel()
	d.prs.wg.Wait()
	if err := d.prs.store.Close(); err != nil {
		return fmt.Errorf("close reservation store: %w", err)
	}
	return nil
}

// installState makes rec, of revision rev, the local copy unless the copy
// is as new already. The caller holds d.prs.mu.
func (d *Disk) installState(rev int64, rec *prRecord) {
	if rev <= d.prs.rev {
		return
	}
	d.prs.rev = rev
	d.pr.Store(&rec.State)
	if h := rec.Reserved; h == nil {
		d.res.Store(nil)
	} else {
		d.res.Store(&holder{instance: h.Instance, nexus: h.Nexus})
	}
	d.prs.reserved = rec.Reserved
}

// catchUp installs r, read from the store, without handling its events:
// the delivery of r handles them.
func (d *Disk) catchUp(r PRRecord) {
	rec, err := decodePRRecord(r.Value)
	if err != nil {
		return // keep the last good copy; PR OUT reports the broken record
	}
	d.prs.mu.Lock()
	d.installState(r.Rev, rec)
	d.prs.mu.Unlock()
}

// delivered handles record r, delivered by the store in revision order:
// it is installed, the unit attentions it carries are queued on this
// process's nexuses and the preempted nexuses' tasks are aborted, unless
// this Disk committed r and handled it already; when another node
// committed r, it is acknowledged, which completes the change there: after
// the writes this process had in its device complete when r aborted tasks
// (drainWrites), and not at all when they do not within the bound.
func (d *Disk) delivered(r PRRecord) {
	rec, err := decodePRRecord(r.Value)
	if err != nil {
		return
	}
	d.prs.mu.Lock()
	if r.Rev <= d.prs.watchRev {
		d.prs.mu.Unlock()
		return
	}
	d.prs.watchRev = r.Rev
	d.installState(r.Rev, rec)
	mine := rec.Origin == d.prs.instance
	if mine && r.Rev > d.prs.ownRev {
		d.prNotify(&Nexus{ID: rec.Issuer}, rec.Notes, rec.Preempted, 0)
	} else if !mine {
		d.prNotify(nil, rec.Notes, rec.Preempted, rec.Reset)
	}
	d.prs.mu.Unlock()
	if !mine {
		if (len(rec.Preempted) > 0 || rec.Reset != 0) && d.drainWrites().status != StatusGood {
			return // not acknowledged: a write of an aborted task may still land; the origin's wait ends at its bound
		}
		ctx, cancel := context.WithTimeout(d.prs.ctx, prCommitTimeout)
		_ = d.prs.store.Ack(ctx, r.Rev) // a node that cannot ack is waited for until its lease expires
		cancel()
	}
}

// committed installs the record op committed at revision rev and handles
// its events unless its delivery came first.
func (d *Disk) committed(rev int64, rec *prRecord, op *prOp) {
	d.prs.mu.Lock()
	defer d.prs.mu.Unlock()
	d.installState(rev, rec)
	if rev > d.prs.watchRev {
		d.prs.ownRev = rev
		d.prNotify(op.n, op.notes, op.preempted, 0)
	}
}

// prBegin counts a PERSISTENT RESERVE OUT that runs on its own goroutine;
// false once the disk is closing.
func (d *Disk) prBegin() bool {
	d.prs.lifeMu.Lock()
	defer d.prs.lifeMu.Unlock()
	if d.prs.ctx.Err() != nil {
		return false
	}
	d.prs.wg.Add(1)
	return true
}

// prOutShared runs a PERSISTENT RESERVE OUT through the store on a
// goroutine of its own (it waits for the network) and completes c there.
func (d *Disk) prOutShared(c *Command, sa, typ byte, p proParams) result {
	if !d.prBegin() {
		return fail(prUnavailable)
	}
	go func() {
		defer d.prs.wg.Done()
		d.complete(c, d.prCommit(c.Nexus, sa, typ, p))
	}()
	return pending
}

// prCommit applies service action sa to the stored record, commits it and
// waits until the other nodes installed it (and, for a PREEMPT AND ABORT,
// aborted the preempted nexuses' tasks, and this and every other node saw
// the writes complete that it had in its device: drainWrites).
func (d *Disk) prCommit(n *Nexus, sa, typ byte, p proParams) result {
	ctx, cancel := context.WithTimeout(d.prs.ctx, prCommitTimeout)
	defer cancel()
	d.prMu.Lock()
	var op *prOp
	var rec *prRecord
	done, r, ok := d.prChange(ctx, func(cur *prRecord) (*prRecord, result) {
		if cur.Reserved != nil && !d.holds(cur.Reserved, nexusIDOf(n)) {
			return nil, conflictResult // another nexus's SCSI-2 reservation, as conflict says
		}
		op = newPROp(n, &cur.State, p, typ)
		if r := op.run(sa); r.status != StatusGood || !op.changed {
			return nil, r
		}
		rec = &prRecord{State: *op.s, Issuer: op.n.ID, Notes: op.notes, Preempted: op.preempted, Reserved: cur.Reserved}
		return rec, good
	})
	if !ok {
		d.prMu.Unlock()
		return r
	}
	d.committed(done.Rev, rec, op)
	d.prMu.Unlock()
	if len(op.preempted) > 0 {
		if r := d.drainWrites(); r.status != StatusGood {
			return r
		}
	}
	if err := d.prs.store.WaitAcks(d.prs.ctx, done.Rev); err != nil {
		return fail(prAbortTimeout)
	}
	return good
}

// prChange commits the record next makes of the current one, starting
// over from the record another node committed meanwhile, at most
// maxPRAttempts times. next returns the record to commit (its Origin is
// set here), or nil and the result to end with when nothing changes; the
// record it saw is then installed, so that PR IN sees what the command
// saw. prChange returns the committed record and true, or the result to
// end with and false. The caller holds d.prMu.
func (d *Disk) prChange(ctx context.Context, next func(cur *prRecord) (*prRecord, result)) (PRRecord, result, bool) {
	st := d.prs.store
	if !st.Allowed() {
		return PRRecord{}, fail(prUnavailable), false // not after a read that may wait for the store's bound
	}
	rec, err := st.Get(ctx)
	for attempt := 1; ; attempt++ {
		if err != nil || !st.Allowed() {
			return PRRecord{}, fail(prUnavailable), false
		}
		cur, derr := decodePRRecord(rec.Value)
		if derr != nil {
			return PRRecord{}, fail(prStoreBroken), false
		}
		change, r := next(cur)
		if change == nil {
			d.catchUp(rec)
			return PRRecord{}, r, false
		}
		change.Origin = d.prs.instance
		value, eerr := encodePRRecord(change)
		if eerr != nil {
			return PRRecord{}, fail(prStoreBroken), false
		}
		done, ok, cerr := st.Commit(ctx, rec.Rev, value)
		if cerr == nil && ok {
			return done, good, true
		}
		if cerr != nil && d.committedAnyway(ctx, rec.Rev, value, &done) {
			return done, good, true
		}
		if attempt == maxPRAttempts {
			return PRRecord{}, fail(prUnavailable), false
		}
		if err = cerr; err == nil {
			rec = done
		}
	}
}

// committedAnyway reports whether a commit of value over revision prev
// that failed happened all the same (its answer was lost): the record,
// read again, is value at a later revision, and only this Disk commits
// records with its Origin. It sets *done to that record.
func (d *Disk) committedAnyway(ctx context.Context, prev int64, value []byte, done *PRRecord) bool {
	cur, err := d.prs.store.Get(ctx)
	if err != nil || cur.Rev <= prev || !bytes.Equal(cur.Value, value) {
		return false
	}
	*done = cur
	return true
}

// errResetNotShared reports a reset the other nodes serving the unit were
// not told of: the store did not take it (this node may not write, or
// etcd does not answer). Only this node's nexuses were reset.
var errResetNotShared = errors.New("the reset reached this node's nexuses only: the reservation store did not take it")

// shareReset tells the other nodes serving d of a reset done here, whose
// unit attention was code: it commits a record with the reservations as
// they are and Reset set, and waits until every other node serving the
// unit aborted its nexuses' tasks on it (or left). Without a store it does
// nothing.
func (d *Disk) shareReset(code asc) error {
	if d.prs.store == nil {
		return nil
	}
	if !d.prBegin() {
		return errResetNotShared
	}
	defer d.prs.wg.Done()
	_, committed, err := d.changeAll(func(cur *prRecord) (*prRecord, result) {
		return &prRecord{State: cur.State, Reset: code}, good
	})
	if !committed {
		return errResetNotShared
	}
	if err != nil {
		return fmt.Errorf("reset: the other nodes did not abort their tasks: %w", err)
	}
	return nil
}

// changeAll commits the record next makes of the current one (see
// prChange), installs it and waits until every other node installed it
// and handled its events. It returns the result to end a command with,
// whether the record was committed, and why the wait failed. The caller
// counted itself in d.prs.wg.
func (d *Disk) changeAll(next func(cur *prRecord) (*prRecord, result)) (result, bool, error) {
	ctx, cancel := context.WithTimeout(d.prs.ctx, prCommitTimeout)
	defer cancel()
	d.prMu.Lock()
	done, r, ok := d.prChange(ctx, next)
	if ok {
		d.catchUp(done) // its delivery here has nothing left to do
	}
	d.prMu.Unlock()
	if !ok {
		return r, false, nil
	}
	if err := d.prs.store.WaitAcks(d.prs.ctx, done.Rev); err != nil {
		return fail(prAbortTimeout), true, err
	}
	return good, true, nil
}

// PRSummary describes a reservation record, for status reports and tests.
type PRSummary struct {
	// Generation is the PRgeneration.
	Generation uint32
	// Type is the reservation type (SPC-4 table 175), 0 for none; Holder
	// is the index in Registrations of the holder, -1 when there is none
	// or every registrant holds it.
	Type   byte
	Holder int
	// APTPL reports that the state persists through power loss.
	APTPL bool
	// Registrations are the registered I_T nexuses, in order.
	Registrations []PRRegistration
	// Preempted is the number of registrations the change that made the
	// record preempted with PREEMPT AND ABORT.
	Preempted int
}

// PRRegistration is one registration of a PRSummary.
type PRRegistration struct {
	Key uint64
	// Initiator is the initiator port ("<name>,i,0x<ISID>"), or the
	// initiator name when the registration covers all its ports.
	Initiator string
	// RelativePort is the relative target port identifier, 0 for all
	// ports (ALL_TG_PT).
	RelativePort uint16
}

// DescribePRRecord decodes the value of a PRRecord.
func DescribePRRecord(value []byte) (PRSummary, error) {
	r, err := decodePRRecord(value)
	if err != nil {
		return PRSummary{}, err
	}
	s := &r.State
	sum := PRSummary{Generation: s.Gen, Type: s.Type, Holder: -1, APTPL: s.APTPL, Preempted: len(r.Preempted)}
	for i, g := range s.Regs {
		who := g.Port
		if who == "" {
			who = g.Name
		}
		sum.Registrations = append(sum.Registrations, PRRegistration{Key: g.Key, Initiator: who, RelativePort: g.Rel})
		if s.Type != 0 && !s.allRegistrants() && g.ID == s.Holder {
			sum.Holder = i
		}
	}
	return sum, nil
}
