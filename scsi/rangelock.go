package scsi

import (
	"slices"
	"sync"
	"sync/atomic"
)

// rangeLock makes read-modify-write commands (COMPARE AND WRITE, ORWRITE)
// atomic against concurrent writes to overlapping blocks, while plain
// writes take no lock as long as no such command is active.
//
// A writer first counts itself in fast; if no exclusive request exists it
// proceeds. Otherwise it backs out and queues like everyone else. An
// exclusive request is granted only once fast has drained to zero and no
// held range overlaps it, so no fast-path write can interleave with it.
// Waiting requests are granted in arrival order among overlapping ones and
// continue through their grant callback.
type rangeLock struct {
	exclusive atomic.Int32 // exclusive requests held or waiting
	fast      atomic.Int64 // writes in flight on the fast path

	mu      sync.Mutex
	held    []*lockReq
	waiting []*lockReq
}

// lockReq is one request for blocks [lba, lba+n).
type lockReq struct {
	lba, n uint64
	excl   bool   // read-modify-write: excludes all overlapping writes
	fast   bool   // granted on the fast path (set by beginWrite)
	grant  func() // runs when a request that had to wait is granted
}

func (r *lockReq) overlaps(o *lockReq) bool {
	return r.lba < o.lba+o.n && o.lba < r.lba+r.n
}

// beginWrite admits a plain write. It returns true when the write may start
// now; otherwise r.grant is called once it may.
func (l *rangeLock) beginWrite(r *lockReq) bool {
	r.excl = false
	l.fast.Add(1)
	if l.exclusive.Load() == 0 {
		r.fast = true
		return true
	}
	r.fast = false
	l.fastDone()
	return l.acquire(r)
}

// acquire queues r behind overlapping requests. It returns true when r is
// granted at once; otherwise r.grant is called later.
func (l *rangeLock) acquire(r *lockReq) bool {
	l.mu.Lock()
	if r.excl {
		l.exclusive.Add(1)
	}
	ok := l.grantable(r, len(l.waiting))
	if ok {
		l.held = append(l.held, r)
	} else {
		l.waiting = append(l.waiting, r)
	}
	l.mu.Unlock()
	return ok
}

// release ends a request admitted by beginWrite or acquire.
func (l *rangeLock) release(r *lockReq) {
	if r.fast {
		r.fast = false
		l.fastDone()
		return
	}
	l.mu.Lock()
	for i, h := range l.held {
		if h == r {
			l.held = slices.Delete(l.held, i, i+1)
			break
		}
	}
	if r.excl {
		l.exclusive.Add(-1)
	}
	l.kickLocked()
}

// fastDone ends a fast-path write and wakes exclusive waiters on drain.
func (l *rangeLock) fastDone() {
	if l.fast.Add(-1) == 0 && l.exclusive.Load() != 0 {
		l.mu.Lock()
		l.kickLocked()
	}
}

// kickLocked grants every waiting request that can run, unlocks l.mu and
// then runs their continuations.
func (l *rangeLock) kickLocked() {
	var granted []*lockReq
	for i := 0; i < len(l.waiting); {
		w := l.waiting[i]
		if !l.grantable(w, i) {
			i++
			continue
		}
		l.held = append(l.held, w)
		granted = append(granted, w)
		l.waiting = slices.Delete(l.waiting, i, i+1)
	}
	l.mu.Unlock()
	for _, w := range granted {
		w.grant()
	}
}

// grantable reports whether r overlaps no held request and none of the
// first n waiting ones, and, if exclusive, no fast-path write is running.
func (l *rangeLock) grantable(r *lockReq, n int) bool {
	if r.excl && l.fast.Load() != 0 {
		return false
	}
	for _, h := range l.held {
		if h.overlaps(r) {
			return false
		}
	}
	for _, w := range l.waiting[:n] {
		if w != r && w.overlaps(r) {
			return false
		}
	}
	return true
}
