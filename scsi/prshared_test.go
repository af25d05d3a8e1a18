package scsi

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/scsitest"
)

// memPRStore is a PRStore in memory, for one process: commits compare the
// revision and are delivered at once; every node acknowledges at once.
type memPRStore struct {
	mu       sync.Mutex
	rec      PRRecord
	apply    func(PRRecord)
	served   bool // another node serves the unit: Open is no power on
	unjoined bool // Open keeps a power-on record in pending, as before the node's lease
	pending  []byte
	denied   atomic.Bool // Allowed reports false
	failGet  atomic.Bool // Get fails as if the store were unreachable
	members  func([]string)
}

// memNode is the name of the node of a memPRStore.
const memNode = "mem"

// Open joins at once unless unjoined: a power-on record is committed and
// delivered before Open returns.
func (m *memPRStore) Open(apply func(PRRecord), powerOn func(PRRecord) []byte, members func([]string)) (PRRecord, error) {
	m.mu.Lock()
	m.apply, m.members = apply, members
	cur := m.rec
	var v []byte
	if !m.served {
		v = powerOn(cur)
	}
	if v == nil || m.unjoined {
		m.pending = v
		m.mu.Unlock()
		return cur, nil
	}
	m.rec = PRRecord{Rev: cur.Rev + 1, Value: v}
	rec := m.rec
	m.mu.Unlock()
	apply(rec)
	return cur, nil
}

func (m *memPRStore) Get(ctx context.Context) (PRRecord, error) {
	if m.failGet.Load() {
		<-ctx.Done()
		return PRRecord{}, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rec, nil
}

func (m *memPRStore) Commit(_ context.Context, prev int64, value []byte) (PRRecord, bool, error) {
	m.mu.Lock()
	if prev != m.rec.Rev {
		defer m.mu.Unlock()
		return m.rec, false, nil
	}
	m.rec = PRRecord{Rev: m.rec.Rev + 1, Value: value}
	rec, apply := m.rec, m.apply
	m.mu.Unlock()
	apply(rec)
	return rec, true, nil
}

func (m *memPRStore) Ack(context.Context, int64) error      { return nil }
func (m *memPRStore) WaitAcks(context.Context, int64) error { return nil }
func (m *memPRStore) Allowed() bool                         { return !m.denied.Load() }
func (m *memPRStore) Close() error                          { return nil }
func (m *memPRStore) Node() string                          { return memNode }

// TestPRStoreOutcomes: through a store, a fenced node refuses PR OUT and
// PR IN with NOT READY 04h/0Ch; a store that does not answer fails PR OUT
// with the same sense; a record that does not decode fails it with
// ABORTED COMMAND; APTPL is accepted and PTPL_C reported without a state
// directory.
func TestPRStoreOutcomes(t *testing.T) {
	tests := []struct {
		name  string
		setup func(m *memPRStore)
		key   byte
		code  asc
	}{
		{"fenced", func(m *memPRStore) { m.denied.Store(true) }, keyNotReady, ascNotReadyUnavailable},
		{"store unreachable", func(m *memPRStore) { m.failGet.Store(true) }, keyNotReady, ascNotReadyUnavailable},
		{"broken record", func(m *memPRStore) { m.rec = PRRecord{Rev: 9, Value: []byte("junk")} }, keyAbortedCommand, ascInternalTargetFailure},
		{"APTPL", func(*memPRStore) {}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &memPRStore{}
			h := newHarness(t, DiskConfig{PRStore: m})
			tt.setup(m)
			began := time.Now()
			c := h.prout(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0x01))
			if s := senseOf(c); tt.key == 0 && c.Status != StatusGood || tt.key != 0 && (s.key != tt.key || s.code != tt.code) {
				t.Fatalf("PR OUT: status %#x sense %+v after %v, want %x/%04x", c.Status, s, time.Since(began), tt.key, tt.code)
			}
			caps := h.exec(h.a, 0, cdbPRIn(priReportCapabilities), nil, 64)
			if tt.key == keyNotReady && m.denied.Load() {
				if s := senseOf(caps); s.key != keyNotReady || s.code != ascNotReadyUnavailable {
					t.Fatalf("PR IN on a fenced node: status %#x sense %+v", caps.Status, s)
				}
				return
			}
			if b := data(caps); caps.Status != StatusGood || b[2]&1 == 0 || (tt.key == 0) != (b[3]&1 != 0) {
				t.Fatalf("REPORT CAPABILITIES: status %#x % x", caps.Status, b)
			}
		})
	}
}

