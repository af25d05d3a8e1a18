package scsi

import (
	"encoding/binary"

	"github.com/iserd/iserd/bdev"
)

const (
	wsChunk         = 1 << 20 // bytes written per WRITE SAME step
	maxLBADescs     = 64      // GET LBA STATUS descriptors per response
	provMapped      = 0       // GET LBA STATUS: mapped or unknown
	provDeallocated = 1       // GET LBA STATUS: deallocated
)

// writeSame implements WRITE SAME (10) and (16). NUMBER OF LOGICAL BLOCKS 0
// means up to the last block, within MAXIMUM WRITE SAME LENGTH. With UNMAP
// on a thin unit the range is deallocated whatever the block holds (SBC-3
// 5.45, as libiscsi expects); it then reads back as zeroes (LBPRZ).
// Otherwise the block is written.
func (d *Disk) writeSame(c *Command) result {
	cdb := c.CDB
	if s, ok := protectField(cdb); !ok {
		return fail(s)
	}
	lba, n32, li := lbaFields(cdb)
	anchor, unmap := cdb[1]&0x10 != 0, cdb[1]&0x08 != 0
	ndob := cdb[0] == 0x93 && cdb[1]&0x01 != 0
	if anchor { // ANC_SUP is 0, and ANCHOR without UNMAP is invalid anyway
		return fail(invalidCDB(1, 4))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	n := uint64(n32)
	if s, ok := d.checkRange(lba, n); !ok {
		return fail(s)
	}
	if n == 0 {
		n = d.blocks() - lba
	}
	if n<<d.shift > maxWriteSameBytes {
		return fail(invalidCDB(li, 7))
	}
	bs := d.blockSize()
	if !ndob {
		c.Wanted = bs
	}
	if len(c.DataOut) != c.Wanted {
		return fail(illegal(ascInvalidFieldInCmdIU))
	}
	if n == 0 {
		return good
	}
	io := d.newIO(c)
	io.fua = !d.mode.Load().wce
	io.lba, io.left = lba, n
	if unmap && d.cfg.Thin {
		return io.lockAndRun(lba, n, false, wsUnmap)
	}
	return io.lockAndRun(lba, n, false, wsStart)
}

func wsUnmap(io *ioCtx) result {
	return io.unmapRange(int64(io.lba)<<io.d.shift, int64(io.left)<<io.d.shift, writeDone)
}

// wsStart fills scratch with copies of the block and writes the first chunk.
func wsStart(io *ioCtx) result {
	bs := io.d.blockSize()
	b := io.buf(int(min(io.left<<io.d.shift, wsChunk)))
	if len(io.c.DataOut) == 0 {
		clear(b)
	} else {
		for off := 0; off < len(b); off += bs {
			copy(b[off:off+bs], io.c.DataOut)
		}
	}
	return wsWrite(io)
}

// wsNext accounts for the chunk just written and writes the next one.
func wsNext(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, true))
	}
	w := uint64(len(io.req.Buf)) >> io.d.shift
	io.lba, io.left = io.lba+w, io.left-w
	if io.left == 0 {
		return good
	}
	return wsWrite(io)
}

// wsWrite writes the next chunk of the pattern held in scratch.
func wsWrite(io *ioCtx) result {
	n := min(io.left<<io.d.shift, uint64(len(io.scratch)))
	return io.submit(bdev.OpWrite, int64(io.lba)<<io.d.shift, io.scratch[:n], wsNext)
}

// unmap implements UNMAP (SBC-3 5.28) on thin units. Every descriptor is
// validated before any block is deallocated.
func (d *Disk) unmap(c *Command) result {
	cdb := c.CDB
	if cdb[1]&0x01 != 0 { // ANCHOR: ANC_SUP is 0
		return fail(invalidCDB(1, 0))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	plen := int(binary.BigEndian.Uint16(cdb[7:]))
	c.Wanted = plen
	if plen == 0 {
		return good
	}
	data := c.DataOut[:min(plen, len(c.DataOut))]
	if plen < 8 || len(data) < 8 {
		return fail(illegal(ascParamListLength))
	}
	descs := data[8:][:min(int(binary.BigEndian.Uint16(data[2:])), len(data)-8)/16*16]
	if len(descs)/16 > maxUnmapDescs {
		return fail(invalidParam(2, 7))
	}
	for off := 0; off < len(descs); off += 16 {
		lba, n := binary.BigEndian.Uint64(descs[off:]), uint64(binary.BigEndian.Uint32(descs[off+8:]))
		if s, ok := d.checkRange(lba, n); !ok {
			return fail(s)
		}
	}
	if len(descs) == 0 {
		return good
	}
	io := d.newIO(c)
	io.scratch = append(io.buf(0), descs...)
	return io.lockAndRun(0, d.blocks(), false, unmapNext)
}

func unmapStep(io *ioCtx, err error) result {
	if err != nil {
		return fail(ioError(err, true))
	}
	return unmapNext(io)
}

// unmapNext deallocates the next non-empty descriptor held in scratch.
func unmapNext(io *ioCtx) result {
	for ; io.left < uint64(len(io.scratch)); io.left += 16 {
		desc := io.scratch[io.left:]
		lba, n := binary.BigEndian.Uint64(desc), int64(binary.BigEndian.Uint32(desc[8:]))
		if n != 0 {
			io.left += 16
			return io.unmapRange(int64(lba)<<io.d.shift, n<<io.d.shift, unmapStep)
		}
	}
	return good
}

// getLBAStatus implements GET LBA STATUS (SBC-3 5.7) from bdev.Mapper.
func (d *Disk) getLBAStatus(c *Command) result {
	cdb := c.CDB
	lba, alloc := binary.BigEndian.Uint64(cdb[2:]), int(binary.BigEndian.Uint32(cdb[10:]))
	capacity := d.blocks()
	if lba >= capacity {
		return fail(lbaOutOfRange(lba))
	}
	ndesc := max(1, min(maxLBADescs, (alloc-8)/16))
	out := make([]byte, 8, 8+16*ndesc)
	for k := 0; k < ndesc && lba < capacity; {
		left := min(capacity-lba, 0xffffffff)
		mapped, nbytes, err := d.mapper.Mapped(int64(lba)<<d.shift, int64(left)<<d.shift)
		if err != nil {
			return fail(ioError(err, false))
		}
		n := min(max(uint64(nbytes)>>d.shift, 1), left)
		status := byte(provMapped)
		if !mapped {
			status = provDeallocated
		}
		if k > 0 && out[len(out)-4] == status {
			if prev := binary.BigEndian.Uint32(out[len(out)-8:]); uint64(prev)+n <= 0xffffffff {
				binary.BigEndian.PutUint32(out[len(out)-8:], prev+uint32(n))
				lba += n
				continue
			}
		}
		var desc [16]byte
		binary.BigEndian.PutUint64(desc[:], lba)
		binary.BigEndian.PutUint32(desc[8:], uint32(n))
		desc[12] = status
		out = append(out, desc[:]...)
		lba += n
		k++
	}
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return respond(c, out, alloc)
}
