package scsi

import (
	"encoding/binary"
	"slices"
)

// reportLUNs implements REPORT LUNS for a LUN that exists.
func (d *Disk) reportLUNs(c *Command) result {
	t := d.tgt.Load()
	if t == nil {
		return fail(illegal(ascLUNotSupported))
	}
	r := t.reportLUNs(c)
	if r.status == StatusGood {
		for _, o := range *t.luns.Load() {
			o.ua.remove(nexusIDOf(c.Nexus), ascReportedLUNsChanged, false)
		}
	}
	return r
}

// reportLUNs builds the LUN inventory (SPC-4 6.33) with flat space or
// peripheral device addressing; there are no well known logical units. A
// nexus with a LUN list (an ACL view) sees exactly those numbers.
func (t *Target) reportLUNs(c *Command) result {
	cdb := c.CDB
	alloc := int(binary.BigEndian.Uint32(cdb[6:]))
	if alloc < 16 {
		return fail(invalidCDB(6, 7))
	}
	var luns []uint64
	switch cdb[2] {
	case 0x00, 0x02:
		if c.Nexus != nil && c.Nexus.LUNs != nil {
			luns = slices.Sorted(slices.Values(c.Nexus.LUNs))
		} else {
			luns = t.LUNs()
		}
	case 0x01: // well known logical units only
	default:
		return fail(invalidCDB(2, 7))
	}
	b := make([]byte, 8, 8+8*len(luns))
	binary.BigEndian.PutUint32(b, uint32(8*len(luns)))
	for _, l := range luns {
		var e [8]byte
		if l < 256 {
			e[1] = byte(l)
		} else {
			binary.BigEndian.PutUint16(e[:], 0x4000|uint16(l))
		}
		b = append(b, e[:]...)
	}
	return respond(c, b, alloc)
}
