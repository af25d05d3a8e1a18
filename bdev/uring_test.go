package bdev

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/iserd/iserd/bdev/uring"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

const testSize = 8 << 20

// openUring opens a fresh sparse file in dir as a Uring device, skipping
// the test when the host has no io_uring.
func openUring(t testing.TB, dir string, o UringOptions) *Uring {
	t.Helper()
	o.Create = true
	if o.Size == 0 {
		o.Size = testSize
	}
	d, err := NewUring(filepath.Join(dir, "lun"), o)
	if errors.Is(err, ErrNoUring) {
		t.Skipf("no io_uring: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// submitter is what Uring and Queue share.
type submitter interface{ Submit(*Request) }

// run submits r and waits for its completion.
func run(s submitter, r *Request) error {
	done := make(chan struct{})
	r.Done = func(*Request) { close(done) }
	s.Submit(r)
	<-done
	return r.Err
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestUringReadWrite writes and reads back through every path: direct and
// buffered, fixed pool buffers and heap buffers, both submission routes.
func TestUringReadWrite(t *testing.T) {
	pool := newTestPool(t, 4*DefaultRegionSize)
	dirs := map[string]string{"disk": t.TempDir(), "shm": shmDir(t)}
	for _, c := range []struct {
		name     string
		dir      string
		buffered bool
		off      int64
		n        int
		fromPool bool
		fua      bool
		queue    bool
		inline   bool
	}{
		{"4k pool direct", "disk", false, 4096, 4096, true, false, false, false},
		{"4k pool queue", "disk", false, 8192, 4096, true, false, true, false},
		{"128k pool fua", "disk", false, 1 << 20, 128 << 10, true, true, false, false},
		{"512 unaligned heap", "disk", false, 512, 512, false, false, false, false},
		{"odd offset and length", "disk", false, 12345, 3001, false, false, true, false},
		{"2MiB pool at end", "disk", false, testSize - 2<<20, 2 << 20, true, false, false, false},
		{"buffered only", "disk", true, 4096, 65536, true, true, true, false},
		{"shm 4k pool", "shm", false, 40960, 4096, true, false, false, false},
		{"shm odd heap", "shm", false, 777, 10000, false, true, true, false},
		{"4k pool inline", "disk", false, 16384, 4096, true, false, false, true},
		{"odd heap inline queue", "disk", false, 23456, 5000, false, true, true, true},
		{"2MiB pool inline", "disk", false, 2 << 20, 2 << 20, true, true, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := openUring(t, dirs[c.dir], UringOptions{Pool: pool, Buffered: c.buffered})
			var s submitter = d
			if c.queue {
				q := d.NewQueue()
				defer q.Close()
				s = q
			}
			buf := make([]byte, c.n)
			if c.fromPool {
				b, err := pool.Get(c.n)
				if err != nil {
					t.Fatal(err)
				}
				defer pool.Put(b)
				buf = b.Bytes()
				for _, w := range d.rings {
					if w.fixed != nil && !w.fixed[b.Region()].Load() {
						t.Errorf("pool region %d not registered as a fixed buffer", b.Region())
					}
				}
			}
			want := pattern(c.n, byte(c.off))
			copy(buf, want)
			if err := run(s, &Request{Op: OpWrite, Offset: c.off, Buf: buf, FUA: c.fua, Inline: c.inline}); err != nil {
				t.Fatalf("write: %v", err)
			}
			clear(buf)
			if err := run(s, &Request{Op: OpRead, Offset: c.off, Buf: buf, Inline: c.inline}); err != nil {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(buf, want) {
				t.Fatal("read back differs from what was written")
			}
			if err := run(s, &Request{Op: OpFlush, Inline: c.inline}); err != nil {
				t.Fatalf("flush: %v", err)
			}
			// What another reader of the file sees, through the page cache.
			got := make([]byte, c.n)
			if _, err := d.file.f.ReadAt(got, c.off); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("file content differs (%v)", err)
			}
		})
	}
}

func shmDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "bdevtest")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestUringDirect(t *testing.T) {
	d := openUring(t, t.TempDir(), UringOptions{})
	ok, mem, off := d.Direct()
	if !ok {
		t.Skip("filesystem of the test directory refuses O_DIRECT")
	}
	if mem <= 0 || off <= 0 || off&(off-1) != 0 {
		t.Fatalf("direct alignment mem %d off %d", mem, off)
	}
	for name, dir := range map[string]string{"buffered": t.TempDir(), "tmpfs": shmDir(t)} {
		b := openUring(t, dir, UringOptions{Buffered: name == "buffered"})
		if ok, _, _ := b.Direct(); ok {
			t.Errorf("%s: O_DIRECT opened", name)
		}
		if b.inline != (name == "tmpfs") {
			t.Errorf("%s: inline copying %v", name, b.inline)
		}
	}
}

// TestUringBlockDevice: a block device (its node on devtmpfs) is driven
// through io_uring with O_DIRECT, never taken for a tmpfs file.
func TestUringBlockDevice(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, testSize), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	d, err := NewUring(dev, UringOptions{DirectOnly: true})
	if errors.Is(err, ErrNoUring) {
		t.Skipf("no io_uring: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if ok, _, _ := d.Direct(); !ok || d.inline {
		t.Fatalf("%s: direct %v, inline copies %v", dev, ok, d.inline)
	}
}

// TestUringDirectOnly: a direct-only device refuses a store without
// O_DIRECT at open, serves aligned requests, and fails misaligned ones
// rather than serving them from the page cache.
func TestUringDirectOnly(t *testing.T) {
	_, err := NewUring(filepath.Join(shmDir(t), "lun"), UringOptions{DirectOnly: true,
		FileOptions: FileOptions{Create: true, Size: testSize}})
	if errors.Is(err, ErrNoUring) {
		t.Skipf("no io_uring: %v", err)
	}
	if err == nil {
		t.Fatal("a tmpfs store opened direct-only")
	}
	d := openUring(t, t.TempDir(), UringOptions{DirectOnly: true})
	_, mem, _ := d.Direct()
	buf := make([]byte, 2*8192)
	aligned := buf[(mem-int(uintptr(unsafe.Pointer(&buf[0])))%mem)%mem:][:4096]
	data := pattern(4096, 3)
	copy(aligned, data)
	tests := []struct {
		name string
		r    Request
		want error
	}{
		{"aligned write", Request{Op: OpWrite, Offset: 8192, Buf: aligned}, nil},
		{"aligned read", Request{Op: OpRead, Offset: 8192, Buf: aligned}, nil},
		{"misaligned buffer", Request{Op: OpRead, Offset: 8192, Buf: aligned[1:2049]}, ErrMisaligned},
		{"misaligned offset", Request{Op: OpWrite, Offset: 8193, Buf: aligned[:512]}, ErrMisaligned},
		{"misaligned length", Request{Op: OpWrite, Offset: 8192, Buf: aligned[:100]}, ErrMisaligned},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := run(d, &tc.r); !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if !bytes.Equal(aligned, data) {
		t.Fatal("the aligned read returned other data")
	}
}

func TestUringErrors(t *testing.T) {
	d := openUring(t, t.TempDir(), UringOptions{})
	buf := make([]byte, 4096)
	for _, c := range []struct {
		name string
		r    Request
		want error
	}{
		{"read past end", Request{Op: OpRead, Offset: testSize - 2048, Buf: buf}, ErrRange},
		{"write negative offset", Request{Op: OpWrite, Offset: -4096, Buf: buf}, ErrRange},
		{"unmap past end", Request{Op: OpUnmap, Offset: testSize, Length: 1}, ErrRange},
		{"unknown op", Request{Op: Op(9), Buf: buf}, nil},
		{"empty read", Request{Op: OpRead, Offset: 0}, nil},
		{"empty unmap", Request{Op: OpUnmap, Offset: 0}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := run(d, &c.r)
			switch {
			case c.r.Op == Op(9):
				if err == nil {
					t.Fatal("unknown operation succeeded")
				}
			case !errors.Is(err, c.want) || (c.want == nil && err != nil):
				t.Fatalf("err %v, want %v", err, c.want)
			}
		})
	}
}

func TestUringUnmap(t *testing.T) {
	for _, c := range []struct {
		name    string
		dir     string
		off, n  int64
		mapped0 bool
	}{
		{"disk whole MiB", t.TempDir(), 1 << 20, 1 << 20, false},
		{"disk partial blocks", t.TempDir(), 1<<20 + 100, 9000, true},
		{"shm", shmDir(t), 1 << 20, 1 << 20, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := openUring(t, c.dir, UringOptions{})
			data := pattern(3<<20, 1)
			if err := run(d, &Request{Op: OpWrite, Offset: 0, Buf: data}); err != nil {
				t.Fatal(err)
			}
			if err := run(d, &Request{Op: OpUnmap, Offset: c.off, Length: c.n}); err != nil {
				t.Fatalf("unmap: %v", err)
			}
			got := make([]byte, len(data))
			if err := run(d, &Request{Op: OpRead, Offset: 0, Buf: got}); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(data)
			clear(want[c.off : c.off+c.n])
			if !bytes.Equal(got, want) {
				t.Fatal("unmapped range does not read back as zeroes, or neighbours changed")
			}
			mapped, _, err := d.Mapped(c.off, c.n)
			if err != nil || mapped != c.mapped0 {
				t.Fatalf("Mapped = %v (%v), want %v", mapped, err, c.mapped0)
			}
		})
	}
}

// TestUnmapZeroFallback drives the write-zeroes path taken when the store
// cannot punch holes, by feeding the worker the EOPNOTSUPP completion.
func TestUnmapZeroFallback(t *testing.T) {
	data := pattern(3<<20, 5)
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "z"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	d := &Uring{file: &File{f: f, fd: int(f.Fd())}, direct: -1}
	d.file.size.Store(int64(len(data)))
	w, err := newWorker(d, 8) // driven by this goroutine, not run
	if errors.Is(err, ErrNoUring) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	var finished bool
	r := &Request{Op: OpUnmap, Offset: 100, Length: 1<<20 + 5000, Done: func(*Request) { finished = true }}
	s := w.alloc(r)
	w.complete(s, -int32(unix.EOPNOTSUPP))
	for !finished {
		w.submit()
		if _, err := w.ring.Submit(1); err != nil {
			t.Fatal(err)
		}
		w.reap()
	}
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	got := make([]byte, len(data))
	f.ReadAt(got, 0)
	want := bytes.Clone(data)
	clear(want[100 : 100+1<<20+5000])
	if !bytes.Equal(got, want) {
		t.Fatal("zero-writing fallback left the wrong content")
	}
}

func TestErrnoMapping(t *testing.T) {
	for _, c := range []struct {
		errno unix.Errno
		want  error
	}{
		{unix.EIO, ErrMedium},
		{unix.ENOSPC, ErrNoSpace},
		{unix.EDQUOT, ErrNoSpace},
		{unix.EBADF, ErrMedium},
	} {
		if err := errnoErr("write", -int32(c.errno)); !errors.Is(err, c.want) {
			t.Errorf("%v: got %v, want %v", c.errno, err, c.want)
		}
	}
	if errnoErr("read", 0) != nil {
		t.Error("success mapped to an error")
	}
}

// TestUringNoSpace fills a tiny tmpfs through the device.
func TestUringNoSpace(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, 0)
	d := openUring(t, dir, UringOptions{})
	defer d.Close()
	err := run(d, &Request{Op: OpWrite, Offset: 0, Buf: make([]byte, 1<<20)})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("1 MiB write on a 256 KiB tmpfs: err %v, want ErrNoSpace", err)
	}
}

