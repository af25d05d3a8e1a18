package scsi

import (
	"testing"
)

// expectUA runs TUR from n and checks it reports code (0: GOOD).
func (h *harness) expectUA(n *Nexus, code asc) {
	h.t.Helper()
	c := h.run(n, cdbTUR())
	if code == 0 {
		if c.Status != StatusGood {
			h.t.Fatalf("nexus %d: status %#x sense %+v, want GOOD", n.ID, c.Status, senseOf(c))
		}
		return
	}
	if s := senseOf(c); c.Status != StatusCheckCondition || s.key != keyUnitAttention || s.code != code {
		h.t.Fatalf("nexus %d: status %#x sense %+v, want UA %04x", n.ID, c.Status, s, code)
	}
}

func TestUnitAttentions(t *testing.T) {
	tests := []struct {
		name  string
		event func(h *harness)
		a, b  []asc // UAs each nexus then sees, in order
	}{
		{"lu reset", func(h *harness) {
			if err := h.tgt.LogicalUnitReset(h.a, 0); err != nil {
				t.Fatal(err)
			}
		}, []asc{ascBusDeviceReset}, []asc{ascBusDeviceReset}},
		{"warm reset", func(h *harness) { h.tgt.TargetReset(h.a, false) }, []asc{ascPowerOnReset}, []asc{ascPowerOnReset}},
		{"cold reset", func(h *harness) { h.tgt.TargetReset(h.b, true) }, []asc{ascPowerOnOccurred}, []asc{ascPowerOnOccurred}},
		{"clear task set", func(h *harness) { h.tgt.ClearTaskSet(h.b, 0) }, []asc{ascCommandsCleared}, nil},
		{"lun added", func(h *harness) {
			d, err := NewDisk(h.dev, DiskConfig{})
			if err != nil {
				t.Fatal(err)
			}
			if err := h.tgt.AddLUN(5, d); err != nil {
				t.Fatal(err)
			}
		}, []asc{ascReportedLUNsChanged}, []asc{ascReportedLUNsChanged}},
		{"mode select", func(h *harness) {
			h.mustGood(h.a, []byte{0x15, 0x10, 0, 0, 16, 0}, 0, 0, 0, 0, 0x0a, 0x0a, 0x04, 0x10, 0, 0, 0, 0, 0xff, 0xff, 0, 0)
		}, nil, []asc{ascModeParamsChanged}},
		{"queue order", func(h *harness) {
			h.tgt.ClearTaskSet(h.a, 0)
			h.tgt.TargetReset(h.a, false)
			h.tgt.ClearTaskSet(h.a, 0)
		}, []asc{ascPowerOnReset}, []asc{ascCommandsCleared, ascPowerOnReset}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{})
			tt.event(h)
			for _, pair := range []struct {
				n   *Nexus
				uas []asc
			}{{h.a, tt.a}, {h.b, tt.b}} {
				for _, code := range pair.uas {
					h.expectUA(pair.n, code)
				}
				h.expectUA(pair.n, 0)
			}
		})
	}
}

// TestUAExemptCommands: INQUIRY and REPORT LUNS keep the UA, REQUEST SENSE
// returns it (and clears it), REPORT LUNS clears REPORTED LUNS DATA HAS
// CHANGED, and a new nexus starts with POWER ON.
func TestUAExemptCommands(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.tgt.TargetReset(h.a, false)
	h.mustGood(h.a, cdbInquiry(false, 0, 96))
	h.mustGood(h.a, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})
	for _, desc := range []bool{false, true} {
		rs := []byte{0x03, 0, 0, 0, 252, 0}
		if desc {
			rs[1] = 1
			h.tgt.TargetReset(h.a, false)
		}
		c := h.mustGood(h.a, rs)
		b := data(c)
		var code asc
		var key byte
		if desc {
			code, key = asc(b[2])<<8|asc(b[3]), b[1]
		} else {
			code, key = asc(b[12])<<8|asc(b[13]), b[2]
		}
		if key != keyUnitAttention || code != ascPowerOnReset {
			t.Fatalf("desc=%v: REQUEST SENSE returned % x", desc, b)
		}
	}
	if b := data(h.mustGood(h.a, []byte{0x03, 0, 0, 0, 252, 0})); b[2] != keyNoSense || b[12] != 0 {
		t.Fatalf("REQUEST SENSE without UA returned % x", b)
	}
	h.expectUA(h.a, 0)

	d2, err := NewDisk(h.dev, DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.tgt.AddLUN(1, d2); err != nil {
		t.Fatal(err)
	}
	h.mustGood(h.a, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})
	h.expectUA(h.a, 0)
	h.expectUA(h.b, ascPowerOnReset) // the two resets above, queued once
	h.expectUA(h.b, ascReportedLUNsChanged)

	c := &Nexus{ID: 9}
	h.tgt.AddNexus(c)
	h.expectUA(c, ascPowerOnReset)
	h.expectUA(c, 0)
	h.tgt.RemoveNexus(c)
	if got := h.disk.ua.count.Load(); got != 0 {
		t.Fatalf("%d UAs left queued on LUN 0", got)
	}
}

