package bdev

import (
	"sync"
	"testing"
)

// ring is what the SPSC and MPSC queues share, for table-driven tests.
type ring interface {
	push(int) bool
	pop() (int, bool)
	empty() bool
}

func TestRingsSequential(t *testing.T) {
	for _, c := range []struct {
		name string
		q    ring
	}{
		{"spsc", newSPSC[int](3)},
		{"mpsc", newMPSC[int](3)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !c.q.empty() {
				t.Fatal("new ring not empty")
			}
			if _, ok := c.q.pop(); ok {
				t.Fatal("pop from an empty ring succeeded")
			}
			// Several laps, so the index wrap-around is exercised.
			next, want := 0, 0
			for lap := 0; lap < 5; lap++ {
				for i := 0; i < 4; i++ {
					if !c.q.push(next) {
						t.Fatalf("push %d into a 4-slot ring failed at %d", i, next)
					}
					next++
				}
				if c.q.push(-1) {
					t.Fatal("push into a full ring succeeded")
				}
				for i := 0; i < 4; i++ {
					v, ok := c.q.pop()
					if !ok || v != want {
						t.Fatalf("pop = %d,%v, want %d", v, ok, want)
					}
					want++
				}
				if !c.q.empty() {
					t.Fatal("drained ring not empty")
				}
			}
		})
	}
}

// TestRingsConcurrent checks under -race that every pushed value comes out
// exactly once and, per producer, in order.
func TestRingsConcurrent(t *testing.T) {
	const per = 20000
	for _, c := range []struct {
		name      string
		q         ring
		producers int
	}{
		{"spsc", newSPSC[int](64), 1},
		{"mpsc", newMPSC[int](64), 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for p := 0; p < c.producers; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; {
						if c.q.push(p*per + i) {
							i++
						}
					}
				}()
			}
			last := make([]int, c.producers)
			for i := range last {
				last[i] = -1
			}
			for got := 0; got < per*c.producers; {
				v, ok := c.q.pop()
				if !ok {
					continue
				}
				p, i := v/per, v%per
				if i != last[p]+1 {
					t.Fatalf("producer %d: got item %d after %d", p, i, last[p])
				}
				last[p] = i
				got++
			}
			wg.Wait()
			if !c.q.empty() {
				t.Fatal("items left after all were consumed")
			}
		})
	}
}
