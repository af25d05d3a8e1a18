// Package initiator is a small iSCSI initiator (RFC 7143) over a byte
// stream, written to test and benchmark the target: it logs in with any
// keys, runs discovery, issues pipelined SCSI commands with immediate,
// unsolicited and solicited data, and can send raw, malformed PDUs.
//
// It reuses the PDU codec of package iscsi (BHS, ParseText, EncodeText,
// Padded, EncodeLUN) and implements only what an initiator adds to it.
package initiator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iserd/iserd/iscsi"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maxData bounds a data segment the initiator accepts from the target.
const maxData = 16 << 20

// ErrClosed is returned for requests on, or pending at the end of, a closed
// connection.
var ErrClosed = errors.New("iscsi connection closed")

// PDU is one protocol data unit: header, additional header segments and
// data segment (without padding and digests).
type PDU struct {
	BHS  iscsi.BHS
	AHS  []byte
	Data []byte
}

// Params are the values in force on a connection after login, seen from the
// initiator.
type Params struct {
	HeaderDigest, DataDigest bool
	InitialR2T               bool
	ImmediateData            bool
	// MaxRecvDataSegmentLength is ours: the most the target may send in one PDU.
	MaxRecvDataSegmentLength uint32
	// MaxXmitDataSegmentLength is the target's declaration: the most we may
	// send in one PDU.
	MaxXmitDataSegmentLength uint32
	MaxBurstLength           uint32
	FirstBurstLength         uint32
	MaxOutstandingR2T        uint32
	ErrorRecoveryLevel       uint32
}

// defaultParams are the RFC 7143 defaults, in force for keys not negotiated.
func defaultParams() Params {
	return Params{InitialR2T: true, ImmediateData: true, MaxRecvDataSegmentLength: 8192,
		MaxXmitDataSegmentLength: 8192, MaxBurstLength: 262144, FirstBurstLength: 65536, MaxOutstandingR2T: 1}
}

// Conn is one iSCSI connection (and its single-connection session). Login
// runs in lockstep on the caller's goroutine; once in full feature phase a
// reader goroutine routes responses to the requests waiting for them.
type Conn struct {
	nc     net.Conn
	r      *bufio.Reader
	params Params
	// hdrDigest and dataDigest are set during login, before the reader starts.
	hdrDigest, dataDigest bool

	isid [6]byte
	tsih uint16
	cid  uint16
	ffp  bool

	imu  sync.Mutex // serialises CmdSN assignment with sending
	wmu  sync.Mutex // one PDU sequence on the wire at a time
	hbuf []byte

	snmu      sync.Mutex
	cmdSN     uint32
	expCmdSN  uint32
	maxCmdSN  uint32
	winCh     chan struct{} // closed and replaced when the window moves
	expStatSN atomic.Uint32

	itt atomic.Uint32

	pmu     sync.Mutex
	pending map[uint32]*Task

	unsol         chan *PDU
	dropped       atomic.Uint64
	answerPings   atomic.Bool
	pingsAnswered atomic.Uint64
	statSNErrors  atomic.Uint64

	closeOnce  sync.Once
	closed     chan struct{}
	errMu      sync.Mutex
	err        error
	readerDone chan struct{}
}

// isidSeq makes default ISIDs unique within the process.
var isidSeq atomic.Uint32

// Dial connects to a target portal over TCP.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		if err := tc.SetNoDelay(true); err != nil {
			nc.Close()
			return nil, fmt.Errorf("set TCP_NODELAY on %s: %w", addr, err)
		}
	}
	return New(nc), nil
}