func TestReservations(t *testing.T) {
	reserve6, release6 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	tests := []struct {
		name  string
		clear func(h *harness)
	}{
		{"release", func(h *harness) { h.mustGood(h.a, release6) }},
		{"nexus loss", func(h *harness) { h.tgt.RemoveNexus(h.a) }},
		{"lu reset", func(h *harness) {
			if err := h.tgt.LogicalUnitReset(h.b, 0); err != nil {
				t.Fatal(err)
			}
			h.expectUA(h.a, ascBusDeviceReset)
			h.expectUA(h.b, ascBusDeviceReset)
		}},
		{"target reset", func(h *harness) {
			h.tgt.TargetReset(h.b, true)
			h.expectUA(h.a, ascPowerOnOccurred)
			h.expectUA(h.b, ascPowerOnOccurred)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{})
			h.mustGood(h.a, reserve6)
			h.mustGood(h.a, reserve6)
			h.mustGood(h.a, cdb10(0x28, 0, 1))
			for _, cdb := range [][]byte{cdbTUR(), cdb10(0x28, 0, 1), reserve6, {0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
				if c := h.run(h.b, cdb); c.Status != StatusReservationConflict {
					t.Fatalf("cdb % x from other nexus: status %#x, want RESERVATION CONFLICT", cdb, c.Status)
				}
			}
			for _, cdb := range [][]byte{cdbInquiry(false, 0, 96), release6, {0x03, 0, 0, 0, 18, 0}} {
				h.mustGood(h.b, cdb)
			}
			h.mustGood(h.a, cdbTUR()) // B's RELEASE did not release A's reservation
			tt.clear(h)
			h.mustGood(h.b, reserve6)
			h.mustGood(h.b, release6)
		})
	}
}

func TestAbsentLUN(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	c := h.exec(h.a, 3, cdbInquiry(false, 0, 96), nil, 96)
	if c.Status != StatusGood || data(c)[0] != 0x7f {
		t.Fatalf("INQUIRY: status %#x byte0 %#x", c.Status, data(c)[0])
	}
	c = h.exec(h.a, 3, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 256)
	if c.Status != StatusGood || len(data(c)) != 16 {
		t.Fatalf("REPORT LUNS: status %#x data % x", c.Status, data(c))
	}
	c = h.exec(h.a, 3, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
	if b := data(c); c.Status != StatusGood || b[2] != keyIllegalRequest || b[12] != 0x25 {
		t.Fatalf("REQUEST SENSE: status %#x data % x", c.Status, b)
	}
	c = h.exec(h.a, 3, cdbTUR(), nil, 0)
	if s := senseOf(c); c.Status != StatusCheckCondition || s.code != ascLUNotSupported {
		t.Fatalf("TUR: status %#x sense %+v", c.Status, s)
	}
}

func TestLUNManagement(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	if err := h.tgt.AddLUN(0, h.disk); err == nil {
		t.Fatal("AddLUN over an existing LUN succeeded")
	}
	other := NewTarget("iqn.other")
	if err := other.AddLUN(0, h.disk); err == nil {
		t.Fatal("a disk joined two targets")
	}
	if err := h.tgt.AddLUN(maxLUN+1, h.disk); err == nil {
		t.Fatal("AddLUN above the flat space limit succeeded")
	}
	d, err := h.tgt.RemoveLUN(0)
	if err != nil || d != h.disk || h.tgt.HasLUN(0) {
		t.Fatalf("RemoveLUN: %v", err)
	}
	if _, err := h.tgt.RemoveLUN(0); err == nil {
		t.Fatal("RemoveLUN of a missing LUN succeeded")
	}
	if err := h.tgt.LogicalUnitReset(h.a, 0); err == nil {
		t.Fatal("LogicalUnitReset of a missing LUN succeeded")
	}
	if err := h.tgt.AddLUN(300, d); err != nil {
		t.Fatal(err)
	}
	c := h.run(h.b, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})
	if b := data(c); len(b) != 16 || b[8] != 0x41 || b[9] != 0x2c {
		t.Fatalf("REPORT LUNS for LUN 300: % x", b)
	}
}
