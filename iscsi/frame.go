package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hardMaxData bounds any data segment read from the wire, whatever was
// negotiated: a larger DataSegmentLength ends the connection.
const hardMaxData = 16 << 20

// errHeaderDigest ends a connection: after a bad header the stream cannot be
// trusted to find the next PDU (RFC 7143 7.8, ERL 0).
var errHeaderDigest = errors.New("header digest error")

// Transport carries one connection's PDUs. TCP is one (NewTCPTransport);
// iSER another. Transports that move task data themselves implement
// DataMover as well.
type Transport interface {
	// ReadHeader reads the next PDU's BHS and AHS.
	ReadHeader(h *Header) error
	// ReadData reads the data segment of the PDU last read into dst[:n]
	// (a nil dst discards it); ok is false when its digest did not match.
	ReadData(dst []byte, n int) (ok bool, err error)
	// Buffered reports whether the next PDU is already received, so that
	// reading it will not wait (see conn.endBurst).
	Buffered() bool
	// Queue adds a PDU to the outgoing batch; Flush sends the batch.
	Queue(bhs *BHS, data []byte) error
	Flush() error
	// TryFlush sends what it can of the batch without waiting; done is
	// false when some is left for Flush.
	TryFlush() (done bool, err error)
	// SetDigests turns CRC32C header and data digests on or off.
	SetDigests(header, data bool)
	// SetDeadline and SetReadDeadline bound blocking reads and writes.
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	Close() error
}

// tcpTransport frames PDUs (BHS, AHS, data, padding, digests) on a TCP
// byte stream.
type tcpTransport struct {
	net.Conn
	r          *bufio.Reader
	hdrDigest  bool
	dataDigest bool
	ahs        [256 * 4]byte
	pad        [8]byte
	wbufs      net.Buffers // the batch not written yet
	wbase      net.Buffers // the batch as queued: wbufs' backing array
	hdrs       []byte      // outgoing headers and digests of one batch

	// TryFlush's writev without waiting, on the raw descriptor
	raw      syscall.RawConn // nil when the connection has no descriptor
	iov      [256]unix.Iovec
	niov     int
	want     int // bytes in iov
	written  int
	werrno   syscall.Errno
	writevFn func(fd uintptr) bool
}

// NewTCPTransport frames iSCSI PDUs over a stream connection.
func NewTCPTransport(c net.Conn) Transport {
	f := &tcpTransport{Conn: c, hdrs: make([]byte, 0, 64*maxHdrBytes)}
	var src io.Reader = c
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			f.raw = raw
			f.writevFn = f.writev
			src = newRawReader(raw)
		}
	}
	f.r = bufio.NewReaderSize(src, 64<<10)
	return f
}

// rawReader reads a socket through its RawConn with raw system calls:
// the netpoller still parks the reader while nothing has arrived, but a
// read that finds data skips the runtime's system call bookkeeping, which
// under load costs a wake-up of its monitor thread per call.
type rawReader struct {
	raw   syscall.RawConn
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newRawReader(raw syscall.RawConn) *rawReader {
	r := &rawReader{raw: raw}
	r.fn = r.read
	return r
}

// Read reads what has arrived into p, waiting for something to arrive.
func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p = p
	err := r.raw.Read(r.fn)
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case r.errno != 0:
		return 0, os.NewSyscallError("read", r.errno)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// read is one attempt on the non-blocking descriptor; false means nothing
// has arrived: wait in the netpoller and try again.
func (r *rawReader) read(fd uintptr) bool {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), errno
		return true
	}
}

// SetDigests turns CRC32C header and data digests on or off.
func (f *tcpTransport) SetDigests(header, data bool) { f.hdrDigest, f.dataDigest = header, data }

// Header is a received BHS with its AHS.
type Header struct {
	BHS
	AHS []byte
	// ReadBuf and WriteBuf are the initiator's buffers for a SCSI
	// Command's Data-In and Data-Out, when the transport carries them
	// beside the PDU (iSER's header, RFC 7145 9.2); TCP leaves them zero.
	// A task keeps them, so they go when the task does.
	ReadBuf, WriteBuf RemoteBuffer
}

// RemoteBuffer is an initiator buffer that an RDMA transport writes or
// reads directly: its steering tag (the RDMA remote key) and the virtual
// address of its first byte.
type RemoteBuffer struct {
	STag  uint32
	VA    uint64
	Valid bool // the initiator advertised it (iSER's WSV or RSV bit)
}

