package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/iserd/iserd/bdev"
)

func cdbRSOC(rctd bool, opt, op byte, sa uint16) []byte {
	b := []byte{0xa3, 0x0c, opt | flag(rctd, 0x80), op, 0, 0, 0, 0, 0xff, 0xff, 0, 0}
	binary.BigEndian.PutUint16(b[4:], sa)
	return b
}

// TestReportSupportedOpcodes checks both forms against the command table
// and that the reported usage data is exactly what CDB validation enforces.
func TestReportSupportedOpcodes(t *testing.T) {
	for _, thin := range []bool{false, true} {
		h := newHarness(t, DiskConfig{Thin: thin})
		for _, rctd := range []bool{false, true} {
			b := data(h.mustGood(h.a, cdbRSOC(rctd, 0, 0, 0)))
			size := 8
			if rctd {
				size = 20
			}
			n := 0
			for d := b[4:]; len(d) >= size; d = d[size:] {
				n++
				op, sa, servactv, ctdp := d[0], binary.BigEndian.Uint16(d[2:]), d[5]&1 != 0, d[5]&2 != 0
				if ctdp != rctd || (!servactv && sa != 0) {
					t.Fatalf("descriptor % x", d[:size])
				}
				if rctd && binary.BigEndian.Uint16(d[8:]) != 0x0a {
					t.Fatalf("timeouts descriptor % x", d[8:size])
				}
				opt := byte(1)
				if servactv {
					opt = 2
				}
				one := data(h.mustGood(h.a, cdbRSOC(false, opt, op, sa)))
				e, _, ok := h.disk.lookup(append([]byte{op, byte(sa)}, make([]byte, 14)...))
				if !ok || one[1] != supportYes || !bytes.Equal(one[4:], e.usage) || int(binary.BigEndian.Uint16(one[2:])) != len(e.usage) {
					t.Fatalf("one command %#x/%#x: % x", op, sa, one)
				}
				// Every usage bit passes validation; every other bit fails
				// at its byte and bit.
				if _, ok := e.check(e.usage); !ok {
					t.Fatalf("%#x: usage data fails validation", op)
				}
				for i := 1; i < len(e.usage); i++ {
					for bit := 0; bit < 8; bit++ {
						if e.usage[i]&(1<<bit) != 0 {
							continue
						}
						cdb := bytes.Clone(e.usage)
						cdb[i] |= 1 << bit
						s, ok := e.check(cdb)
						if ok || s.sks != invalidCDB(i, bit).sks {
							t.Fatalf("%#x byte %d bit %d: accepted or wrong pointer", op, i, bit)
						}
					}
				}
			}
			want := 0
			for _, e := range opList {
				if h.disk.has(e) {
					want++
				}
			}
			if n != want || int(binary.BigEndian.Uint32(b)) != n*size {
				t.Fatalf("thin=%v: %d descriptors, want %d", thin, n, want)
			}
		}
		if one := data(h.mustGood(h.a, cdbRSOC(false, 1, 0xc0, 0))); one[1] != supportNo {
			t.Fatalf("unsupported opcode: % x", one)
		}
	}
}

func TestReportTMFs(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	b := data(h.mustGood(h.a, []byte{0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}))
	if len(b) != 4 || b[0] != 0xda {
		t.Fatalf("% x", b)
	}
	if b := data(h.mustGood(h.a, []byte{0xa3, 0x0d, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0})); len(b) != 16 || b[3] != 0x0c {
		t.Fatalf("REPD: % x", b)
	}
}

func BenchmarkRead10(b *testing.B) {
	d, _ := NewDisk(bdev.NewMemory(1<<30), DiskConfig{})
	tgt := NewTarget("iqn.bench")
	tgt.AddLUN(0, d)
	c := &Command{Nexus: &Nexus{ID: 1}, CDB: cdb10(0x28, 0, 8), DataIn: make([]byte, 4096), Done: func(*Command) {}}
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		tgt.Execute(c)
	}
}
