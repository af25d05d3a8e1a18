package scsi

import (
	"encoding/binary"

	"github.com/iserd/iserd/bdev"
)

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
// sanitize never leaves the unit failed. The operation runs on its own
// goroutine with the whole medium locked against writes; until it ends,
// commands other than INQUIRY, REPORT LUNS and REQUEST SENSE fail with
// SANITIZE IN PROGRESS. With IMMED the command completes once it started.
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
	if sa == sanExitFailure {
		return good
	}
	var pattern []byte
	if sa == sanOverwrite {
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
		pattern = append([]byte(nil), p[4:]...)
	}
	if !d.sanitizing.CompareAndSwap(false, true) {
		return fail(senseData{key: keyNotReady, code: ascSanitizeInProgress})
	}
	d.sanDone.Store(0)
	immed := cdb[1]&0x80 != 0
	go func() {
		r := d.runSanitize(pattern)
		d.sanitizing.Store(false)
		if !immed {
			d.complete(c, r)
		}
	}()
	if immed {
		return good
	}
	return pending
}

// runSanitize overwrites every block with pattern, or deallocates them all
// when pattern is nil, under an exclusive lock of the whole medium.
func (d *Disk) runSanitize(pattern []byte) result {
	total := d.blocks()
	lock := lockReq{lba: 0, n: total, excl: true}
	granted := make(chan struct{})
	lock.grant = func() { close(granted) }
	if !d.locks.acquire(&lock) {
		<-granted
	}
	defer d.locks.release(&lock)
	if pattern == nil {
		err := syncIO(d.dev, &bdev.Request{Op: bdev.OpUnmap, Length: int64(total) << d.shift})
		d.sanDone.Store(total)
		return ioResult(err, true)
	}
	bs := d.blockSize()
	buf := make([]byte, min(total<<d.shift, wsChunk))
	for off := 0; off < len(buf); off += bs {
		for i := off; i < off+bs; i += len(pattern) {
			copy(buf[i:off+bs], pattern)
		}
	}
	for lba := uint64(0); lba < total; {
		n := min(total-lba, uint64(len(buf))>>d.shift)
		req := &bdev.Request{Op: bdev.OpWrite, Offset: int64(lba) << d.shift, Buf: buf[:n<<d.shift], FUA: true}
		if err := syncIO(d.dev, req); err != nil {
			return fail(ioError(err, true))
		}
		lba += n
		d.sanDone.Store(lba)
	}
	return good
}

// sanitizeProgress is SANITIZE IN PROGRESS with the progress indication
// (SPC-4 4.5.2.4.4) in the sense-key specific bytes.
func (d *Disk) sanitizeProgress() senseData {
	s := senseData{key: keyNotReady, code: ascSanitizeInProgress, hasSKS: true}
	if total := d.blocks(); total > 0 {
		p := d.sanDone.Load() * 65536 / total
		s.sks = [3]byte{0x80, byte(p >> 8), byte(p)}
	}
	return s
}
