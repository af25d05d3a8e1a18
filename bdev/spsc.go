package bdev

import "sync/atomic"

// cacheLine pads ring indices apart so the producer's and the consumer's
// stores do not fight over one cache line.
type cacheLine [64]byte

// spsc is a bounded ring for exactly one producer goroutine and one
// consumer goroutine at a time. Each side owns one index and only reads
// the other's; the sequentially consistent atomics order the slot write
// before the index that publishes it. No locks, no allocation.
type spsc[T any] struct {
	_     cacheLine
	tail  atomic.Uint64 // next slot the producer fills
	_     cacheLine
	head  atomic.Uint64 // next slot the consumer takes
	_     cacheLine
	slots []T
	mask  uint64
}

// newSPSC returns a ring holding size items, rounded up to a power of two.
func newSPSC[T any](size int) *spsc[T] {
	n := ceilPow2(size)
	return &spsc[T]{slots: make([]T, n), mask: uint64(n - 1)}
}

// push appends v; it reports false, storing nothing, when the ring is full.
// Producer side only.
func (q *spsc[T]) push(v T) bool {
	t := q.tail.Load()
	if t-q.head.Load() > q.mask {
		return false
	}
	q.slots[t&q.mask] = v
	q.tail.Store(t + 1)
	return true
}

// pop removes the oldest item. Consumer side only.
func (q *spsc[T]) pop() (T, bool) {
	var zero T
	h := q.head.Load()
	if h == q.tail.Load() {
		return zero, false
	}
	v := q.slots[h&q.mask]
	q.slots[h&q.mask] = zero // drop the reference for the GC
	q.head.Store(h + 1)
	return v, true
}

// empty reports whether nothing is queued; either side may ask.
func (q *spsc[T]) empty() bool { return q.head.Load() == q.tail.Load() }

// mpsc is a bounded ring for any number of producers and one consumer.
// Producers claim a slot with one compare-and-swap on tail and publish it
// through the slot's sequence number, so a slow producer never exposes a
// half-written slot (the per-slot sequence scheme of Dmitry Vyukov's
// bounded queue).
type mpsc[T any] struct {
	_     cacheLine
	tail  atomic.Uint64
	_     cacheLine
	head  uint64 // consumer only
	_     cacheLine
	slots []mpscSlot[T]
	mask  uint64
}

type mpscSlot[T any] struct {
	seq atomic.Uint64 // == position: free for that producer; == position+1: holds an item
	val T
}

// newMPSC returns a ring holding size items, rounded up to a power of two.
func newMPSC[T any](size int) *mpsc[T] {
	n := ceilPow2(size)
	q := &mpsc[T]{slots: make([]mpscSlot[T], n), mask: uint64(n - 1)}
	for i := range q.slots {
		q.slots[i].seq.Store(uint64(i))
	}
	return q
}

// push appends v; it reports false when the ring is full. Any goroutine.
func (q *mpsc[T]) push(v T) bool {
	for {
		t := q.tail.Load()
		s := &q.slots[t&q.mask]
		switch d := int64(s.seq.Load() - t); {
		case d == 0:
			if q.tail.CompareAndSwap(t, t+1) {
				s.val = v
				s.seq.Store(t + 1)
				return true
			}
		case d < 0: // the slot still holds an item from one lap ago
			return false
		}
		// d > 0: another producer took slot t; retry with the new tail.
	}
}

// pop removes the oldest published item. Consumer side only.
func (q *mpsc[T]) pop() (T, bool) {
	var zero T
	s := &q.slots[q.head&q.mask]
	if s.seq.Load() != q.head+1 {
		return zero, false
	}
	v := s.val
	s.val = zero
	s.seq.Store(q.head + q.mask + 1)
	q.head++
	return v, true
}

// empty reports whether no item is claimed or published. Consumer side.
func (q *mpsc[T]) empty() bool { return q.tail.Load() == q.head }

func ceilPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}
