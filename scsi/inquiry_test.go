package scsi

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestStandardInquiry(t *testing.T) {
	h := newHarness(t, DiskConfig{Vendor: "ACME", Product: "DISK\x01X", Serial: "SN1"})
	full := data(h.mustGood(h.a, cdbInquiry(false, 0, 260)))
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"length", len(full), stdInquiryLen},
		{"additional length", int(full[4]), len(full) - 5},
		{"qualifier/type", full[0], byte(0)},
		{"version SPC-4", full[2], byte(6)},
		{"response format, HISUP", full[3], byte(0x12)},
		{"CMDQUE", full[7], byte(0x02)},
		{"vendor", string(full[8:16]), "ACME    "},
		{"product sanitised", string(full[16:32]), "DISK_X          "},
		{"revision", string(full[32:36]), "0001"},
		{"SBC-3 descriptor", binary.BigEndian.Uint16(full[62:]), uint16(0x04c0)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	for alloc := 0; alloc < 256; alloc++ {
		c := h.exec(h.a, 0, cdbInquiry(false, 0, uint16(alloc)), nil, 256)
		if c.Status != StatusGood || c.Wanted != min(alloc, len(full)) || !bytes.Equal(data(c), full[:c.Wanted]) {
			t.Fatalf("alloc %d: status %#x wanted %d", alloc, c.Status, c.Wanted)
		}
	}
}

// vpd fetches VPD page p and checks its header.
func (h *harness) vpd(p byte) []byte {
	h.t.Helper()
	b := data(h.mustGood(h.a, cdbInquiry(true, p, 1024)))
	if b[1] != p || int(binary.BigEndian.Uint16(b[2:]))+4 != len(b) {
		h.t.Fatalf("VPD %#x header % x for %d bytes", p, b[:4], len(b))
	}
	return b
}

func TestVPDPages(t *testing.T) {
	for _, thin := range []bool{false, true} {
		h := newHarness(t, DiskConfig{Thin: thin, Serial: "S-123", NAA: 0xabcdef})
		for _, p := range h.vpd(0x00)[4:] {
			h.vpd(p)
		}
		if s := string(h.vpd(0x80)[4:]); s != "S-123" {
			t.Errorf("serial %q", s)
		}
		bl := h.vpd(0xb0)
		checks := []struct {
			name      string
			got, want uint64
		}{
			{"page length", uint64(bl[3]), 0x3c},
			{"max transfer", uint64(binary.BigEndian.Uint32(bl[8:])), maxTransferBytes / 512},
			{"granularity", uint64(binary.BigEndian.Uint16(bl[6:])), 1},
			{"max write same", binary.BigEndian.Uint64(bl[36:]), maxWriteSameBytes / 512},
			{"max CAW", uint64(bl[5]), maxCAWBlocks},
			{"max unmap", uint64(binary.BigEndian.Uint32(bl[20:])), map[bool]uint64{true: maxUnmapBlocks}[thin]},
			{"max unmap descs", uint64(binary.BigEndian.Uint32(bl[24:])), map[bool]uint64{true: maxUnmapDescs}[thin]},
			{"LBP flags", uint64(h.vpd(0xb2)[5]), map[bool]uint64{true: 0xe4}[thin]},
			{"non-rotating", uint64(binary.BigEndian.Uint16(h.vpd(0xb1)[4:])), 1},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("thin=%v %s: got %d, want %d", thin, c.name, c.got, c.want)
			}
		}
		ids := h.vpd(0x83)[4:]
		var kinds []string
		for len(ids) >= 4 {
			l := int(ids[3])
			d := ids[4 : 4+l]
			switch ids[1] & 0x3f {
			case assocLU | desigNAA:
				if binary.BigEndian.Uint64(d) != 3<<60|0xabcdef {
					t.Errorf("NAA % x", d)
				}
				kinds = append(kinds, "naa")
			case assocLU | desigT10:
				kinds = append(kinds, "t10:"+strings.TrimRight(string(d), " "))
			case assocPort | desigRelPort:
				kinds = append(kinds, "relport")
			case assocPort | desigSCSIName:
				kinds = append(kinds, "port:"+strings.TrimRight(string(d), "\x00"))
			case assocTarget | desigSCSIName:
				kinds = append(kinds, "target:"+strings.TrimRight(string(d), "\x00"))
				if l%4 != 0 {
					t.Errorf("SCSI name length %d not a multiple of 4", l)
				}
			}
			ids = ids[4+l:]
		}
		want := "naa t10:ISERD   VIRTUAL-DISK:S-123 relport port:iqn.2026-11.test:tgt,t,0x1 target:iqn.2026-11.test:tgt"
		if got := strings.Join(kinds, " "); got != want {
			t.Errorf("designators %q\nwant        %q", got, want)
		}
	}
}

func TestNewDiskErrors(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	tests := []struct {
		name string
		cfg  DiskConfig
	}{
		{"block size", DiskConfig{BlockSize: 1024}},
		{"serial", DiskConfig{Serial: "bad\nserial"}},
		{"serial too long", DiskConfig{Serial: strings.Repeat("s", MaxSerialLen+1)}},
	}
	for _, tt := range tests {
		if _, err := NewDisk(h.dev, tt.cfg); err == nil {
			t.Errorf("%s: NewDisk accepted %+v", tt.name, tt.cfg)
		}
	}
	if _, err := NewDisk(nil, DiskConfig{}); err == nil {
		t.Error("NewDisk accepted a nil device")
	}
	d1, _ := NewDisk(h.dev, DiskConfig{Serial: "x"})
	d2, _ := NewDisk(h.dev, DiskConfig{Serial: "x"})
	d3, _ := NewDisk(h.dev, DiskConfig{})
	if d1.Config().NAA != d2.Config().NAA || d1.Config().NAA == d3.Config().NAA || d3.Config().Serial == "" {
		t.Errorf("NAA derivation: %x %x %x", d1.Config().NAA, d2.Config().NAA, d3.Config().NAA)
	}
}

// TestLongestSerial checks that the longest serial, after the longest
// product name, still fits the T10 designator's one-byte length.
func TestLongestSerial(t *testing.T) {
	serial := strings.Repeat("s", MaxSerialLen)
	h := newHarness(t, DiskConfig{Product: "0123456789ABCDEF", Serial: serial})
	if s := string(h.vpd(0x80)[4:]); s != serial {
		t.Errorf("VPD 80h serial of %d bytes, want %d", len(s), len(serial))
	}
	ids := h.vpd(0x83)[4:]
	for len(ids) >= 4 {
		l := int(ids[3])
		if ids[1]&0x3f == assocLU|desigT10 {
			if want := "ISERD   0123456789ABCDEF:" + serial; string(ids[4:4+l]) != want {
				t.Fatalf("T10 designator of %d bytes %q, want %q", l, ids[4:4+l], want)
			}
			return
		}
		ids = ids[4+l:]
	}
	t.Fatal("no T10 designator")
}
