package scsi

import (
	"encoding/binary"
	"testing"
)

// modePage finds page code in MODE SENSE (6) data.
func modePage(b []byte, code byte) []byte {
	for p := b[4+int(b[3]):]; len(p) >= 2; p = p[2+int(p[1]):] {
		if p[0]&0x3f == code {
			return p[:2+int(p[1])]
		}
	}
	return nil
}

func TestModeSense(t *testing.T) {
	h := newHarness(t, DiskConfig{ReadOnly: true})
	tests := []struct {
		name    string
		cdb     []byte
		check   func(b []byte) bool
		wantLen int // 0: don't care
	}{
		{"all pages", []byte{0x1a, 0, 0x3f, 0, 255, 0}, func(b []byte) bool {
			return b[0] == byte(len(b)-1) && b[2] == 0x90 && b[3] == 8 && modePage(b, 0x08) != nil && modePage(b, 0x0a) != nil && modePage(b, 0x1c) != nil
		}, 4 + 8 + 20 + 12 + 12},
		{"all subpages", []byte{0x1a, 0, 0x3f, 0xff, 255, 0}, func(b []byte) bool { return modePage(b, 0x0a) != nil }, 56},
		{"dbd", []byte{0x1a, 0x08, 0x0a, 0, 255, 0}, func(b []byte) bool { return b[3] == 0 && modePage(b, 0x0a)[3] == 0x10 }, 16},
		{"block descriptor", []byte{0x1a, 0, 0x08, 0, 255, 0}, func(b []byte) bool {
			return binary.BigEndian.Uint32(b[4:]) == testBlocks && binary.BigEndian.Uint32(b[8:]) == 512 && modePage(b, 0x08)[2] == 0x04
		}, 32},
		{"changeable", []byte{0x1a, 0x08, 0x40 | 0x0a, 0, 255, 0}, func(b []byte) bool {
			p := modePage(b, 0x0a)
			return b[2] == 0 && p[2] == 0x04 && p[3] == 0 && p[4] == 0x08
		}, 16},
		{"truncated", []byte{0x1a, 0, 0x3f, 0, 4, 0}, func(b []byte) bool { return b[0] == 55 }, 4},
		{"ten long lba", []byte{0x5a, 0x10, 0x1c, 0, 0, 0, 0, 1, 0, 0}, func(b []byte) bool {
			return binary.BigEndian.Uint16(b) == uint16(len(b)-2) && b[4] == 1 && binary.BigEndian.Uint16(b[6:]) == 16 &&
				binary.BigEndian.Uint64(b[8:]) == testBlocks && b[24] == 0x1c
		}, 8 + 16 + 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := data(h.mustGood(h.a, tt.cdb))
			if tt.wantLen != 0 && len(b) != tt.wantLen || !tt.check(b) {
				t.Fatalf("% x", b)
			}
		})
	}
}

// TestModeSelect turns D_SENSE, SWP and WCE on and off and checks their
// effects.
func TestModeSelect(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	control := func(dsense, swp bool) []byte {
		return []byte{0, 0, 0, 0, 0x0a, 0x0a, flag(dsense, 0x04), 0x10, flag(swp, 0x08), 0, 0, 0, 0xff, 0xff, 0, 0}
	}
	sel6 := func(p []byte) []byte { return []byte{0x15, 0x10, 0, 0, byte(len(p)), 0} }

	h.mustGood(h.a, sel6(control(true, false)), control(true, false)...)
	c := h.run(h.a, cdb16n(0x88, ^uint64(0), 1))
	if c.Sense[0] != 0x72 || senseOf(c).code != ascLBAOutOfRange {
		t.Fatalf("D_SENSE: sense % x", c.Sense[:c.SenseLen])
	}
	h.expectUA(h.b, ascModeParamsChanged)

	h.mustGood(h.a, sel6(control(false, true)), control(false, true)...)
	if c := h.exec(h.a, 0, cdb10(0x2a, 0, 1), make([]byte, 512), 0); senseOf(c).code != ascWriteProtected || c.Sense[0] != 0x70 {
		t.Fatalf("SWP: sense % x", c.Sense[:c.SenseLen])
	}
	if b := data(h.mustGood(h.a, []byte{0x1a, 0, 0x3f, 0, 255, 0})); b[2]&0x80 == 0 {
		t.Fatal("SWP does not set WP in the device-specific parameter")
	}
	h.mustGood(h.a, sel6(control(false, false)), control(false, false)...)
	h.mustGood(h.a, cdb10(0x2a, 0, 1), make([]byte, 512)...)

	caching := []byte{0, 0, 0, 0, 0x08, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	ten := []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, byte(len(caching) + 4), 0}
	h.mustGood(h.a, ten, append([]byte{0, 0, 0, 0}, caching...)...)
	if h.disk.mode.Load().wce {
		t.Fatal("WCE still set after MODE SELECT (10)")
	}
	bd := []byte{0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0}
	if c := h.exec(h.a, 0, sel6(bd), bd, 0); senseOf(c).code != ascInvalidFieldInParam {
		t.Fatalf("block length 4096 on a 512 disk: status %#x sense %+v", c.Status, senseOf(c))
	}
	bd[10] = 0x02
	h.mustGood(h.a, sel6(bd), bd...)
}
