package scsi

import (
	"encoding/binary"

	"github.com/iserd/iserd/bdev"
)

// compareAndWrite implements COMPARE AND WRITE (SBC-3 5.2): under an
// exclusive range lock (and the unit's CAWLock before it, in a cluster) it
// reads the blocks, compares them with the first half of the data-out
// buffer and, only if equal, writes the second half.
// The data-out buffer must hold exactly 2 * NUMBER OF LOGICAL BLOCKS
// blocks, else INVALID FIELD IN CDB points at that field.
func (d *Disk) compareAndWrite(c *Command) result {
	cdb := c.CDB
	if s, ok := protectField(cdb); !ok {
		return fail(s)
	}
	lba, nb := binary.BigEndian.Uint64(cdb[2:]), uint64(cdb[13])
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	if s, ok := d.checkRange(lba, nb); !ok {
		return fail(s)
	}
	c.Wanted = int(2 * nb << d.shift)
	if len(c.DataOut) != c.Wanted { // also catches 256 blocks wrapped to 0
		return fail(invalidCDB(13, 7))
	}
	if nb == 0 {
		return good
	}
	io := d.newIO(c)
	io.fua = cdb[1]&0x08 != 0 || !d.mode.Load().wce
	io.lba, io.left = lba, nb
	if l := d.cfg.CAWLock; l != nil {
		return io.lockCluster(l)
	}
	return io.lockAndRun(lba, nb, true, cawStart)
}

// orWrite implements ORWRITE (16) (SBC-3 5.8) without ORWgen tracking:
// under an exclusive range lock the blocks are read, ORed with the
// data-out buffer and written back.
func (d *Disk) orWrite(c *Command) result {
	cdb := c.CDB
	lba, n, s, ok := d.rwFields(cdb)
	if !ok {
		return fail(s)
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	c.Wanted = int(n) << d.shift
	if n == 0 {
		return good
	}
	if len(c.DataOut) < c.Wanted {
		return fail(illegal(ascInvalidFieldInCmdIU))
	}
	io := d.newIO(c)
	io.fua = cdb[1]&0x08 != 0 || !d.mode.Load().wce
	io.lba, io.left = lba, uint64(n)
	return io.lockAndRun(lba, io.left, true, orStart)
}

func cawStart(io *ioCtx) result { return io.readLocked(cawCompare) }

func orStart(io *ioCtx) result { return io.readLocked(orMerge) }

// readLocked reads the locked blocks into scratch, then runs next.
func (io *ioCtx) readLocked(next func(*ioCtx, error) result) result {
	n := int(io.left << io.d.shift)
	return io.submit(bdev.OpRead, int64(io.lba)<<io.d.shift, io.buf(n), next)
}

// cawCompare checks the blocks read against the verify half of the data.
func cawCompare(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, false))
	}
	half := len(io.c.DataOut) / 2
	if r := compare(io.req.Buf, io.c.DataOut[:half]); r.status != StatusGood {
		return r
	}
	if !io.cawHeld() { // another node may own the blocks by now
		return fail(fencedSense)
	}
	return io.submit(bdev.OpWrite, int64(io.lba)<<io.d.shift, io.c.DataOut[half:], writeDone)
}

// orMerge ORs the data-out buffer into the blocks read and writes them.
func orMerge(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, false))
	}
	b := io.req.Buf
	for i, v := range io.c.DataOut[:len(b)] {
		b[i] |= v
	}
	return io.submit(bdev.OpWrite, int64(io.lba)<<io.d.shift, b, writeDone)
}
