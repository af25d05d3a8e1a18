package scsi

import "encoding/binary"

// Command timeouts reported with RCTD, in seconds.
const (
	nominalTimeout     = 10
	recommendedTimeout = 30
)

// Values of the SUPPORT field of a one-command descriptor.
const (
	supportNo  = 0x01
	supportYes = 0x03
)

// timeoutsDescriptor is the command timeouts descriptor (SPC-4 6.35.4).
func timeoutsDescriptor(b []byte) []byte {
	var t [12]byte
	binary.BigEndian.PutUint16(t[:], 0x0a)
	binary.BigEndian.PutUint32(t[4:], nominalTimeout)
	binary.BigEndian.PutUint32(t[8:], recommendedTimeout)
	return append(b, t[:]...)
}

// reportOpcodes implements REPORT SUPPORTED OPERATION CODES. The CDB usage
// data is the same table Execute validates CDBs against.
func (d *Disk) reportOpcodes(c *Command) result {
	cdb := c.CDB
	rctd, opt, op := cdb[2]&0x80 != 0, cdb[2]&0x07, cdb[3]
	sa := binary.BigEndian.Uint16(cdb[4:])
	alloc := int(binary.BigEndian.Uint32(cdb[6:]))
	if opt == 0 {
		b := make([]byte, 4)
		for _, e := range opList {
			if !d.has(e) {
				continue
			}
			var desc [8]byte
			desc[0] = e.usage[0]
			binary.BigEndian.PutUint16(desc[2:], e.sa)
			desc[5] = flag(rctd, 0x02) | flag(e.hasSA, 0x01)
			binary.BigEndian.PutUint16(desc[6:], uint16(len(e.usage)))
			b = append(b, desc[:]...)
			if rctd {
				b = timeoutsDescriptor(b)
			}
		}
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		return respond(c, b, alloc)
	}
	es := opIndex[op]
	hasSA := len(es) > 0 && es[0].hasSA
	switch {
	case opt > 3, opt == 1 && hasSA, opt == 2 && !hasSA && len(es) > 0:
		return fail(invalidCDB(2, 2))
	}
	var found *opEntry
	for _, e := range es {
		if d.has(e) && (!hasSA || e.sa == sa) {
			found = e
		}
	}
	if found == nil {
		return respond(c, []byte{0, supportNo, 0, 0}, alloc)
	}
	b := []byte{0, flag(rctd, 0x80) | supportYes, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(found.usage)))
	b = append(b, found.usage...)
	if rctd {
		b = timeoutsDescriptor(b)
	}
	return respond(c, b, alloc)
}

// reportTMFs implements REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT
// TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
func (d *Disk) reportTMFs(c *Command) result {
	cdb := c.CDB
	alloc := int(binary.BigEndian.Uint32(cdb[6:]))
	if alloc < 4 {
		return fail(invalidCDB(6, 7))
	}
	b := make([]byte, 4, 16)
	b[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02
	if cdb[2]&0x80 != 0 { // REPD: extended parameter data
		b = b[:16]
		b[3] = 0x0c
	}
	return respond(c, b, alloc)
}
