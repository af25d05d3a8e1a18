package scsi

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
)

const testBlocks = 1 << 21 // 1 GiB at 512-byte blocks (memory is sparse)

// harness is a target with one disk at LUN 0 and two nexuses whose
// power-on unit attentions have been consumed (the disk may be sanitizing).
type harness struct {
	t    *testing.T
	tgt  *Target
	disk *Disk
	dev  bdev.Device
	a, b *Nexus
}

func newHarness(t *testing.T, cfg DiskConfig) *harness {
	t.Helper()
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	return newHarnessOn(t, bdev.NewMemory(testBlocks*int64(cfg.BlockSize)), cfg)
}

func newHarnessOn(t *testing.T, dev bdev.Device, cfg DiskConfig) *harness {
	t.Helper()
	d, err := NewDisk(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, tgt: NewTarget("iqn.2026-11.test:tgt"), disk: d, dev: dev}
	if err := h.tgt.AddLUN(0, d); err != nil {
		t.Fatal(err)
	}
	h.a = &Nexus{ID: 1, InitiatorPort: "iqn.a,i,0x1", TargetPort: "iqn.2026-11.test:tgt,t,0x1", RelativePort: 1}
	h.b = &Nexus{ID: 2, InitiatorPort: "iqn.b,i,0x2", TargetPort: "iqn.2026-11.test:tgt,t,0x1", RelativePort: 1}
	h.tgt.AddNexus(h.a)
	h.tgt.AddNexus(h.b)
	for _, n := range []*Nexus{h.a, h.b} {
		if c := h.run(n, cdbTUR()); c.Status != StatusCheckCondition || senseOf(c).code != ascPowerOnReset {
			t.Fatalf("first TUR: status %#x sense %+v, want POWER ON UA", c.Status, senseOf(c))
		}
		if c := h.run(n, cdbTUR()); c.Status != StatusGood && !sanitizeBlocked(senseOf(c)) {
			t.Fatalf("second TUR: status %#x sense %+v", c.Status, senseOf(c))
		}
	}
	t.Cleanup(func() { d.Close() })
	return h
}

// sanitizeBlocked reports whether s refuses a command because of a sanitize
// running or failed on the unit.
func sanitizeBlocked(s senseData) bool {
	return s.key == keyNotReady && s.code == ascSanitizeInProgress || s.key == keyMediumError && s.code == ascSanitizeFailed
}

// exec runs cdb on LUN lun from nexus n and waits for Done.
func (h *harness) exec(n *Nexus, lun uint64, cdb, out []byte, inLen int) *Command {
	h.t.Helper()
	done := make(chan struct{}, 2)
	// DataIn is page-aligned, as the transports' pool buffers are.
	c := &Command{Nexus: n, LUN: lun, CDB: cdb, DataOut: out, DataIn: alignedBuf(inLen)}
	c.Done = func(*Command) { done <- struct{}{} }
	h.tgt.Execute(c)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("cdb % x: Done not called", cdb)
	}
	select {
	case <-done:
		h.t.Fatalf("cdb % x: Done called twice", cdb)
	case <-time.After(time.Millisecond):
	}
	if c.InLen > len(c.DataIn) {
		h.t.Fatalf("cdb % x: InLen %d > len(DataIn) %d", cdb, c.InLen, len(c.DataIn))
	}
	return c
}

// run executes a command without data-out and a 64 KiB data-in buffer.
func (h *harness) run(n *Nexus, cdb []byte) *Command { return h.exec(n, 0, cdb, nil, 65536) }

// mustGood runs cdb with data-out out and fails unless the status is GOOD.
func (h *harness) mustGood(n *Nexus, cdb []byte, out ...byte) *Command {
	h.t.Helper()
	c := h.exec(n, 0, cdb, out, 65536)
	if c.Status != StatusGood {
		h.t.Fatalf("cdb % x: status %#x sense %+v", cdb, c.Status, senseOf(c))
	}
	return c
}

// data returns the data-in bytes of c.
func data(c *Command) []byte { return c.DataIn[:c.InLen] }

// senseOf decodes the sense data of c (fixed or descriptor format).
func senseOf(c *Command) senseData {
	b := c.Sense[:c.SenseLen]
	var s senseData
	if len(b) < 8 {
		return s
	}
	switch b[0] & 0x7f {
	case 0x70:
		s.key, s.code = b[2]&0x0f, asc(b[12])<<8|asc(b[13])
		if b[0]&0x80 != 0 {
			s.info, s.hasInfo = uint64(binary.BigEndian.Uint32(b[3:])), true
		}
		if b[15]&0x80 != 0 {
			s.hasSKS = true
			copy(s.sks[:], b[15:18])
		}
	case 0x72:
		s.key, s.code = b[1]&0x0f, asc(b[2])<<8|asc(b[3])
		for d := b[8:]; len(d) >= 2; d = d[2+int(d[1]):] {
			switch d[0] {
			case 0x00:
				s.info, s.hasInfo = binary.BigEndian.Uint64(d[4:]), true
			case 0x02:
				s.hasSKS = true
				copy(s.sks[:], d[4:7])
			}
		}
	}
	return s
}

// CDB builders.

func cdbTUR() []byte { return []byte{0x00, 0, 0, 0, 0, 0} }

func cdb10(op byte, lba uint32, n uint16) []byte {
	b := make([]byte, 10)
	b[0] = op
	binary.BigEndian.PutUint32(b[2:], lba)
	binary.BigEndian.PutUint16(b[7:], n)
	return b
}

func cdb16n(op byte, lba uint64, n uint32) []byte {
	b := make([]byte, 16)
	b[0] = op
	binary.BigEndian.PutUint64(b[2:], lba)
	binary.BigEndian.PutUint32(b[10:], n)
	return b
}

func cdbInquiry(evpd bool, page byte, alloc uint16) []byte {
	b := []byte{0x12, 0, page, 0, 0, 0}
	if evpd {
		b[1] = 1
	}
	binary.BigEndian.PutUint16(b[3:], alloc)
	return b
}

func cdbSA16(sa byte, lba uint64, alloc uint32) []byte {
	b := cdb16n(0x9e, lba, alloc)
	b[1] = sa
	return b
}

func fill(n int, v byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = v
	}
	return b
}

// unmapList builds UNMAP parameter data for (lba, count) pairs.
func unmapList(ranges ...[2]uint64) []byte {
	b := make([]byte, 8+16*len(ranges))
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	binary.BigEndian.PutUint16(b[2:], uint16(16*len(ranges)))
	for i, r := range ranges {
		binary.BigEndian.PutUint64(b[8+16*i:], r[0])
		binary.BigEndian.PutUint32(b[8+16*i+8:], uint32(r[1]))
	}
	return b
}

func cdbUnmap(plen int) []byte {
	b := make([]byte, 10)
	b[0] = 0x42
	binary.BigEndian.PutUint16(b[7:], uint16(plen))
	return b
}
