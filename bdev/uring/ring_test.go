package uring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestLayout(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"params", unsafe.Sizeof(params{}), 120},
		{"sqe", unsafe.Sizeof(SQE{}), 64},
		{"sqe.user_data", unsafe.Offsetof(SQE{}.UserData), 32},
		{"sqe.buf_index", unsafe.Offsetof(SQE{}.BufIndex), 40},
		{"cqe", unsafe.Sizeof(CQE{}), 16},
		{"rsrc_register", unsafe.Sizeof(rsrcRegister{}), 32},
		{"rsrc_update2", unsafe.Sizeof(rsrcUpdate2{}), 32},
		{"params.sq_off", unsafe.Offsetof(params{}.SQOff), 40},
		{"params.cq_off", unsafe.Offsetof(params{}.CQOff), 80},
		{"getevents_arg", unsafe.Sizeof(getEventsArg{}), 24},
		{"getevents_arg.ts", unsafe.Offsetof(getEventsArg{}.Ts), 16},
		{"timespec", unsafe.Sizeof(timespec{}), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s: size/offset %d, want %d", c.name, c.got, c.want)
		}
	}
}

func newRing(t *testing.T, n uint32) *Ring {
	t.Helper()
	r, err := New(n)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		t.Skipf("io_uring unavailable: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// complete submits what is queued, waits for want completions and returns them.
func complete(t *testing.T, r *Ring, want int) []CQE {
	t.Helper()
	if _, err := r.Submit(uint32(want)); err != nil {
		t.Fatal(err)
	}
	cqes := make([]CQE, want+1)
	n := r.Reap(cqes)
	if n != want {
		t.Fatalf("reaped %d completions, want %d", n, want)
	}
	return cqes[:n]
}

func TestSubmitAndWait(t *testing.T) {
	r := newRing(t, 4)
	if !r.CanWait() {
		t.Skip("io_uring_enter takes no timeout on this kernel")
	}
	for _, c := range []struct {
		name  string
		nops  int
		ready int
	}{
		{"completion", 1, 1},
		{"two completions", 2, 2},
		{"timeout", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i := range c.nops {
				sqe := r.GetSQE()
				sqe.Opcode, sqe.UserData = OpNop, uint64(i)
			}
			const timeout = 5 * time.Millisecond
			start := time.Now()
			n, err := r.SubmitAndWait(timeout)
			if err != nil || n != c.nops {
				t.Fatalf("SubmitAndWait = %d, %v; want %d, nil", n, err, c.nops)
			}
			if c.ready == 0 && time.Since(start) < timeout {
				t.Errorf("returned after %v with nothing ready, before the %v timeout", time.Since(start), timeout)
			}
			cqes := make([]CQE, 4)
			if got := r.Reap(cqes); got != c.ready {
				t.Errorf("reaped %d completions, want %d", got, c.ready)
			}
		})
	}
}

func TestRingFull(t *testing.T) {
	r := newRing(t, 4)
	if r.Entries() != 4 || r.CQEntries() != 8 {
		t.Fatalf("entries %d/%d, want 4/8", r.Entries(), r.CQEntries())
	}
	for i := range 4 {
		sqe := r.GetSQE()
		if sqe == nil {
			t.Fatalf("SQE %d: ring full too early", i)
		}
		sqe.Opcode, sqe.UserData = OpNop, uint64(100+i)
	}
	if r.GetSQE() != nil {
		t.Fatal("fifth SQE handed out from a 4-entry ring")
	}
	if r.Pending() != 4 {
		t.Fatalf("pending %d, want 4", r.Pending())
	}
	for i, c := range complete(t, r, 4) {
		if c.UserData != uint64(100+i) || c.Res != 0 {
			t.Errorf("completion %d: %+v", i, c)
		}
	}
	if r.Pending() != 0 || r.Ready() != 0 {
		t.Fatalf("pending %d ready %d after reaping", r.Pending(), r.Ready())
	}
	if r.GetSQE() == nil {
		t.Fatal("no SQE after the ring drained")
	}
}

func TestReadWriteFixedEventfd(t *testing.T) {
	r := newRing(t, 8)
	f, err := os.Create(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.RegisterEventfd(efd); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterSparseBuffers(4); err != nil {
		t.Fatal(err)
	}
	fixed := make([]byte, 8192)
	if err := r.UpdateBuffer(2, fixed); err != nil {
		t.Fatal(err)
	}
	copy(fixed, "fixed buffer payload")
	plain := []byte("plain write")
	fd := int32(f.Fd())

	sqe := r.GetSQE()
	sqe.Opcode, sqe.Fd, sqe.Off, sqe.UserData = OpWriteFixed, fd, 4096, 1
	sqe.Addr, sqe.Len, sqe.BufIndex = uint64(uintptr(unsafe.Pointer(&fixed[0]))), 4096, 2
	sqe = r.GetSQE()
	sqe.Opcode, sqe.Fd, sqe.Off, sqe.UserData = OpWrite, fd, 0, 2
	sqe.Addr, sqe.Len = uint64(uintptr(unsafe.Pointer(&plain[0]))), uint32(len(plain))
	for _, c := range complete(t, r, 2) {
		want := map[uint64]int32{1: 4096, 2: int32(len(plain))}[c.UserData]
		if c.Res != want {
			t.Errorf("write %d: res %d, want %d", c.UserData, c.Res, want)
		}
	}
	var cnt [8]byte
	if _, err := unix.Read(efd, cnt[:]); err != nil {
		t.Fatalf("eventfd not signalled: %v", err)
	}

	// The fixed read lands in the second half of the registered buffer.
	sqe = r.GetSQE()
	sqe.Opcode, sqe.Fd, sqe.Off, sqe.UserData = OpReadFixed, fd, 0, 3
	sqe.Addr, sqe.Len, sqe.BufIndex = uint64(uintptr(unsafe.Pointer(&fixed[4096]))), 4096, 2
	sqe = r.GetSQE()
	sqe.Opcode, sqe.Fd, sqe.OpFlags, sqe.UserData = OpFsync, fd, FsyncDatasync, 4
	sqe = r.GetSQE() // a fixed op on an empty slot fails cleanly
	sqe.Opcode, sqe.Fd, sqe.UserData = OpReadFixed, fd, 5
	sqe.Addr, sqe.Len, sqe.BufIndex = uint64(uintptr(unsafe.Pointer(&fixed[0]))), 512, 0
	res := map[uint64]int32{}
	for _, c := range complete(t, r, 3) {
		res[c.UserData] = c.Res
	}
	if res[3] != 4096 || res[4] != 0 || res[5] >= 0 {
		t.Fatalf("results %v: want read 4096, fsync 0, empty-slot read < 0", res)
	}
	if got := fixed[4096 : 4096+len(plain)]; !bytes.Equal(got, plain) {
		t.Errorf("read back %q, want %q", got, plain)
	}
	disk := make([]byte, 20)
	if _, err := f.ReadAt(disk, 4096); err != nil || string(disk) != "fixed buffer payload" {
		t.Errorf("file at 4096 holds %q (%v)", disk, err)
	}
}

func TestEventfdDisabled(t *testing.T) {
	r := newRing(t, 2)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.RegisterEventfd(efd); err != nil {
		t.Fatal(err)
	}
	var cnt [8]byte
	for _, on := range []bool{false, true} {
		r.SetEventfdEnabled(on)
		r.GetSQE().Opcode = OpNop
		complete(t, r, 1)
		_, err := unix.Read(efd, cnt[:])
		if on && err != nil {
			t.Errorf("enabled: eventfd not signalled: %v", err)
		}
		if !on && !errors.Is(err, unix.EAGAIN) {
			t.Errorf("disabled: eventfd read gave %v, want EAGAIN", err)
		}
	}
}

func TestUpdateBufferEmpty(t *testing.T) {
	r := newRing(t, 2)
	if err := r.UpdateBuffer(0, nil); err == nil {
		t.Fatal("empty buffer accepted")
	}
}

// TestUpdateBufferConcurrent registers a different buffer into each slot,
// over and over, from goroutines running at once (register calls share the
// ring's argument memory), then proves each slot holds its own buffer: a fixed
// read addressing buffer i through slot i fails with EFAULT otherwise.
func TestUpdateBufferConcurrent(t *testing.T) {
	const slots, size = 16, 4096
	r := newRing(t, slots)
	f, err := os.Create(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{0xa5}, size)); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterSparseBuffers(slots); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, slots)
	errs := make(chan error, slots)
	for i := range bufs {
		bufs[i] = make([]byte, size)
		go func() {
			var err error
			for range 200 {
				if err = r.UpdateBuffer(i, bufs[i]); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range slots {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range bufs {
		sqe := r.GetSQE()
		sqe.Opcode, sqe.Fd, sqe.UserData = OpReadFixed, int32(f.Fd()), uint64(i)
		sqe.Addr, sqe.Len, sqe.BufIndex = uint64(uintptr(unsafe.Pointer(&b[0]))), size, uint16(i)
	}
	for _, c := range complete(t, r, slots) {
		if c.Res != size {
			t.Errorf("fixed read through slot %d: res %d, want %d", c.UserData, c.Res, size)
		} else if bufs[c.UserData][size-1] != 0xa5 {
			t.Errorf("slot %d: data did not land in its buffer", c.UserData)
		}
	}
}

// TestRegisterNoAllocs pins that register calls take their argument memory
// from the ring, not from the heap.
func TestRegisterNoAllocs(t *testing.T) {
	r := newRing(t, 2)
	if err := r.RegisterSparseBuffers(1); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if n := testing.AllocsPerRun(100, func() {
		if err := r.UpdateBuffer(0, buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("UpdateBuffer: %v allocations per call, want 0", n)
	}
}

func TestRegisterAfterClose(t *testing.T) {
	r, err := New(2)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		t.Skipf("io_uring unavailable: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"eventfd": r.RegisterEventfd(0),
		"sparse":  r.RegisterSparseBuffers(1),
		"update":  r.UpdateBuffer(0, make([]byte, 1)),
	} {
		if !errors.Is(err, errClosed) {
			t.Errorf("%s after Close: %v, want errClosed", name, err)
		}
	}
}

// TestWithdraw takes back queued SQEs: the kernel never sees them and the
// ring hands out their slots again.
func TestWithdraw(t *testing.T) {
	r := newRing(t, 4)
	for i := range 3 {
		sqe := r.GetSQE()
		sqe.Opcode, sqe.UserData = OpNop, uint64(10+i)
	}
	var got []uint64
	r.Withdraw(func(ud uint64) { got = append(got, ud) })
	if !slices.Equal(got, []uint64{10, 11, 12}) || r.Pending() != 0 {
		t.Fatalf("withdrew %v, %d pending; want [10 11 12], 0", got, r.Pending())
	}
	for i := range 4 {
		sqe := r.GetSQE()
		if sqe == nil {
			t.Fatalf("SQE %d: ring still full after Withdraw", i)
		}
		sqe.Opcode, sqe.UserData = OpNop, uint64(20+i)
	}
	for i, c := range complete(t, r, 4) {
		if c.UserData != uint64(20+i) {
			t.Errorf("completion %d: user data %d, want %d", i, c.UserData, 20+i)
		}
	}
}
