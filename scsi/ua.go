package scsi

import (
	"sync"
	"sync/atomic"
)

// maxUA bounds the unit attentions queued per I_T nexus and logical unit;
// beyond it the newest replaces the last queued one.
const maxUA = 8

// uaTable queues unit attention conditions per I_T nexus for one logical
// unit. Commands check count first, so the common case takes no lock.
type uaTable struct {
	count atomic.Int32 // queued conditions over all nexuses
	mu    sync.Mutex
	q     map[uint64][]asc
}

func (u *uaTable) init() { u.q = make(map[uint64][]asc) }

// add queues code for nexus unless it is already pending.
func (u *uaTable) add(nexus uint64, code asc) {
	u.mu.Lock()
	defer u.mu.Unlock()
	q := u.q[nexus]
	for _, c := range q {
		if c == code {
			return
		}
	}
	if len(q) == maxUA {
		q[len(q)-1] = code
		return
	}
	u.q[nexus] = append(q, code)
	u.count.Add(1)
}

// take removes and returns the oldest condition pending for nexus.
func (u *uaTable) take(nexus uint64) (senseData, bool) {
	if u.count.Load() == 0 {
		return senseData{}, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	q := u.q[nexus]
	if len(q) == 0 {
		return senseData{}, false
	}
	code := q[0]
	if len(q) == 1 {
		delete(u.q, nexus)
	} else {
		u.q[nexus] = q[1:]
	}
	u.count.Add(-1)
	return senseData{key: keyUnitAttention, code: code}, true
}

// remove drops the pending conditions of nexus that match code, or all of
// them when all is set.
func (u *uaTable) remove(nexus uint64, code asc, all bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	q := u.q[nexus]
	kept := q[:0]
	for _, c := range q {
		if !all && c != code {
			kept = append(kept, c)
		}
	}
	u.count.Add(int32(len(kept) - len(q)))
	if len(kept) == 0 {
		delete(u.q, nexus)
	} else {
		u.q[nexus] = kept
	}
}