// New wraps an established byte stream (a TCP connection, one end of a
// net.Pipe) in a Conn that has not logged in yet.
func New(nc net.Conn) *Conn {
	c := &Conn{nc: nc, r: bufio.NewReaderSize(nc, 64<<10), params: defaultParams(),
		pending: make(map[uint32]*Task), unsol: make(chan *PDU, 256), closed: make(chan struct{}),
		readerDone: make(chan struct{}), winCh: make(chan struct{}), cmdSN: 1, hbuf: make([]byte, 0, 256)}
	n := isidSeq.Add(1)
	c.isid = [6]byte{0x80, 0x69, 0x73, byte(n >> 16), byte(n >> 8), byte(n)}
	c.answerPings.Store(true)
	return c
}

// Params returns the parameters in force (RFC defaults before login).
func (c *Conn) Params() Params { return c.params }

// ISID returns the initiator session identifier the connection logs in with.
func (c *Conn) ISID() [6]byte { return c.isid }

// TSIH returns the session handle the target assigned at login.
func (c *Conn) TSIH() uint16 { return c.tsih }

// SetAnswerPings chooses whether NOP-In pings from the target are answered
// (they are by default).
func (c *Conn) SetAnswerPings(on bool) { c.answerPings.Store(on) }

// PingsAnswered counts the target's NOP-In pings answered so far.
func (c *Conn) PingsAnswered() uint64 { return c.pingsAnswered.Load() }

// StatSNErrors counts status-bearing PDUs whose StatSN was not the one
// expected next: on one connection the target must number them without gaps.
func (c *Conn) StatSNErrors() uint64 { return c.statSNErrors.Load() }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// Close ends the connection and fails the requests still pending; it waits
// for the reader goroutine to exit.
func (c *Conn) Close() error {
	err := c.fail(ErrClosed)
	if c.ffp {
		<-c.readerDone
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// fail ends the connection once, with cause as its error.
func (c *Conn) fail(cause error) error {
	var err error
	c.closeOnce.Do(func() {
		c.errMu.Lock()
		c.err = cause
		c.errMu.Unlock()
		err = c.nc.Close()
		close(c.closed)
		c.pmu.Lock()
		tasks := c.pending
		c.pending = make(map[uint32]*Task)
		c.pmu.Unlock()
		for _, t := range tasks {
			t.finish(fmt.Errorf("task 0x%x: %w", t.ITT, cause))
		}
	})
	return err
}

// NewITT returns a fresh initiator task tag (never the reserved 0xffffffff).
func (c *Conn) NewITT() uint32 {
	for {
		if v := c.itt.Add(1); v != iscsi.NoTag {
			return v
		}
	}
}

// CmdSN returns the CmdSN the next non-immediate request will carry.
func (c *Conn) CmdSN() uint32 {
	c.snmu.Lock()
	defer c.snmu.Unlock()
	return c.cmdSN
}

// Window returns the target's last ExpCmdSN and MaxCmdSN.
func (c *Conn) Window() (expCmdSN, maxCmdSN uint32) {
	c.snmu.Lock()
	defer c.snmu.Unlock()
	return c.expCmdSN, c.maxCmdSN
}

// ReserveCmdSN takes n CmdSNs off the counter and returns the first, for
// requests sent out of order with StartWithCmdSN or WritePDU.
func (c *Conn) ReserveCmdSN(n uint32) uint32 {
	c.snmu.Lock()
	defer c.snmu.Unlock()
	sn := c.cmdSN
	c.cmdSN += n
	return sn
}

// ExpStatSN returns the next StatSN expected from the target.
func (c *Conn) ExpStatSN() uint32 { return c.expStatSN.Load() }

// snLess compares serial numbers (RFC 1982).
func snLess(a, b uint32) bool { return a != b && int32(b-a) > 0 }

// updateWindow takes ExpCmdSN and MaxCmdSN from a response (RFC 7143 4.2.2.1).
func (c *Conn) updateWindow(exp, max uint32) {
	if snLess(max, exp-1) {
		return // an invalid window is ignored
	}
	c.snmu.Lock()
	defer c.snmu.Unlock()
	changed := false
	if snLess(c.expCmdSN, exp) {
		c.expCmdSN, changed = exp, true
	}
	if snLess(c.maxCmdSN, max) {
		c.maxCmdSN, changed = max, true
	}
	if changed {
		close(c.winCh)
		c.winCh = make(chan struct{})
	}
}

// waitWindow blocks until CmdSN sn fits the target's window. snmu is not held.
func (c *Conn) waitWindow(ctx context.Context, sn uint32) error {
	for {
		c.snmu.Lock()
		ok := !snLess(c.maxCmdSN, sn)
		ch := c.winCh
		c.snmu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for CmdSN %d to enter the window: %w", sn, ctx.Err())
		case <-c.closed:
			return ErrClosed
		}
	}
}

// WritePDU sends one PDU as it is, framed with the digests in force. Only
// the data segment length and AHS length are filled in; ExpStatSN is not.
func (c *Conn) WritePDU(p *PDU) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(&p.BHS, p.AHS, p.Data)
}

