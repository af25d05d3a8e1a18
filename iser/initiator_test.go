package iser

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/targettest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/scsi"
)

const (
	testInitiator = "iqn.2026-01.test.iserd:iser-initiator"
	testTarget    = "iqn.2026-01.test.iserd:iser-disk"
	testDiskSize  = 64 << 20
	blockSize     = targettest.BlockSize
)

// SCSI Command flags and statuses the tests use.
const (
	opImmediate     = 0x40 // in the BHS's first byte, beside the opcode
	cmdFinal        = 0x80
	cmdRead         = 0x40
	cmdWrite        = 0x20
	attrSimple      = 0x01
	statusGood      = 0x00
	statusCheckCond = 0x02
)

// appendMessage frames a PDU as an iSER initiator sends it: the iSER
// header with the command's STags, the BHS, the data (no AHS).
func appendMessage(dst []byte, bhs *iscsi.BHS, data []byte, write, read iscsi.RemoteBuffer) []byte {
	var h [hdrLen]byte
	h[0] = flagCtrl
	if write.Valid {
		h[0] |= flagWSV
		binary.BigEndian.PutUint32(h[offWriteSTag:], write.STag)
		binary.BigEndian.PutUint64(h[offWriteVA:], write.VA)
	}
	if read.Valid {
		h[0] |= flagRSV
		binary.BigEndian.PutUint32(h[offReadSTag:], read.STag)
		binary.BigEndian.PutUint64(h[offReadVA:], read.VA)
	}
	bhs.SetDataLen(len(data))
	dst = append(dst, h[:]...)
	dst = append(dst, bhs[:]...)
	return append(dst, data...)
}

// testInit is an iSER initiator over a fake endpoint, logged in to a
// server of its own whose target has a memory LUN 0. It reuses its
// buffers, so that what allocates while it runs is the target.
type testInit struct {
	*testConn
	srv       *iscsi.Server
	target    *scsi.Target
	cmdSN     uint32
	expStatSN uint32
	itt       uint32
	out       []byte    // message being sent
	in        iscsi.BHS // header of the message last received
	immediate bool      // commands go as immediate (no CmdSN slot)
}

// newInit starts a server with opts (NOP-In pings off unless tune turns
// them on) and logs a new iSER connection in, with depth RDMA READs in
// flight at most.
func newInit(t testing.TB, depth int, tune func(*iscsi.Options)) *testInit {
	t.Helper()
	opts := iscsi.DefaultOptions()
	opts.NopInterval = 0
	opts.LoginTimeout = 10 * time.Second
	if tune != nil {
		tune(&opts)
	}
	srv := targettest.NewServer(t, opts)
	st := targettest.AddTarget(t, srv, testTarget, testDiskSize)
	tc := newConnOver(t, srv.Pool(), depth)
	if !srv.ServeTransport(tc.conn) {
		t.Fatal("the server did not take the connection")
	}
	in := &testInit{testConn: tc, srv: srv, target: st, cmdSN: 1, itt: 0x100, out: make([]byte, 0, slotSize)}
	in.login(t)
	return in
}

