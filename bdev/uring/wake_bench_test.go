package uring

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkWake measures the two ways a sleeping reaper can learn of a
// completion: an eventfd registered with the ring and read through the Go
// netpoller, or io_uring_enter(GETEVENTS) on a locked OS thread. Each
// iteration is a round trip: the submitter posts a NOP (it completes at
// once), the reaper wakes, reaps it and answers over a channel, the same
// for both variants.
func BenchmarkWake(b *testing.B) {
	for _, c := range []struct {
		name string
		wait func(r *Ring, ev *os.File, buf []byte)
	}{
		{"eventfd-netpoll", func(r *Ring, ev *os.File, buf []byte) {
			for r.Ready() == 0 {
				ev.Read(buf)
			}
		}},
		{"enter-getevents-locked", func(r *Ring, _ *os.File, _ []byte) {
			for r.Ready() == 0 {
				unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, 1, enterGetEvents, 0, 0)
			}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, err := New(8)
			if err != nil {
				b.Skip(err)
			}
			defer r.Close()
			efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			ev := os.NewFile(uintptr(efd), "eventfd")
			defer ev.Close()
			if err := r.RegisterEventfd(efd); err != nil {
				b.Fatal(err)
			}
			back := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				buf := make([]byte, 8)
				cqes := make([]CQE, 8)
				for {
					c.wait(r, ev, buf)
					r.Reap(cqes)
					if cqes[0].UserData == 0 {
						close(back)
						return
					}
					back <- struct{}{}
				}
			}()
			nop := func(ud uint64) {
				sqe := r.GetSQE()
				sqe.Opcode, sqe.UserData = OpNop, ud
				// Publish and enter without touching the CQ, which the
				// reaper owns.
				atomic.StoreUint32(r.sqTail, r.sqeTail)
				unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 1, 0, 0, 0, 0)
			}
			b.ResetTimer()
			for range b.N {
				nop(1)
				<-back
			}
			b.StopTimer()
			nop(0)
			<-back
		})
	}
}
