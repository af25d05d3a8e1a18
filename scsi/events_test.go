package scsi

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"github.com/iserd/iserd/bdev"
)

// eventLog records the events a target reports.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.evs
	l.evs = nil
	return evs
}

func TestChangeEvents(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	var log eventLog
	h.tgt.OnEvent(log.add)
	check := func(what string, kind EventKind, lun uint64, code asc, nexuses []uint64) {
		t.Helper()
		evs := log.take()
		if len(evs) != 1 {
			t.Fatalf("%s: %d events", what, len(evs))
		}
		ev := evs[0]
		slices.Sort(ev.Nexuses)
		if ev.Kind != kind || ev.LUN != lun || !slices.Equal(ev.Nexuses, nexuses) ||
			ev.Sense[2] != keyUnitAttention || asc(ev.Sense[12])<<8|asc(ev.Sense[13]) != code {
			t.Fatalf("%s: event %+v", what, ev)
		}
	}
	both := []uint64{h.a.ID, h.b.ID}

	d2, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.tgt.AddLUN(4, d2); err != nil {
		t.Fatal(err)
	}
	check("add", EventReportedLUNsChanged, 4, ascReportedLUNsChanged, both)
	h.expectUA(h.a, ascReportedLUNsChanged)
	if _, err := h.tgt.RemoveLUN(4); err != nil {
		t.Fatal(err)
	}
	check("remove", EventReportedLUNsChanged, 4, ascReportedLUNsChanged, both)
	h.expectUA(h.a, ascReportedLUNsChanged)

	before := binary.BigEndian.Uint64(data(h.mustGood(h.a, cdbSA16(0x10, 0, 32))))
	if err := h.disk.Resize((testBlocks + 8) * 512); err != nil {
		t.Fatal(err)
	}
	check("resize", EventCapacityChanged, 0, ascCapacityChanged, both)
	h.expectUA(h.a, ascCapacityChanged)
	h.expectUA(h.b, ascReportedLUNsChanged)
	h.expectUA(h.b, ascCapacityChanged)
	if after := binary.BigEndian.Uint64(data(h.mustGood(h.a, cdbSA16(0x10, 0, 32)))); after != before+8 {
		t.Fatalf("last LBA %d -> %d after growing 8 blocks", before, after)
	}
	for _, size := range []int64{0, 1000, -512} {
		if err := h.disk.Resize(size); err == nil {
			t.Fatalf("resize to %d accepted", size)
		}
	}

	if err := h.tgt.SetPortGroups([]PortGroup{{ID: 1, Ports: []uint16{1}}}); err != nil {
		t.Fatal(err)
	}
	if err := h.tgt.SetPortGroupState(1, Standby); err != nil {
		t.Fatal(err)
	}
	check("alua", EventALUAChanged, 0, ascALUAChanged, both)
}

// TestNexusACL: a read-only nexus cannot write and sees WP in MODE SENSE;
// a nexus with a LUN list sees exactly it in REPORT LUNS.
func TestNexusACL(t *testing.T) {
	h := newHarness(t, DiskConfig{Thin: true})
	h.a.ReadOnly = true
	h.b.LUNs = []uint64{7, 2}
	for _, cdb := range [][]byte{cdb10(0x2a, 0, 1), cdb16n(0x93, 0, 1), cdbUnmap(24), cdb16n(0x9c, 0, 1)} {
		c := h.exec(h.a, 0, cdb, make([]byte, 512), 0)
		if s := senseOf(c); s.key != keyDataProtect || s.code != ascWriteProtected {
			t.Fatalf("cdb % x from a read-only nexus: %#x %+v", cdb, c.Status, s)
		}
	}
	h.mustGood(h.a, cdb10(0x28, 0, 1))
	h.mustGood(h.b, cdb10(0x2a, 0, 1), make([]byte, 512)...)
	for n, wp := range map[*Nexus]bool{h.a: true, h.b: false} {
		if b := data(h.mustGood(n, []byte{0x1a, 0, 0x3f, 0, 255, 0})); (b[2]&0x80 != 0) != wp {
			t.Fatalf("nexus %d: MODE SENSE device-specific %#x", n.ID, b[2])
		}
	}
	luns := func(n *Nexus) []byte { return data(h.mustGood(n, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})) }
	if b := luns(h.b); binary.BigEndian.Uint32(b) != 16 || b[9] != 2 || b[17] != 7 {
		t.Fatalf("REPORT LUNS with a LUN list: % x", b)
	}
	if b := luns(h.a); binary.BigEndian.Uint32(b) != 8 {
		t.Fatalf("REPORT LUNS without a LUN list: % x", b)
	}
}

func TestWriteAtomic(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	blk := bytes.Repeat([]byte{0x5a}, 1024)
	h.mustGood(h.a, cdbAtomic(4, 2, 0), blk...)
	if got := data(h.mustGood(h.a, cdb10(0x28, 4, 2))); !bytes.Equal(got, blk) {
		t.Fatal("atomic write did not land")
	}
	h.mustGood(h.a, cdbAtomic(4, 0, 0))
	bl := data(h.mustGood(h.a, cdbInquiry(true, 0xb0, 64)))
	if binary.BigEndian.Uint32(bl[44:]) != maxAtomicBytes/512 || binary.BigEndian.Uint32(bl[48:]) != 1 {
		t.Fatalf("block limits atomic fields % x", bl[44:64])
	}
	tests := []struct {
		cdb  []byte
		code asc
	}{
		{cdbAtomic(testBlocks-1, 2, 0), ascLBAOutOfRange},
		{cdbAtomic(0, 1, 1), ascInvalidFieldInCDB},                    // ATOMIC BOUNDARY
		{cdbAtomic(0, maxAtomicBytes/512+1, 0), ascInvalidFieldInCDB}, // too long
	}
	for _, tt := range tests {
		c := h.exec(h.a, 0, tt.cdb, make([]byte, maxAtomicBytes+512), 0)
		if s := senseOf(c); s.code != tt.code {
			t.Errorf("cdb % x: %#x %+v, want %04x", tt.cdb, c.Status, s, tt.code)
		}
	}
}

func cdbAtomic(lba uint64, n, boundary uint16) []byte {
	b := make([]byte, 16)
	b[0] = 0x9c
	binary.BigEndian.PutUint64(b[2:], lba)
	binary.BigEndian.PutUint16(b[10:], boundary)
	binary.BigEndian.PutUint16(b[12:], n)
	return b
}

func TestReadDefectData(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	if b := data(h.mustGood(h.a, []byte{0x37, 0, 0x18 | 5, 0, 0, 0, 0, 0, 32, 0})); !bytes.Equal(b, []byte{0, 0x1d, 0, 0}) {
		t.Fatalf("READ DEFECT DATA (10): % x", b)
	}
	if b := data(h.mustGood(h.a, []byte{0xb7, 0x08 | 3, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0})); !bytes.Equal(b, []byte{0, 0x0b, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("READ DEFECT DATA (12): % x", b)
	}
}
