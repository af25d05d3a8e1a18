package scsi

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// maxLUN is the largest LUN REPORT LUNS can encode with flat addressing.
const maxLUN = 0x3fff

// Target is a SCSI target device: a set of logical units addressed by LUN
// and the I_T nexuses that reach them. Its methods are safe for concurrent
// use; Execute takes no lock.
type Target struct {
	name string
	luns atomic.Pointer[map[uint64]*Disk] // replaced whole on change

	mu      sync.Mutex // serialises LUN, nexus and port group changes
	nexuses map[uint64]*Nexus

	groups   atomic.Pointer[[]PortGroup] // ALUA target port groups; nil: none
	onGroups atomic.Pointer[func([]PortGroup)]
	onSet    atomic.Pointer[func(map[uint16]ALUAState) error]
	onAbort  atomic.Pointer[func(*Nexus, uint64)]
	onEvent  atomic.Pointer[func(Event)]
}

// NewTarget returns an empty target named name (its iSCSI name).
func NewTarget(name string) *Target {
	t := &Target{name: name, nexuses: make(map[uint64]*Nexus)}
	t.luns.Store(&map[uint64]*Disk{})
	return t
}

// Name is the target name given to NewTarget.
func (t *Target) Name() string { return t.name }

// LUNs lists the logical unit numbers in ascending order.
func (t *Target) LUNs() []uint64 { return slices.Sorted(maps.Keys(*t.luns.Load())) }

// LUN returns the logical unit at lun, or nil.
func (t *Target) LUN(lun uint64) *Disk { return (*t.luns.Load())[lun] }

// HasLUN reports whether a logical unit is attached at lun.
func (t *Target) HasLUN(lun uint64) bool { return t.LUN(lun) != nil }

