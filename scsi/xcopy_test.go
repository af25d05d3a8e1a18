package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/iserd/iserd/bdev"
)

// xcCSCD is an identification CSCD descriptor naming the LU with naa.
func xcCSCD(naa uint64) []byte {
	d := make([]byte, xcCSCDLen)
	d[0] = xcIdentCSCD
	d[4], d[5], d[7] = codeBinary, assocLU|desigNAA, 8
	binary.BigEndian.PutUint64(d[8:], 3<<60|naa)
	binary.BigEndian.PutUint32(d[28:], 512)
	return d
}

// xcSeg is a block-to-block segment descriptor.
func xcSeg(src, dst uint16, n uint16, srcLBA, dstLBA uint64) []byte {
	d := make([]byte, xcB2BLen)
	d[0] = xcBlockToBlock
	binary.BigEndian.PutUint16(d[2:], xcB2BLen-4)
	binary.BigEndian.PutUint16(d[4:], src)
	binary.BigEndian.PutUint16(d[6:], dst)
	binary.BigEndian.PutUint16(d[10:], n)
	binary.BigEndian.PutUint64(d[12:], srcLBA)
	binary.BigEndian.PutUint64(d[20:], dstLBA)
	return d
}

// xcList is an EXTENDED COPY parameter list.
func xcList(list, usage byte, cscds, segs [][]byte) []byte {
	b := make([]byte, xcHeaderLen)
	b[0], b[1] = list, usage<<3
	var cl, sl int
	for _, c := range cscds {
		cl += len(c)
	}
	for _, s := range segs {
		sl += len(s)
	}
	binary.BigEndian.PutUint16(b[2:], uint16(cl))
	binary.BigEndian.PutUint32(b[8:], uint32(sl))
	for _, c := range cscds {
		b = append(b, c...)
	}
	for _, s := range segs {
		b = append(b, s...)
	}
	return b
}

func cdbXCopy(plen int) []byte {
	b := make([]byte, 16)
	b[0] = 0x83
	binary.BigEndian.PutUint32(b[10:], uint32(plen))
	return b
}

func cdbRCR(sa, list byte) []byte {
	b := make([]byte, 16)
	b[0], b[1], b[2] = 0x84, sa, list
	binary.BigEndian.PutUint32(b[10:], 1024)
	return b
}

func TestExtendedCopy(t *testing.T) {
	h := newHarness(t, DiskConfig{NAA: 0x100})
	dev1 := bdev.NewMemory(1 << 20)
	d1, err := NewDisk(dev1, DiskConfig{NAA: 0x200})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.tgt.AddLUN(1, d1); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Nexus{h.a, h.b} {
		h.mustGood(n, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}) // clears the LUN change UAs
	}
	pattern := bytes.Repeat([]byte("xcopy-lid1"), 3*512/10+1)[:3*512]
	h.mustGood(h.a, cdb10(0x2a, 10, 3), pattern...)

	// Within LU 0 (kept results, list 7) and from LU 0 to LU 1 (discarded).
	list := xcList(7, 0, [][]byte{xcCSCD(0x100), xcCSCD(0x200)}, [][]byte{xcSeg(0, 0, 3, 10, 100), xcSeg(0, 1, 3, 10, 5)})
	h.mustGood(h.a, cdbXCopy(len(list)), list...)
	if got := data(h.mustGood(h.a, cdb10(0x28, 100, 3))); !bytes.Equal(got, pattern) {
		t.Fatal("copy within the LU differs")
	}
	if got := data(h.exec(h.a, 1, cdb10(0x28, 5, 3), nil, 3*512)); !bytes.Equal(got, pattern) {
		t.Fatal("copy to LUN 1 differs")
	}
	st := data(h.mustGood(h.a, cdbRCR(rcrCopyStatus, 7)))
	if st[4] != copyStatusOK || binary.BigEndian.Uint16(st[5:]) != 2 || binary.BigEndian.Uint32(st[8:]) != 2*3*512 {
		t.Fatalf("copy status % x", st)
	}
	// Results are per nexus, and a discarded list keeps none.
	for _, c := range []*Command{h.run(h.b, cdbRCR(rcrCopyStatus, 7)), h.run(h.a, cdbRCR(rcrCopyStatus, 8))} {
		if senseOf(c).code != ascInvalidFieldInCDB {
			t.Fatalf("copy status of an unknown list: %#x %+v", c.Status, senseOf(c))
		}
	}
	discard := xcList(8, 3, [][]byte{xcCSCD(0x100)}, [][]byte{xcSeg(0, 0, 1, 0, 1)})
	h.mustGood(h.a, cdbXCopy(len(discard)), discard...)
	if c := h.run(h.a, cdbRCR(rcrCopyStatus, 8)); c.Status != StatusCheckCondition {
		t.Fatal("results of a LIST ID USAGE 11b copy were kept")
	}
	op := data(h.mustGood(h.a, cdbRCR(rcrOpParams, 0)))
	if binary.BigEndian.Uint16(op[8:]) != xcMaxCSCDs || binary.BigEndian.Uint16(op[10:]) != xcMaxSegments ||
		int(binary.BigEndian.Uint32(op)) != len(op)-4 {
		t.Fatalf("operating parameters % x", op)
	}
	h.tgt.RemoveNexus(h.a)
	if _, ok := h.disk.copies.get(copyKey{nexus: h.a.ID, list: 7}); ok {
		t.Fatal("copy results outlived their nexus")
	}
}