func TestUringReadOnly(t *testing.T) {
	dir := t.TempDir()
	openUring(t, dir, UringOptions{}).Close()
	d, err := NewUring(filepath.Join(dir, "lun"), UringOptions{FileOptions: FileOptions{ReadOnly: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := run(d, &Request{Op: OpRead, Buf: make([]byte, 4096)}); err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := run(d, &Request{Op: OpWrite, Buf: make([]byte, 4096)}); !errors.Is(err, ErrMedium) {
		t.Fatalf("write to a read-only device: %v, want ErrMedium", err)
	}
}

func TestUringClosed(t *testing.T) {
	d := openUring(t, t.TempDir(), UringOptions{})
	q := d.NewQueue()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, s := range map[string]submitter{"device": d, "queue": q} {
		if err := run(s, &Request{Op: OpRead, Buf: make([]byte, 512)}); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: submit after close: %v, want ErrClosed", name, err)
		}
	}
	q.Close() // detaching after the device closed is harmless
}

// TestUringCloseDrains closes while requests are in flight: each completes.
func TestUringCloseDrains(t *testing.T) {
	d := openUring(t, t.TempDir(), UringOptions{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := range 500 {
		wg.Add(1)
		d.Submit(&Request{Op: OpWrite, Offset: int64(i) * 4096, Buf: make([]byte, 4096), Done: func(r *Request) {
			mu.Lock()
			errs = append(errs, r.Err)
			mu.Unlock()
			wg.Done()
		}})
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestNoUringFallback(t *testing.T) {
	for _, errno := range []unix.Errno{unix.ENOSYS, unix.EPERM} {
		t.Run(errno.Error(), func(t *testing.T) {
			newRing = func(uint32) (*uring.Ring, error) { return nil, fmt.Errorf("io_uring_setup: %w", errno) }
			defer func() { newRing = uring.New }()
			path := filepath.Join(t.TempDir(), "lun")
			_, err := NewUring(path, UringOptions{FileOptions: FileOptions{Create: true, Size: 1 << 20}})
			if !errors.Is(err, ErrNoUring) || !errors.Is(err, errno) {
				t.Fatalf("err %v, want ErrNoUring wrapping %v", err, errno)
			}
			// The caller's fallback works on the same path.
			f, err := NewFile(path, FileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		})
	}
	if _, err := NewUring(filepath.Join(t.TempDir(), "missing"), UringOptions{}); err == nil || errors.Is(err, ErrNoUring) {
		t.Fatalf("missing file: err %v, want an open error that is not ErrNoUring", err)
	}
}

// TestUringConcurrent hammers both submission routes from many goroutines,
// each owning a disjoint range, including submits from Done callbacks and
// enough at once to overflow the rings.
func TestUringConcurrent(t *testing.T) {
	pool := newTestPool(t, 4*DefaultRegionSize)
	d := openUring(t, t.TempDir(), UringOptions{Pool: pool, Rings: 2, Entries: 8})
	const goroutines, blocks = 6, 64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s submitter = d
			if g%2 == 0 {
				q := d.NewQueue()
				defer q.Close()
				s = q
			}
			base := int64(g) * blocks * 4096
			// Write every block at once, chaining a read-back from each Done.
			var inner sync.WaitGroup
			bufs := make([]*Buf, blocks)
			for i := range blocks {
				bufs[i], _ = pool.Get(4096)
				copy(bufs[i].Bytes(), pattern(4096, byte(g*blocks+i)))
				inner.Add(1)
				s.Submit(&Request{Op: OpWrite, Offset: base + int64(i)*4096, Buf: bufs[i].Bytes(), Done: func(r *Request) {
					if r.Err != nil {
						t.Error(r.Err)
					}
					clear(r.Buf)
					r.Op, r.Done = OpRead, func(r *Request) {
						if r.Err != nil || !bytes.Equal(r.Buf, pattern(4096, byte(g*blocks+i))) {
							t.Errorf("goroutine %d block %d: bad read back (%v)", g, i, r.Err)
						}
						inner.Done()
					}
					d.Submit(r)
				}})
			}
			inner.Wait()
			for _, b := range bufs {
				pool.Put(b)
			}
		}()
	}
	wg.Wait()
}

// TestUringSpill overflows one queue's ring from a single goroutine.
func TestUringSpill(t *testing.T) {
	d := openUring(t, t.TempDir(), UringOptions{Rings: 1})
	q := d.NewQueue()
	defer q.Close()
	const n = 5000
	var wg sync.WaitGroup
	wg.Add(n)
	buf := make([]byte, 512)
	for range n {
		q.Submit(&Request{Op: OpRead, Offset: int64(rand.N(testSize/512)) * 512, Buf: buf, Done: func(r *Request) {
			if r.Err != nil {
				t.Error(r.Err)
			}
			wg.Done()
		}})
	}
	wg.Wait()
}

// loop keeps len(bufs) requests in flight against s without allocating:
// each completion resubmits its request until total have been issued.
// One goroutine at a time submits (a Queue is single-producer), and no lock
// is held across Submit, since on tmpfs Done runs inside it: a completion
// that finds a submitter busy leaves its request in again for it.
type loop struct {
	s                       submitter
	reqs                    []Request
	done                    chan struct{}
	mu                      sync.Mutex
	total, issued, finished int
	submitting              bool       // under mu: a goroutine is in drain
	again                   []*Request // under mu: requests waiting for that goroutine
	seq                     bool
	next, limit, stride     int64
}

func newLoop(s submitter, bufs [][]byte, op Op, seq bool, limit int64) *loop {
	l := &loop{s: s, reqs: make([]Request, len(bufs)), done: make(chan struct{}, 1), seq: seq, limit: limit,
		stride: int64(len(bufs[0])), again: make([]*Request, 0, len(bufs))}
	for i := range l.reqs {
		l.reqs[i] = Request{Op: op, Buf: bufs[i], Done: l.complete}
	}
	return l
}

// offset picks the next position; l.mu is held.
func (l *loop) offset() int64 {
	if l.seq {
		off := l.next
		l.next = (l.next + l.stride) % l.limit
		return off
	}
	return rand.Int64N(l.limit/l.stride) * l.stride
}

func (l *loop) complete(r *Request) {
	l.mu.Lock()
	if r.Err != nil {
		panic(r.Err) // a harness failure, not device input
	}
	l.finished++
	switch {
	case l.finished == l.total:
		l.mu.Unlock()
		l.done <- struct{}{}
	case l.issued < l.total:
		l.issued++
		r.Offset = l.offset()
		l.again = append(l.again, r)
		l.drain()
	default:
		l.mu.Unlock()
	}
}

// drain submits the requests in again unless another goroutine already
// does; l.mu is held on entry and released.
func (l *loop) drain() {
	if l.submitting {
		l.mu.Unlock()
		return
	}
	l.submitting = true
	for len(l.again) > 0 {
		r := l.again[len(l.again)-1]
		l.again = l.again[:len(l.again)-1]
		l.mu.Unlock()
		l.s.Submit(r)
		l.mu.Lock()
	}
	l.submitting = false
	l.mu.Unlock()
}

// run completes n requests and returns when the last one has.
func (l *loop) run(n int) {
	if n <= 0 {
		return
	}
	l.mu.Lock()
	l.total, l.finished = n, 0
	l.issued = min(n, len(l.reqs))
	for i := range l.issued {
		l.reqs[i].Offset = l.offset()
		l.again = append(l.again, &l.reqs[i])
	}
	l.drain()
	<-l.done
}

// poolBufs takes qd buffers from p until the end of the test.
func poolBufs(t testing.TB, p *Pool, qd, size int) [][]byte {
	bufs := make([][]byte, qd)
	for i := range bufs {
		b, err := p.Get(size)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Put(b) })
		bufs[i] = b.Bytes()
	}
	return bufs
}

func TestUringNoAllocs(t *testing.T) {
	pool := newTestPool(t, 4*DefaultRegionSize)
	d := openUring(t, t.TempDir(), UringOptions{Pool: pool})
	q := d.NewQueue()
	defer q.Close()
	shm := openUring(t, shmDir(t), UringOptions{Pool: pool})
	sq := shm.NewQueue()
	defer sq.Close()
	for _, c := range []struct {
		name   string
		s      submitter
		op     Op
		inline bool
	}{
		{"queue read", q, OpRead, false},
		{"queue write", q, OpWrite, false},
		{"device read", d, OpRead, false},
		{"device write", d, OpWrite, false},
		{"device inline read", d, OpRead, true},
		{"queue inline write", q, OpWrite, true},
		{"tmpfs queue read", sq, OpRead, false},
		{"tmpfs queue write", sq, OpWrite, false},
		{"tmpfs device write", shm, OpWrite, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := newLoop(c.s, poolBufs(t, pool, 8, 4096), c.op, false, testSize)
			for i := range l.reqs {
				l.reqs[i].Inline = c.inline
			}
			l.run(100) // warm up
			if a := testing.AllocsPerRun(50, func() { l.run(64) }); a != 0 {
				t.Fatalf("%.1f allocations per 64 requests", a)
			}
		})
	}
}

// idleLenders waits until every inline ring of d can be borrowed.
func idleLenders(t *testing.T, d *Uring) {
	t.Helper()
	if len(d.lenders) == 0 {
		t.Skip("no inline rings: the kernel's io_uring_enter takes no timeout")
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, w := range d.lenders {
		for w.sleeping.Load() != idleOnChan {
			if time.Now().After(deadline) {
				t.Fatal("inline ring never idle")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// TestUringRunToCompletion checks who completes an Inline request: the
// submitter, before Submit returns, when an inline ring is idle and the
// device answers within the budget; else the ring's worker, after the
// submitter has handed it over (a budget that has passed before the
// submission, or during the wait), or a worker when every inline ring is
// lent out. The data must be right either way.
func TestUringRunToCompletion(t *testing.T) {
	pool := newTestPool(t, 4*DefaultRegionSize)
	for _, c := range []struct {
		name     string
		budget   time.Duration
		occupy   bool // every inline ring is lent to someone else
		inPlace  bool // Done must have run before Submit returned
		anywhere bool // either way is right (the wait may or may not time out)
	}{
		{"within budget", time.Second, false, true, false},
		{"budget spent before submitting", 0, false, false, false},
		{"budget spent while waiting", time.Nanosecond, false, false, true},
		{"no inline ring free", time.Second, true, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := openUring(t, t.TempDir(), UringOptions{Pool: pool, Rings: 1, InlineRings: 2})
			if d.inline {
				t.Skip("the test directory is on tmpfs: requests never reach a ring")
			}
			idleLenders(t, d)
			old := inlineWaitBudget
			inlineWaitBudget = c.budget
			defer func() { inlineWaitBudget = old }()
			if c.occupy {
				for _, w := range d.lenders {
					w.sleeping.Store(lent)
				}
				defer func() {
					for _, w := range d.lenders {
						w.sleeping.Store(idleOnChan)
					}
				}()
			}
			b, err := pool.Get(4096)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Put(b)
			for i, op := range []Op{OpWrite, OpRead} {
				want := pattern(4096, byte(i+1))
				if op == OpWrite {
					copy(b.Bytes(), want)
				} else {
					clear(b.Bytes())
					want = pattern(4096, 1)
				}
				done := make(chan struct{})
				r := &Request{Op: op, Offset: 4096, Buf: b.Bytes(), Inline: true, Done: func(*Request) { close(done) }}
				d.Submit(r)
				var inPlace bool
				select {
				case <-done:
					inPlace = true
				default:
					<-done
				}
				if r.Err != nil {
					t.Fatalf("%v: %v", op, r.Err)
				}
				if !c.anywhere && inPlace != c.inPlace {
					t.Errorf("%v: completed before Submit returned: %v, want %v", op, inPlace, c.inPlace)
				}
				if op == OpRead && !bytes.Equal(b.Bytes(), want) {
					t.Fatal("read back differs from what was written")
				}
				if !c.occupy {
					idleLenders(t, d) // a handed-over ring comes back idle
				}
			}
		})
	}
}

// ringFds lists this process's io_uring descriptors.
func ringFds(t *testing.T) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	fds := map[int]bool{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && l == "anon_inode:[io_uring]" {
			fds[fd] = true
		}
	}
	return fds
}

// TestUringSubmitFailure breaks a ring for good: its descriptor number is
// made to name /dev/null, so io_uring_enter fails with EOPNOTSUPP while the
// ring's mappings stay valid. Every request must then fail with ErrMedium
// instead of waiting forever, a burst larger than the ring included, and
// the failure is logged once.
func TestUringSubmitFailure(t *testing.T) {
	before := ringFds(t)
	core, logs := observer.New(zap.ErrorLevel)
	d := openUring(t, t.TempDir(), UringOptions{Rings: 1, InlineRings: -1, Entries: 8, Log: zap.New(core)})
	if d.inline {
		t.Skip("the test directory is on tmpfs: requests never reach the ring")
	}
	var ring []int
	for fd := range ringFds(t) {
		if !before[fd] {
			ring = append(ring, fd)
		}
	}
	if len(ring) != 1 {
		t.Fatalf("found io_uring descriptors %v for one ring", ring)
	}
	if err := run(d, &Request{Op: OpWrite, Buf: make([]byte, 4096)}); err != nil {
		t.Fatalf("write before the ring broke: %v", err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if err := unix.Dup3(int(null.Fd()), ring[0], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	q := d.NewQueue()
	defer q.Close()
	for _, c := range []struct {
		name string
		s    submitter
		r    Request
	}{
		{"read", d, Request{Op: OpRead, Buf: make([]byte, 4096)}},
		{"write", q, Request{Op: OpWrite, Offset: 8192, Buf: make([]byte, 4096)}},
		{"flush", d, Request{Op: OpFlush}},
		{"unmap", q, Request{Op: OpUnmap, Offset: 4096, Length: 4096}},
	} {
		if err := run(c.s, &c.r); !errors.Is(err, ErrMedium) {
			t.Errorf("%s on a broken ring: %v, want ErrMedium", c.name, err)
		}
	}
	const burst = 100 // beyond the 8 SQEs and 16 completion slots
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := range burst {
		wg.Add(1)
		d.Submit(&Request{Op: OpRead, Offset: int64(i) * 512, Buf: make([]byte, 512), Done: func(r *Request) {
			if !errors.Is(r.Err, ErrMedium) {
				bad.Add(1)
			}
			wg.Done()
		}})
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d of %d burst reads did not fail with ErrMedium", bad.Load(), burst)
	}
	if n := logs.FilterMessageSnippet("io_uring refuses submissions").Len(); n != 1 {
		t.Errorf("failure logged %d times, want once: %v", n, logs.All())
	}
}

func TestEnterBackoff(t *testing.T) {
	var b enterBackoff
	for i, c := range []struct {
		err  error
		wait time.Duration // 0: fail now
	}{
		{unix.EAGAIN, time.Millisecond},
		{unix.EBUSY, 2 * time.Millisecond},
		{unix.EINTR, 4 * time.Millisecond},
		{unix.EBADF, 0},
		{unix.EAGAIN, time.Millisecond}, // a new failure starts afresh
		{unix.EINVAL, 0},
		{unix.EOPNOTSUPP, 0},
	} {
		wait, ok := b.next(fmt.Errorf("io_uring_enter: %w", c.err))
		if ok != (c.wait != 0) || wait != c.wait {
			t.Errorf("step %d (%v): wait %v retry %v, want wait %v", i, c.err, wait, ok, c.wait)
		}
	}
	// Transient errors that persist: waits grow to the cap, then the SQEs fail.
	b.reset()
	var slept time.Duration
	for range 1000 {
		wait, ok := b.next(unix.EAGAIN)
		if !ok {
			break
		}
		if wait > enterWaitMax {
			t.Fatalf("wait %v above the cap %v", wait, enterWaitMax)
		}
		slept += wait
	}
	if slept < enterGiveUp || slept > enterGiveUp+enterWaitMax {
		t.Errorf("gave up after %v of waits, want %v", slept, enterGiveUp)
	}
}
