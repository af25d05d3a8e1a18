package scsi

// holder is the I_T nexus holding a SCSI-2 reservation.
type holder struct{ nexus uint64 }

// conflict reports whether c, a command with flags f, must end in
// RESERVATION CONFLICT. It is the single place that decides access under
// reservations: a SCSI-2 reservation held by another nexus stops every
// command without fResOK; a persistent reservation stops what SPC-4 5.13.1
// and SBC-3 4.17 say for its type (fPRRead commands only under the
// exclusive access types, fPRFree commands never).
func (d *Disk) conflict(c *Command, f opFlags) bool {
	if h := d.res.Load(); h != nil && f&fResOK == 0 && h.nexus != nexusIDOf(c.Nexus) {
		return true
	}
	if f&fPRFree != 0 {
		return false
	}
	p := d.pr.Load()
	if p == nil || p.Type == 0 {
		return false
	}
	n := c.Nexus
	if n == nil {
		n = &Nexus{}
	}
	return p.conflicts(n, f&fPRRead != 0)
}

// scsi2UnderPR decides RESERVE and RELEASE while persistent reservation
// registrations exist (SPC-4 5.13.3, CRH = 1): from the reservation holder,
// or from a registrant under a registrants-only or all-registrants
// reservation, they succeed without effect; otherwise they conflict.
// It returns false when there are no registrations and SPC-2 rules apply.
func (d *Disk) scsi2UnderPR(c *Command) (result, bool) {
	p := d.pr.Load()
	if p == nil || len(p.Regs) == 0 {
		return result{}, false
	}
	n := c.Nexus
	if n == nil {
		n = &Nexus{}
	}
	i := p.find(n)
	if p.holds(i) || i >= 0 && p.Type >= prWERO {
		return good, true
	}
	return conflictResult, true
}

// reserve implements RESERVE (6) and RESERVE (10) (SPC-2 7.21): the whole
// logical unit, no third-party or extent reservations.
func (d *Disk) reserve(c *Command) result {
	if r, ok := d.scsi2UnderPR(c); ok {
		return r
	}
	me := nexusIDOf(c.Nexus)
	h := d.res.Load()
	if h != nil && h.nexus == me {
		return good
	}
	if h != nil || !d.res.CompareAndSwap(nil, &holder{nexus: me}) {
		return conflictResult
	}
	return good
}

// release implements RELEASE (6) and RELEASE (10): releasing a
// reservation held by another nexus, or none, succeeds without effect.
func (d *Disk) release(c *Command) result {
	if r, ok := d.scsi2UnderPR(c); ok {
		return r
	}
	d.releaseHeldBy(nexusIDOf(c.Nexus))
	return good
}

// releaseHeldBy drops the reservation if nexus holds it.
func (d *Disk) releaseHeldBy(nexus uint64) {
	if h := d.res.Load(); h != nil && h.nexus == nexus {
		d.res.CompareAndSwap(h, nil)
	}
}