// AddLUN attaches d at lun and raises REPORTED LUNS DATA HAS CHANGED to
// every nexus. A Disk belongs to at most one Target.
func (t *Target) AddLUN(lun uint64, d *Disk) error {
	if d == nil {
		return errors.New("add LUN: nil disk")
	}
	if lun > maxLUN {
		return fmt.Errorf("add LUN %d: LUNs above %d are not supported", lun, maxLUN)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	if _, ok := old[lun]; ok {
		return fmt.Errorf("add LUN %d: already in use", lun)
	}
	if !d.tgt.CompareAndSwap(nil, t) {
		return fmt.Errorf("add LUN %d: disk already belongs to a target", lun)
	}
	m := maps.Clone(old)
	m[lun] = d
	t.luns.Store(&m)
	t.lunsChanged(lun)
	return nil
}

// RemoveLUN detaches the logical unit at lun and returns it (still open)
// after raising REPORTED LUNS DATA HAS CHANGED to every nexus.
func (t *Target) RemoveLUN(lun uint64) (*Disk, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	d, ok := old[lun]
	if !ok {
		return nil, fmt.Errorf("remove LUN %d: no such logical unit", lun)
	}
	m := maps.Clone(old)
	delete(m, lun)
	t.luns.Store(&m)
	d.tgt.Store(nil)
	t.lunsChanged(lun)
	return d, nil
}

// lunsChanged queues REPORTED LUNS DATA HAS CHANGED on every logical unit
// for every nexus and reports one event for the LUN that came or went.
// The caller holds t.mu.
func (t *Target) lunsChanged(lun uint64) {
	t.raiseAll(ascReportedLUNsChanged, 0, false)
	t.emit(ascReportedLUNsChanged, lun, nil)
}

// raiseAll queues code on every logical unit for every nexus, except the
// nexus except when skip is set. The caller holds t.mu.
func (t *Target) raiseAll(code asc, except uint64, skip bool) {
	for _, d := range *t.luns.Load() {
		t.raise(d, code, except, skip)
	}
}

// raise queues code on d for every nexus (but except, when skip is set).
// The caller holds t.mu.
func (t *Target) raise(d *Disk, code asc, except uint64, skip bool) {
	for id := range t.nexuses {
		if !skip || id != except {
			d.ua.add(id, code)
		}
	}
}

// AddNexus registers a new I_T nexus: every logical unit reports POWER
// ON, RESET, OR BUS DEVICE RESET OCCURRED to it first.
func (t *Target) AddNexus(n *Nexus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nexuses[n.ID] = n
	for _, d := range *t.luns.Load() {
		d.ua.add(n.ID, ascPowerOnReset)
	}
}

// RemoveNexus forgets a nexus: its unit attentions, the SCSI-2
// reservations it holds and its held EXTENDED COPY results. Persistent
// reservation registrations survive it (SPC-4 5.13.2). A SCSI-2
// reservation of a logical unit with a PRStore is released in the store:
// RemoveNexus returns once every node serving the unit installed the
// release (or the store's bounds ran out).
func (t *Target) RemoveNexus(n *Nexus) {
	t.mu.Lock()
	delete(t.nexuses, n.ID)
	luns := *t.luns.Load()
	for _, d := range luns {
		d.ua.remove(n.ID, 0, true)
		d.copies.forget(n.ID)
	}
	t.mu.Unlock()
	for _, d := range luns {
		d.releaseHeldBy(n.ID)
	}
}

// LogicalUnitReset performs the SCSI side of LOGICAL UNIT RESET received on
// nexus n: the SCSI-2 reservation is released and every nexus, n included
// (SAM-5 6.3.3), is told BUS DEVICE RESET FUNCTION OCCURRED. Persistent
// reservations are not affected. The transport aborts the tasks. A logical
// unit with a PRStore (served by several cluster nodes, through target
// ports of their own) has the other nodes do the same for their nexuses
// and abort their tasks; LogicalUnitReset returns once they did, or fails
// when they could not be told, after resetting this node's nexuses.
func (t *Target) LogicalUnitReset(n *Nexus, lun uint64) error {
	t.mu.Lock()
	d := (*t.luns.Load())[lun]
	if d == nil {
		t.mu.Unlock()
		return fmt.Errorf("logical unit reset: no LUN %d", lun)
	}
	d.res.Store(nil)
	t.raise(d, ascBusDeviceReset, 0, false)
	t.mu.Unlock()
	if err := d.shareReset(ascBusDeviceReset); err != nil {
		return fmt.Errorf("logical unit reset of LUN %d: %w", lun, err)
	}
	return nil
}

// TargetReset performs the SCSI side of TARGET WARM RESET (cold=false) or
// TARGET COLD RESET: reservations are released and every nexus, on every
// logical unit, is told POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
// (warm; the code initiators such as libiscsi retry on) or POWER ON
// OCCURRED (cold). The other cluster nodes serving a logical unit with a
// PRStore reset it for their nexuses too, as for LogicalUnitReset.
func (t *Target) TargetReset(n *Nexus, cold bool) error {
	code := ascPowerOnReset
	if cold {
		code = ascPowerOnOccurred
	}
	t.mu.Lock()
	luns := *t.luns.Load()
	for _, d := range luns {
		d.res.Store(nil)
	}
	t.raiseAll(code, 0, false)
	t.mu.Unlock()
	// The units at once: each may wait for the other nodes' bound.
	errs := make([]error, 0, len(luns))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for lun, d := range luns {
		wg.Go(func() {
			if err := d.shareReset(code); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("target reset of LUN %d: %w", lun, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ClearTaskSet performs the SCSI side of CLEAR TASK SET received on nexus n:
// the other nexuses are told COMMANDS CLEARED BY ANOTHER INITIATOR.
func (t *Target) ClearTaskSet(n *Nexus, lun uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := (*t.luns.Load())[lun]; d != nil {
		t.raise(d, ascCommandsCleared, nexusIDOf(n), true)
	}
}

// Abort tells the logical unit that the transport aborted c, a command it
// is running. A SANITIZE waiting for its operation then completes at once
// with TASK ABORTED while the operation goes on (SBC-4: task management
// does not stop a sanitize); other commands complete as they would have.
// Abort never calls c.Done before it returns, so the transport may hold
// its own locks; it must not reuse c until c.Done was called.
func (t *Target) Abort(c *Command) {
	if d := t.LUN(c.LUN); d != nil {
		d.abortSanitize(c)
	}
}

// nexusIDOf is n.ID, or 0 for a nil nexus.
func nexusIDOf(n *Nexus) uint64 {
	if n == nil {
		return 0
	}
	return n.ID
}

// Execute runs cmd and calls cmd.Done exactly once, possibly before
// Execute returns and possibly from another goroutine.
func (t *Target) Execute(cmd *Command) {
	cmd.Reset()
	if d := (*t.luns.Load())[cmd.LUN]; d != nil {
		d.execute(cmd)
		return
	}
	var r result
	switch {
	case len(cmd.CDB) == 0:
		r = fail(illegal(ascInvalidOpcode))
	case cmd.CDB[0] == 0x12 && len(cmd.CDB) >= 6 && cmd.CDB[1] == 0 && cmd.CDB[2] == 0:
		r = absentInquiry(cmd)
	case cmd.CDB[0] == 0xa0 && len(cmd.CDB) >= 12:
		r = t.reportLUNs(cmd)
	case cmd.CDB[0] == 0x03 && len(cmd.CDB) >= 6:
		s := illegal(ascLUNotSupported)
		r = senseResponse(cmd, &s)
	default:
		r = fail(illegal(ascLUNotSupported))
	}
	(*Disk)(nil).complete(cmd, r)
}

// execute runs a command addressed to d.
func (d *Disk) execute(c *Command) {
	e, s, ok := d.lookup(c.CDB)
	if !ok || e.flags&fUAExempt == 0 {
		if ua, has := d.ua.take(nexusIDOf(c.Nexus)); has {
			d.complete(c, fail(ua))
			return
		}
	}
	if st := d.san.Load(); st != nil && ok && e.flags&fUAExempt == 0 && (!st.op.Failed || e.usage[0] != opSanitize) {
		d.complete(c, fail(d.sanitizeSense(st)))
		return
	}
	if ok {
		s, ok = e.check(c.CDB)
	}
	if !ok {
		d.complete(c, fail(s))
		return
	}
	if s, ok := d.tgt.Load().accessible(c.Nexus, e.flags); !ok {
		d.complete(c, fail(s))
		return
	}
	if e.flags&fFence != 0 && d.fenced() {
		d.complete(c, fail(fencedSense))
		return
	}
	if d.conflict(c, e.flags) {
		d.complete(c, conflictResult)
		return
	}
	if r := e.fn(d, c); !r.pending {
		d.complete(c, r)
	}
}
