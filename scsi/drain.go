package scsi

import (
	"sync"
	"sync/atomic"
	"time"
)

// writeDrainWait bounds how long a reservation change that aborts tasks
// (PREEMPT AND ABORT, and a reset another cluster node shares) waits for
// the writes this process had already handed to the backing store: they
// cannot be recalled from io_uring, and the change must not complete, nor
// be acknowledged to the node that made it, while one of them can still
// reach the medium (SPC-4 5.13.11.2.6, SAM-5 5.6: a PR OUT completes once
// the preempted nexuses' tasks are terminated). With the acknowledgement's
// own bound (prCommitTimeout) it fits within prstore.DefaultAbortWait, the
// least bound a node waits for another's acknowledgement, so a node whose
// backend is merely slow still acknowledges in time.
const writeDrainWait = 10 * time.Second

// writeGate counts the writes a Disk has handed to its device, so that a
// reservation change can wait for those that started before it. The
// counts alternate between two epochs: a write counts itself in the
// current epoch's slot before it checks the reservation state, and a
// drain, once the new state is published, opens the next epoch and waits
// for the previous one's slot to empty. A write that counted itself after
// the epoch moved on checks the new state and is refused; one that counted
// itself before is waited for; writes that start during the drain do not
// prolong it. A write costs two atomic additions and two loads.
type writeGate struct {
	epoch   atomic.Uint32
	count   [2]atomic.Int64
	waiting atomic.Bool // a drain is in progress: the last write out wakes it

	drainMu sync.Mutex // one drain at a time
	wakeMu  sync.Mutex
	wake    chan struct{} // closed when a slot may have emptied
}

// enter counts a write about to be submitted and returns its slot for
// exit. The caller checks the reservation state after enter.
func (g *writeGate) enter() uint32 {
	slot := g.epoch.Load() & 1
	g.count[slot].Add(1)
	return slot
}

// exit uncounts a write entered in slot once the device completed it.
func (g *writeGate) exit(slot uint32) {
	if g.count[slot].Add(-1) == 0 && g.waiting.Load() {
		g.wakeMu.Lock()
		if g.wake != nil {
			close(g.wake)
			g.wake = nil
		}
		g.wakeMu.Unlock()
	}
}

// drain waits until every write entered before it was called has exited,
// at most bound; it reports whether they did. Call it after publishing
// the state those writes must be checked against.
func (g *writeGate) drain(bound time.Duration) bool {
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	slot := (g.epoch.Add(1) - 1) & 1
	g.waiting.Store(true)
	defer g.waiting.Store(false)
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for {
		ch := make(chan struct{})
		g.wakeMu.Lock()
		g.wake = ch
		g.wakeMu.Unlock()
		if g.count[slot].Load() == 0 { // after arming wake: an exit from now on closes ch
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

// drainWrites waits, at most writeDrainWait, for the writes d handed to its
// device before a reservation change that aborted tasks: GOOD once they
// completed, else ABORTED COMMAND, COMMAND TIMEOUT DURING PROCESSING (the
// change stands; a write the backend still holds may yet land).
func (d *Disk) drainWrites() result {
	if !d.writes.drain(writeDrainWait) {
		return fail(prAbortTimeout)
	}
	return good
}
