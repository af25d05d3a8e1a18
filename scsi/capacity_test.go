package scsi

import (
	"encoding/binary"
	"testing"

	"github.com/iserd/iserd/bdev"
)

// TestPhysicalBlockSize: the physical block size is reported as LOGICAL
// BLOCKS PER PHYSICAL BLOCK EXPONENT and as the Block Limits granularities;
// sizes that are not a power of two from the block size to 64 KiB are
// refused.
func TestPhysicalBlockSize(t *testing.T) {
	tests := []struct {
		block, physical uint32
		exp             byte
	}{
		{512, 0, 0},
		{512, 512, 0},
		{512, 4096, 3},
		{512, 64 << 10, 7},
		{4096, 0, 0},
		{4096, 16384, 2},
	}
	for _, tt := range tests {
		h := newHarness(t, DiskConfig{BlockSize: tt.block, PhysicalBlockSize: tt.physical, Thin: true})
		rc := data(h.mustGood(h.a, cdbSA16(0x10, 0, 32)))
		if rc[13] != tt.exp || binary.BigEndian.Uint16(rc[14:])&0x3fff != 0 {
			t.Errorf("%d/%d: READ CAPACITY (16) byte 13 %#x, lowest aligned LBA %d; want exponent %d, 0",
				tt.block, tt.physical, rc[13], binary.BigEndian.Uint16(rc[14:])&0x3fff, tt.exp)
		}
		bl := data(h.mustGood(h.a, cdbInquiry(true, 0xb0, 64)))
		if otlg, oug := binary.BigEndian.Uint16(bl[6:]), binary.BigEndian.Uint32(bl[28:]); otlg != 1<<tt.exp || oug != 1<<tt.exp {
			t.Errorf("%d/%d: OPTIMAL TRANSFER LENGTH GRANULARITY %d, OPTIMAL UNMAP GRANULARITY %d; want %d",
				tt.block, tt.physical, otlg, oug, 1<<tt.exp)
		}
	}
	for _, cfg := range []DiskConfig{
		{BlockSize: 512, PhysicalBlockSize: 256},
		{BlockSize: 4096, PhysicalBlockSize: 512},
		{BlockSize: 512, PhysicalBlockSize: 3072},
		{BlockSize: 512, PhysicalBlockSize: 128 << 10},
	} {
		if _, err := NewDisk(bdev.NewMemory(1<<20), cfg); err == nil {
			t.Errorf("%d-byte physical blocks over %d-byte blocks accepted", cfg.PhysicalBlockSize, cfg.BlockSize)
		}
	}
}

// TestLBAStatusUnalignedStart: on a unit with 8 logical blocks per
// physical block, GET LBA STATUS from an LBA inside a physical block
// starts its first descriptor at that LBA (SBC-4), not at the next
// physical block.
func TestLBAStatusUnalignedStart(t *testing.T) {
	h := newHarness(t, DiskConfig{BlockSize: 512, PhysicalBlockSize: 4096, Thin: true})
	h.mustGood(h.a, cdb10(0x2a, 0, 24), make([]byte, 24*512)...)
	list := unmapList([2]uint64{0, 8})
	h.mustGood(h.a, cdbUnmap(len(list)), list...)
	b := data(h.mustGood(h.a, cdbSA16(0x12, 9, 24)))
	if lba := binary.BigEndian.Uint64(b[8:]); lba != 9 {
		t.Fatalf("GET LBA STATUS from LBA 9: first descriptor at LBA %d", lba)
	}
}
