//go:build linux

package rdma

import (
	"context"
	"sync"
)

// maxIdleRegs bounds the registrations an interrupter keeps for contexts nobody waits with.
const maxIdleRegs = 4

// interrupter wakes the sleeping waiters of a completion channel when their context ends.
//
// It registers one context.AfterFunc per context (by Done channel) and keeps it after the wait
// that made it: a connection that waits with the same context per completion event registers
// once instead of once per event, which is measurable on a per-message path. A registration that
// fires while its context has waiters calls set, which wakes every waiter of the channel; the
// waiters whose context still lives go back to sleep, and clear (when not nil) undoes set once
// the last waiter of an ended context has left.
type interrupter struct {
	set   func()
	clear func()

	mu     sync.Mutex
	regs   map[<-chan struct{}]*ctxReg
	firing int // registrations that fired while they had waiters, until those have left
	closed bool
}

// ctxReg is one context's registration, guarded by the interrupter's mu.
type ctxReg struct {
	done    <-chan struct{}
	stop    func() bool
	waiters int
	fired   bool
	woke    bool // fired with waiters: counted in firing
	dropped bool
}

// enter counts a waiter with ctx (registering ctx on first use); pass the result to leave.
// A context without a Done channel needs nothing and gives nil.
func (in *interrupter) enter(ctx context.Context) *ctxReg {
	done := ctx.Done()
	if done == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	r := in.regs[done]
	if r == nil {
		r = &ctxReg{done: done}
		if !in.closed {
			in.dropIdleLocked()
			if in.regs == nil {
				in.regs = map[<-chan struct{}]*ctxReg{}
			}
			in.regs[done] = r
			r.stop = context.AfterFunc(ctx, func() { in.fire(r) })
		}
	}
	r.waiters++
	return r
}

// leave uncounts a waiter that entered with r.
func (in *interrupter) leave(r *ctxReg) {
	if r == nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	r.waiters--
	if !r.fired || r.waiters > 0 {
		return
	}
	in.forgetLocked(r)
	if r.woke {
		r.woke = false
		in.firing--
		if in.firing == 0 && in.clear != nil {
			in.clear()
		}
	}
}

// fire runs when r's context ends.
func (in *interrupter) fire(r *ctxReg) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if r.dropped {
		return
	}
	r.fired = true
	if r.waiters == 0 {
		in.forgetLocked(r)
		return
	}
	r.woke = true
	in.firing++
	in.set()
}

// forgetLocked removes r from the registrations.
func (in *interrupter) forgetLocked(r *ctxReg) {
	if in.regs[r.done] == r {
		delete(in.regs, r.done)
	}
	r.dropped = true
}

// dropIdleLocked unregisters the contexts nobody waits with once there are too many.
func (in *interrupter) dropIdleLocked() {
	if len(in.regs) < maxIdleRegs {
		return
	}
	for _, r := range in.regs {
		if r.waiters == 0 {
			r.stop()
			in.forgetLocked(r)
		}
	}
}

// close unregisters every context; later waiters register nothing (the channel is closed and
// its waiters return ErrClosed).
func (in *interrupter) close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	for _, r := range in.regs {
		r.stop()
		in.forgetLocked(r)
	}
}
