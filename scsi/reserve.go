package scsi

// holder is the I_T nexus holding a SCSI-2 reservation: nexus on the Disk
// instance (prShared.instance; 0 without a PRStore). With a PRStore it is
// the local copy of the record's Reserved, so a nexus of another node,
// another instance, never matches one of this process.
type holder struct{ instance, nexus uint64 }

// scsi2Holder is the SCSI-2 reservation in a PRStore's record: the nexus
// that holds it, through the Disk instance of the node the store names
// Node. Its node's leaving the unit releases it (Disk.membersChanged).
type scsi2Holder struct {
	Node     string
	Instance uint64
	Nexus    uint64
}

// holds reports whether h, a record's reservation (nil for none), is held
// by nexus of d.
func (d *Disk) holds(h *scsi2Holder, nexus uint64) bool {
	return h != nil && h.Instance == d.prs.instance && h.Nexus == nexus
}

// conflict reports whether c, a command with flags f, must end in
// RESERVATION CONFLICT. It is the single place that decides access under
// reservations: a SCSI-2 reservation held by another nexus stops every
// command without fResOK; a persistent reservation stops what SPC-4 5.13.1
// and SBC-3 4.17 say for its type (fPRRead commands only under the
// exclusive access types, fPRFree commands never).
func (d *Disk) conflict(c *Command, f opFlags) bool {
	if h := d.res.Load(); h != nil && f&fResOK == 0 && *h != (holder{d.prs.instance, nexusIDOf(c.Nexus)}) {
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

// scsi2UnderPR decides RESERVE and RELEASE from n while persistent
// reservation registrations exist in p (SPC-4 5.13.3, CRH = 1): from the
// reservation holder, or from a registrant under a registrants-only or
// all-registrants reservation, they succeed without effect; otherwise they
// conflict. It returns false when there are no registrations and SPC-2
// rules apply.
func scsi2UnderPR(p *prState, n *Nexus) (result, bool) {
	if p == nil || len(p.Regs) == 0 {
		return result{}, false
	}
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
// logical unit, no third-party or extent reservations. With a PRStore the
// reservation is committed to the record, for every node to enforce.
func (d *Disk) reserve(c *Command) result {
	if d.prs.store != nil {
		return d.scsi2Shared(c, true)
	}
	if r, ok := scsi2UnderPR(d.pr.Load(), c.Nexus); ok {
		return r
	}
	me := holder{nexus: nexusIDOf(c.Nexus)}
	h := d.res.Load()
	if h != nil && *h == me {
		return good
	}
	if h != nil || !d.res.CompareAndSwap(nil, &me) {
		return conflictResult
	}
	return good
}

// release implements RELEASE (6) and RELEASE (10): releasing a
// reservation held by another nexus, or none, succeeds without effect.
func (d *Disk) release(c *Command) result {
	if d.prs.store != nil {
		return d.scsi2Shared(c, false)
	}
	if r, ok := scsi2UnderPR(d.pr.Load(), c.Nexus); ok {
		return r
	}
	d.releaseHeldBy(nexusIDOf(c.Nexus))
	return good
}

// releaseHeldBy drops the reservation if nexus holds it. With a PRStore it
// commits the release, and returns once the other nodes installed it, when
// the local copy says nexus holds it; the caller must not hold t.mu.
func (d *Disk) releaseHeldBy(nexus uint64) {
	h := d.res.Load()
	if h == nil || *h != (holder{d.prs.instance, nexus}) {
		return
	}
	if d.prs.store == nil {
		d.res.CompareAndSwap(h, nil)
		return
	}
	d.dropReserved(func(r *scsi2Holder) bool { return d.holds(r, nexus) })
}

// dropReserved commits the record without its SCSI-2 reservation if held
// says the reservation is still the one to drop, whatever the persistent
// reservations (the I_T nexus that held it is gone), and waits until the
// other nodes installed it.
func (d *Disk) dropReserved(held func(r *scsi2Holder) bool) {
	if !d.prBegin() {
		return
	}
	defer d.prs.wg.Done()
	d.changeAll(func(cur *prRecord) (*prRecord, result) {
		if !held(cur.Reserved) {
			return nil, good
		}
		return &prRecord{State: cur.State}, good
	})
}

// scsi2Shared runs RESERVE (reserve set) or RELEASE through the store on a
// goroutine of its own and completes c there.
func (d *Disk) scsi2Shared(c *Command, reserve bool) result {
	if !d.prBegin() {
		return fail(prUnavailable)
	}
	go func() {
		defer d.prs.wg.Done()
		d.complete(c, d.scsi2Commit(c.Nexus, reserve))
	}()
	return pending
}

// scsi2Commit reserves the logical unit for n (reserve set) or releases
// n's reservation in the store's record, under the rules of reserve and
// release applied to the current record, and waits until the other nodes
// installed the change. The caller counted itself in d.prs.wg.
func (d *Disk) scsi2Commit(n *Nexus, reserve bool) result {
	id := nexusIDOf(n)
	r, _, _ := d.changeAll(func(cur *prRecord) (*prRecord, result) {
		if r, ok := scsi2UnderPR(&cur.State, n); ok {
			return nil, r
		}
		mine := d.holds(cur.Reserved, id)
		switch {
		case reserve == mine:
			return nil, good
		case reserve && cur.Reserved != nil:
			return nil, conflictResult
		}
		next := &prRecord{State: cur.State}
		if reserve {
			next.Reserved = &scsi2Holder{Node: d.prs.store.Node(), Instance: d.prs.instance, Nexus: id}
		}
		return next, good
	})
	return r
}

// membersChanged is called by the store with the nodes that serve the
// unit now. A SCSI-2 reservation held through a node that left (its lease
// ended: it died, or lost its lease and with it the right to hold the
// unit), or through an earlier instance of this node (the process
// restarted: its nexuses are gone), is released: I_T nexus loss.
func (d *Disk) membersChanged(nodes []string) {
	stale := func(h *scsi2Holder) bool {
		if h == nil {
			return false
		}
		if h.Node == d.prs.store.Node() && h.Instance != d.prs.instance {
			return true
		}
		for _, m := range nodes {
			if m == h.Node {
				return false
			}
		}
		return true
	}
	d.prs.mu.Lock()
	h := d.prs.reserved
	d.prs.mu.Unlock()
	if stale(h) {
		d.dropReserved(func(r *scsi2Holder) bool { return r != nil && *r == *h })
	}
}
