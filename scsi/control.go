package scsi

import "github.com/iserd/iserd/bdev"

// testUnitReady implements TEST UNIT READY: the unit is always ready.
func (d *Disk) testUnitReady(*Command) result { return good }

// requestSense implements REQUEST SENSE: the oldest pending unit attention
// (which it clears), else SANITIZE IN PROGRESS with its progress while a
// sanitize runs or SANITIZE COMMAND FAILED after one failed, else NO SENSE, in the format the DESC bit asks for.
func (d *Disk) requestSense(c *Command) result {
	s, ok := d.ua.take(nexusIDOf(c.Nexus))
	st := d.san.Load()
	switch {
	case ok:
	case st != nil:
		s = d.sanitizeSense(st)
	default:
		s = senseData{key: keyNoSense}
	}
	return senseResponse(c, &s)
}

// senseResponse returns s as REQUEST SENSE parameter data.
func senseResponse(c *Command, s *senseData) result {
	var buf [descSenseLen]byte
	n := s.encode(buf[:], c.CDB[1]&0x01 != 0)
	return respond(c, buf[:n], int(c.CDB[4]))
}

// startStopUnit implements START STOP UNIT for a non-removable unit that
// is always started: power conditions are accepted, LOEJ is refused.
func (d *Disk) startStopUnit(c *Command) result {
	if c.CDB[4]&0x02 != 0 {
		return fail(invalidCDB(4, 1))
	}
	return good
}

// preventAllow implements PREVENT ALLOW MEDIUM REMOVAL; the medium is not
// removable, so there is nothing to lock.
func (d *Disk) preventAllow(*Command) result { return good }

// prefetch implements PRE-FETCH (10) and (16): the backing store needs
// no warming, so only the range is checked.
func (d *Disk) prefetch(c *Command) result {
	lba, n, _ := lbaFields(c.CDB)
	if s, ok := d.checkRange(lba, uint64(n)); !ok {
		return fail(s)
	}
	return good
}

// syncCache implements SYNCHRONIZE CACHE (10) and (16) as a whole-device
// flush. With IMMED the command completes once the flush has started.
func (d *Disk) syncCache(c *Command) result {
	lba, n, _ := lbaFields(c.CDB)
	if s, ok := d.checkRange(lba, uint64(n)); !ok {
		return fail(s)
	}
	io := d.newIO(c)
	if c.CDB[1]&0x02 != 0 {
		io.c = nil
		io.submit(bdev.OpFlush, 0, nil, flushDone)
		return good
	}
	return io.submit(bdev.OpFlush, 0, nil, flushDone)
}

func flushDone(_ *ioCtx, err error) result { return ioResult(err, true) }