// WriteRaw sends bytes as they are, with no framing.
func (c *Conn) WriteRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("write %d raw bytes: %w", len(b), err)
	}
	return nil
}

// writeLocked frames and sends one PDU; wmu is held.
func (c *Conn) writeLocked(bhs *iscsi.BHS, ahs, data []byte) error {
	bufs, err := c.frame(bhs, ahs, data)
	if err != nil {
		return err
	}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		return fmt.Errorf("send %v: %w", bhs.Opcode(), err)
	}
	return nil
}

// Encode returns the bytes WritePDU would send for p, for tests that
// corrupt them before WriteRaw.
func (c *Conn) Encode(p *PDU) ([]byte, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bufs, err := c.frame(&p.BHS, p.AHS, p.Data)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, b := range bufs {
		out = append(out, b...)
	}
	return out, nil
}

// frame lays out one PDU: header (with AHS and digest), data, padding and
// data digest. The header lives in c.hbuf: wmu is held until it is sent.
func (c *Conn) frame(bhs *iscsi.BHS, ahs, data []byte) (net.Buffers, error) {
	if len(ahs)%4 != 0 || len(ahs) > 255*4 {
		return nil, fmt.Errorf("AHS of %d bytes is not a whole number of words up to 1020", len(ahs))
	}
	if len(data) > 1<<24-1 {
		return nil, fmt.Errorf("data segment of %d bytes does not fit the length field", len(data))
	}
	bhs[4] = byte(len(ahs) / 4)
	bhs.SetDataLen(len(data))
	h := append(c.hbuf[:0], bhs[:]...)
	h = append(h, ahs...)
	if c.hdrDigest {
		h = binary.LittleEndian.AppendUint32(h, crc32.Checksum(h, castagnoli))
	}
	c.hbuf = h[:0]
	bufs := net.Buffers{h}
	if len(data) == 0 {
		return bufs, nil
	}
	bufs = append(bufs, data)
	var tail []byte
	if pad := iscsi.Padded(len(data)) - len(data); pad > 0 {
		tail = make([]byte, pad, pad+4)
	}
	if c.dataDigest {
		crc := crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, tail)
		tail = binary.LittleEndian.AppendUint32(tail, crc)
	}
	if len(tail) > 0 {
		bufs = append(bufs, tail)
	}
	return bufs, nil
}