// ReadHeader reads the next BHS and AHS and checks the header digest.
func (f *tcpTransport) ReadHeader(h *Header) error {
	if _, err := io.ReadFull(f.r, h.BHS[:]); err != nil {
		return err
	}
	n := h.TotalAHSLen()
	h.AHS = f.ahs[:n]
	if _, err := io.ReadFull(f.r, h.AHS); err != nil {
		return fmt.Errorf("read AHS: %w", err)
	}
	if f.hdrDigest {
		if _, err := io.ReadFull(f.r, f.pad[:4]); err != nil {
			return fmt.Errorf("read header digest: %w", err)
		}
		crc := crc32.Update(crc32.Checksum(h.BHS[:], castagnoli), castagnoli, h.AHS)
		if binary.LittleEndian.Uint32(f.pad[:4]) != crc {
			return errHeaderDigest
		}
	}
	if h.DataLen() > hardMaxData {
		return fmt.Errorf("data segment of %d bytes is beyond any negotiable size", h.DataLen())
	}
	return nil
}

// Buffered reports whether a whole PDU is already in the read buffer, so
// that reading it will not wait for the network.
func (f *tcpTransport) Buffered() bool {
	n := f.r.Buffered()
	if n < BHSLen {
		return false
	}
	b, _ := f.r.Peek(BHSLen)
	h := (*BHS)(b)
	size := BHSLen + h.TotalAHSLen() + Padded(h.DataLen())
	if f.hdrDigest {
		size += 4
	}
	if f.dataDigest && h.DataLen() > 0 {
		size += 4
	}
	return n >= size
}

// ReadData reads the data segment announced by the last header into dst
// (len(dst) must equal the DataSegmentLength; nil discards it), then the
// padding and data digest. ok is false when the digest did not match.
func (f *tcpTransport) ReadData(dst []byte, n int) (ok bool, err error) {
	digest := f.dataDigest && n > 0
	var crc uint32
	switch {
	case dst != nil:
		if _, err := io.ReadFull(f.r, dst[:n]); err != nil {
			return false, fmt.Errorf("read data segment: %w", err)
		}
		if digest {
			crc = crc32.Checksum(dst[:n], castagnoli)
		}
	case !digest:
		if _, err := f.r.Discard(n); err != nil {
			return false, fmt.Errorf("skip data segment: %w", err)
		}
	default:
		var scratch [4096]byte
		for left := n; left > 0; {
			c := min(left, len(scratch))
			if _, err := io.ReadFull(f.r, scratch[:c]); err != nil {
				return false, fmt.Errorf("skip data segment: %w", err)
			}
			crc = crc32.Update(crc, castagnoli, scratch[:c])
			left -= c
		}
	}
	if pad := Padded(n) - n; pad > 0 {
		if _, err := io.ReadFull(f.r, f.pad[:pad]); err != nil {
			return false, fmt.Errorf("read padding: %w", err)
		}
		if digest {
			crc = crc32.Update(crc, castagnoli, f.pad[:pad])
		}
	}
	if !digest {
		return true, nil
	}
	if _, err := io.ReadFull(f.r, f.pad[4:8]); err != nil {
		return false, fmt.Errorf("read data digest: %w", err)
	}
	return binary.LittleEndian.Uint32(f.pad[4:8]) == crc, nil
}

var zeroPad [4]byte

// maxHdrBytes is the header-buffer room one PDU may need: BHS and two digests.
const maxHdrBytes = BHSLen + 8

// Queue adds one PDU (header and data segment) to the batch being built.
// It never writes: a batch larger than any before grows the header buffer
// (the queued slices keep pointing into the old one).
func (f *tcpTransport) Queue(bhs *BHS, data []byte) error {
	bhs.SetDataLen(len(data))
	start := len(f.hdrs)
	f.hdrs = append(f.hdrs, bhs[:]...)
	if f.hdrDigest {
		f.hdrs = binary.LittleEndian.AppendUint32(f.hdrs, crc32.Checksum(bhs[:], castagnoli))
	}
	f.wbufs = append(f.wbufs, f.hdrs[start:len(f.hdrs):len(f.hdrs)])
	if len(data) == 0 {
		f.wbase = f.wbufs
		return nil
	}
	f.wbufs = append(f.wbufs, data)
	pad := Padded(len(data)) - len(data)
	if pad > 0 {
		f.wbufs = append(f.wbufs, zeroPad[:pad])
	}
	if f.dataDigest {
		crc := crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, zeroPad[:pad])
		start := len(f.hdrs)
		f.hdrs = binary.LittleEndian.AppendUint32(f.hdrs, crc)
		f.wbufs = append(f.wbufs, f.hdrs[start:len(f.hdrs):len(f.hdrs)])
	}
	f.wbase = f.wbufs
	return nil
}

