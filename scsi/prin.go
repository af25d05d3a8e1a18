package scsi

import "encoding/binary"

// prIn implements PERSISTENT RESERVE IN (SPC-4 6.15). With a PRStore it
// reports the local copy of the record, which the PERSISTENT RESERVE OUT
// commands of this process install before they complete and the store's
// deliveries keep up to date, while the node may change reservations.
func (d *Disk) prIn(c *Command) result {
	alloc := int(binary.BigEndian.Uint16(c.CDB[7:]))
	if st := d.cfg.PRStore; st != nil && !st.Allowed() {
		return fail(prUnavailable) // the local copy may be stale: another node may have changed it
	}
	p := d.pr.Load()
	if p == nil {
		p = &prState{}
	}
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b, p.Gen)
	switch c.CDB[1] & 0x1f {
	case priReadKeys:
		for _, r := range p.Regs {
			b = binary.BigEndian.AppendUint64(b, r.Key)
		}
	case priReadReservation:
		if p.Type != 0 {
			var desc [16]byte
			if !p.allRegistrants() {
				binary.BigEndian.PutUint64(desc[:], p.holderKey())
			}
			desc[13] = p.Type // scope 0: logical unit
			b = append(b, desc[:]...)
		}
	case priReportCapabilities:
		b = b[:8]
		binary.BigEndian.PutUint16(b, 8)
		// CRH, SIP_C, ATP_C, PTPL_C when APTPL state can be kept.
		b[2] = 0x10 | 0x08 | 0x04 | flag(d.cfg.StateDir != "" || d.cfg.PRStore != nil, 0x01)
		// TMV; ALLOW COMMANDS 001b (TEST UNIT READY passes WE and EA); PTPL_A.
		b[3] = 0x80 | 0x10 | flag(p.APTPL, 0x01)
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		b[5] = 0x01                             // EX_AC_AR
		return respond(c, b, alloc)
	case priReadFullStatus:
		for i := range p.Regs {
			r := &p.Regs[i]
			var desc [24]byte
			binary.BigEndian.PutUint64(desc[:], r.Key)
			desc[12] = flag(r.Rel == 0, 0x02)
			if p.holds(i) {
				desc[12] |= 0x01
				desc[13] = p.Type
			}
			binary.BigEndian.PutUint16(desc[18:], r.Rel)
			tid := encodeTransportID(nil, r)
			binary.BigEndian.PutUint32(desc[20:], uint32(len(tid)))
			b = append(append(b, desc[:]...), tid...)
		}
	}
	binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	return respond(c, b, alloc)
}