// readPDU reads one PDU, checking digests when they are in force.
func (c *Conn) readPDU() (*PDU, error) {
	p := new(PDU)
	if _, err := io.ReadFull(c.r, p.BHS[:]); err != nil {
		return nil, fmt.Errorf("read BHS: %w", err)
	}
	if n := p.BHS.TotalAHSLen(); n > 0 {
		p.AHS = make([]byte, n)
		if _, err := io.ReadFull(c.r, p.AHS); err != nil {
			return nil, fmt.Errorf("read AHS: %w", err)
		}
	}
	var d [4]byte
	if c.hdrDigest {
		if _, err := io.ReadFull(c.r, d[:]); err != nil {
			return nil, fmt.Errorf("read header digest: %w", err)
		}
		crc := crc32.Update(crc32.Checksum(p.BHS[:], castagnoli), castagnoli, p.AHS)
		if got := binary.LittleEndian.Uint32(d[:]); got != crc {
			return nil, fmt.Errorf("%v: header digest 0x%08x, computed 0x%08x", p.BHS.Opcode(), got, crc)
		}
	}
	n := p.BHS.DataLen()
	if n == 0 {
		return p, nil
	}
	if n > maxData {
		return nil, fmt.Errorf("%v with a %d-byte data segment", p.BHS.Opcode(), n)
	}
	buf := make([]byte, iscsi.Padded(n))
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return nil, fmt.Errorf("read %v data segment: %w", p.BHS.Opcode(), err)
	}
	p.Data = buf[:n]
	if c.dataDigest {
		if _, err := io.ReadFull(c.r, d[:]); err != nil {
			return nil, fmt.Errorf("read data digest: %w", err)
		}
		crc := crc32.Checksum(buf, castagnoli)
		if got := binary.LittleEndian.Uint32(d[:]); got != crc {
			return nil, fmt.Errorf("%v: data digest 0x%08x, computed 0x%08x", p.BHS.Opcode(), got, crc)
		}
	}
	return p, nil
}

// ReadUnsolicited returns the next PDU that no request was waiting for:
// Rejects (which are also routed to a request they name), Async Messages,
// NOP-In pings, and answers to PDUs sent with WritePDU.
func (c *Conn) ReadUnsolicited(ctx context.Context) (*PDU, error) {
	select {
	case p := <-c.unsol:
		return p, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for an unsolicited PDU: %w", ctx.Err())
	case <-c.closed:
		select {
		case p := <-c.unsol:
			return p, nil
		default:
		}
		return nil, fmt.Errorf("wait for an unsolicited PDU: %w", c.Err())
	}
}

// Dropped counts unsolicited PDUs thrown away because nobody read them.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

// startReader starts routing received PDUs; login has finished.
func (c *Conn) startReader() {
	c.ffp = true
	go c.readLoop()
}

func (c *Conn) readLoop() {
	defer close(c.readerDone)
	for {
		p, err := c.readPDU()
		if err != nil {
			select {
			case <-c.closed:
			default:
				c.fail(err)
			}
			return
		}
		if err := c.route(p); err != nil {
			c.fail(err)
			return
		}
	}
}

// carriesStatus reports whether a target PDU takes a StatSN of its own.
func carriesStatus(p *PDU) bool {
	switch p.BHS.Opcode() {
	case iscsi.OpSCSIResp, iscsi.OpTaskResp, iscsi.OpTextResp, iscsi.OpLogoutResp, iscsi.OpReject, iscsi.OpLoginResp:
		return true
	case iscsi.OpDataIn:
		return p.BHS.Flags()&0x01 != 0
	case iscsi.OpNOPIn:
		return p.BHS.ITT() != iscsi.NoTag
	}
	return false
}

// route hands one PDU to whoever waits for it.
func (c *Conn) route(p *PDU) error {
	b := &p.BHS
	op := b.Opcode()
	if carriesStatus(p) {
		sn := b.U32(24)
		if sn != c.expStatSN.Load() {
			c.statSNErrors.Add(1)
		}
		if snLess(c.expStatSN.Load(), sn+1) {
			c.expStatSN.Store(sn + 1)
		}
	}
	if n := len(p.Data); n > int(c.params.MaxRecvDataSegmentLength) {
		return fmt.Errorf("%v with %d bytes of data, beyond our MaxRecvDataSegmentLength %d", op, n,
			c.params.MaxRecvDataSegmentLength)
	}
	if op != iscsi.OpLoginResp {
		c.updateWindow(b.U32(28), b.U32(32))
	}
	switch op {
	case iscsi.OpNOPIn:
		if b.ITT() == iscsi.NoTag {
			if b.U32(20) != iscsi.NoTag && c.answerPings.Load() {
				if err := c.answerPing(p); err != nil {
					return err
				}
			}
			c.deliverUnsolicited(p)
			return nil
		}
	case iscsi.OpReject:
		if len(p.Data) >= iscsi.BHSLen {
			var bad iscsi.BHS
			copy(bad[:], p.Data)
			if bad.Opcode() != iscsi.OpDataOut {
				if t := c.take(bad.ITT()); t != nil {
					t.finish(&RejectError{Reason: b[2], Opcode: bad.Opcode()})
				}
			}
		}
		c.deliverUnsolicited(p)
		return nil
	case iscsi.OpAsync:
		c.deliverUnsolicited(p)
		return nil
	}
	c.pmu.Lock()
	t := c.pending[b.ITT()]
	c.pmu.Unlock()
	if t == nil {
		c.deliverUnsolicited(p)
		return nil
	}
	return t.handle(p)
}

