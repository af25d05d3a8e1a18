package scsi

import (
	"errors"
	"fmt"

	"github.com/iserd/iserd/bdev"
)

// EventKind says what changed in an Event.
type EventKind int

// Events a Target reports through OnEvent.
const (
	// EventReportedLUNsChanged: a logical unit was added or removed
	// (REPORTED LUNS DATA HAS CHANGED, 3Fh/0Eh).
	EventReportedLUNsChanged EventKind = iota + 1
	// EventCapacityChanged: a logical unit was resized (CAPACITY DATA HAS
	// CHANGED, 2Ah/09h).
	EventCapacityChanged
	// EventALUAChanged: a target port group changed state (ASYMMETRIC
	// ACCESS STATE CHANGED, 2Ah/06h).
	EventALUAChanged
)

// Event reports a unit attention a Target has queued because something
// changed, so the transport can also announce it asynchronously (an iSCSI
// Asynchronous Message with AsyncEvent 0, SCSI Async Event) and initiators
// rescan without waiting for their next command.
type Event struct {
	Kind EventKind
	// LUN is the logical unit concerned, as a target LUN (the transport
	// maps it to the LUN each session sees): the one resized, the one whose
	// access state changed (one event per logical unit), or the one added
	// or removed, in which case the unit attention is queued on every
	// logical unit of the target and the message may name any of them.
	LUN uint64
	// Nexuses are the IDs of the I_T nexuses it was queued for.
	Nexuses []uint64
	// Sense is the unit attention in fixed format, ready to be carried in
	// the asynchronous message's sense data.
	Sense []byte
}

// OnEvent registers fn to receive Events. fn is called synchronously with
// the Target's internal lock held: it must not call back into the Target
// and should hand the event to another goroutine. It replaces any earlier
// function.
func (t *Target) OnEvent(fn func(Event)) { t.onEvent.Store(&fn) }

// OnAbort registers fn, which the transport implements to abort every task
// of nexus n on logical unit lun: PREEMPT AND ABORT calls it for each
// nexus whose registration it preempted (SPC-4 5.13.11.2.5), after the
// unit attentions are queued and before the command completes. fn runs
// without Target locks held but must not wait for the aborted tasks to
// finish: the logical unit itself keeps their writes off the medium (those
// not yet issued are refused, those in the backing store are waited for,
// at most writeDrainWait, before the command completes or the change is
// acknowledged to the cluster node that made it). It replaces any earlier
// function.
func (t *Target) OnAbort(fn func(n *Nexus, lun uint64)) { t.onAbort.Store(&fn) }

// eventKinds maps the codes that are reported as events.
var eventKinds = map[asc]EventKind{
	ascReportedLUNsChanged: EventReportedLUNsChanged,
	ascCapacityChanged:     EventCapacityChanged,
	ascALUAChanged:         EventALUAChanged,
}

// raiseEvent queues code on d (attached at lun) for every nexus but
// except, and reports it through OnEvent. The caller holds t.mu.
func (t *Target) raiseEvent(d *Disk, lun uint64, code asc, except *Nexus) {
	t.raise(d, code, nexusIDOf(except), except != nil)
	t.emit(code, lun, except)
}

// emit reports the unit attention code, queued on lun for every nexus but
// except, through OnEvent. The caller holds t.mu.
func (t *Target) emit(code asc, lun uint64, except *Nexus) {
	fn := t.onEvent.Load()
	if fn == nil {
		return
	}
	ev := Event{Kind: eventKinds[code], LUN: lun}
	for id := range t.nexuses {
		if except == nil || id != except.ID {
			ev.Nexuses = append(ev.Nexuses, id)
		}
	}
	s := senseData{key: keyUnitAttention, code: code}
	ev.Sense = make([]byte, fixedSenseLen)
	s.encode(ev.Sense, false)
	(*fn)(ev)
}

// lunOf returns the LUN d is attached at. The caller holds t.mu.
func (t *Target) lunOf(d *Disk) (uint64, bool) {
	for lun, o := range *t.luns.Load() {
		if o == d {
			return lun, true
		}
	}
	return 0, false
}

// Resize changes the capacity of the logical unit to size bytes (a
// multiple of the block size) through bdev.Resizer, and tells every nexus
// CAPACITY DATA HAS CHANGED.
func (d *Disk) Resize(size int64) error {
	r, ok := d.dev.(bdev.Resizer)
	if !ok {
		return errors.New("resize: the backing device cannot be resized")
	}
	if size <= 0 || size%int64(d.cfg.BlockSize) != 0 {
		return fmt.Errorf("resize to %d bytes: must be a positive multiple of %d", size, d.cfg.BlockSize)
	}
	if err := r.Resize(size); err != nil {
		return fmt.Errorf("resize to %d bytes: %w", size, err)
	}
	if t := d.tgt.Load(); t != nil {
		t.mu.Lock()
		if lun, ok := t.lunOf(d); ok {
			t.raiseEvent(d, lun, ascCapacityChanged, nil)
		}
		t.mu.Unlock()
	}
	return nil
}
