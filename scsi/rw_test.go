package scsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"unsafe"

	"github.com/iserd/iserd/bdev"
)

// TestReadWriteForms writes with every WRITE form and reads back with the
// matching READ form.
func TestReadWriteForms(t *testing.T) {
	six := func(op byte, lba uint32, n byte) []byte {
		return []byte{op, byte(lba>>16) & 0x1f, byte(lba >> 8), byte(lba), n, 0}
	}
	twelve := func(op byte, lba, n uint32) []byte {
		b := make([]byte, 12)
		b[0] = op
		binary.BigEndian.PutUint32(b[2:], lba)
		binary.BigEndian.PutUint32(b[6:], n)
		return b
	}
	tests := []struct {
		name      string
		bs        uint32
		write     []byte
		read      []byte
		lba, nblk int
	}{
		{"6", 512, six(0x0a, 100, 3), six(0x08, 100, 3), 100, 3},
		{"6 zero means 256", 512, six(0x0a, 7, 0), six(0x08, 7, 0), 7, 256},
		{"10", 512, cdb10(0x2a, 5000, 8), cdb10(0x28, 5000, 8), 5000, 8},
		{"10 FUA", 512, append([]byte{0x2a, 0x08}, cdb10(0x2a, 9, 2)[2:]...), cdb10(0x28, 9, 2), 9, 2},
		{"12", 512, twelve(0xaa, 77, 5), twelve(0xa8, 77, 5), 77, 5},
		{"16 last block", 512, cdb16n(0x8a, testBlocks-1, 1), cdb16n(0x88, testBlocks-1, 1), testBlocks - 1, 1},
		{"write and verify 10", 512, cdb10(0x2e, 40, 2), cdb10(0x28, 40, 2), 40, 2},
		{"write and verify 16", 512, cdb16n(0x8e, 41, 2), cdb16n(0x88, 41, 2), 41, 2},
		{"16 4k blocks", 4096, cdb16n(0x8a, 3, 2), cdb16n(0x88, 3, 2), 3, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{BlockSize: tt.bs})
			n := tt.nblk * int(tt.bs)
			payload := make([]byte, n)
			for i := range payload {
				payload[i] = byte(i*7 + tt.lba)
			}
			w := h.exec(h.a, 0, tt.write, payload, 0)
			if w.Status != StatusGood || w.Wanted != n {
				t.Fatalf("write: status %#x wanted %d sense %+v", w.Status, w.Wanted, senseOf(w))
			}
			r := h.exec(h.a, 0, tt.read, nil, n)
			if r.Status != StatusGood || r.Wanted != n || !bytes.Equal(data(r), payload) {
				t.Fatalf("read: status %#x wanted %d inlen %d", r.Status, r.Wanted, r.InLen)
			}
		})
	}
}

// directDev serves only what O_DIRECT could, as a cluster's direct-only
// store: reads and writes of whole 512-byte blocks from 512-byte aligned
// buffers; anything else fails with bdev.ErrMisaligned.
type directDev struct{ bdev.Device }

func (d directDev) Submit(r *bdev.Request) {
	if (r.Op == bdev.OpRead || r.Op == bdev.OpWrite) && len(r.Buf) > 0 &&
		(r.Offset%512 != 0 || len(r.Buf)%512 != 0 || uintptr(unsafe.Pointer(&r.Buf[0]))%512 != 0) {
		r.Err = bdev.ErrMisaligned
		r.Done(r)
		return
	}
	d.Device.Submit(r)
}

