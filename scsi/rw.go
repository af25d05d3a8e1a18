package scsi

import (
	"bytes"
	"encoding/binary"

	"github.com/iserd/iserd/bdev"
)

// xfer validates the LBA range and TRANSFER LENGTH of a block command:
// LBA OUT OF RANGE outside the medium, INVALID FIELD IN CDB beyond
// MAXIMUM TRANSFER LENGTH.
func (d *Disk) xfer(cdb []byte, lba uint64, n uint32, lenIdx int) (senseData, bool) {
	if s, ok := d.checkRange(lba, uint64(n)); !ok {
		return s, false
	}
	if uint64(n)<<d.shift > maxTransferBytes {
		return invalidCDB(lenIdx, 7), false
	}
	return senseData{}, true
}

// rwFields decodes and validates a READ, WRITE, VERIFY or WRITE AND
// VERIFY CDB; READ (6) and WRITE (6) transfer 256 blocks for length 0.
func (d *Disk) rwFields(cdb []byte) (lba uint64, n uint32, s senseData, ok bool) {
	if s, ok = protectField(cdb); !ok {
		return 0, 0, s, false
	}
	lba, n, li := lbaFields(cdb)
	if cdb[0]>>5 == 0 && n == 0 {
		n = 256
	}
	s, ok = d.xfer(cdb, lba, n, li)
	return lba, n, s, ok
}

// read implements READ (6/10/12/16). The data goes straight into DataIn;
// a shorter DataIn receives the leading part (the transport reports the
// residual from Wanted).
func (d *Disk) read(c *Command) result {
	lba, n, s, ok := d.rwFields(c.CDB)
	if !ok {
		return fail(s)
	}
	want := int(n) << d.shift
	c.Wanted = want
	cnt := min(want, len(c.DataIn))
	if cnt == 0 {
		return good
	}
	io := d.newIO(c)
	if cnt&(d.blockSize()-1) != 0 {
		// Part of a block: whole blocks are read into an aligned buffer, so
		// a store opened for direct I/O only (a cluster's) can serve it.
		bs := d.blockSize()
		return io.submit(bdev.OpRead, int64(lba)<<d.shift, io.buf((cnt+bs-1)&^(bs-1)), readPartDone)
	}
	return io.submit(bdev.OpRead, int64(lba)<<d.shift, c.DataIn[:cnt], readDone)
}

func readDone(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, false))
	}
	io.c.InLen = len(io.req.Buf)
	return good
}

// readPartDone delivers the leading bytes of the blocks read for a READ
// whose data-in buffer ends inside a block.
func readPartDone(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, false))
	}
	c := io.c
	c.InLen = copy(c.DataIn[:min(c.Wanted, len(c.DataIn))], io.req.Buf)
	return good
}

// write implements WRITE (6/10/12/16) and WRITE AND VERIFY (10/12/16).
// Only whole blocks the initiator actually sent are written: with less
// data than the CDB asks for, the leading blocks; with more, the CDB's.
// WRITE AND VERIFY writes through (FUA): the data on the medium is the
// data received, so there is nothing left to compare.
func (d *Disk) write(c *Command) result {
	cdb := c.CDB
	lba, n, s, ok := d.rwFields(cdb)
	if !ok {
		return fail(s)
	}
	verify := cdb[0]&0x1f == 0x0e
	if verify && cdb[1]&0x04 != 0 { // BYTCHK 10b and 11b are reserved here
		return fail(invalidCDB(1, 2))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	want := int(n) << d.shift
	c.Wanted = want
	cnt := min(want, len(c.DataOut)>>d.shift<<d.shift)
	if cnt == 0 {
		return good
	}
	io := d.newIO(c)
	io.fua = verify || cdb[0]>>5 != 0 && cdb[1]&0x08 != 0 || !d.mode.Load().wce
	io.lba, io.left = lba, uint64(cnt>>d.shift)
	return io.lockAndRun(lba, io.left, false, writeStart)
}

func writeStart(io *ioCtx) result {
	c := io.c
	return io.submit(bdev.OpWrite, int64(io.lba)<<io.d.shift, c.DataOut[:io.left<<io.d.shift], writeDone)
}

func writeDone(_ *ioCtx, err error) result { return ioResult(err, true) }

// verify implements VERIFY (10/12/16). BYTCHK 00b checks the range only;
// 01b compares the blocks with the data-out buffer; 11b compares every
// block with the single block sent. A mismatch ends in MISCOMPARE with
// the offset of the first differing byte in INFORMATION.
func (d *Disk) verify(c *Command) result {
	cdb := c.CDB
	lba, n, s, ok := d.rwFields(cdb)
	if !ok {
		return fail(s)
	}
	bytchk := cdb[1] >> 1 & 3
	if bytchk == 2 {
		return fail(invalidCDB(1, 2))
	}
	if bytchk == 0 || n == 0 {
		return good
	}
	bs := d.blockSize()
	want := int(n) * bs
	if bytchk == 3 {
		c.Wanted = bs
	} else {
		c.Wanted = want
	}
	if len(c.DataOut) < c.Wanted {
		return fail(illegal(ascInvalidFieldInCmdIU))
	}
	io := d.newIO(c)
	return io.submit(bdev.OpRead, int64(lba)<<d.shift, io.buf(want), verifyDone)
}

func verifyDone(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, false))
	}
	c, got := io.c, io.req.Buf
	if c.Wanted == len(got) {
		return compare(got, c.DataOut[:len(got)])
	}
	bs := c.Wanted // BYTCHK 11b: one block against each block read
	for off := 0; off < len(got); off += bs {
		if r := compare(got[off:off+bs], c.DataOut[:bs]); r.status != StatusGood {
			r.sense.info += uint64(off)
			return r
		}
	}
	return good
}

// compare is GOOD when medium equals want, else MISCOMPARE at the first
// differing byte.
func compare(medium, want []byte) result {
	if bytes.Equal(medium, want) {
		return good
	}
	i := 0
	for medium[i] == want[i] {
		i++
	}
	return fail(miscompare(i))
}

// maxAtomicBytes is the MAXIMUM ATOMIC TRANSFER LENGTH (Block Limits VPD).
const maxAtomicBytes = 1 << 20

// writeAtomic implements WRITE ATOMIC (16) (SBC-4 5.48): the blocks are
// written in one request under an exclusive range lock, so no other write
// or read-modify-write interleaves and the data lands whole. ATOMIC
// BOUNDARY must be zero (MAXIMUM ATOMIC BOUNDARY SIZE is zero).
func (d *Disk) writeAtomic(c *Command) result {
	cdb := c.CDB
	if s, ok := protectField(cdb); !ok {
		return fail(s)
	}
	lba, n := binary.BigEndian.Uint64(cdb[2:]), uint64(binary.BigEndian.Uint16(cdb[12:]))
	if binary.BigEndian.Uint16(cdb[10:]) != 0 {
		return fail(invalidCDB(10, 7))
	}
	if s, ok := d.checkRange(lba, n); !ok {
		return fail(s)
	}
	if n<<d.shift > maxAtomicBytes {
		return fail(invalidCDB(12, 7))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	c.Wanted = int(n << d.shift)
	if n == 0 {
		return good
	}
	if len(c.DataOut) < c.Wanted {
		return fail(illegal(ascInvalidFieldInCmdIU))
	}
	io := d.newIO(c)
	io.fua = cdb[1]&0x08 != 0 || !d.mode.Load().wce
	io.lba, io.left = lba, n
	return io.lockAndRun(lba, n, true, writeStart)
}
