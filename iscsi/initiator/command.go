package initiator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/iserd/iserd/iscsi"
)

// Command is a SCSI command to send.
type Command struct {
	LUN uint64 // LUN number, encoded with iscsi.EncodeLUN
	CDB []byte // up to 16 bytes
	// DataOut is the data of a write; its length is the expected transfer
	// length.
	DataOut []byte
	// ReadLen is the expected transfer length of a read.
	ReadLen uint32
	// Attr is the task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue).
	Attr byte
	// Immediate sends the command with the I bit, outside the CmdSN order.
	Immediate bool
	// NoImmediateData keeps write data out of the command PDU even when
	// ImmediateData=Yes.
	NoImmediateData bool
}

// Response is the outcome of a SCSI command and how it was carried.
type Response struct {
	Response byte // iSCSI service response (0: command completed at target)
	Status   byte // SCSI status
	Sense    []byte
	// Data is what Data-In PDUs delivered, up to the highest byte received.
	Data       []byte
	Residual   uint32
	Overflow   bool
	Underflow  bool
	StatSN     uint32
	ExpDataSN  uint32 // of a SCSI Response PDU
	DataInPDUs int
	// MaxDataInSegment is the largest Data-In data segment received.
	MaxDataInSegment int
	// StatusInDataIn says the status came in the final Data-In PDU.
	StatusInDataIn bool
	// Bursts counts Data-In PDUs with the F bit (ends of sequences).
	Bursts            int
	R2Ts              int
	ImmediateBytes    int
	UnsolicitedPDUs   int
	SolicitedPDUs     int
	MaxDataOutSegment int
	// MaxR2TLength is the largest DesiredDataTransferLength asked for.
	MaxR2TLength uint32
}

// Task is a request waiting for its answer.
type Task struct {
	c     *Conn
	ITT   uint32
	CmdSN uint32
	lun   uint64 // LUN field as sent

	scsi    bool
	dataOut []byte
	readBuf []byte

	mu        sync.Mutex // the reader and a failing connection both finish tasks
	done      chan struct{}
	finished  bool
	err       error
	resp      Response
	reply     *PDU // the final answer to a non-SCSI request
	nextDSN   uint32
	nextR2TSN uint32
	highest   int
}

func (c *Conn) newTask(scsi bool) *Task {
	return &Task{c: c, ITT: c.NewITT(), scsi: scsi, done: make(chan struct{})}
}

// finish completes the task once; err is nil on success.
func (t *Task) finish(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished {
		return
	}
	t.finished = true
	t.err = err
	close(t.done)
}

// fault ends a task on a protocol violation by the target.
func (t *Task) fault(format string, a ...any) {
	t.c.take(t.ITT)
	t.finish(fmt.Errorf("task 0x%x: "+format, append([]any{t.ITT}, a...)...))
}

// Done is closed when the task has its answer or has failed.
func (t *Task) Done() <-chan struct{} { return t.done }

// Wait waits for a SCSI command's response. An error means the command got
// no valid response: connection lost, Reject, or a protocol violation by the
// target (which the error names).
func (t *Task) Wait(ctx context.Context) (*Response, error) {
	select {
	case <-t.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for task 0x%x: %w", t.ITT, ctx.Err())
	}
	if t.err != nil {
		return nil, t.err
	}
	return &t.resp, nil
}

// Abandon forgets a task whose answer will never come (a command the target
// ignored); a late answer is then handed to ReadUnsolicited.
func (t *Task) Abandon() {
	t.c.take(t.ITT)
	t.finish(errors.New("abandoned"))
}

// waitReply waits for the final answer to a non-SCSI request.
func (t *Task) waitReply(ctx context.Context) (*PDU, error) {
	select {
	case <-t.done:
	case <-ctx.Done():
		t.c.take(t.ITT)
		return nil, fmt.Errorf("wait for the answer to task 0x%x: %w", t.ITT, ctx.Err())
	}
	if t.err != nil {
		return nil, t.err
	}
	return t.reply, nil
}

