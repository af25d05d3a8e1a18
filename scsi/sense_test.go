package scsi

import (
	"bytes"
	"testing"
)

func TestSenseEncode(t *testing.T) {
	s := invalidCDB(7, 3)
	s.info, s.hasInfo = 0x1234, true
	tests := []struct {
		name string
		desc bool
		want []byte
	}{
		{"fixed", false, []byte{0xf0, 0, 0x05, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xcb, 0, 7}},
		{"descriptor", true, []byte{0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20,
			0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34,
			0x02, 0x06, 0, 0, 0xcb, 0, 7, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf [SenseSize]byte
			n := s.encode(buf[:], tt.desc)
			if !bytes.Equal(buf[:n], tt.want) {
				t.Fatalf("got  % x\nwant % x", buf[:n], tt.want)
			}
		})
	}
}

// TestCommandErrors checks status, sense key, ASC/ASCQ and the field
// pointer of commands that must fail.
func TestCommandErrors(t *testing.T) {
	read10 := func(flags byte) []byte { b := cdb10(0x28, 0, 1); b[1] = flags; return b }
	withByte := func(b []byte, i int, v byte) []byte { b[i] = v; return b }
	tests := []struct {
		name   string
		cfg    DiskConfig
		cdb    []byte
		out    []byte
		key    byte
		code   asc
		field  int // -1: no field pointer expected
		bit    int
		status Status
	}{
		{name: "unknown opcode", cdb: []byte{0xc0, 0, 0, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidOpcode, field: -1},
		{name: "empty CDB", cdb: []byte{}, key: keyIllegalRequest, code: ascInvalidOpcode, field: -1},
		{name: "reserved bit TUR", cdb: []byte{0, 0x20, 0, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 5},
		{name: "NACA", cdb: []byte{0, 0, 0, 0, 0, 0x04}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 5, bit: 2},
		{name: "short CDB", cdb: []byte{0x28, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 3, bit: 7},
		{name: "RDPROTECT", cdb: read10(0x20), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 7},
		{name: "read10 beyond end", cdb: cdb10(0x28, testBlocks, 1), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "read10 last+1", cdb: cdb10(0x28, testBlocks-1, 2), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "read16 lba -1", cdb: cdb16n(0x88, ^uint64(0), 1), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "read10 0 blocks past end", cdb: cdb10(0x28, testBlocks+1, 0), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "read16 too long", cdb: cdb16n(0x88, 0, maxTransferBytes/512+1), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 10, bit: 7},
		{name: "read12 max transfer", cdb: withByte(cdb16n(0xa8, 0, 0)[:12], 8, 0x81), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 6, bit: 7},
		{name: "write read-only", cfg: DiskConfig{ReadOnly: true}, cdb: cdb10(0x2a, 0, 1), out: make([]byte, 512), key: keyDataProtect, code: ascWriteProtected, field: -1},
		{name: "write same read-only", cfg: DiskConfig{ReadOnly: true}, cdb: cdb10(0x41, 0, 1), out: make([]byte, 512), key: keyDataProtect, code: ascWriteProtected, field: -1},
		{name: "verify bytchk 2", cdb: withByte(cdb10(0x2f, 0, 1), 1, 0x04), out: make([]byte, 512), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 2},
		{name: "write and verify bytchk 3", cdb: withByte(cdb10(0x2e, 0, 1), 1, 0x06), out: make([]byte, 512), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 2},
		{name: "inquiry cmddt", cdb: []byte{0x12, 0x02, 0, 0, 255, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 1},
		{name: "inquiry page without evpd", cdb: cdbInquiry(false, 0x80, 255), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 7},
		{name: "inquiry unknown vpd", cdb: cdbInquiry(true, 0xc5, 255), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 7},
		{name: "report luns short alloc", cdb: []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 6, bit: 7},
		{name: "report luns select 3", cdb: []byte{0xa0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 7},
		{name: "mode sense saved", cdb: []byte{0x1a, 0, 0xff, 0, 255, 0}, key: keyIllegalRequest, code: ascSavingNotSupported, field: -1},
		{name: "mode sense unknown page", cdb: []byte{0x1a, 0, 0x19, 0, 255, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 5},
		{name: "mode sense subpage", cdb: []byte{0x1a, 0, 0x0a, 0x01, 255, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 3, bit: 7},
		{name: "mode select SP", cdb: []byte{0x15, 0x11, 0, 0, 4, 0}, out: make([]byte, 4), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 0},
		{name: "mode select short list", cdb: []byte{0x15, 0x10, 0, 0, 3, 0}, out: make([]byte, 3), key: keyIllegalRequest, code: ascParamListLength, field: -1},
		{name: "mode select unchangeable", cdb: []byte{0x15, 0x10, 0, 0, 16, 0},
			out: []byte{0, 0, 0, 0, 0x0a, 0x0a, 0, 0x20, 0, 0, 0, 0, 0xff, 0xff, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInParam, field: 7, bit: 5},
		{name: "mode select bad length", cdb: []byte{0x15, 0x10, 0, 0, 16, 0},
			out: []byte{0, 0, 0, 0, 0x0a, 0x09, 0, 0x10, 0, 0, 0, 0, 0xff, 0xff, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInParam, field: 5, bit: 7},
		{name: "start stop loej", cdb: []byte{0x1b, 0, 0, 0, 0x02, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 4, bit: 1},
		{name: "read capacity lba without pmi", cdb: cdb10(0x25, 5, 0), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 7},
		{name: "unmap not thin", cdb: cdbUnmap(24), out: unmapList([2]uint64{0, 1}), key: keyIllegalRequest, code: ascInvalidOpcode, field: -1},
		{name: "get lba status not thin", cdb: cdbSA16(0x12, 0, 24), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 4},
		{name: "unknown service action", cdb: cdbSA16(0x11, 0, 24), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 4},
		{name: "unmap short list", cfg: DiskConfig{Thin: true}, cdb: cdbUnmap(6), out: make([]byte, 6), key: keyIllegalRequest, code: ascParamListLength, field: -1},
		{name: "unmap beyond end", cfg: DiskConfig{Thin: true}, cdb: cdbUnmap(24), out: unmapList([2]uint64{testBlocks - 1, 2}), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "unmap anchor", cfg: DiskConfig{Thin: true}, cdb: withByte(cdbUnmap(24), 1, 1), out: unmapList([2]uint64{0, 1}), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 0},
		{name: "unmap read-only", cfg: DiskConfig{Thin: true, ReadOnly: true}, cdb: cdbUnmap(24), out: unmapList([2]uint64{0, 1}), key: keyDataProtect, code: ascWriteProtected, field: -1},
		{name: "write same anchor", cfg: DiskConfig{Thin: true}, cdb: withByte(cdb10(0x41, 0, 1), 1, 0x18), out: make([]byte, 512), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 1, bit: 4},
		{name: "write same too long", cdb: cdb10(0x41, 0, 0), out: make([]byte, 512), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 7, bit: 7},
		{name: "write same short data", cdb: cdb10(0x41, 0, 1), out: make([]byte, 256), key: keyIllegalRequest, code: ascInvalidFieldInCmdIU, field: -1},
		{name: "write same beyond end", cdb: cdb10(0x41, testBlocks+1, 0), out: make([]byte, 512), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "caw wrong data size", cdb: withByte(cdb16n(0x89, 0, 0), 13, 1), out: make([]byte, 2048), key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 13, bit: 7},
		{name: "sync cache beyond end", cdb: cdb10(0x35, testBlocks, 1), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "prefetch beyond end", cdb: cdb16n(0x90, testBlocks, 1), key: keyIllegalRequest, code: ascLBAOutOfRange, field: -1},
		{name: "rsoc bad options", cdb: []byte{0xa3, 0x0c, 0x04, 0, 0, 0, 0, 0, 1, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 2},
		{name: "rsoc one with service action", cdb: []byte{0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 1, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 2},
		{name: "rsoc sa form without sa", cdb: []byte{0xa3, 0x0c, 0x02, 0x28, 0, 0, 0, 0, 1, 0, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 2, bit: 2},
		{name: "rstmf short alloc", cdb: []byte{0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0}, key: keyIllegalRequest, code: ascInvalidFieldInCDB, field: 6, bit: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			c := h.exec(h.a, 0, tt.cdb, tt.out, 4096)
			if c.Status != StatusCheckCondition {
				t.Fatalf("status %#x, want CHECK CONDITION", c.Status)
			}
			s := senseOf(c)
			if s.key != tt.key || s.code != tt.code {
				t.Fatalf("sense key %#x asc %04x, want %#x %04x", s.key, s.code, tt.key, tt.code)
			}
			if tt.field < 0 {
				if s.hasSKS {
					t.Fatalf("unexpected field pointer % x", s.sks)
				}
				return
			}
			wantSKS := [3]byte{0xc8 | byte(tt.bit), byte(tt.field >> 8), byte(tt.field)}
			if tt.code == ascInvalidFieldInParam {
				wantSKS[0] &^= 0x40
			}
			if !s.hasSKS || s.sks != wantSKS {
				t.Fatalf("field pointer % x, want % x", s.sks, wantSKS)
			}
		})
	}
}