// deliverUnsolicited queues p for ReadUnsolicited, dropping it if the queue
// is full.
func (c *Conn) deliverUnsolicited(p *PDU) {
	select {
	case c.unsol <- p:
	default:
		c.dropped.Add(1)
	}
}

// answerPing answers a target NOP-In that asks for a NOP-Out.
func (c *Conn) answerPing(p *PDU) error {
	var b iscsi.BHS
	b[0] = byte(iscsi.OpNOPOut) | 0x40
	b[1] = 0x80
	b.SetLUN(p.BHS.LUN())
	b.SetU32(16, iscsi.NoTag)
	b.SetU32(20, p.BHS.U32(20))
	b.SetU32(24, c.CmdSN())
	c.wmu.Lock()
	b.SetU32(28, c.expStatSN.Load())
	err := c.writeLocked(&b, nil, nil)
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("answer NOP-In ping: %w", err)
	}
	c.pingsAnswered.Add(1)
	return nil
}

// take removes and returns the pending task with itt.
func (c *Conn) take(itt uint32) *Task {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	t := c.pending[itt]
	delete(c.pending, itt)
	return t
}

// RejectError is a request answered by a Reject PDU.
type RejectError struct {
	Reason byte
	Opcode iscsi.Opcode
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("%v rejected with reason 0x%02x", e.Opcode, e.Reason)
}

// issue sends a request that waits for an answer. A non-immediate request
// takes the next CmdSN once it fits the window, unless sn is given; then
// sends writes whatever follows it (unsolicited data) in the same turn.
func (c *Conn) issue(ctx context.Context, t *Task, b *iscsi.BHS, data []byte, sn *uint32, then func() error) error {
	if !c.ffp {
		return errors.New("issue request: not logged in")
	}
	c.imu.Lock()
	defer c.imu.Unlock()
	immediate := b[0]&0x40 != 0
	switch {
	case sn != nil:
		b.SetU32(24, *sn)
	case immediate:
		b.SetU32(24, c.CmdSN())
	default:
		next := c.CmdSN()
		if err := c.waitWindow(ctx, next); err != nil {
			return err
		}
		b.SetU32(24, c.ReserveCmdSN(1))
	}
	t.CmdSN = b.U32(24)
	c.pmu.Lock()
	select {
	case <-c.closed:
		c.pmu.Unlock()
		return fmt.Errorf("issue %v: %w", b.Opcode(), c.Err())
	default:
	}
	c.pending[t.ITT] = t
	c.pmu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b.SetU32(28, c.expStatSN.Load())
	err := c.writeLocked(b, nil, data)
	if err == nil && then != nil {
		err = then()
	}
	if err != nil {
		c.take(t.ITT)
		return err
	}
	return nil
}

// readLockstep reads the next PDU during login, waiting at most d.
func (c *Conn) readLockstep(d time.Duration) (*PDU, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, fmt.Errorf("set read deadline: %w", err)
	}
	defer c.nc.SetReadDeadline(time.Time{})
	return c.readPDU()
}
