package scsi

// holder is the I_T nexus holding a SCSI-2 reservation.
type holder struct{ nexus uint64 }

// conflict reports whether c must end in RESERVATION CONFLICT because
// another nexus holds a reservation on d. It is the single place that
// decides access under reservations, so persistent reservations can join
// it later.
func (d *Disk) conflict(c *Command) bool {
	h := d.res.Load()
	return h != nil && h.nexus != nexusIDOf(c.Nexus)
}

// reserve implements RESERVE (6) and RESERVE (10) (SPC-2 7.21): the whole
// logical unit, no third-party or extent reservations.
func (d *Disk) reserve(c *Command) result {
	me := nexusIDOf(c.Nexus)
	h := d.res.Load()
	if h != nil && h.nexus == me {
		return good
	}
	if h != nil || !d.res.CompareAndSwap(nil, &holder{nexus: me}) {
		return result{status: StatusReservationConflict}
	}
	return good
}

// release implements RELEASE (6) and RELEASE (10): releasing a
// reservation held by another nexus, or none, succeeds without effect.
func (d *Disk) release(c *Command) result {
	d.releaseHeldBy(nexusIDOf(c.Nexus))
	return good
}

// releaseHeldBy drops the reservation if nexus holds it.
func (d *Disk) releaseHeldBy(nexus uint64) {
	if h := d.res.Load(); h != nil && h.nexus == nexus {
		d.res.CompareAndSwap(h, nil)
	}
}