// Do sends a SCSI command and waits for its response.
func (c *Conn) Do(ctx context.Context, cmd *Command) (*Response, error) {
	t, err := c.Start(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return t.Wait(ctx)
}

// Start sends a SCSI command, with its immediate and unsolicited data, once
// its CmdSN fits the window, and returns without waiting for the response:
// several commands may be in flight.
func (c *Conn) Start(ctx context.Context, cmd *Command) (*Task, error) {
	return c.start(ctx, cmd, nil)
}

// StartWithCmdSN sends a SCSI command with a CmdSN of the caller's choice
// (see ReserveCmdSN), ignoring the window.
func (c *Conn) StartWithCmdSN(ctx context.Context, cmd *Command, sn uint32) (*Task, error) {
	return c.start(ctx, cmd, &sn)
}

func (c *Conn) start(ctx context.Context, cmd *Command, sn *uint32) (*Task, error) {
	if len(cmd.CDB) == 0 || len(cmd.CDB) > 16 {
		return nil, fmt.Errorf("start command: CDB of %d bytes (1 to 16 supported)", len(cmd.CDB))
	}
	if len(cmd.DataOut) > 0 && cmd.ReadLen > 0 {
		return nil, errors.New("start command: bidirectional commands are not supported")
	}
	t := c.newTask(true)
	t.lun = iscsi.EncodeLUN(cmd.LUN)
	t.dataOut = cmd.DataOut
	var b iscsi.BHS
	b[0] = byte(iscsi.OpSCSICmd)
	if cmd.Immediate {
		b[0] |= 0x40
	}
	b[1] = cmd.Attr & 7
	b.SetLUN(t.lun)
	b.SetU32(16, t.ITT)
	copy(b[32:48], cmd.CDB)
	p := &c.params
	var imm []byte
	unsolEnd := 0
	if n := len(cmd.DataOut); n > 0 {
		b[1] |= 0x20
		b.SetU32(20, uint32(n))
		if p.ImmediateData && !cmd.NoImmediateData {
			imm = cmd.DataOut[:min(n, int(p.FirstBurstLength), int(p.MaxXmitDataSegmentLength))]
		}
		unsolEnd = len(imm)
		if !p.InitialR2T {
			unsolEnd = min(n, int(p.FirstBurstLength))
		}
	} else if cmd.ReadLen > 0 {
		b[1] |= 0x40
		b.SetU32(20, cmd.ReadLen)
		t.readBuf = make([]byte, cmd.ReadLen)
	}
	if unsolEnd == len(imm) {
		b[1] |= 0x80
	}
	t.resp.ImmediateBytes = len(imm)
	unsol := unsolEnd - len(imm)
	seg := int(p.MaxXmitDataSegmentLength)
	t.resp.UnsolicitedPDUs = (unsol + seg - 1) / seg
	unsolicited := func() error {
		if unsol == 0 {
			return nil
		}
		_, err := c.sendDataOut(t, iscsi.NoTag, len(imm), unsol)
		return err
	}
	if err := c.issue(ctx, t, &b, imm, sn, unsolicited); err != nil {
		return nil, fmt.Errorf("start SCSI command 0x%02x: %w", cmd.CDB[0], err)
	}
	return t, nil
}

// sendDataOut sends one sequence of Data-Out PDUs for [off, off+n) of the
// task's data, each at most MaxXmitDataSegmentLength, DataSN from 0, the F
// bit on the last. wmu is held. It returns the number of PDUs sent.
func (c *Conn) sendDataOut(t *Task, ttt uint32, off, n int) (int, error) {
	seg := int(c.params.MaxXmitDataSegmentLength)
	pdus := 0
	for sent := 0; sent < n; pdus++ {
		l := min(seg, n-sent)
		var b iscsi.BHS
		b[0] = byte(iscsi.OpDataOut)
		if sent+l == n {
			b[1] = 0x80
		}
		b.SetLUN(t.lun)
		b.SetU32(16, t.ITT)
		b.SetU32(20, ttt)
		b.SetU32(28, c.expStatSN.Load())
		b.SetU32(36, uint32(pdus))
		b.SetU32(40, uint32(off+sent))
		t.resp.MaxDataOutSegment = max(t.resp.MaxDataOutSegment, l)
		if err := c.writeLocked(&b, nil, t.dataOut[off+sent:off+sent+l]); err != nil {
			return pdus, err
		}
		sent += l
	}
	return pdus, nil
}

// handle takes one PDU addressed to the task (reader goroutine).
func (t *Task) handle(p *PDU) error {
	b := &p.BHS
	if !t.scsi {
		t.c.take(t.ITT)
		t.reply = p
		t.finish(nil)
		return nil
	}
	switch b.Opcode() {
	case iscsi.OpDataIn:
		t.dataIn(p)
	case iscsi.OpSCSIResp:
		r := &t.resp
		r.Response, r.Status = b[2], b[3]
		r.StatSN, r.ExpDataSN = b.U32(24), b.U32(36)
		t.residual(b)
		if len(p.Data) >= 2 {
			n := int(binary.BigEndian.Uint16(p.Data))
			if n > len(p.Data)-2 {
				t.fault("sense length %d beyond the %d-byte data segment", n, len(p.Data))
				return nil
			}
			r.Sense = p.Data[2 : 2+n]
		}
		if b.Flags()&0x80 == 0 {
			t.fault("SCSI Response without the F bit")
			return nil
		}
		r.Data = t.readBuf[:t.highest]
		t.c.take(t.ITT)
		t.finish(nil)
	case iscsi.OpR2T:
		return t.r2t(p)
	default:
		t.fault("unexpected %v", b.Opcode())
	}
	return nil
}

// residual takes the residual count and flags of a response.
func (t *Task) residual(b *iscsi.BHS) {
	t.resp.Overflow = b.Flags()&0x04 != 0
	t.resp.Underflow = b.Flags()&0x02 != 0
	t.resp.Residual = b.U32(44)
}

// dataIn places one Data-In PDU's data and takes a collapsed status.
func (t *Task) dataIn(p *PDU) {
	b := &p.BHS
	r := &t.resp
	if sn := b.U32(36); sn != t.nextDSN {
		t.fault("Data-In DataSN %d where %d was expected", sn, t.nextDSN)
		return
	}
	t.nextDSN++
	off, n := int(b.U32(40)), len(p.Data)
	switch {
	case off != t.highest:
		t.fault("Data-In offset %d where %d was expected (DataPDUInOrder=Yes)", off, t.highest)
		return
	case off+n > len(t.readBuf):
		t.fault("Data-In of %d bytes at offset %d beyond the %d-byte expected length", n, off, len(t.readBuf))
		return
	case n > int(t.c.params.MaxRecvDataSegmentLength):
		t.fault("Data-In of %d bytes beyond MaxRecvDataSegmentLength %d", n, t.c.params.MaxRecvDataSegmentLength)
		return
	}
	copy(t.readBuf[off:], p.Data)
	t.highest = off + n
	r.DataInPDUs++
	r.MaxDataInSegment = max(r.MaxDataInSegment, n)
	if b.Flags()&0x80 != 0 {
		r.Bursts++
	}
	if b.Flags()&0x01 == 0 {
		return
	}
	if b.Flags()&0x80 == 0 {
		t.fault("Data-In with status but without the F bit")
		return
	}
	r.StatusInDataIn = true
	r.Status = b[3]
	r.StatSN = b.U32(24)
	t.residual(b)
	r.Data = t.readBuf[:t.highest]
	t.c.take(t.ITT)
	t.finish(nil)
}

// r2t answers an R2T with a sequence of Data-Out PDUs.
func (t *Task) r2t(p *PDU) error {
	b := &p.BHS
	ttt, sn, off, n := b.U32(20), b.U32(36), b.U32(40), b.U32(44)
	c := t.c
	switch {
	case sn != t.nextR2TSN:
		t.fault("R2TSN %d where %d was expected", sn, t.nextR2TSN)
		return nil
	case ttt == iscsi.NoTag:
		t.fault("R2T with the reserved target transfer tag")
		return nil
	case n == 0 || uint64(off)+uint64(n) > uint64(len(t.dataOut)):
		t.fault("R2T for %d bytes at offset %d of a %d-byte write", n, off, len(t.dataOut))
		return nil
	case n > c.params.MaxBurstLength:
		t.fault("R2T for %d bytes beyond MaxBurstLength %d", n, c.params.MaxBurstLength)
		return nil
	}
	t.nextR2TSN++
	t.resp.R2Ts++
	t.resp.MaxR2TLength = max(t.resp.MaxR2TLength, n)
	c.wmu.Lock()
	pdus, err := c.sendDataOut(t, ttt, int(off), int(n))
	c.wmu.Unlock()
	t.resp.SolicitedPDUs += pdus
	if err != nil {
		return fmt.Errorf("answer R2T of task 0x%x: %w", t.ITT, err)
	}
	return nil
}

// Read16 returns a READ(16) CDB.
func Read16(lba uint64, blocks uint32) []byte { return rw16(0x88, lba, blocks) }

// Write16 returns a WRITE(16) CDB.
func Write16(lba uint64, blocks uint32) []byte { return rw16(0x8a, lba, blocks) }

func rw16(op byte, lba uint64, blocks uint32) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], blocks)
	return cdb
}
