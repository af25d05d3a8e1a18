package scsi

import "encoding/binary"

// readCapacity10 implements READ CAPACITY (10): the last LBA, or
// FFFFFFFFh when it does not fit and READ CAPACITY (16) is needed.
func (d *Disk) readCapacity10(c *Command) result {
	cdb := c.CDB
	if cdb[8]&0x01 == 0 && binary.BigEndian.Uint32(cdb[2:]) != 0 { // LBA needs PMI
		return fail(invalidCDB(2, 7))
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, uint32(min(d.blocks()-1, 0xffffffff)))
	binary.BigEndian.PutUint32(b[4:], d.cfg.BlockSize)
	return respond(c, b, len(b))
}

// readCapacity16 implements READ CAPACITY (16): the LOGICAL BLOCKS PER
// PHYSICAL BLOCK EXPONENT of the configured physical block size (the
// lowest aligned LBA is 0) and, on thin units, LBPME and LBPRZ.
func (d *Disk) readCapacity16(c *Command) result {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, d.blocks()-1)
	binary.BigEndian.PutUint32(b[8:], d.cfg.BlockSize)
	b[13] = byte(d.pshift)
	if d.cfg.Thin {
		b[14] = 0x80 | 0x40 // LBPME, LBPRZ
	}
	return respond(c, b, int(binary.BigEndian.Uint32(c.CDB[10:])))
}

// readDefectData implements READ DEFECT DATA (10) and (12): the medium has
// no defects, so the header reports an empty list in the format and with
// the lists asked for.
func (d *Disk) readDefectData(c *Command) result {
	cdb := c.CDB
	if cdb[0] == 0x37 {
		return respond(c, []byte{0, cdb[2] & 0x1f, 0, 0}, int(binary.BigEndian.Uint16(cdb[7:])))
	}
	return respond(c, []byte{0, cdb[1] & 0x1f, 0, 0, 0, 0, 0, 0}, int(binary.BigEndian.Uint32(cdb[6:])))
}
