package qos

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// epoch is the origin of Now.
var epoch = time.Now()

// Now is the monotonic clock limiters run on, in nanoseconds.
func Now() int64 { return int64(time.Since(epoch)) }

// slack is the least a pacer sleeps, and the tokens a bucket may lack and
// still count as holding none: float rounding must not make it spin.
const (
	slack     = 50 * time.Microsecond
	tokenSlop = 1e-6
)

// bucket is a deficit token bucket: a command passes while the level is
// not negative and takes its whole cost, even below zero; the debt delays
// the commands after it. A command larger than the bucket so still passes,
// and the rate holds over time.
type bucket struct {
	rate  float64 // tokens per second; 0: no limit
	depth float64 // most tokens kept
	level float64
}

// WaitBounds are the upper bounds of the queue-wait histogram's buckets.
var WaitBounds = [...]time.Duration{100 * time.Microsecond, time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond}

// Stats are a limiter's counters since it was made.
type Stats struct {
	Admitted uint64 // commands admitted, at once or after waiting
	Bytes    uint64 // their bytes
	// Throttled counts the commands that waited, and ThrottledNanos the
	// time they waited, in this limiter's queue.
	Throttled, ThrottledNanos uint64
	// Overdrawn counts the commands admitted because they had waited
	// MaxWait, their cost taken as debt.
	Overdrawn uint64
	Queued    int // commands waiting now
	// Wait counts admitted commands by their wait in this limiter: bucket i
	// holds those under WaitBounds[i], the last one the rest.
	Wait [len(WaitBounds) + 1]uint64
}

// Limiter enforces one set of Limits on the commands of the flows
// attached to it. Its methods are safe for concurrent use.
type Limiter struct {
	clock func() int64

	mu     sync.Mutex
	lim    Limits
	b      [nBuckets]bucket
	last   int64 // when the buckets were last refilled
	flows  []*Flow
	weight float64 // the attached flows' weights, summed
	queued int
	vtime  float64 // virtual time: the start tag of the last admission
	closed bool
	stats  Stats

	cmdRate, byteRate atomicFloat // Limits.cmdRate and byteRate, for Window
	wake              chan struct{}
	paced             bool // a pacer goroutine runs (stop ends it, done says it has)
	stop, done        chan struct{}
	batch             []*Entry // the pacer's scratch
}

// NewLimiter returns a limiter enforcing lim, with its pacer running;
// Close stops it.
func NewLimiter(lim Limits) *Limiter {
	l := newLimiter(lim, Now)
	l.paced = true
	go l.run()
	return l
}

// newLimiter returns a limiter on clock without a pacer (tests drive
// dispatch themselves).
func newLimiter(lim Limits, clock func() int64) *Limiter {
	l := &Limiter{clock: clock, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	l.last = clock()
	l.setLimits(lim, true)
	return l
}

// Limits returns the limits in force.
func (l *Limiter) Limits() Limits {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lim
}

// SetLimits changes the limits at once. Buckets keep their level (down to
// the new depth); a rate that was not limited before starts full.
func (l *Limiter) SetLimits(lim Limits) {
	l.mu.Lock()
	l.refill(l.clock())
	l.setLimits(lim, false)
	l.mu.Unlock()
	l.kick()
}

// setLimits installs lim; the caller holds l.mu or owns l.
func (l *Limiter) setLimits(lim Limits, fresh bool) {
	l.lim = lim
	burst := lim.burst().Seconds()
	for i, r := range lim.rates() {
		b := &l.b[i]
		if r > 0 && (fresh || b.rate == 0) {
			b.level = r * burst
		}
		b.rate, b.depth = r, r*burst
		b.level = min(b.level, b.depth)
	}
	l.cmdRate.store(lim.cmdRate())
	l.byteRate.store(lim.byteRate())
}

// Close admits every waiting command and stops the pacer. Flows attached
// to a closed limiter pass everything.
func (l *Limiter) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	var out []*Entry
	for _, f := range l.flows {
		out = f.drain(out)
		f.dead = true
	}
	l.flows, l.queued = nil, 0
	l.cmdRate.store(math.Inf(1))
	l.byteRate.store(math.Inf(1))
	l.mu.Unlock()
	if l.paced {
		close(l.stop)
		<-l.done
	}
	for _, e := range out {
		e.chain.advance(e)
	}
}

// Stats returns the limiter's counters.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Queued = l.queued
	return s
}

// Attach adds a flow of the given weight (at least 1 is assumed).
func (l *Limiter) Attach(weight float64) *Flow {
	f := &Flow{l: l, weight: max(weight, 1)}
	l.mu.Lock()
	if l.closed {
		f.dead = true
	} else {
		f.vt = l.vtime
		l.flows = append(l.flows, f)
		l.reweigh()
	}
	l.mu.Unlock()
	return f
}

