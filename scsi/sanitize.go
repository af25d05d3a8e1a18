package scsi

import "encoding/binary"

// SANITIZE service actions (SBC-3 5.30).
const (
	sanOverwrite   = 0x01
	sanBlockErase  = 0x02
	sanCryptoErase = 0x03 // not supported: no encryption, so INVALID FIELD IN CDB
	sanExitFailure = 0x1f
)

// sanitize implements SANITIZE: OVERWRITE writes the initialization
// pattern over every block; BLOCK ERASE (thin units only) deallocates
// every block, which then reads as zeroes; EXIT FAILURE MODE succeeds as a
// sanitize never leaves the unit failed. The whole medium is locked
// against other writes while it runs, and IMMED is honoured by
// completing when the work has been done.
func (d *Disk) sanitize(c *Command) result {
	cdb := c.CDB
	plen := int(binary.BigEndian.Uint16(cdb[7:]))
	c.Wanted = plen
	sa := cdb[1] & 0x1f
	if sa != sanOverwrite && plen != 0 {
		return fail(invalidCDB(7, 7))
	}
	if sa == sanOverwrite && (plen < 5 || plen > 4+d.blockSize()) {
		return fail(invalidCDB(7, 7))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	switch sa {
	case sanExitFailure:
		return good
	case sanBlockErase:
		io := d.newIO(c)
		io.left = d.blocks()
		return io.lockAndRun(0, io.left, true, wsUnmap)
	}
	if len(c.DataOut) < plen {
		return fail(illegal(ascParamListLength))
	}
	p := c.DataOut[:plen]
	switch {
	case p[0]&0x1f == 0: // OVERWRITE COUNT
		return fail(invalidParam(0, 4))
	case p[0]&0x60 != 0: // TEST
		return fail(invalidParam(0, 6))
	case int(binary.BigEndian.Uint16(p[2:]))+4 != plen:
		return fail(invalidParam(2, 7))
	}
	io := d.newIO(c)
	io.fua = true
	io.left = d.blocks()
	return io.lockAndRun(0, io.left, true, sanOverwriteStart)
}

// sanOverwriteStart fills scratch with blocks holding the repeated
// initialization pattern and writes the first chunk.
func sanOverwriteStart(io *ioCtx) result {
	pattern := io.c.DataOut[4:]
	bs := io.d.blockSize()
	b := io.buf(int(min(io.left<<io.d.shift, wsChunk)))
	for off := 0; off < len(b); off += bs {
		for i := off; i < off+bs; i += len(pattern) {
			copy(b[i:off+bs], pattern)
		}
	}
	return wsWrite(io)
}
