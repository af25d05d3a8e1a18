package bdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a Device backed by a regular file or a block device. Requests are
// served by a fixed set of worker goroutines with positioned system calls,
// so Submit returns at once; FUA writes use RWF_DSYNC.
type File struct {
	f       *os.File
	fd      int
	size    atomic.Int64
	block   bool // a block device rather than a regular file
	queue   chan *Request
	wg      sync.WaitGroup
	closeMu sync.RWMutex
	closed  bool
	// rawCopies makes reads and writes raw system calls, which skip the
	// runtime's bookkeeping (and its wake-up of sysmon); set for tmpfs,
	// whose copies never wait for a device (see Uring.copyInline). A
	// tmpfs page that was swapped out still makes one wait for the swap
	// device, holding its P meanwhile: a latency cost on a host that
	// swaps tmpfs, never a deadlock.
	rawCopies bool
}

// FileOptions describe how NewFile opens its backing store.
type FileOptions struct {
	// Size is the capacity for a regular file; the file is created sparse
	// (thin) or grown to it when smaller. Zero keeps the existing size.
	Size int64
	// ReadOnly opens the store without write access.
	ReadOnly bool
	// Create creates the file when it does not exist.
	Create bool
	// Workers is the number of I/O goroutines (default 16).
	Workers int
}

// NewFile opens path as a Device.
func NewFile(path string, o FileOptions) (*File, error) {
	flags := os.O_RDWR
	if o.ReadOnly {
		flags = os.O_RDONLY
	}
	if o.Create && !o.ReadOnly {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open backing store: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat backing store %s: %w", path, err)
	}
	d := &File{f: f, fd: int(f.Fd()), block: st.Mode()&os.ModeDevice != 0}
	size := st.Size()
	if d.block {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, fmt.Errorf("size of block device %s: %w", path, err)
		}
	} else if o.Size > size {
		if o.ReadOnly {
			f.Close()
			return nil, fmt.Errorf("backing file %s is %d bytes, smaller than the %d configured", path, size, o.Size)
		}
		if err := f.Truncate(o.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("grow backing file %s to %d bytes: %w", path, o.Size, err)
		}
		size = o.Size
	} else if o.Size > 0 {
		size = o.Size
	}
	d.size.Store(size)
	n := o.Workers
	if n <= 0 {
		n = 16
	}
	d.queue = make(chan *Request, 4096)
	for i := 0; i < n; i++ {
		d.wg.Add(1)
		go d.worker()
	}
	return d, nil
}

// Size reports the capacity in bytes.
func (d *File) Size() int64 { return d.size.Load() }

// Submit queues r for a worker. It blocks only when 4096 requests are
// already waiting, which bounds memory under overload.
func (d *File) Submit(r *Request) {
	d.closeMu.RLock()
	if d.closed {
		d.closeMu.RUnlock()
		r.Err = ErrClosed
		r.Done(r)
		return
	}
	d.queue <- r
	d.closeMu.RUnlock()
}

func (d *File) worker() {
	defer d.wg.Done()
	for r := range d.queue {
		r.Err = d.do(r)
		r.Done(r)
	}
}

func (d *File) do(r *Request) error {
	if r.Op != OpFlush {
		if err := checkRange(r.Offset, r.length(), d.Size()); err != nil {
			return err
		}
	}
	switch r.Op {
	case OpRead:
		return d.read(r.Buf, r.Offset)
	case OpWrite:
		flags := 0
		if r.FUA {
			flags = unix.RWF_DSYNC
		}
		return d.write(r.Buf, r.Offset, flags)
	case OpFlush:
		return classify("flush", unix.Fdatasync(d.fd))
	case OpUnmap:
		if r.Length == 0 {
			return nil
		}
		err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.Offset, r.Length)
		if errors.Is(err, unix.EOPNOTSUPP) {
			return d.zero(r.Offset, r.Length)
		}
		return classify("unmap", err)
	}
	return fmt.Errorf("bdev: unknown operation %v", r.Op)
}

func (d *File) read(buf []byte, off int64) error {
	for len(buf) > 0 {
		n, err := d.pread(buf, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return classify("read", err)
		}
		if n == 0 { // past the end of a file that shrank: reads as zeroes
			clear(buf)
			return nil
		}
		buf, off = buf[n:], off+int64(n)
	}
	return nil
}

func (d *File) write(buf []byte, off int64, flags int) error {
	for len(buf) > 0 {
		n, err := d.pwrite(buf, off, flags)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return classify("write", err)
		}
		buf, off = buf[n:], off+int64(n)
	}
	return nil
}

// pread reads at off; on a memory-backed store without the runtime's
// system call bookkeeping (see rawCopies).
func (d *File) pread(buf []byte, off int64) (int, error) {
	if !d.rawCopies {
		return unix.Pread(d.fd, buf, off)
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_PREAD64, uintptr(d.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		uintptr(off), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// pwrite writes buf at off with pwritev2 flags (RWF_DSYNC for FUA).
func (d *File) pwrite(buf []byte, off int64, flags int) (int, error) {
	if !d.rawCopies {
		return unix.Pwritev2(d.fd, [][]byte{buf}, off, flags)
	}
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	n, _, errno := unix.RawSyscall6(unix.SYS_PWRITEV2, uintptr(d.fd), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), 0, uintptr(flags)) // 64-bit: the high half of the position is 0
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// zero writes zeroes where the store cannot punch holes.
func (d *File) zero(off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(z)))
		if err := d.write(z[:c], off, 0); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

// Mapped reports whether data is allocated at off, using SEEK_DATA/SEEK_HOLE.
func (d *File) Mapped(off, length int64) (bool, int64, error) {
	end := off + length
	data, err := unix.Seek(d.fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) { // only a hole from off to the end
		return false, length, nil
	}
	if err != nil {
		return true, length, nil // no hole support: everything is mapped
	}
	if data > off {
		return false, min(data, end) - off, nil
	}
	hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
	if err != nil {
		return true, length, nil
	}
	return true, min(hole, end) - off, nil
}

// Resize changes the capacity of a regular file.
func (d *File) Resize(size int64) error {
	if d.block {
		return errors.New("resize: a block device's size is set by the device")
	}
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("resize backing file to %d bytes: %w", size, err)
	}
	d.size.Store(size)
	return nil
}

// Close waits for queued requests, flushes and closes the store.
func (d *File) Close() error {
	d.closeMu.Lock()
	if d.closed {
		d.closeMu.Unlock()
		return nil
	}
	d.closed = true
	close(d.queue)
	d.closeMu.Unlock()
	d.wg.Wait()
	serr := unix.Fdatasync(d.fd)
	cerr := d.f.Close()
	if serr != nil && !errors.Is(serr, unix.EINVAL) {
		return fmt.Errorf("flush on close: %w", serr)
	}
	return cerr
}

// classify wraps a system call error with the bdev error it stands for.
func classify(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%s: %w (%v)", what, ErrNoSpace, err)
	case errors.Is(err, unix.EIO):
		return fmt.Errorf("%s: %w (%v)", what, ErrMedium, err)
	}
	return fmt.Errorf("%s: %w (%v)", what, ErrMedium, err)
}
