package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// idleHeapSlack is how big the Go heap (objects, collected or not, and
// freed memory still resident) may be before returnIdleHeap acts, and how
// much garbage a collection must find for it to keep checking every period.
const idleHeapSlack = 8 << 20

// maxIdleBackoff bounds the periods returnIdleHeap waits between
// collections that find little garbage.
const maxIdleBackoff = 8

// returnIdleHeap gives Go heap back to the system after a burst. The
// runtime returns memory only slowly, after collections, and an idle daemon
// allocates nothing that would start one: without this, what a burst (or a
// hostile peer) made the heap grow to stays resident until the next burst.
// Every period, when the heap is above idleHeapSlack, it collects and
// releases (debug.FreeOSMemory); when a collection finds less garbage than
// idleHeapSlack it waits twice as many periods before the next (up to
// maxIdleBackoff), until the runtime collects by itself again (activity).
// A small idle daemon does nothing; a busy one one collection a period.
func returnIdleHeap(ctx context.Context, period time.Duration) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"}, // live, or garbage not yet collected
		{Name: "/memory/classes/heap/free:bytes"},    // free, still resident
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	read := func() (objects, free, cycles uint64) {
		metrics.Read(samples)
		var v [3]uint64
		for i, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		return v[0], v[1], v[2]
	}
	_, _, seen := read()
	wait, left := 1, 1 // periods between collections, and until the next
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		objects, free, cycles := read()
		if cycles != seen { // the runtime collected: there is activity
			seen, wait, left = cycles, 1, 1
		}
		if objects+free <= idleHeapSlack {
			continue
		}
		if left--; left > 0 {
			continue
		}
		debug.FreeOSMemory()
		after, _, c := read()
		seen = c
		if objects-min(objects, after) < idleHeapSlack {
			wait = min(2*wait, maxIdleBackoff)
		} else {
			wait = 1
		}
		left = wait
	}
}