// TestTransferLengthMismatch follows libiscsi's residual tests: only whole
// blocks the initiator sent are written, never more than the CDB asks for;
// reads fill what the buffer holds (from whole blocks read: the store may
// be direct-only); Wanted is always the CDB's length.
func TestTransferLengthMismatch(t *testing.T) {
	tests := []struct {
		name     string
		cdbBlks  uint16
		out      int
		wantA    int // blocks of 'b' expected at LBA 0.. (rest stays 'a')
		readBuf  int
		readWant int
	}{
		{"no data", 1, 0, 0, 0, 0},
		{"more data", 1, 10000, 1, 10000, 512},
		{"partial block", 1, 200, 0, 200, 200},
		{"half", 2, 512, 1, 512, 512},
		{"exact", 2, 1024, 2, 1024, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessOn(t, directDev{bdev.NewMemory(testBlocks * 512)}, DiskConfig{})
			h.mustGood(h.a, cdb10(0x2a, 0, 2), fill(1024, 'a')...)
			c := h.exec(h.a, 0, cdb10(0x2a, 0, tt.cdbBlks), fill(tt.out, 'b'), 0)
			if c.Status != StatusGood || c.Wanted != int(tt.cdbBlks)*512 {
				t.Fatalf("write: status %#x wanted %d", c.Status, c.Wanted)
			}
			r := h.mustGood(h.a, cdb10(0x28, 0, 2))
			want := append(fill(tt.wantA*512, 'b'), fill(1024-tt.wantA*512, 'a')...)
			if !bytes.Equal(data(r), want) {
				t.Fatalf("medium after write does not hold %d blocks of 'b'", tt.wantA)
			}
			r = h.exec(h.a, 0, cdb10(0x28, 0, tt.cdbBlks), nil, tt.readBuf)
			if r.Status != StatusGood || r.InLen != min(tt.readBuf, int(tt.cdbBlks)*512) || r.Wanted != int(tt.cdbBlks)*512 {
				t.Fatalf("read: status %#x sense %+v inlen %d wanted %d", r.Status, senseOf(r), r.InLen, r.Wanted)
			}
			if !bytes.Equal(data(r), want[:r.InLen]) {
				t.Fatal("read returned other data")
			}
		})
	}
}

func TestVerify(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	pattern := make([]byte, 4*512)
	for i := range pattern {
		pattern[i] = byte(i)
	}
	h.mustGood(h.a, cdb10(0x2a, 10, 4), pattern...)
	h.mustGood(h.a, cdb10(0x2a, 20, 1), pattern[:512]...)
	h.mustGood(h.a, cdb10(0x2a, 21, 1), pattern[:512]...)
	bad := bytes.Clone(pattern)
	bad[1500] ^= 0xff
	bytchk := func(cdb []byte, v byte) []byte { cdb[1] = v << 1; return cdb }
	tests := []struct {
		name string
		cdb  []byte
		out  []byte
		off  int // -1: GOOD
	}{
		{"bytchk 0", bytchk(cdb10(0x2f, 10, 4), 0), nil, -1},
		{"bytchk 1 match", bytchk(cdb10(0x2f, 10, 4), 1), pattern, -1},
		{"bytchk 1 mismatch", bytchk(cdb10(0x2f, 10, 4), 1), bad, 1500},
		{"verify16 mismatch", bytchk(cdb16n(0x8f, 10, 4), 1), bad, 1500},
		{"bytchk 3 match", bytchk(cdb10(0x2f, 20, 2), 3), pattern[:512], -1},
		{"bytchk 3 mismatch", bytchk(cdb10(0x2f, 20, 3), 3), pattern[:512], 1025}, // LBA 22 is zero; byte 0 matches
		{"zero blocks", bytchk(cdb10(0x2f, 0, 0), 1), nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.exec(h.a, 0, tt.cdb, tt.out, 0)
			if tt.off < 0 {
				if c.Status != StatusGood {
					t.Fatalf("status %#x sense %+v", c.Status, senseOf(c))
				}
				return
			}
			s := senseOf(c)
			if c.Status != StatusCheckCondition || s.key != keyMiscompare || s.code != ascMiscompareVerify || !s.hasInfo || s.info != uint64(tt.off) {
				t.Fatalf("status %#x sense %+v, want MISCOMPARE at %d", c.Status, s, tt.off)
			}
		})
	}
}

func TestWriteSame(t *testing.T) {
	tests := []struct {
		name string
		cfg  DiskConfig
		cdb  []byte
		blk  []byte
		lba  uint32
		n    int
		want byte
	}{
		{"pattern 10", DiskConfig{}, cdb10(0x41, 100, 300), fill(512, 0x5a), 100, 300, 0x5a},
		{"pattern 16", DiskConfig{}, cdb16n(0x93, 7, 2500), fill(512, 0x11), 7, 2500, 0x11},
		{"unmap thin", DiskConfig{Thin: true}, append([]byte{0x41, 0x08}, cdb10(0x41, 100, 300)[2:]...), make([]byte, 512), 100, 300, 0},
		{"unmap ignores data", DiskConfig{Thin: true}, append([]byte{0x41, 0x08}, cdb10(0x41, 100, 300)[2:]...), fill(512, 0xff), 100, 300, 0},
		{"unmap thick writes", DiskConfig{}, append([]byte{0x41, 0x08}, cdb10(0x41, 100, 300)[2:]...), fill(512, 0xff), 100, 300, 0xff},
		{"ndob", DiskConfig{Thin: true}, append([]byte{0x93, 0x09}, cdb16n(0x93, 100, 300)[2:]...), nil, 100, 300, 0},
		{"to end", DiskConfig{}, cdb10(0x41, testBlocks-5, 0), fill(512, 0x77), testBlocks - 5, 5, 0x77},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			h.mustGood(h.a, cdb10(0x2a, tt.lba, 1), fill(512, 0xee)...)
			h.mustGood(h.a, tt.cdb, tt.blk...)
			r := h.exec(h.a, 0, cdb16n(0x88, uint64(tt.lba), uint32(tt.n)), nil, tt.n*512)
			got := data(r)
			if r.Status != StatusGood || len(got) != tt.n*512 {
				t.Fatalf("read back: status %#x, %d bytes", r.Status, len(got))
			}
			if !bytes.Equal(got[:tt.n*512], fill(tt.n*512, tt.want)) {
				t.Fatalf("blocks do not all hold %#x", tt.want)
			}
		})
	}
}