// reweigh updates the flows' shares; the caller holds l.mu.
func (l *Limiter) reweigh() {
	l.weight = 0
	for _, f := range l.flows {
		l.weight += f.weight
	}
	for _, f := range l.flows {
		f.share.store(f.weight / l.weight)
	}
}

// kick wakes the pacer.
func (l *Limiter) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run is the pacer: it admits waiting commands as the buckets fill.
func (l *Limiter) run() {
	defer close(l.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-l.wake:
		case <-t.C:
		case <-l.stop:
			t.Stop()
			return
		}
		now := l.clock()
		batch, next := l.dispatch(now)
		for i, e := range batch {
			batch[i] = nil
			e.chain.advance(e)
		}
		if next >= 0 {
			t.Reset(next)
		}
	}
}

// dispatch admits what the buckets allow at now, in weighted fair order,
// and says when to look again (-1: nothing waits). The batch is the
// pacer's until its next call.
func (l *Limiter) dispatch(now int64) (batch []*Entry, next time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	batch = l.batch[:0]
	for l.queued > 0 {
		f, forced := l.pick(now)
		if f == nil {
			break
		}
		e := f.pop()
		l.queued--
		l.admit(f, e, forced, now-e.queuedAt)
		batch = append(batch, e)
	}
	l.batch = batch
	return batch, l.nextWake(now)
}

// pick returns the flow whose head goes next: one whose head has waited
// MaxWait in all (forced), else among the heads the buckets admit the one
// of the flow with the least weighted service. nil: none may go.
func (l *Limiter) pick(now int64) (best *Flow, forced bool) {
	for _, f := range l.flows {
		if f.head != nil && now-f.head.since >= int64(MaxWait) {
			return f, true
		}
	}
	for _, f := range l.flows {
		if f.head != nil && l.admissible(f.head.cost) && (best == nil || f.vt < best.vt) {
			best = f
		}
	}
	return best, false
}

// nextWake is how long until a waiting head may go; -1 when none waits.
// The caller holds l.mu.
func (l *Limiter) nextWake(now int64) time.Duration {
	if l.queued == 0 {
		return -1
	}
	next := math.Inf(1)
	for _, f := range l.flows {
		e := f.head
		if e == nil {
			continue
		}
		var fill float64 // until every bucket that counts e holds tokens
		for i := range l.b {
			if b := &l.b[i]; b.rate > 0 && b.level < -tokenSlop && e.cost.tokens(i) > 0 {
				fill = max(fill, -b.level/b.rate*1e9)
			}
		}
		d := min(fill, float64(e.since+int64(MaxWait)-now))
		next = min(next, d)
	}
	return max(time.Duration(next), slack)
}

// refill adds the tokens accrued up to now; the caller holds l.mu. While
// commands wait, the bucket keeps up to MaxWait of its rate rather than
// its burst: tokens that accrue while the pacer oversleeps (a busy or
// emulated machine) are owed to the commands that waited, not lost.
func (l *Limiter) refill(now int64) {
	dt := float64(now-l.last) / 1e9
	if dt <= 0 {
		return
	}
	l.last = now
	for i := range l.b {
		b := &l.b[i]
		if b.rate > 0 {
			depth := b.depth
			if l.queued > 0 {
				depth = max(depth, b.rate*MaxWait.Seconds())
			}
			b.level = min(depth, b.level+b.rate*dt)
		}
	}
}

// applies reports whether any bucket of l counts c.
func (l *Limiter) applies(c Cost) bool {
	for i := range l.b {
		if l.b[i].rate > 0 && c.tokens(i) > 0 {
			return true
		}
	}
	return false
}

// admissible reports whether every bucket that counts c holds tokens.
func (l *Limiter) admissible(c Cost) bool {
	for i := range l.b {
		if b := &l.b[i]; b.rate > 0 && b.level < -tokenSlop && c.tokens(i) > 0 {
			return false
		}
	}
	return true
}

// admit charges e to the buckets and to f's weighted service, and counts
// it; the caller holds l.mu. A forced admission takes its cost as debt
// down to MaxWait's worth of the rate, no further, so that the commands
// after an overload wait no longer than that.
func (l *Limiter) admit(f *Flow, e *Entry, forced bool, waited int64) {
	var norm float64 // the cost in seconds of the tightest rate
	for i := range l.b {
		b := &l.b[i]
		t := e.cost.tokens(i)
		if b.rate == 0 || t == 0 {
			continue
		}
		norm = max(norm, t/b.rate)
		if forced {
			if floor := -b.rate * MaxWait.Seconds(); b.level > floor {
				b.level = max(b.level-t, floor)
			}
		} else {
			b.level -= t
		}
	}
	start := max(f.vt, l.vtime)
	l.vtime = start
	f.vt = start + norm/f.weight
	st := &l.stats
	st.Admitted++
	st.Bytes += uint64(e.cost.Bytes)
	if forced {
		st.Overdrawn++
	}
	waited = max(waited, 0)
	if waited > 0 {
		st.Throttled++
		st.ThrottledNanos += uint64(waited)
	}
	i := 0
	for i < len(WaitBounds) && time.Duration(waited) >= WaitBounds[i] {
		i++
	}
	st.Wait[i]++
}