// TestPRStoreRemoteEvents: a record committed elsewhere raises its unit
// attentions on this process's nexuses, the issuer included, and aborts
// the preempted nexuses' tasks; one this Disk committed does not tell its
// issuer, and is handled once although it is delivered too.
func TestPRStoreRemoteEvents(t *testing.T) {
	m := &memPRStore{}
	h := newHarness(t, DiskConfig{PRStore: m})
	var aborted atomic.Int32
	h.tgt.OnAbort(func(*Nexus, uint64) { aborted.Add(1) })
	h.registerBoth()
	h.mustPROut(h.b, proReserve, prWE, scsitest.PROutParams(keyB, 0, 0), StatusGood)
	h.mustPROut(h.a, proPreemptAbort, prEA, scsitest.PROutParams(keyA, keyB, 0), StatusGood)
	h.expectUA(h.b, ascRegistrationsPreempted)
	h.expectUA(h.a, 0)
	if n := aborted.Load(); n != 1 {
		t.Fatalf("%d nexuses aborted, want 1", n)
	}
	// The same change committed by another node: a is told as well.
	rec, err := decodePRRecord(m.rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	rec.Origin++
	rec.Notes = []prNote{{Code: ascReservationsReleased, Regs: rec.State.Regs}}
	v, err := encodePRRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	m.apply(PRRecord{Rev: m.rec.Rev + 1, Value: v})
	h.expectUA(h.a, ascReservationsReleased)
	if n := aborted.Load(); n != 2 {
		t.Fatalf("%d nexuses aborted after the remote record, want 2", n)
	}
}

// TestPRStorePowerOn: a disk that opens a unit no node serves clears a
// state without APTPL, in the store and in its own copy at once, even
// before it could join (while its lease is not there yet, it must not
// enforce or report the state of before the power cycle); a state with
// APTPL, or one another node serves, stays.
func TestPRStorePowerOn(t *testing.T) {
	tests := []struct {
		name            string
		aptpl           byte
		served, unjoin  bool
		cleared, stored bool // the new disk's copy, the store's record
	}{
		{"without APTPL", 0, false, false, true, true},
		{"without APTPL, not joined yet", 0, false, true, true, false},
		{"with APTPL", 0x01, false, false, false, false},
		{"without APTPL, another node serves", 0, true, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &memPRStore{}
			h := newHarness(t, DiskConfig{PRStore: m})
			h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, tt.aptpl), StatusGood)
			h.mustPROut(h.b, proRegister, 0, scsitest.PROutParams(0, keyB, tt.aptpl), StatusGood)
			h.mustPROut(h.a, proReserve, prWE, scsitest.PROutParams(keyA, 0, 0), StatusGood)
			before := m.rec
			m.served, m.unjoined = tt.served, tt.unjoin
			h2 := newHarnessOn(t, h.dev, DiskConfig{PRStore: m})
			gen, ks := h2.keys(h2.b)
			_, typ := h2.reservation(h2.b)
			if cleared := gen == 0 && len(ks) == 0 && typ == 0; cleared != tt.cleared {
				t.Fatalf("after the power on: generation %d keys %x type %d, want cleared=%v", gen, ks, typ, tt.cleared)
			}
			want := StatusReservationConflict
			if tt.cleared {
				want = StatusGood
			}
			if c := h2.exec(h2.b, 0, cdb10(0x2a, 0, 1), make([]byte, 512), 0); c.Status != want {
				t.Fatalf("write from the nexus that was not the holder: %#x, want %#x", c.Status, want)
			}
			rec, err := decodePRRecord(m.rec.Value)
			if err != nil {
				t.Fatal(err)
			}
			if stored := m.rec.Rev != before.Rev; stored != tt.stored || stored && len(rec.State.Regs)+int(rec.State.Gen) != 0 {
				t.Fatalf("the store's record: revision %d (was %d) %+v, want replaced=%v", m.rec.Rev, before.Rev, rec.State, tt.stored)
			}
			if tt.unjoin && m.pending == nil {
				t.Fatal("no power-on record for the store to commit when the node joins")
			}
		})
	}
}

