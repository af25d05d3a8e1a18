package scsi

import (
	"encoding/binary"
	"slices"
	"testing"
)

// twoGroups puts port 1 (nexuses a and b) in group 1 and port 2 (nexus c)
// in group 2.
func twoGroups(t *testing.T, h *harness, s1, s2 ALUAState) *Nexus {
	t.Helper()
	if err := h.tgt.SetPortGroups([]PortGroup{
		{ID: 2, State: s2, Ports: []uint16{2}},
		{ID: 1, State: s1, Ports: []uint16{1}, Preferred: true},
	}); err != nil {
		t.Fatal(err)
	}
	h.a.PortGroup, h.b.PortGroup = 1, 1
	c := &Nexus{ID: 3, InitiatorPort: "iqn.a,i,0x3", RelativePort: 2, PortGroup: 2}
	h.tgt.AddNexus(c)
	h.expectUA(c, ascPowerOnReset)
	return c
}

func cdbRTPG(format byte) []byte {
	return []byte{0xa3, 0x0a | format<<5, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0}
}

func cdbSTPG(plen int) []byte {
	b := []byte{0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[6:], uint32(plen))
	return b
}

// groupStates parses REPORT TARGET PORT GROUPS data into id -> state.
func groupStates(t *testing.T, b []byte, hdr int) map[uint16]ALUAState {
	t.Helper()
	m := make(map[uint16]ALUAState)
	end := 4 + int(binary.BigEndian.Uint32(b))
	for off := hdr; off < end; {
		d := b[off:]
		m[binary.BigEndian.Uint16(d[2:])] = ALUAState(d[0] & 0x0f)
		if d[1] != aluaSupported {
			t.Fatalf("supported states %#x", d[1])
		}
		off += 8 + 4*int(d[7])
	}
	return m
}

