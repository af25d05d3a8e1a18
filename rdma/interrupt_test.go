//go:build linux

package rdma

import (
	"context"
	"sync"
	"testing"
	"time"
)

// countingInterrupter records set and clear calls; set also signals fired.
type countingInterrupter struct {
	interrupter
	mu         sync.Mutex
	sets, clrs int
	fired      chan struct{}
}

func newCountingInterrupter() *countingInterrupter {
	c := &countingInterrupter{fired: make(chan struct{}, 16)}
	c.set = func() {
		c.mu.Lock()
		c.sets++
		c.mu.Unlock()
		c.fired <- struct{}{}
	}
	c.clear = func() {
		c.mu.Lock()
		c.clrs++
		c.mu.Unlock()
	}
	return c
}

func (c *countingInterrupter) counts() (int, int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.interrupter.mu.Lock()
	defer c.interrupter.mu.Unlock()
	return c.sets, c.clrs, len(c.regs)
}

// settle waits until the registrations are down to regs (AfterFunc runs in its own goroutine).
func (c *countingInterrupter) settle(t *testing.T, regs int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, _, n := c.counts(); n == regs {
			return
		}
	}
	_, _, n := c.counts()
	t.Fatalf("%d registrations left, want %d", n, regs)
}

func TestInterrupter(t *testing.T) {
	tests := []struct {
		name string
		// run drives the interrupter; it returns the expected set and clear calls.
		run func(t *testing.T, c *countingInterrupter) (sets, clears int)
	}{
		{"a context is registered once for many waits", func(t *testing.T, c *countingInterrupter) (int, int) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			first := c.enter(ctx)
			c.leave(first)
			for range 10 {
				r := c.enter(ctx)
				if r != first {
					t.Fatal("a new registration for the same context")
				}
				c.leave(r)
			}
			return 0, 0
		}},
		{"a context without Done is not registered", func(t *testing.T, c *countingInterrupter) (int, int) {
			if r := c.enter(context.Background()); r != nil {
				t.Fatal("registered context.Background")
			}
			c.leave(nil)
			return 0, 0
		}},
		{"an ending context wakes its waiters, the last one to leave clears", func(t *testing.T, c *countingInterrupter) (int, int) {
			ctx, cancel := context.WithCancel(context.Background())
			r1, r2 := c.enter(ctx), c.enter(ctx)
			cancel()
			<-c.fired
			c.leave(r1)
			if _, clears, _ := c.counts(); clears != 0 {
				t.Fatal("cleared while a waiter of the ended context is still there")
			}
			c.leave(r2)
			return 1, 1
		}},
		{"an idle context ends without waking anyone", func(t *testing.T, c *countingInterrupter) (int, int) {
			ctx, cancel := context.WithCancel(context.Background())
			c.leave(c.enter(ctx))
			cancel()
			c.settle(t, 0)
			return 0, 0
		}},
		{"clearing waits for every ended context", func(t *testing.T, c *countingInterrupter) (int, int) {
			ctx1, cancel1 := context.WithCancel(context.Background())
			ctx2, cancel2 := context.WithCancel(context.Background())
			live, liveCancel := context.WithCancel(context.Background())
			defer liveCancel()
			r1, r2, rl := c.enter(ctx1), c.enter(ctx2), c.enter(live)
			cancel1()
			<-c.fired
			cancel2()
			<-c.fired
			c.leave(r1)
			if _, clears, _ := c.counts(); clears != 0 {
				t.Fatal("cleared while the second ended context still has a waiter")
			}
			c.leave(r2)
			c.leave(rl)
			return 2, 1
		}},
		{"idle registrations are bounded", func(t *testing.T, c *countingInterrupter) (int, int) {
			for range 3 * maxIdleRegs {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				c.leave(c.enter(ctx))
			}
			if _, _, n := c.counts(); n > maxIdleRegs {
				t.Fatalf("%d idle registrations kept, at most %d wanted", n, maxIdleRegs)
			}
			return 0, 0
		}},
		{"close unregisters", func(t *testing.T, c *countingInterrupter) (int, int) {
			ctx, cancel := context.WithCancel(context.Background())
			c.leave(c.enter(ctx))
			c.close()
			r := c.enter(ctx)
			cancel()
			c.leave(r)
			c.settle(t, 0)
			return 0, 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCountingInterrupter()
			wantSets, wantClears := tt.run(t, c)
			time.Sleep(10 * time.Millisecond) // a stray AfterFunc would have run by now
			if sets, clears, _ := c.counts(); sets != wantSets || clears != wantClears {
				t.Errorf("set %d and clear %d times, want %d and %d", sets, clears, wantSets, wantClears)
			}
		})
	}
}