// newStoreDisk returns a disk on st attached to a target with nexus n
// whose power-on unit attention was taken.
func newStoreDisk(t testing.TB, st PRStore, n *Nexus) (*Disk, *Target) {
	d, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{PRStore: st})
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget("iqn.fuzz")
	if err := tgt.AddLUN(0, d); err != nil {
		t.Fatal(err)
	}
	tgt.AddNexus(n)
	tgt.OnAbort(func(*Nexus, uint64) {})
	return d, tgt
}

// TestPRStoreReset: a LOGICAL UNIT RESET or target reset of a unit with a
// store commits a record that carries the reset's unit attention; the same
// record from another node releases
// the SCSI-2 reservation, queues that unit attention for every nexus of
// this process and aborts their tasks; a record with another reset code
// does not decode.
func TestPRStoreReset(t *testing.T) {
	tests := []struct {
		name  string
		reset func(h *harness) error
		code  asc
	}{
		{"logical unit reset", func(h *harness) error { return h.tgt.LogicalUnitReset(h.a, 0) }, ascBusDeviceReset},
		{"target warm reset", func(h *harness) error { return h.tgt.TargetReset(h.b, false) }, ascPowerOnReset},
		{"target cold reset", func(h *harness) error { return h.tgt.TargetReset(h.a, true) }, ascPowerOnOccurred},
	}
	reserve6, write10 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &memPRStore{}
			h := newHarness(t, DiskConfig{PRStore: m})
			var aborted atomic.Int32
			h.tgt.OnAbort(func(*Nexus, uint64) { aborted.Add(1) })
			if err := tt.reset(h); err != nil {
				t.Fatalf("reset: %v", err)
			}
			rec, err := decodePRRecord(m.rec.Value)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Reset != tt.code || rec.Origin != h.disk.prs.instance {
				t.Fatalf("committed record: reset %04x from %#x, want %04x from this disk", uint16(rec.Reset), rec.Origin, uint16(tt.code))
			}
			h.expectUA(h.a, tt.code)
			h.expectUA(h.b, tt.code)
			if n := aborted.Load(); n != 0 {
				t.Fatalf("its own reset aborted %d nexuses through the hook (the transport does it)", n)
			}
			h.mustGood(h.b, reserve6)
			rec.Origin++ // the same reset, done by another node
			v, err := encodePRRecord(rec)
			if err != nil {
				t.Fatal(err)
			}
			m.apply(PRRecord{Rev: m.rec.Rev + 1, Value: v})
			h.expectUA(h.a, tt.code)
			h.expectUA(h.b, tt.code)
			if n := aborted.Load(); n != 2 {
				t.Fatalf("%d nexuses aborted after the other node's reset, want 2", n)
			}
			h.mustGood(h.a, write10, make([]byte, 512)...)
			rec.Reset = ascCommandsCleared
			if v, err = encodePRRecord(rec); err != nil {
				t.Fatal(err)
			}
			if _, err := decodePRRecord(v); err == nil {
				t.Fatal("a record with reset code 2f00 decoded")
			}
		})
	}
}

// slowAckStore is a memPRStore whose other nodes take wait to acknowledge.
type slowAckStore struct {
	memPRStore
	wait time.Duration
}