func TestALUAStates(t *testing.T) {
	read := cdb10(0x28, 0, 1)
	tests := []struct {
		state  ALUAState
		code   asc // refusal of READ and TEST UNIT READY, 0 for served
		modeOK bool
	}{
		{ActiveOptimized, 0, true},
		{ActiveNonOptimized, 0, true},
		{Standby, ascNotReadyStandby, true},
		{Unavailable, ascNotReadyUnavailable, false},
		{Transitioning, ascNotReadyTransition, false},
	}
	for _, tt := range tests {
		t.Run(tt.state.String(), func(t *testing.T) {
			h := newHarness(t, DiskConfig{})
			c := twoGroups(t, h, ActiveOptimized, tt.state)
			for _, cdb := range [][]byte{read, cdbTUR()} {
				r := h.exec(c, 0, cdb, nil, 512)
				if tt.code == 0 && r.Status != StatusGood ||
					tt.code != 0 && (r.Status != StatusCheckCondition || senseOf(r).key != keyNotReady || senseOf(r).code != tt.code) {
					t.Fatalf("cdb % x in %v: status %#x sense %+v", cdb, tt.state, r.Status, senseOf(r))
				}
			}
			// The optimized path serves the same LU meanwhile.
			h.mustGood(h.a, read)
			// INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS always work.
			for _, cdb := range [][]byte{cdbInquiry(false, 0, 96), {0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, cdbRTPG(0)} {
				if r := h.exec(c, 0, cdb, nil, 1024); r.Status != StatusGood {
					t.Fatalf("cdb % x in %v: status %#x", cdb, tt.state, r.Status)
				}
			}
			if r := h.exec(c, 0, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 255); (r.Status == StatusGood) != tt.modeOK {
				t.Fatalf("MODE SENSE in %v: status %#x", tt.state, r.Status)
			}
		})
	}
}

func TestALUAReportAndSet(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	// Without groups: one implicit active/optimized group, TPGS 01b.
	if b := data(h.mustGood(h.a, cdbInquiry(false, 0, 96))); b[5]&0x30 != 0x10 {
		t.Fatalf("TPGS without groups: %#x", b[5])
	}
	if m := groupStates(t, data(h.mustGood(h.a, cdbRTPG(0))), 4); len(m) != 1 || m[1] != ActiveOptimized {
		t.Fatalf("implicit group: %v", m)
	}
	if c := h.exec(h.a, 0, cdbSTPG(8), []byte{0, 0, 0, 0, 2, 0, 0, 1}, 0); c.Status != StatusCheckCondition {
		t.Fatalf("STPG without groups: %#x", c.Status)
	}

	c := twoGroups(t, h, ActiveOptimized, Standby)
	var persisted []PortGroup
	h.tgt.OnPortGroupChange(func(gs []PortGroup) { persisted = gs })
	if b := data(h.mustGood(h.a, cdbInquiry(false, 0, 96))); b[5]&0x30 != 0x30 {
		t.Fatalf("TPGS with groups: %#x", b[5])
	}
	b := data(h.mustGood(h.a, cdbRTPG(1)))
	if b[4] != 0x10 || b[5] != implicitTransitionSecs {
		t.Fatalf("extended header % x", b[:8])
	}
	if m := groupStates(t, b, 8); m[1] != ActiveOptimized || m[2] != Standby {
		t.Fatalf("groups %v", m)
	}
	// VPD 83h carries the target port group of the path.
	if vpd := data(h.mustGood(h.a, cdbInquiry(true, 0x83, 255))); !containsDesignator(vpd, assocPort|desigTPG, []byte{0, 0, 0, 1}) {
		t.Fatalf("no target port group designator in % x", vpd)
	}

	// Explicit failover: group 2 optimized, group 1 standby.
	h.mustGood(c, cdbSTPG(12), 0, 0, 0, 0, byte(ActiveOptimized), 0, 0, 2, byte(Standby), 0, 0, 1)
	if m := groupStates(t, data(h.mustGood(c, cdbRTPG(0))), 4); m[1] != Standby || m[2] != ActiveOptimized {
		t.Fatalf("after STPG: %v", m)
	}
	h.expectUA(h.a, ascALUAChanged)
	h.expectUA(h.b, ascALUAChanged)
	if r := h.run(h.a, cdb10(0x28, 0, 1)); senseOf(r).code != ascNotReadyStandby {
		t.Fatalf("read on the now-standby path: %#x %+v", r.Status, senseOf(r))
	}
	h.mustGood(c, cdb10(0x28, 0, 1))
	if len(persisted) != 2 || persisted[0].State != Standby || persisted[1].State != ActiveOptimized {
		t.Fatalf("OnPortGroupChange got %+v", persisted)
	}
	for _, bad := range [][]byte{
		{0, 0, 0, 0, byte(Transitioning), 0, 0, 1}, // not settable
		{0, 0, 0, 0, 0, 0, 0, 9},                   // no such group
	} {
		if r := h.exec(c, 0, cdbSTPG(len(bad)), bad, 0); senseOf(r).code != ascInvalidFieldInParam {
			t.Fatalf("STPG % x: %#x %+v", bad, r.Status, senseOf(r))
		}
	}

	// Implicit change from the daemon: everyone hears about it.
	if err := h.tgt.SetPortGroupState(1, ActiveNonOptimized); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Nexus{h.a, h.b, c} {
		h.expectUA(n, ascALUAChanged)
	}
	if err := h.tgt.SetPortGroupState(7, Standby); err == nil {
		t.Fatal("state set on a missing group")
	}
}

func TestSetPortGroupsInvalid(t *testing.T) {
	tgt := NewTarget("iqn.t")
	for name, gs := range map[string][]PortGroup{
		"zero id":    {{ID: 0, Ports: []uint16{1}}},
		"same id":    {{ID: 1}, {ID: 1}},
		"bad state":  {{ID: 1, State: 9}},
		"port twice": {{ID: 1, Ports: []uint16{1}}, {ID: 2, Ports: []uint16{1}}},
	} {
		if err := tgt.SetPortGroups(gs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if tgt.PortGroups() != nil {
		t.Fatal("a rejected configuration was kept")
	}
}

// containsDesignator reports whether VPD page 83h data holds a designator
// of association/type at with value id.
func containsDesignator(page []byte, at byte, id []byte) bool {
	for off := 4; off+4 <= len(page); off += 4 + int(page[off+3]) {
		if page[off+1]&0x3f == at && slices.Equal(page[off+4:off+4+int(page[off+3])], id) {
			return true
		}
	}
	return false
}

func TestParseALUAState(t *testing.T) {
	for _, st := range []ALUAState{ActiveOptimized, ActiveNonOptimized, Standby, Unavailable, Transitioning} {
		if got, err := ParseALUAState(st.String()); err != nil || got != st {
			t.Errorf("%v: parsed as %v, %v", st, got, err)
		}
	}
	if got, err := ParseALUAState("ANO"); err != nil || got != ActiveNonOptimized {
		t.Errorf("ANO: %v %v", got, err)
	}
	if _, err := ParseALUAState("offline"); err == nil {
		t.Error("offline accepted")
	}
}
