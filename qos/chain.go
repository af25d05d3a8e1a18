package qos

import "sync/atomic"

// Entry is a command on its way through a Chain. Callers embed one in
// their command and set Owner once; qos never allocates one.
type Entry struct {
	// Owner is the caller's command behind the entry.
	Owner any

	next     *Entry
	at       atomic.Pointer[Flow] // the flow it waits in, nil when it does not wait
	chain    *Chain
	stage    int
	cost     Cost
	waited   bool  // it has waited somewhere in the chain
	since    int64 // when it first waited
	queuedAt int64 // when it joined the queue it waits in
}

// Chain is the sequence of flows, in distinct limiters, that a command
// passes before it runs: for instance the initiator's, the LUN's and the
// target's.
type Chain struct {
	flows   []*Flow
	release func(*Entry)
}

// NewChain returns a chain through flows (nil ones are left out). release
// runs a command that had to wait, on a pacer's goroutine.
func NewChain(release func(*Entry), flows ...*Flow) *Chain {
	c := &Chain{release: release}
	for _, f := range flows {
		if f != nil {
			c.flows = append(c.flows, f)
		}
	}
	return c
}

// Flows lists the chain's flows in order.
func (c *Chain) Flows() []*Flow { return c.flows }

// Admit starts e through the chain. True means it may run now (release is
// not called); false that it waits and release runs it later.
func (c *Chain) Admit(e *Entry, cost Cost) bool {
	e.chain, e.stage, e.cost, e.waited = c, 0, cost, false
	return c.pass(e)
}

// pass offers e to the flows from its stage on; true when it passed all.
func (c *Chain) pass(e *Entry) bool {
	for ; e.stage < len(c.flows); e.stage++ {
		if !c.flows[e.stage].offer(e) {
			return false
		}
	}
	return true
}

// advance moves on an entry its current flow has let go.
func (c *Chain) advance(e *Entry) {
	e.stage++
	if c.pass(e) {
		c.release(e)
	}
}