func (s *slowAckStore) WaitAcks(ctx context.Context, _ int64) error {
	select {
	case <-time.After(s.wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestPRStoreResetBound: a target reset tells the other nodes of each
// logical unit's reset at once rather than one unit after the other, so
// that its response does not take the units' count times the wait (an
// initiator escalates a task management function that takes longer than
// its own timeout); a fenced node does not wait for a store that does not
// answer before it reports the reset not shared.
func TestPRStoreResetBound(t *testing.T) {
	const luns = 4
	tests := []struct {
		name    string
		store   func() PRStore
		wantErr bool
		bound   time.Duration
	}{
		{"other nodes acknowledge slowly", func() PRStore { return &slowAckStore{wait: time.Second} }, false, 1500 * time.Millisecond},
		{"fenced, store unreachable", func() PRStore {
			m := &memPRStore{}
			m.denied.Store(true)
			m.failGet.Store(true)
			return m
		}, true, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{PRStore: &memPRStore{}})
			for lun := uint64(1); lun < luns; lun++ {
				d, err := NewDisk(bdev.NewMemory(testBlocks*512), DiskConfig{BlockSize: 512, PRStore: tt.store()})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
				if err := h.tgt.AddLUN(lun, d); err != nil {
					t.Fatal(err)
				}
			}
			began := time.Now()
			err := h.tgt.TargetReset(h.a, false)
			took := time.Since(began)
			if (err != nil) != tt.wantErr {
				t.Fatalf("target reset: %v, want an error: %v", err, tt.wantErr)
			}
			if took > tt.bound {
				t.Fatalf("target reset of %d logical units took %v, more than %v", luns, took, tt.bound)
			}
			if lu := h.tgt.LogicalUnitReset(h.a, luns-1); (lu != nil) != tt.wantErr || time.Since(began)-took > tt.bound {
				t.Fatalf("logical unit reset: %v after %v", lu, time.Since(began)-took)
			}
		})
	}
}

// lostAnswerStore is a memPRStore whose commits happen but whose answers
// are lost (a connection reset after etcd applied the transaction) while
// lose is set.
type lostAnswerStore struct {
	memPRStore
	lose atomic.Bool
}

func (s *lostAnswerStore) Commit(ctx context.Context, prev int64, value []byte) (PRRecord, bool, error) {
	rec, ok, err := s.memPRStore.Commit(ctx, prev, value)
	if s.lose.Load() {
		return PRRecord{}, false, errors.New("connection reset")
	}
	return rec, ok, err
}

// TestPRStoreLostAnswer: when the answer to a commit is lost, the record
// tells whether the commit happened: a PR OUT that changed it completes
// GOOD (its retry would conflict with its own change), with its unit
// attentions raised once; one that did not ends in NOT READY.
func TestPRStoreLostAnswer(t *testing.T) {
	m := &lostAnswerStore{}
	h := newHarness(t, DiskConfig{PRStore: m})
	h.registerBoth()
	h.mustPROut(h.b, proReserve, prWE, scsitest.PROutParams(keyB, 0, 0), StatusGood)
	m.lose.Store(true)
	h.mustPROut(h.a, proPreempt, prEA, scsitest.PROutParams(keyA, keyB, 0), StatusGood)
	h.expectUA(h.b, ascRegistrationsPreempted)
	h.expectUA(h.b, 0)
	h.expectUA(h.a, 0)
	if s := h.disk.pr.Load(); len(s.Regs) != 1 || s.Regs[0].Key != keyA || s.Type != prEA {
		t.Fatalf("state after the preemption: %+v", s)
	}
	m.failGet.Store(true) // the record cannot be read either: unknown
	c := h.prout(h.a, proRegister, 0, scsitest.PROutParams(keyA, keyB, 0))
	if s := senseOf(c); s.key != keyNotReady || s.code != ascNotReadyUnavailable {
		t.Fatalf("PR OUT whose outcome is unknown: status %#x sense %+v", c.Status, s)
	}
}

// deliverRemote commits rec in m as another node would, and delivers it.
func (m *memPRStore) deliverRemote(t *testing.T, rec *prRecord) {
	t.Helper()
	v, err := encodePRRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.rec = PRRecord{Rev: m.rec.Rev + 1, Value: v}
	r := m.rec
	m.mu.Unlock()
	m.apply(r)
}

// record decodes m's record.
func (m *memPRStore) record(t *testing.T) *prRecord {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, err := decodePRRecord(m.rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestPRStoreSCSI2: with a store, RESERVE (6) is committed to the record
// and enforced from it, whether this Disk or another node committed it;
// what ends it commits its release: RELEASE from the holder, the loss of
// its I_T nexus, its node leaving the unit, an earlier instance of this
// node, a power on (even with APTPL). A RELEASE from another nexus, a
// PR OUT under it and a membership that still has its node keep it.
func TestPRStoreSCSI2(t *testing.T) {
	const other = "other"
	reserve6, release6 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	write := func(h *harness, n *Nexus) Status { return h.exec(n, 0, cdb10(0x2a, 0, 1), make([]byte, 512), 0).Status }
	local := func(h *harness, m *memPRStore) { h.mustGood(h.a, reserve6) }
	remote := func(instance uint64) func(h *harness, m *memPRStore) {
		return func(h *harness, m *memPRStore) {
			node := other
			if instance != 0 {
				node, instance = memNode, h.disk.prs.instance+instance
			}
			m.deliverRemote(t, &prRecord{Origin: instance + 1, Reserved: &scsi2Holder{Node: node, Instance: instance + 7, Nexus: h.a.ID}})
		}
	}
	tests := []struct {
		name     string
		hold     func(h *harness, m *memPRStore)
		end      func(h *harness, m *memPRStore) *harness // the harness to check, h unless the unit powered on
		released bool
	}{
		{"RELEASE from the holder", local, func(h *harness, m *memPRStore) *harness { h.mustGood(h.a, release6); return h }, true},
		{"RELEASE from another nexus", local, func(h *harness, m *memPRStore) *harness { h.mustGood(h.b, release6); return h }, false},
		{"PR OUT from another nexus", local, func(h *harness, m *memPRStore) *harness {
			h.mustPROut(h.b, proRegister, 0, scsitest.PROutParams(0, keyB, 0), StatusReservationConflict)
			return h
		}, false},
		{"PR OUT from the holder", local, func(h *harness, m *memPRStore) *harness {
			h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
			return h
		}, false},
		{"nexus loss", local, func(h *harness, m *memPRStore) *harness { h.tgt.RemoveNexus(h.a); return h }, true},
		{"nexus loss of a registered holder", local, func(h *harness, m *memPRStore) *harness {
			h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
			h.tgt.RemoveNexus(h.a)
			return h
		}, true},
		{"its node serves", local, func(h *harness, m *memPRStore) *harness { m.members([]string{memNode}); return h }, false},
		{"its node left", local, func(h *harness, m *memPRStore) *harness { m.members([]string{other}); return h }, true},
		{"another node's, which serves", remote(0), func(h *harness, m *memPRStore) *harness { m.members([]string{memNode, other}); return h }, false},
		{"another node's, which left", remote(0), func(h *harness, m *memPRStore) *harness { m.members([]string{memNode}); return h }, true},
		{"an earlier instance's of this node", remote(1), func(h *harness, m *memPRStore) *harness { m.members([]string{memNode}); return h }, true},
		{"power on, APTPL", local, func(h *harness, m *memPRStore) *harness {
			h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0x01), StatusGood)
			h2 := newHarnessOn(t, h.dev, DiskConfig{PRStore: m})
			if _, ks := h2.keys(h2.b); len(ks) != 1 {
				t.Fatalf("keys after the power on: %x, want the APTPL registration", ks)
			}
			return h2
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &memPRStore{}
			h := newHarness(t, DiskConfig{PRStore: m})
			tt.hold(h, m)
			held := m.record(t).Reserved
			if held == nil {
				t.Fatal("no SCSI-2 reservation in the record")
			}
			mine := held.Instance == h.disk.prs.instance
			if mine && (held.Node != memNode || held.Nexus != h.a.ID) {
				t.Fatalf("the record's reservation %+v, want a's on node %s", held, memNode)
			}
			if s := write(h, h.b); s != StatusReservationConflict {
				t.Fatalf("write from b under the reservation: %#x", s)
			}
			if s := write(h, h.a); (s == StatusGood) != mine {
				t.Fatalf("write from a under the reservation (held here: %v): %#x", mine, s)
			}
			h = tt.end(h, m)
			if got := m.record(t).Reserved; (got == nil) != tt.released {
				t.Fatalf("the record's reservation after it: %+v, want released=%v", got, tt.released)
			}
			if tt.released {
				if s := write(h, h.b); s != StatusGood {
					t.Fatalf("write from b once released: %#x", s)
				}
			} else if s := write(h, h.b); s != StatusReservationConflict {
				t.Fatalf("write from b while still reserved: %#x", s)
			}
		})
	}
}
