package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

const chunkBlocks = 2048 // the memory device allocates 1 MiB chunks

// lbaStatus returns the (lba, count, status) descriptors of GET LBA STATUS.
func (h *harness) lbaStatus(lba uint64) [][3]uint64 {
	h.t.Helper()
	b := data(h.mustGood(h.a, cdbSA16(0x12, lba, 1024)))
	if int(binary.BigEndian.Uint32(b))+4 != len(b) {
		h.t.Fatalf("GET LBA STATUS length % x for %d bytes", b[:4], len(b))
	}
	var out [][3]uint64
	for d := b[8:]; len(d) >= 16; d = d[16:] {
		out = append(out, [3]uint64{binary.BigEndian.Uint64(d), uint64(binary.BigEndian.Uint32(d[8:])), uint64(d[12])})
	}
	return out
}

func TestThinProvisioning(t *testing.T) {
	h := newHarness(t, DiskConfig{Thin: true})
	rc := data(h.mustGood(h.a, cdbSA16(0x10, 0, 32)))
	if rc[14] != 0xc0 || rc[13] != 0 || binary.BigEndian.Uint64(rc) != testBlocks-1 {
		t.Fatalf("READ CAPACITY (16) % x", rc)
	}
	if got := h.lbaStatus(0); got[0] != [3]uint64{0, testBlocks, provDeallocated} {
		t.Fatalf("empty disk: %v", got)
	}
	h.mustGood(h.a, cdb10(0x2a, chunkBlocks, 1), fill(512, 1)...)
	want := [][3]uint64{{0, chunkBlocks, 1}, {chunkBlocks, chunkBlocks, 0}, {2 * chunkBlocks, testBlocks - 2*chunkBlocks, 1}}
	if got := h.lbaStatus(0); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("one chunk written: %v", got)
	}
	if got := h.lbaStatus(chunkBlocks + 5); got[0] != [3]uint64{chunkBlocks + 5, chunkBlocks - 5, provMapped} {
		t.Fatalf("status from inside the chunk: %v", got)
	}

	tests := []struct {
		name   string
		deallo func(h *harness)
	}{
		{"unmap", func(h *harness) {
			p := unmapList([2]uint64{chunkBlocks, chunkBlocks}, [2]uint64{0, 0})
			h.mustGood(h.a, cdbUnmap(len(p)), p...)
		}},
		{"write same unmap", func(h *harness) {
			h.mustGood(h.a, append([]byte{0x41, 0x08}, cdb10(0x41, chunkBlocks, chunkBlocks)[2:]...), make([]byte, 512)...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.mustGood(h.a, cdb10(0x2a, chunkBlocks, 1), fill(512, 1)...)
			tt.deallo(h)
			if got := h.lbaStatus(chunkBlocks); got[0][2] != provDeallocated {
				t.Fatalf("after deallocation: %v", got)
			}
			if r := data(h.mustGood(h.a, cdb10(0x28, chunkBlocks, 1))); !bytes.Equal(r, make([]byte, 512)) {
				t.Fatal("deallocated block does not read back as zeroes (LBPRZ)")
			}
		})
	}

	// UNMAP parameter list edge cases that succeed.
	for _, p := range [][]byte{unmapList(), unmapList([2]uint64{testBlocks, 0}), unmapList([2]uint64{5, 0}, [2]uint64{5, 0})} {
		h.mustGood(h.a, cdbUnmap(len(p)), p...)
	}
	h.mustGood(h.a, cdbUnmap(0))
	if c := h.run(h.a, cdbSA16(0x12, testBlocks, 24)); senseOf(c).code != ascLBAOutOfRange {
		t.Fatalf("GET LBA STATUS past the end: %+v", senseOf(c))
	}
	many := unmapList(make([][2]uint64, maxUnmapDescs+1)...)
	if c := h.exec(h.a, 0, cdbUnmap(len(many)), many, 0); senseOf(c).code != ascInvalidFieldInParam {
		t.Fatalf("too many descriptors: %+v", senseOf(c))
	}
}