// Flush writes the batch (what TryFlush left of it) with one writev where
// possible, waiting for the socket as needed.
func (f *tcpTransport) Flush() error {
	_, err := f.wbufs.WriteTo(f.Conn) // consumes f.wbufs
	f.resetBatch()
	return err
}

// TryFlush writes as much of the batch as the socket buffer takes now,
// without waiting; done is false when some is left for Flush (or when the
// connection has no descriptor to write to that way).
func (f *tcpTransport) TryFlush() (done bool, err error) {
	for len(f.wbufs) > 0 {
		if f.raw == nil {
			return false, nil
		}
		f.niov, f.want = 0, 0
		for _, b := range f.wbufs {
			if f.niov == len(f.iov) {
				break
			}
			if len(b) > 0 {
				f.iov[f.niov] = unix.Iovec{Base: &b[0]}
				f.iov[f.niov].SetLen(len(b))
				f.niov++
				f.want += len(b)
			}
		}
		err := f.raw.Write(f.writevFn)
		clear(f.iov[:f.niov]) // keep no buffer alive from here
		if err != nil {
			return false, fmt.Errorf("write: %w", err)
		}
		switch f.werrno {
		case 0:
		case unix.EAGAIN, unix.EINTR:
			return false, nil
		default:
			return false, fmt.Errorf("write: %w", os.NewSyscallError("writev", f.werrno))
		}
		if !f.consume(f.written) {
			return false, nil // the socket buffer is full
		}
	}
	f.resetBatch()
	return true, nil
}

// writev is TryFlush's one system call on the descriptor, raw like
// rawReader's: it never waits.
func (f *tcpTransport) writev(fd uintptr) bool {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&f.iov[0])), uintptr(f.niov))
	f.written, f.werrno = int(n), errno
	return true // one attempt: never wait for the socket here
}

// consume drops n written bytes from the front of the batch; it reports
// whether the whole writev went (a short write means a full socket).
func (f *tcpTransport) consume(n int) bool {
	whole := n == f.want
	for n > 0 {
		if b := f.wbufs[0]; n >= len(b) {
			n -= len(b)
			f.wbufs = f.wbufs[1:]
		} else {
			f.wbufs[0] = b[n:]
			n = 0
		}
	}
	return whole
}

// resetBatch empties the batch, keeping its buffers for the next one.
func (f *tcpTransport) resetBatch() {
	clear(f.wbase)
	f.wbufs, f.wbase = f.wbase[:0], f.wbase[:0]
	f.hdrs = f.hdrs[:0]
}

// DataMover is implemented by transports that move task data by RDMA
// instead of Data-In, R2T and solicited Data-Out PDUs (iSER, RFC 7145).
type DataMover interface {
	// PutData places a read command's data in the initiator's buffer to
	// (Header.ReadBuf of task itt). The status PDU is queued after PutData
	// returns, so the transport must deliver it after the data (RC
	// ordering does that). On success the buffer stays the transport's
	// until it calls done.DataDone, which it always does, also when the
	// connection closes first; on an error it never calls it.
	PutData(itt uint32, to RemoteBuffer, data []byte, done DataWaiter) error
	// GetData fetches the solicited data of write task itt (everything the
	// initiator did not send as immediate or unsolicited data) from its
	// buffer from (Header.WriteBuf) into dst and calls done.DataDone once
	// it is there or has failed; once only, and also when the connection
	// is closed before or while it runs.
	GetData(itt uint32, from RemoteBuffer, dst []byte, done DataWaiter)
	// FullFeature is called once login has succeeded, with the negotiated
	// parameters, before any full feature phase PDU is read.
	FullFeature(p *Params) error
}

// DataWaiter is told when data moved by a DataMover has arrived (GetData)
// or has left its buffer (PutData).
type DataWaiter interface {
	DataDone(err error)
}
