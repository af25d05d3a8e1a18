package scsi

import (
	"context"
	"crypto/rand"
	"encoding/binary"
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
// the preempted nexuses' tasks when the record reaches it.
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
	Open(apply func(PRRecord), powerOn func(cur PRRecord) []byte) (PRRecord, error)
	// Get reads the current record.
	Get(ctx context.Context) (PRRecord, error)
	// Commit replaces the record with value if its revision is still prev.
	// It returns the new record and true, or the current record and false
	// when the revision moved on.
	Commit(ctx context.Context, prev int64, value []byte) (PRRecord, bool, error)
	// Ack records that this node aborted the tasks of the nexuses the
	// record of revision rev preempted.
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
	// prAbortTimeout ends a PREEMPT AND ABORT whose change is committed
	// when a live node did not acknowledge aborting the preempted tasks
	// within the store's bound.
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
	cleared := false
	cur, err := st.Open(d.delivered, func(cur PRRecord) []byte {
		v := d.powerOnRecord(cur)
		cleared = v != nil
		return v
	})
	if err != nil {
		return fmt.Errorf("reservation store: %w", err)
	}
	rec, err := decodePRRecord(cur.Value)
	if err != nil {
		d.prs.cancel()
		st.Close()
		return err
	}
	if cleared {
		rec = &prRecord{}
	}
	d.prs.mu.Lock()
	d.installState(cur.Rev, rec)
	d.prs.watchRev = max(d.prs.watchRev, cur.Rev)
	d.prs.mu.Unlock()
	return nil
}

// powerOnRecord is the record that replaces cur when the logical unit
// powers on: an empty one (generation 0) when cur holds a state without
// APTPL, nil when cur is to be kept (APTPL, nothing to clear, or a record
// that does not decode, which openPRStore reports).
func (d *Disk) powerOnRecord(cur PRRecord) []byte {
	rec, err := decodePRRecord(cur.Value)
	if err != nil || rec.State.APTPL || len(rec.State.Regs) == 0 && rec.State.Gen == 0 {
		return nil
	}
	empty, err := encodePRRecord(&prRecord{Origin: d.prs.instance})
	if err != nil {
		return nil
	}
	return empty
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
	if rev > d.prs.rev {
		d.prs.rev = rev
		d.pr.Store(&rec.State)
	}
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
// committed r and it preempted registrations, it is acknowledged.
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
		d.prNotify(&Nexus{ID: rec.Issuer}, rec.Notes, rec.Preempted)
	} else if !mine {
		d.prNotify(nil, rec.Notes, rec.Preempted)
	}
	d.prs.mu.Unlock()
	if !mine && len(rec.Preempted) > 0 {
		ctx, cancel := context.WithTimeout(d.prs.ctx, prCommitTimeout)
		_ = d.prs.store.Ack(ctx, r.Rev) // a node that cannot ack is waited for until its lease expires
		cancel()
	}
}

// committed installs the record op committed at revision rev and handles
// its events unless its delivery came first.
func (d *Disk) committed(rev int64, op *prOp) {
	d.prs.mu.Lock()
	defer d.prs.mu.Unlock()
	d.installState(rev, &prRecord{State: *op.s})
	if rev > d.prs.watchRev {
		d.prs.ownRev = rev
		d.prNotify(op.n, op.notes, op.preempted)
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

// prCommit applies service action sa to the stored record and commits
// it, retrying from the current record on a conflict; a PREEMPT AND ABORT
// then waits for the other nodes to abort the preempted nexuses' tasks.
func (d *Disk) prCommit(n *Nexus, sa, typ byte, p proParams) result {
	st := d.prs.store
	ctx, cancel := context.WithTimeout(d.prs.ctx, prCommitTimeout)
	defer cancel()
	d.prMu.Lock()
	rec, err := st.Get(ctx)
	var op *prOp
	var done PRRecord
	for attempt := 1; ; attempt++ {
		if err != nil || !st.Allowed() {
			d.prMu.Unlock()
			return fail(prUnavailable)
		}
		cur, derr := decodePRRecord(rec.Value)
		if derr != nil {
			d.prMu.Unlock()
			return fail(prStoreBroken)
		}
		op = newPROp(n, &cur.State, p, typ)
		if r := op.run(sa); r.status != StatusGood || !op.changed {
			d.prMu.Unlock()
			d.catchUp(rec) // what this command saw, PR IN sees
			return r
		}
		value, eerr := encodePRRecord(&prRecord{State: *op.s, Origin: d.prs.instance, Issuer: op.n.ID,
			Notes: op.notes, Preempted: op.preempted})
		if eerr != nil {
			d.prMu.Unlock()
			return fail(prStoreBroken)
		}
		var ok bool
		done, ok, err = st.Commit(ctx, rec.Rev, value)
		if err == nil && ok {
			break
		}
		if attempt == maxPRAttempts {
			d.prMu.Unlock()
			return fail(prUnavailable)
		}
		if err == nil {
			rec = done
		}
	}
	d.committed(done.Rev, op)
	d.prMu.Unlock()
	if len(op.preempted) > 0 {
		if err := st.WaitAcks(d.prs.ctx, done.Rev); err != nil {
			return fail(prAbortTimeout)
		}
	}
	return good
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
