//go:build linux

package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeChannel builds a CompChannel over an eventfd standing in for the kernel's completion
// channel: reading it yields its counter, i.e. the 8-byte CQ user handle written to it.
func fakeChannel(t *testing.T, syscallWait bool) (*CompChannel, int, *CQ) {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Skipf("eventfd: %v", err)
	}
	c := &Context{Device: Device{Name: "fake"}, chans: map[*CompChannel]struct{}{}}
	cq := &CQ{uh: 5}
	ch, err := c.adoptChannelLocked(fd, syscallWait)
	if err != nil {
		t.Fatal(err)
	}
	ch.cqs[5] = cq
	// A second descriptor for signalling, so the test never writes to a closed number.
	sig, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sig) })
	return ch, sig, cq
}

func signal(t *testing.T, fd int, handle uint64) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], handle)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatal(err)
	}
}

func TestCompChannelWait(t *testing.T) {
	for _, mode := range []struct {
		name        string
		syscallWait bool
	}{{"netpoller", false}, {"syscall wait", true}} {
		t.Run(mode.name, func(t *testing.T) {
			ch, sig, cq := fakeChannel(t, mode.syscallWait)
			// An event wakes a sleeping waiter with its CQ.
			got := make(chan *CQ, 1)
			go func() {
				c, err := ch.Wait(context.Background())
				if err != nil {
					t.Error(err)
				}
				got <- c
			}()
			time.Sleep(20 * time.Millisecond)
			signal(t, sig, 5)
			expectWake(t, got, cq, "Wait did not wake up on an event")
			// A context deadline ends the wait.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			defer cancel()
			if _, err := ch.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait with an expired context: %v", err)
			}
			// A context that ended after its wait leaves no state behind: the next waiter
			// still gets its event.
			signal(t, sig, 5)
			if c, err := ch.Wait(context.Background()); err != nil || c != cq {
				t.Errorf("Wait after an ended context: %p, %v; want the CQ %p", c, err, cq)
			}
			// Close wakes a sleeping waiter with ErrClosed.
			errc := make(chan error, 1)
			go func() {
				_, err := ch.Wait(context.Background())
				errc <- err
			}()
			time.Sleep(20 * time.Millisecond)
			if err := ch.Close(); err == nil {
				t.Fatal("Close succeeded while a CQ still uses the channel")
			}
			delete(ch.cqs, 5) // as CQ.Destroy does
			if err := ch.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, ErrClosed) {
					t.Errorf("Wait after Close: %v, want ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not wake the waiter")
			}
		})
	}
}

// TestCompChannelWaitersWithOwnContexts: in netpoller mode, the end of one waiter's context
// returns only that waiter; another one sleeps on and gets the next event.
func TestCompChannelWaitersWithOwnContexts(t *testing.T) {
	ch, sig, cq := fakeChannel(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	live, liveCancel := context.WithCancel(context.Background())
	defer liveCancel()
	ended, got := make(chan error, 1), make(chan *CQ, 1)
	go func() {
		_, err := ch.Wait(ctx)
		ended <- err
	}()
	go func() {
		c, err := ch.Wait(live)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait with a cancelled context: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling did not end the wait")
	}
	select {
	case c := <-got:
		t.Fatalf("the waiter with a live context returned %p", c)
	case <-time.After(20 * time.Millisecond):
	}
	signal(t, sig, 5)
	expectWake(t, got, cq, "the waiter with a live context missed the event")
	delete(ch.cqs, 5)
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
}

// expectWake waits up to 5 s for a waiter to return cq on got.
func expectWake(t *testing.T, got <-chan *CQ, cq *CQ, missed string) {
	t.Helper()
	select {
	case c := <-got:
		if c != cq {
			t.Errorf("Wait returned %p, want the CQ %p", c, cq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal(missed)
	}
}
