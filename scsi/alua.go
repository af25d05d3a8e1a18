package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ALUAState is an asymmetric access state of a target port group (SPC-4
// 5.15.2.4).
type ALUAState byte

// Asymmetric access states, as encoded in REPORT TARGET PORT GROUPS.
const (
	ActiveOptimized    ALUAState = 0x0
	ActiveNonOptimized ALUAState = 0x1
	Standby            ALUAState = 0x2
	Unavailable        ALUAState = 0x3
	Transitioning      ALUAState = 0xf
)

// String names the state as sg_rtpg does.
func (s ALUAState) String() string {
	switch s {
	case ActiveOptimized:
		return "active/optimized"
	case ActiveNonOptimized:
		return "active/non-optimized"
	case Standby:
		return "standby"
	case Unavailable:
		return "unavailable"
	case Transitioning:
		return "transitioning"
	}
	return fmt.Sprintf("state %#x", byte(s))
}

// ParseALUAState parses a state as String prints it (also accepting
// "optimized", "non-optimized" and the short forms "ao", "ano").
func ParseALUAState(name string) (ALUAState, error) {
	switch strings.ToLower(name) {
	case "active/optimized", "optimized", "ao":
		return ActiveOptimized, nil
	case "active/non-optimized", "non-optimized", "ano":
		return ActiveNonOptimized, nil
	case "standby":
		return Standby, nil
	case "unavailable":
		return Unavailable, nil
	case "transitioning":
		return Transitioning, nil
	}
	return 0, fmt.Errorf("ALUA state %q: want active/optimized, active/non-optimized, standby, unavailable or transitioning", name)
}

// valid reports whether s is one of the supported states.
func (s ALUAState) valid() bool {
	switch s {
	case ActiveOptimized, ActiveNonOptimized, Standby, Unavailable, Transitioning:
		return true
	}
	return false
}

// PortGroup is a target port group: target ports (by relative target port
// identifier) that share one asymmetric access state for every logical
// unit of the target.
type PortGroup struct {
	ID    uint16
	State ALUAState
	// Preferred sets the PREF bit in REPORT TARGET PORT GROUPS.
	Preferred bool
	// Ports are the relative target port identifiers in the group.
	Ports []uint16
	// status is the STATUS CODE of REPORT TARGET PORT GROUPS: why the
	// state last changed (1: SET TARGET PORT GROUPS, 2: implicitly).
	status byte
}

// aluaSupported is the supported-states byte of a port group descriptor:
// T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
const aluaSupported = 0x80 | 0x08 | 0x04 | 0x02 | 0x01

// implicitTransitionSecs is the IMPLICIT TRANSITION TIME reported.
const implicitTransitionSecs = 10

// SetPortGroups replaces the target port groups. Group IDs must be unique
// and non-zero, and a port may belong to one group only. Nexuses whose
// group changes state are told ASYMMETRIC ACCESS STATE CHANGED. With no
// groups (the default) every port is active/optimized and only implicit
// ALUA is reported.
func (t *Target) SetPortGroups(groups []PortGroup) error {
	gs := make([]PortGroup, len(groups))
	seen := make(map[uint16]bool)
	ports := make(map[uint16]bool)
	for i, g := range groups {
		if g.ID == 0 || seen[g.ID] {
			return fmt.Errorf("set port groups: group ID %d is zero or repeated", g.ID)
		}
		if !g.State.valid() {
			return fmt.Errorf("set port groups: group %d: invalid state %#x", g.ID, byte(g.State))
		}
		seen[g.ID] = true
		for _, p := range g.Ports {
			if p == 0 || ports[p] {
				return fmt.Errorf("set port groups: relative port %d is zero or in two groups", p)
			}
			ports[p] = true
		}
		gs[i] = g
		gs[i].Ports = slices.Clone(g.Ports)
		gs[i].status = 0
	}
	slices.SortFunc(gs, func(a, b PortGroup) int { return int(a.ID) - int(b.ID) })
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.groups.Load()
	var changed []uint16
	for _, g := range gs {
		if o := findGroup(old, g.ID); o == nil || o.State != g.State {
			changed = append(changed, g.ID)
		}
	}
	t.groups.Store(&gs)
	if old != nil && len(changed) > 0 {
		t.aluaChanged(nil)
	}
	return nil
}

// PortGroups returns a copy of the target port groups.
func (t *Target) PortGroups() []PortGroup {
	p := t.groups.Load()
	if p == nil {
		return nil
	}
	gs := slices.Clone(*p)
	for i := range gs {
		gs[i].Ports = slices.Clone(gs[i].Ports)
	}
	return gs
}

// SetPortGroupState changes the state of group id implicitly (for
// instance from the admin API); every nexus is told ASYMMETRIC ACCESS
// STATE CHANGED.
func (t *Target) SetPortGroupState(id uint16, state ALUAState) error {
	if !state.valid() {
		return fmt.Errorf("set port group %d: invalid state %#x", id, byte(state))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.setStatesLocked(map[uint16]ALUAState{id: state}, 2); err != nil {
		return err
	}
	t.aluaChanged(nil)
	return nil
}

// OnPortGroupChange registers fn to be called, without locks held, with the
// new groups after SET TARGET PORT GROUPS changed them, so the daemon can
// persist the states. It replaces any earlier function.
func (t *Target) OnPortGroupChange(fn func([]PortGroup)) { t.onGroups.Store(&fn) }

// setStatesLocked applies new states and the status code why. The caller
// holds t.mu.
func (t *Target) setStatesLocked(states map[uint16]ALUAState, why byte) error {
	old := t.groups.Load()
	if old == nil {
		return errors.New("no target port groups are configured")
	}
	gs := slices.Clone(*old)
	for id, st := range states {
		i := slices.IndexFunc(gs, func(g PortGroup) bool { return g.ID == id })
		if i < 0 {
			return fmt.Errorf("no target port group %d", id)
		}
		gs[i].State, gs[i].status = st, why
	}
	t.groups.Store(&gs)
	return nil
}

// aluaChanged raises ASYMMETRIC ACCESS STATE CHANGED on every logical unit
// for every nexus but except. The caller holds t.mu.
func (t *Target) aluaChanged(except *Nexus) {
	for lun, d := range *t.luns.Load() {
		t.raiseEvent(d, lun, ascALUAChanged, except)
	}
}

// findGroup returns the group with id in gs, or nil.
func findGroup(gs *[]PortGroup, id uint16) *PortGroup {
	if gs == nil {
		return nil
	}
	for i := range *gs {
		if (*gs)[i].ID == id {
			return &(*gs)[i]
		}
	}
	return nil
}

// groupOf returns the port group n came through: by Nexus.PortGroup, else
// the group holding its relative port. ok is false when no groups are
// configured or none matches (the port is then active/optimized).
func (t *Target) groupOf(n *Nexus) (PortGroup, bool) {
	gs := t.groups.Load()
	if gs == nil || n == nil {
		return PortGroup{}, false
	}
	if g := findGroup(gs, n.PortGroup); g != nil {
		return *g, true
	}
	rel := relOf(n)
	for _, g := range *gs {
		if slices.Contains(g.Ports, rel) {
			return g, true
		}
	}
	return PortGroup{}, false
}

// accessible fails a command with flags f that the asymmetric access
// state of the port group n came through refuses (SPC-4 5.15.2.4).
func (t *Target) accessible(n *Nexus, f opFlags) (senseData, bool) {
	if t == nil || t.groups.Load() == nil {
		return senseData{}, true
	}
	g, ok := t.groupOf(n)
	if !ok {
		return senseData{}, true
	}
	var need opFlags
	var code asc
	switch g.State {
	case Standby:
		need, code = fStandby, ascNotReadyStandby
	case Unavailable:
		need, code = fUnavail, ascNotReadyUnavailable
	case Transitioning:
		need, code = fTransit, ascNotReadyTransition
	default:
		return senseData{}, true
	}
	if f&need != 0 {
		return senseData{}, true
	}
	return senseData{key: keyNotReady, code: code}, false
}

// tpgs is the TPGS field of standard INQUIRY data: implicit ALUA always,
// explicit too once port groups are configured.
func (t *Target) tpgs() byte {
	if t != nil && t.groups.Load() != nil {
		return 0x30
	}
	return 0x10
}

// reportGroups lists the groups REPORT TARGET PORT GROUPS describes: the
// configured ones, or a single active/optimized group holding n's port.
func (t *Target) reportGroups(n *Nexus) []PortGroup {
	if gs := t.groups.Load(); gs != nil {
		return *gs
	}
	id := uint16(1)
	rel := uint16(1)
	if n != nil {
		id, rel = max(n.PortGroup, 1), relOf(n)
	}
	return []PortGroup{{ID: id, State: ActiveOptimized, Ports: []uint16{rel}}}
}

// reportTPGs implements REPORT TARGET PORT GROUPS (SPC-4 6.36) in the
// length-only (000b) or extended (001b) header format.
func (d *Disk) reportTPGs(c *Command) result {
	t := d.tgt.Load()
	if t == nil {
		return fail(illegal(ascLUNotSupported))
	}
	format := c.CDB[1] >> 5
	if format > 1 {
		return fail(invalidCDB(1, 7))
	}
	hdr := 4
	if format == 1 {
		hdr = 8
	}
	b := make([]byte, hdr, 64)
	if format == 1 {
		b[4], b[5] = 0x10, implicitTransitionSecs
	}
	for _, g := range t.reportGroups(c.Nexus) {
		b = append(b, flag(g.Preferred, 0x80)|byte(g.State), aluaSupported, byte(g.ID>>8), byte(g.ID),
			0, g.status, 0, byte(len(g.Ports)))
		for _, p := range g.Ports {
			b = append(b, 0, 0, byte(p>>8), byte(p))
		}
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return respond(c, b, int(binary.BigEndian.Uint32(c.CDB[6:])))
}

// setTPGs implements SET TARGET PORT GROUPS (SPC-4 6.44): explicit
// transitions to active/optimized, active/non-optimized, standby or
// unavailable. Every descriptor is checked before any state changes; the
// other nexuses are told ASYMMETRIC ACCESS STATE CHANGED.
func (d *Disk) setTPGs(c *Command) result {
	t := d.tgt.Load()
	if t == nil || t.groups.Load() == nil {
		return fail(invalidCDB(1, 4))
	}
	plen := int(binary.BigEndian.Uint32(c.CDB[6:]))
	c.Wanted = plen
	if plen == 0 {
		return good
	}
	if len(c.DataOut) < plen || plen < 4 || (plen-4)%4 != 0 {
		return fail(illegal(ascParamListLength))
	}
	data := c.DataOut[4:plen]
	states := make(map[uint16]ALUAState)
	t.mu.Lock()
	gs := t.groups.Load()
	for off := 0; off < len(data); off += 4 {
		st, id := ALUAState(data[off]&0x0f), binary.BigEndian.Uint16(data[off+2:])
		if st == Transitioning || !st.valid() {
			t.mu.Unlock()
			return fail(invalidParam(4+off, 3))
		}
		if findGroup(gs, id) == nil {
			t.mu.Unlock()
			return fail(invalidParam(4+off+2, 7))
		}
		states[id] = st
	}
	t.mu.Unlock()
	if fn := t.onSet.Load(); fn != nil {
		go func() {
			if err := (*fn)(states); err != nil {
				d.complete(c, fail(setterSense(err)))
				return
			}
			d.complete(c, t.applySet(c, states))
		}()
		return pending
	}
	return t.applySet(c, states)
}

// applySet applies the states SET TARGET PORT GROUPS asked for: every
// nexus but the command's is told ASYMMETRIC ACCESS STATE CHANGED, and the
// OnPortGroupChange function sees the new groups.
func (t *Target) applySet(c *Command, states map[uint16]ALUAState) result {
	t.mu.Lock()
	if err := t.setStatesLocked(states, 1); err != nil {
		t.mu.Unlock()
		return fail(invalidParam(4, 7))
	}
	t.aluaChanged(c.Nexus)
	t.mu.Unlock()
	if fn := t.onGroups.Load(); fn != nil {
		(*fn)(t.PortGroups())
	}
	return good
}

// OnSetPortGroups registers fn to carry out SET TARGET PORT GROUPS where
// the port groups are shared with other processes (a cluster, where each
// node is one group): fn gets the states the initiator asked for, already
// checked against the groups, and stores them where every node applies
// them. The command waits for fn on a goroutine of its own; when fn
// succeeds the target applies the states as it does without fn, and when
// it fails the command ends with NOT READY, LOGICAL UNIT NOT ACCESSIBLE,
// TARGET PORT IN UNAVAILABLE STATE for ErrFenced, or ABORTED COMMAND,
// INTERNAL TARGET FAILURE otherwise, so the initiator retries. It replaces
// any earlier function; nil removes it.
func (t *Target) OnSetPortGroups(fn func(states map[uint16]ALUAState) error) {
	if fn == nil {
		t.onSet.Store(nil)
		return
	}
	t.onSet.Store(&fn)
}

// setterSense is the sense of a SET TARGET PORT GROUPS whose OnSetPortGroups
// function failed with err.
func setterSense(err error) senseData {
	if errors.Is(err, ErrFenced) {
		return fencedSense
	}
	return senseData{key: keyAbortedCommand, code: ascInternalTargetFailure}
}