// Flow is one sender's share of a limiter: a session's commands. Its
// waiting commands keep their order.
type Flow struct {
	l          *Limiter
	weight     float64
	share      atomicFloat // weight over the attached flows' total
	vt         float64     // virtual time: weighted service so far
	head, tail *Entry
	n          int
	dead       bool // detached, or its limiter closed: it passes everything
}

// Limiter is the limiter f belongs to.
func (f *Flow) Limiter() *Limiter { return f.l }

// SetWeight changes f's share of its limiter.
func (f *Flow) SetWeight(w float64) {
	l := f.l
	l.mu.Lock()
	if !f.dead {
		f.weight = max(w, 1)
		l.reweigh()
	}
	l.mu.Unlock()
}

// Detach takes f off its limiter; what waits in it goes on at once.
func (f *Flow) Detach() {
	l := f.l
	l.mu.Lock()
	if f.dead {
		l.mu.Unlock()
		return
	}
	f.dead = true
	for i, g := range l.flows {
		if g == f {
			l.flows = append(l.flows[:i], l.flows[i+1:]...)
			break
		}
	}
	l.queued -= f.n
	out := f.drain(nil)
	if len(l.flows) > 0 {
		l.reweigh()
	}
	l.mu.Unlock()
	for _, e := range out {
		e.chain.advance(e)
	}
}

// Window is how many of f's commands the limiter admits in the time over
// when every attached flow keeps it busy: f's share of its lowest command
// rate, or of its lowest byte rate in commands of avgBytes. +Inf when
// nothing is limited.
func (f *Flow) Window(avgBytes float64, over time.Duration) float64 {
	cmds := f.l.cmdRate.load()
	if br := f.l.byteRate.load(); !math.IsInf(br, 1) && avgBytes > 0 {
		cmds = min(cmds, br/avgBytes)
	}
	return f.share.load() * cmds * over.Seconds()
}

// offer lets e pass f's limiter at once when it may, else queues it;
// true means it passed.
func (f *Flow) offer(e *Entry) bool {
	l := f.l
	l.mu.Lock()
	if f.dead || !l.applies(e.cost) {
		l.mu.Unlock()
		return true
	}
	now := l.clock()
	l.refill(now)
	forced := e.waited && now-e.since >= int64(MaxWait)
	if forced || l.queued == 0 && l.admissible(e.cost) {
		l.admit(f, e, forced, 0)
		l.mu.Unlock()
		return true
	}
	if !e.waited {
		e.waited, e.since = true, now
	}
	e.queuedAt = now
	head := f.n == 0 // a new head may go sooner than the pacer planned
	if head {
		f.vt = max(f.vt, l.vtime)
	}
	f.push(e)
	l.queued++
	l.mu.Unlock()
	if head {
		l.kick()
	}
	return false
}

// push appends e to f's queue; the caller holds the limiter's lock.
func (f *Flow) push(e *Entry) {
	e.next = nil
	if f.tail == nil {
		f.head = e
	} else {
		f.tail.next = e
	}
	f.tail = e
	f.n++
	e.at.Store(f)
}

// pop takes f's head; the caller holds the limiter's lock.
func (f *Flow) pop() *Entry {
	e := f.head
	f.head = e.next
	if f.head == nil {
		f.tail = nil
	}
	e.next = nil
	f.n--
	e.at.Store(nil)
	return e
}

// drain empties f's queue onto out; the caller holds the limiter's lock.
func (f *Flow) drain(out []*Entry) []*Entry {
	for f.head != nil {
		out = append(out, f.pop())
	}
	return out
}

// Remove takes e out of the queue it waits in, without charging it, and
// reports whether it did; false means e was not waiting (it is passing
// on, or has been admitted).
func Remove(e *Entry) bool {
	f := e.at.Load()
	if f == nil {
		return false
	}
	l := f.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.at.Load() != f {
		return false
	}
	var prev *Entry
	for x := f.head; x != e; x = x.next {
		prev = x
	}
	if prev == nil {
		f.head = e.next
	} else {
		prev.next = e.next
	}
	if f.tail == e {
		f.tail = prev
	}
	e.next = nil
	f.n--
	l.queued--
	e.at.Store(nil)
	return true
}

// atomicFloat is a float64 read without locks.
type atomicFloat struct{ v atomic.Uint64 }

func (a *atomicFloat) load() float64   { return math.Float64frombits(a.v.Load()) }
func (a *atomicFloat) store(f float64) { a.v.Store(math.Float64bits(f)) }