// login logs in to the operational stage and on to full feature phase in
// one request, as iSER needs (RFC 7145 5.1), and clears the unit
// attention a new nexus starts with.
func (in *testInit) login(t testing.TB) {
	t.Helper()
	var b iscsi.BHS
	b[0] = 0x40 | byte(iscsi.OpLoginReq)
	b[1] = 0x80 | 1<<2 | 3 // T, CSG operational, NSG full feature
	b[8] = 0x80            // ISID: random
	b.SetU32(16, in.nextITT())
	b.SetU32(24, in.cmdSN)
	text := iscsi.EncodeText([]iscsi.KV{{Key: "InitiatorName", Value: testInitiator}, {Key: "TargetName", Value: testTarget},
		{Key: "SessionType", Value: "Normal"}, {Key: "HeaderDigest", Value: "None"}, {Key: "DataDigest", Value: "None"},
		{Key: "RDMAExtensions", Value: "Yes"}, {Key: "InitiatorRecvDataSegmentLength", Value: "8192"},
		{Key: "TargetRecvDataSegmentLength", Value: "8192"}, {Key: "MaxRecvDataSegmentLength", Value: "8192"},
		{Key: "ImmediateData", Value: "Yes"}, {Key: "FirstBurstLength", Value: "65536"},
		{Key: "MaxBurstLength", Value: "16776192"}})
	in.send(t, &b, text, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
	h, _ := in.recv(t)
	if h.Opcode() != iscsi.OpLoginResp || h[36] != 0 || h.Flags()&0x83 != 0x83 {
		t.Fatalf("login: %v, status %02x%02x, flags %#x", h.Opcode(), h[36], h[37], h.Flags())
	}
	in.clearUA(t)
}

// clearUA sends TEST UNIT READY until the unit attentions queued for the
// nexus (a new one starts with POWER ON) are gone. They go as immediate
// commands: a test starts with every CmdSN slot with the initiator, none
// of them still to come back when it sets limits.
func (in *testInit) clearUA(t testing.TB) {
	t.Helper()
	in.immediate = true
	defer func() { in.immediate = false }()
	for range 4 {
		itt := in.command(t, make([]byte, 6), 0, 0, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
		if in.status(t, itt) == statusGood {
			return
		}
	}
	t.Fatal("TEST UNIT READY keeps failing")
}

func (in *testInit) nextITT() uint32 {
	in.itt++
	return in.itt
}

// send frames and delivers one PDU; ExpStatSN is filled in.
func (in *testInit) send(t testing.TB, b *iscsi.BHS, data []byte, write, read iscsi.RemoteBuffer) {
	if b.Opcode() != iscsi.OpLoginReq {
		b.SetU32(28, in.expStatSN)
	}
	in.out = appendMessage(in.out[:0], b, data, write, read)
	if err := in.f.deliver(in.out); err != nil {
		t.Fatalf("send %v: %v", b.Opcode(), err)
	}
}

// recv takes the next PDU the target sent and notes its StatSN.
func (in *testInit) recv(t testing.TB) (*iscsi.BHS, []byte) {
	m := in.f.next(t)
	if len(m) < hdrLen+iscsi.BHSLen || m[0] != flagCtrl {
		t.Fatalf("target sent a %d-byte message with iSER flags %#x", len(m), m[0])
	}
	copy(in.in[:], m[hdrLen:])
	h := &in.in
	if n := hdrLen + iscsi.BHSLen + h.DataLen(); n != len(m) {
		t.Fatalf("%v: message of %d bytes, its BHS says %d", h.Opcode(), len(m), n)
	}
	switch op := h.Opcode(); {
	case op == iscsi.OpDataIn || op == iscsi.OpR2T:
		t.Fatalf("target sent %v over iSER", op)
	case op != iscsi.OpNOPIn || h.ITT() != iscsi.NoTag: // carries a status
		in.expStatSN = h.U32(24) + 1
	}
	return h, m[hdrLen+iscsi.BHSLen:]
}

// command issues a SCSI command to LUN lun with edtl bytes expected, imm
// as immediate data, and the initiator's buffers for the rest; it returns
// its task tag.
func (in *testInit) command(t testing.TB, cdb []byte, lun uint64, edtl uint32, imm []byte, write, read iscsi.RemoteBuffer) uint32 {
	var b iscsi.BHS
	b[0] = byte(iscsi.OpSCSICmd)
	b[1] = cmdFinal | attrSimple
	if write.Valid || len(imm) > 0 {
		b[1] |= cmdWrite
	}
	if read.Valid {
		b[1] |= cmdRead
	}
	b.SetLUN(iscsi.EncodeLUN(lun))
	itt := in.nextITT()
	b.SetU32(16, itt)
	b.SetU32(20, edtl)
	b.SetU32(24, in.cmdSN)
	if in.immediate {
		b[0] |= opImmediate
	} else {
		in.cmdSN++
	}
	copy(b[32:48], cdb)
	in.send(t, &b, imm, write, read)
	return itt
}

// settle waits until the target's reader has handled every PDU sent so
// far: it posts a PDU's receive again when it goes on to read the next.
func (in *testInit) settle(t testing.TB) {
	t.Helper()
	polltest.Wait(t, "the target to read every PDU", func() bool { return in.f.recvsPosted() == numRecv })
}

// status waits for the SCSI Response of task itt and returns its status;
// any other PDU fails the test.
func (in *testInit) status(t testing.TB, itt uint32) byte {
	h, _ := in.recv(t)
	if h.Opcode() != iscsi.OpSCSIResp || h.ITT() != itt {
		t.Fatalf("got %v for task %#x, want the SCSI Response for %#x", h.Opcode(), h.ITT(), itt)
	}
	return h[3]
}

// tmf issues an immediate task management request for lun; ref names the
// task ABORT TASK aborts, with its CmdSN refSN. It returns its task tag.
func (in *testInit) tmf(t testing.TB, function byte, lun uint64, ref, refSN uint32) uint32 {
	var b iscsi.BHS
	b[0] = 0x40 | byte(iscsi.OpTaskMgmt)
	b[1] = 0x80 | function
	b.SetLUN(iscsi.EncodeLUN(lun))
	itt := in.nextITT()
	b.SetU32(16, itt)
	b.SetU32(20, ref)
	b.SetU32(24, in.cmdSN)
	b.SetU32(32, refSN)
	in.send(t, &b, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
	return itt
}

// ping sends an immediate NOP-Out that acknowledges statuses before
// expStatSN, and returns its task tag.
func (in *testInit) ping(t testing.TB, expStatSN uint32) uint32 {
	var b iscsi.BHS
	b[0] = 0x40 | byte(iscsi.OpNOPOut)
	b[1] = 0x80
	itt := in.nextITT()
	b.SetU32(16, itt)
	b.SetU32(20, iscsi.NoTag)
	b.SetU32(24, in.cmdSN)
	saved := in.expStatSN
	in.expStatSN = expStatSN
	in.send(t, &b, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
	in.expStatSN = saved
	return itt
}

// rw returns a READ(16) (write false) or WRITE(16) CDB for n bytes at lba.
func rw(write bool, lba uint64, n int) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	if write {
		cdb[0] = 0x8a
	}
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], uint32(n/blockSize))
	return cdb
}

// pattern returns n bytes that differ per seed and offset.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>9) ^ seed
	}
	return b
}