func TestExtendedCopyErrors(t *testing.T) {
	h := newHarness(t, DiskConfig{NAA: 0x100})
	one := [][]byte{xcCSCD(0x100)}
	seg := [][]byte{xcSeg(0, 0, 8, 0, 64)}
	full := xcList(1, 0, one, seg)
	many := func(n int, f func() []byte) [][]byte {
		var l [][]byte
		for range n {
			l = append(l, f())
		}
		return l
	}
	tests := []struct {
		name string
		list []byte
		key  byte
		code asc
	}{
		{"truncated CSCD", full[:xcHeaderLen+xcCSCDLen-1], keyIllegalRequest, ascParamListLength},
		{"truncated segment", full[:len(full)-1], keyIllegalRequest, ascParamListLength},
		{"too many CSCDs", xcList(1, 0, many(xcMaxCSCDs+1, func() []byte { return xcCSCD(0x100) }), seg), keyIllegalRequest, ascTooManyTargetDescs},
		{"too many segments", xcList(1, 0, one, many(xcMaxSegments+1, func() []byte { return xcSeg(0, 0, 1, 0, 1) })), keyIllegalRequest, ascTooManySegmentDescs},
		{"list too long", xcList(1, 0, many(xcMaxCSCDs+1, func() []byte { return xcCSCD(0x100) }),
			many(xcMaxSegments+1, func() []byte { return xcSeg(0, 0, 1, 0, 1) })), keyIllegalRequest, ascParamListLength},
		{"FC CSCD", xcList(1, 0, [][]byte{append([]byte{0xe0}, xcCSCD(0x100)[1:]...)}, seg), keyIllegalRequest, ascUnsupportedTargetDesc},
		{"stream segment", xcList(1, 0, one, [][]byte{append([]byte{0x03}, xcSeg(0, 0, 1, 0, 1)[1:]...)}), keyIllegalRequest, ascUnsupportedSegmentDesc},
		{"unknown LU", xcList(1, 0, [][]byte{xcCSCD(0x999)}, seg), keyCopyAborted, ascCopyTargetUnreachable},
		{"missing CSCD index", xcList(1, 0, one, [][]byte{xcSeg(0, 1, 8, 0, 64)}), keyCopyAborted, ascCopyTargetUnreachable},
		{"beyond the end", xcList(1, 0, one, [][]byte{xcSeg(0, 0, 8, 0, testBlocks-1)}), keyCopyAborted, ascNoAdditional},
	}
	for _, tt := range tests {
		c := h.exec(h.a, 0, cdbXCopy(len(tt.list)), tt.list, 0)
		if s := senseOf(c); c.Status != StatusCheckCondition || s.key != tt.key || s.code != tt.code {
			t.Errorf("%s: status %#x sense %+v, want %x/%04x", tt.name, c.Status, s, tt.key, tt.code)
		}
	}
	h.mustGood(h.a, cdbXCopy(0)) // an empty list copies nothing
}

func TestThirdPartyCopyVPD(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	b := data(h.mustGood(h.a, cdbInquiry(true, 0x8f, 255)))
	body := b[4:]
	if binary.BigEndian.Uint16(body) != 0x0001 || int(binary.BigEndian.Uint16(body[2:]))%4 != 0 {
		t.Fatalf("third-party copy page % x", b)
	}
	want := []byte{0x83, 1, 0x00, 0x84, 2, rcrCopyStatus, rcrOpParams}
	if n := int(body[4]); !bytes.Equal(body[5:5+n], want) {
		t.Fatalf("supported commands % x, want % x", body[5:5+n], want)
	}
	if std := data(h.mustGood(h.a, cdbInquiry(false, 0, 96))); std[5]&0x08 == 0 {
		t.Fatal("3PC is not set")
	}
}