// failingDev fails every request with err, as a backend whose I/O path
// broke does (a ring that refuses submissions fails them with ErrMedium).
type failingDev struct {
	bdev.Device
	err error
}

func (f failingDev) Submit(r *bdev.Request) {
	r.Err = f.err
	r.Done(r)
}

// TestBackendErrorSense checks that a backend's error reaches the
// initiator as the sense it stands for.
func TestBackendErrorSense(t *testing.T) {
	medium := fmt.Errorf("io_uring submit: %w (operation not supported)", bdev.ErrMedium)
	for _, c := range []struct {
		name string
		err  error
		cdb  []byte
		out  []byte
		key  byte
		code asc
	}{
		{"read, medium", medium, cdb10(0x28, 8, 1), nil, keyMediumError, ascUnrecoveredRead},
		{"write, medium", medium, cdb10(0x2a, 8, 1), make([]byte, 512), keyMediumError, ascWriteError},
		{"write, no space", bdev.ErrNoSpace, cdb10(0x2a, 8, 1), make([]byte, 512), keyDataProtect, ascSpaceAllocFailed},
		{"read, unclassified", errors.New("what"), cdb10(0x28, 8, 1), nil, keyAbortedCommand, ascInternalTargetFailure},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarnessOn(t, failingDev{bdev.NewMemory(testBlocks * 512), c.err}, DiskConfig{BlockSize: 512})
			cmd := h.exec(h.a, 0, c.cdb, c.out, 512)
			if s := senseOf(cmd); cmd.Status != StatusCheckCondition || s.key != c.key || s.code != c.code {
				t.Fatalf("status %#x sense %+v, want CHECK CONDITION key %#x code %#x", cmd.Status, s, c.key, c.code)
			}
		})
	}
}

// inlineDev records the Inline hint of every request it passes on.
type inlineDev struct {
	bdev.Device
	mu     sync.Mutex
	inline []bool
}

func (d *inlineDev) Submit(r *bdev.Request) {
	d.mu.Lock()
	d.inline = append(d.inline, r.Inline)
	d.mu.Unlock()
	d.Device.Submit(r)
}

// TestInlineHint checks that Command.Inline reaches the backend on the
// command's first request only: later steps run on whichever goroutine
// completed the one before.
func TestInlineHint(t *testing.T) {
	dev := &inlineDev{Device: bdev.NewMemory(testBlocks * 512)}
	h := newHarnessOn(t, dev, DiskConfig{BlockSize: 512})
	for _, c := range []struct {
		name   string
		inline bool
		cdb    []byte
		out    []byte
		want   []bool
	}{
		{"write", true, cdb10(0x2a, 100, 2), fill(1024, 'A'), []bool{true}},
		{"read", true, cdb10(0x28, 100, 2), nil, []bool{true}},
		{"read without hint", false, cdb10(0x28, 100, 2), nil, []bool{false}},
		{"compare and write", true, cdbCAW(100, 2), append(fill(1024, 'A'), fill(1024, 'B')...), []bool{true, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev.mu.Lock()
			dev.inline = nil
			dev.mu.Unlock()
			done := make(chan struct{})
			cmd := &Command{Nexus: h.a, CDB: c.cdb, DataOut: c.out, DataIn: make([]byte, 1024), Inline: c.inline,
				Done: func(*Command) { close(done) }}
			h.tgt.Execute(cmd)
			<-done
			if cmd.Status != StatusGood {
				t.Fatalf("status %#x sense %+v", cmd.Status, senseOf(cmd))
			}
			dev.mu.Lock()
			defer dev.mu.Unlock()
			if !slices.Equal(dev.inline, c.want) {
				t.Errorf("requests' Inline %v, want %v", dev.inline, c.want)
			}
		})
	}
}
