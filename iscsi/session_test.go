package iscsi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/scsi"
)

// quiet is how long a test waits to be sure an answer does not come.
const quiet = 150 * time.Millisecond

// rawCommand sends a SCSI Command PDU that no Task waits for, so whatever
// the target answers (R2Ts, status, Reject) reaches ReadUnsolicited. It
// takes the next CmdSN and returns the header sent.
func rawCommand(t testing.TB, c *initiator.Conn, flags byte, edtl uint32, cdb []byte, data []byte) *initiator.PDU {
	t.Helper()
	p := &initiator.PDU{Data: data}
	p.BHS[0] = byte(iscsi.OpSCSICmd)
	p.BHS[1] = flags
	p.BHS.SetLUN(iscsi.EncodeLUN(0))
	p.BHS.SetU32(16, c.NewITT())
	p.BHS.SetU32(20, edtl)
	p.BHS.SetU32(24, c.ReserveCmdSN(1))
	p.BHS.SetU32(28, c.ExpStatSN())
	copy(p.BHS[32:], cdb)
	if err := c.WritePDU(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// rawWrite sends a WRITE(16) of n bytes with no data and returns its header
// and the R2T the target answers with (InitialR2T=Yes sessions).
func rawWrite(t testing.TB, c *initiator.Conn, lba uint64, n int) (cmd, r2t *initiator.PDU) {
	t.Helper()
	cmd = rawCommand(t, c, 0x80|0x20|1, uint32(n), initiator.Write16(lba, uint32(n/blockSize)), nil)
	r2t = expectPDU(t, c, iscsi.OpR2T)
	if r2t.BHS.ITT() != cmd.BHS.ITT() {
		t.Fatalf("R2T for task 0x%x, want 0x%x", r2t.BHS.ITT(), cmd.BHS.ITT())
	}
	return cmd, r2t
}

// dataOut builds a Data-Out PDU for a task.
func dataOut(c *initiator.Conn, itt, ttt, dataSN, offset uint32, final bool, data []byte) *initiator.PDU {
	p := &initiator.PDU{Data: data}
	p.BHS[0] = byte(iscsi.OpDataOut)
	if final {
		p.BHS[1] = 0x80
	}
	p.BHS.SetU32(16, itt)
	p.BHS.SetU32(20, ttt)
	p.BHS.SetU32(28, c.ExpStatSN())
	p.BHS.SetU32(36, dataSN)
	p.BHS.SetU32(40, offset)
	return p
}

// expectPDU reads the next unsolicited PDU and checks its opcode.
func expectPDU(t testing.TB, c *initiator.Conn, op iscsi.Opcode) *initiator.PDU {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.ReadUnsolicited(ctx)
	if err != nil {
		t.Fatalf("waiting for a %v: %v", op, err)
	}
	if p.BHS.Opcode() != op {
		t.Fatalf("got a %v (flags 0x%02x, byte 2 0x%02x), want a %v", p.BHS.Opcode(), p.BHS.Flags(), p.BHS[2], op)
	}
	return p
}

// expectNothing checks no unsolicited PDU arrives for a while.
func expectNothing(t testing.TB, c *initiator.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), quiet)
	defer cancel()
	if p, err := c.ReadUnsolicited(ctx); err == nil {
		t.Fatalf("unexpected %v (byte 2 0x%02x) for task 0x%x", p.BHS.Opcode(), p.BHS[2], p.BHS.ITT())
	}
}

// checkUsable pings the target and runs a write and read.
func checkUsable(t testing.TB, c *initiator.Conn) {
	t.Helper()
	if _, err := c.Ping(ctxT(t), []byte("still there?")); err != nil {
		t.Fatalf("connection no longer usable: %v", err)
	}
	data := pattern(8192, 0x33)
	writeBlocks(t, c, 50000, data)
	checkSame(t, "read-back", readBlocks(t, c, 50000, len(data)).Data, data)
}

// expectClosed waits for the target to close the connection.
func expectClosed(t testing.TB, c *initiator.Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the target did not close the connection")
	}
}

// TestDigests moves data with header and data digests on.
func TestDigests(t *testing.T) {
	e := newEnv(t, func(o *iscsi.Options) { o.Limits.MaxRecvDataSegmentLength = 4096 })
	cases := []struct{ hdr, data string }{{"CRC32C", "None"}, {"None", "CRC32C"}, {"CRC32C", "CRC32C"}}
	for i, tc := range cases {
		t.Run(tc.hdr+"/"+tc.data, func(t *testing.T) {
			c := e.login(t, kv("HeaderDigest", tc.hdr, "DataDigest", tc.data, "MaxRecvDataSegmentLength", "512",
				"ImmediateData", "Yes", "InitialR2T", "No", "FirstBurstLength", "16384", "MaxBurstLength", "65536")...)
			if p := c.Params(); p.HeaderDigest != (tc.hdr == "CRC32C") || p.DataDigest != (tc.data == "CRC32C") {
				t.Fatalf("digests in force: header %v data %v", p.HeaderDigest, p.DataDigest)
			}
			for _, n := range []int{0, 1, 3, 5, 512} {
				echo, err := c.Ping(ctxT(t), pattern(n, byte(n)))
				if err != nil {
					t.Fatalf("ping with %d bytes: %v", n, err)
				}
				checkSame(t, "ping echo", echo, pattern(n, byte(n)))
			}
			data := pattern(256<<10+512, byte(i))
			w := writeBlocks(t, c, 0, data)
			if w.ImmediateBytes == 0 || w.UnsolicitedPDUs == 0 || w.R2Ts == 0 {
				t.Errorf("write did not use immediate, unsolicited and solicited data: %+v", w)
			}
			checkSame(t, "read-back", readBlocks(t, c, 0, len(data)).Data, data)
		})
	}
}

// TestDigestErrors corrupts digests: a data digest error gets a Reject and
// the connection goes on; a header digest error ends the connection.
func TestDigestErrors(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name    string
		corrupt func(frame []byte) // flips a byte of the encoded NOP-Out
		closed  bool
	}{
		{"data digest", func(f []byte) { f[len(f)-1] ^= 0xff }, false},
		{"data byte", func(f []byte) { f[iscsi.BHSLen+4] ^= 0x01 }, false},
		{"header digest", func(f []byte) { f[iscsi.BHSLen] ^= 0xff }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.login(t, kv("HeaderDigest", "CRC32C", "DataDigest", "CRC32C")...)
			p := &initiator.PDU{Data: []byte("payload")}
			p.BHS[0] = byte(iscsi.OpNOPOut) | 0x40
			p.BHS[1] = 0x80
			p.BHS.SetU32(16, c.NewITT())
			p.BHS.SetU32(20, iscsi.NoTag)
			p.BHS.SetU32(24, c.CmdSN())
			frame, err := c.Encode(p)
			if err != nil {
				t.Fatal(err)
			}
			tc.corrupt(frame)
			if err := c.WriteRaw(frame); err != nil {
				t.Fatal(err)
			}
			if tc.closed {
				expectClosed(t, c)
				return
			}
			rej := expectPDU(t, c, iscsi.OpReject)
			if rej.BHS[2] != 0x02 {
				t.Errorf("Reject reason 0x%02x, want 0x02 (data digest error)", rej.BHS[2])
			}
			checkUsable(t, c)
		})
	}
	t.Run("Data-Out data digest", func(t *testing.T) {
		c := e.login(t, kv("DataDigest", "CRC32C", "ImmediateData", "No", "InitialR2T", "Yes")...)
		cmd, r2t := rawWrite(t, c, 1200, 4096)
		frame, err := c.Encode(dataOut(c, cmd.BHS.ITT(), r2t.BHS.U32(20), 0, 0, true, pattern(4096, 3)))
		if err != nil {
			t.Fatal(err)
		}
		frame[len(frame)-1] ^= 0xff
		if err := c.WriteRaw(frame); err != nil {
			t.Fatal(err)
		}
		if rej := expectPDU(t, c, iscsi.OpReject); rej.BHS[2] != 0x02 {
			t.Errorf("Reject reason 0x%02x, want 0x02 (data digest error)", rej.BHS[2])
		}
		resp := expectPDU(t, c, iscsi.OpSCSIResp)
		sense := resp.Data[min(2, len(resp.Data)):]
		if resp.BHS[3] != 0x02 || len(sense) < 14 || sense[2]&0x0f != 0x0b || sense[12] != 0x47 {
			t.Errorf("write with a corrupt Data-Out: status 0x%02x sense %x, want ABORTED COMMAND 47h", resp.BHS[3], sense)
		}
		checkUsable(t, c)
		if r := readBlocks(t, c, 1200, 4096); !bytes.Equal(r.Data, make([]byte, 4096)) {
			t.Error("corrupt data reached the disk")
		}
	})
}

// TestCmdSNOrdering sends commands ahead of a CmdSN gap (held, then run in
// order) and outside the window (ignored).
func TestCmdSNOrdering(t *testing.T) {
	e := newEnv(t, nil)
	t.Run("held until the gap fills", func(t *testing.T) {
		c := e.login(t)
		first, second := pattern(4096, 1), pattern(4096, 2)
		sn := c.ReserveCmdSN(2)
		late, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: initiator.Write16(10, 8), DataOut: second}, sn+1)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-late.Done():
			t.Fatal("a command ahead of ExpCmdSN ran before the gap was filled")
		case <-time.After(quiet):
		}
		early, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: initiator.Write16(10, 8), DataOut: first}, sn)
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range []*initiator.Task{early, late} {
			if r, err := task.Wait(ctxT(t)); err != nil || r.Status != 0 {
				t.Fatalf("write CmdSN %d: %v %+v", task.CmdSN, err, r)
			}
		}
		checkSame(t, "the later CmdSN's data", readBlocks(t, c, 10, 4096).Data, second)
	})
	t.Run("immediate command passes a gap", func(t *testing.T) {
		c := e.login(t)
		sn := c.ReserveCmdSN(2)
		held, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: make([]byte, 6)}, sn+1)
		if err != nil {
			t.Fatal(err)
		}
		imm, err := c.Do(ctxT(t), &initiator.Command{CDB: initiator.Read16(0, 1), ReadLen: 512, Immediate: true})
		if err != nil || imm.Status != 0 {
			t.Fatalf("immediate read behind a CmdSN gap: %v %+v", err, imm)
		}
		select {
		case <-held.Done():
			t.Fatal("the held command ran before the gap was filled")
		default:
		}
		gap, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: make([]byte, 6)}, sn)
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range []*initiator.Task{gap, held} {
			if r, err := task.Wait(ctxT(t)); err != nil || r.Status != 0 {
				t.Fatalf("CmdSN %d: %v %+v", task.CmdSN, err, r)
			}
		}
	})
	cases := []struct {
		name string
		sn   func(exp, max uint32) uint32
	}{
		{"beyond MaxCmdSN", func(_, max uint32) uint32 { return max + 1 }},
		{"far beyond MaxCmdSN", func(_, max uint32) uint32 { return max + 1<<30 }},
		{"behind ExpCmdSN", func(exp, _ uint32) uint32 { return exp - 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.login(t)
			exp, max := c.Window()
			task, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: initiator.Write16(20, 8), DataOut: pattern(4096, 9)}, tc.sn(exp, max))
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-task.Done():
				t.Fatal("a command outside the CmdSN window was answered")
			case <-time.After(quiet):
			}
			task.Abandon()
			if exp2, _ := c.Window(); exp2 != exp {
				t.Errorf("ExpCmdSN moved from %d to %d", exp, exp2)
			}
			checkUsable(t, c)
			if r := readBlocks(t, c, 20, 4096); !bytes.Equal(r.Data, make([]byte, 4096)) {
				t.Error("the ignored write reached the disk")
			}
		})
	}
}

// TestWindowPipelining keeps more commands in flight than the window holds:
// the initiator waits for MaxCmdSN to open and every command completes.
func TestWindowPipelining(t *testing.T) {
	e := newEnv(t, func(o *iscsi.Options) { o.CmdWindow = 4 })
	c := e.login(t)
	const n = 64
	tasks := make([]*initiator.Task, n)
	for i := range tasks {
		var err error
		cmd := &initiator.Command{CDB: initiator.Write16(uint64(i)*8, 8), DataOut: pattern(4096, byte(i)), Attr: 1}
		if i%2 == 1 {
			cmd = &initiator.Command{CDB: initiator.Read16(uint64(i-1)*8, 8), ReadLen: 4096, Attr: 1}
		}
		if tasks[i], err = c.Start(ctxT(t), cmd); err != nil {
			t.Fatal(err)
		}
		exp, max := c.Window()
		if in := max - exp + 1; in > 4 {
			t.Fatalf("window of %d commands, configured 4", in)
		}
	}
	for i, task := range tasks {
		r, err := task.Wait(ctxT(t))
		if err != nil || r.Status != 0 {
			t.Fatalf("command %d: %v %+v", i, err, r)
		}
	}
}

// TestNOP checks NOP-Out echoes and answers to the target's NOP-In pings.
func TestNOP(t *testing.T) {
	t.Run("echo", func(t *testing.T) {
		e := newEnv(t, nil)
		c := e.login(t)
		for _, n := range []int{0, 1, 2, 3, 4, 1000, 8192} {
			echo, err := c.Ping(ctxT(t), pattern(n, 7))
			if err != nil {
				t.Fatalf("ping with %d bytes: %v", n, err)
			}
			checkSame(t, fmt.Sprintf("echo of %d bytes", n), echo, pattern(n, 7))
		}
	})
	cases := []struct {
		name   string
		answer bool
	}{{"ping answered keeps the connection", true}, {"ping unanswered closes it", false}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(o *iscsi.Options) { o.NopInterval, o.NopTimeout = 60*time.Millisecond, 200*time.Millisecond })
			c := e.login(t)
			c.SetAnswerPings(tc.answer)
			select {
			case <-c.Done():
				if tc.answer {
					t.Fatalf("connection closed although pings were answered: %v", c.Err())
				}
				return
			case <-time.After(600 * time.Millisecond):
			}
			if !tc.answer {
				t.Fatal("connection still open 600 ms after an unanswered ping")
			}
			if c.PingsAnswered() == 0 {
				t.Fatal("the target sent no NOP-In ping in 600 ms of silence")
			}
			checkUsable(t, c)
		})
	}
}

// TestTaskManagement aborts tasks and resets the LU.
func TestTaskManagement(t *testing.T) {
	e := newEnv(t, nil)
	noR2T := kv("ImmediateData", "No", "InitialR2T", "Yes")
	t.Run("abort a task waiting for data", func(t *testing.T) {
		c := e.login(t, noR2T...)
		cmd, r2t := rawWrite(t, c, 300, 8192)
		code, err := c.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFAbortTask,
			RefITT: cmd.BHS.ITT(), RefCmdSN: cmd.BHS.U32(24)})
		if err != nil || code != 0 {
			t.Fatalf("ABORT TASK: response %d, %v", code, err)
		}
		// Data for the aborted task is dropped, not written.
		if err := c.WritePDU(dataOut(c, cmd.BHS.ITT(), r2t.BHS.U32(20), 0, 0, true, pattern(8192, 1))); err != nil {
			t.Fatal(err)
		}
		expectNothing(t, c)
		checkUsable(t, c)
		if r := readBlocks(t, c, 300, 8192); !bytes.Equal(r.Data, make([]byte, 8192)) {
			t.Error("data of the aborted write reached the disk")
		}
	})
	t.Run("abort a command held by CmdSN order", func(t *testing.T) {
		c := e.login(t)
		sn := c.ReserveCmdSN(2)
		held, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: initiator.Write16(400, 8), DataOut: pattern(4096, 4)}, sn+1)
		if err != nil {
			t.Fatal(err)
		}
		code, err := c.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFAbortTask, RefTask: held})
		if err != nil || code != 0 {
			t.Fatalf("ABORT TASK of a held command: response %d, %v", code, err)
		}
		held.Abandon()
		gap, err := c.StartWithCmdSN(ctxT(t), &initiator.Command{CDB: make([]byte, 6)}, sn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gap.Wait(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := c.Do(ctx, &initiator.Command{CDB: make([]byte, 6)}); err != nil {
			t.Fatalf("command after the aborted CmdSN: %v", err)
		}
	})
	cases := []struct {
		name string
		tmf  initiator.TMF
		want byte
	}{
		{"abort unknown task", initiator.TMF{Function: initiator.TMFAbortTask, RefITT: 0x7777, RefCmdSN: 0}, 1},
		{"abort task set", initiator.TMF{Function: initiator.TMFAbortTaskSet}, 0},
		{"clear task set", initiator.TMF{Function: initiator.TMFClearTaskSet}, 0},
		{"clear ACA", initiator.TMF{Function: initiator.TMFClearACA}, 0},
		{"LU reset of a missing LUN", initiator.TMF{Function: initiator.TMFLUReset, LUN: 9}, 2},
		{"task reassign", initiator.TMF{Function: initiator.TMFTaskReassign}, 4},
		{"unknown function", initiator.TMF{Function: 0x55}, 255},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.login(t)
			code, err := c.TaskManagement(ctxT(t), tc.tmf)
			if err != nil || code != tc.want {
				t.Fatalf("response %d, %v; want %d", code, err, tc.want)
			}
			checkUsable(t, c)
		})
	}
	t.Run("LU reset aborts and raises a unit attention", func(t *testing.T) {
		c := e.login(t, noR2T...)
		other := e.login(t)
		cmd, r2t := rawWrite(t, c, 500, 4096)
		code, err := c.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFLUReset})
		if err != nil || code != 0 {
			t.Fatalf("LOGICAL UNIT RESET: response %d, %v", code, err)
		}
		if err := c.WritePDU(dataOut(c, cmd.BHS.ITT(), r2t.BHS.U32(20), 0, 0, true, pattern(4096, 1))); err != nil {
			t.Fatal(err)
		}
		expectNothing(t, c)
		r, err := other.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != 0x02 || len(r.Sense) < 13 || r.Sense[2]&0x0f != 0x06 || r.Sense[12] != 0x29 {
			t.Errorf("TEST UNIT READY on another session after the reset: status 0x%02x sense %x, want UNIT ATTENTION 29h",
				r.Status, r.Sense)
		}
		clearUA(t, c) // whether the issuing nexus gets one too is the SCSI layer's choice
		checkUsable(t, c)
	})
}

// TestLogout logs out idle, with commands in flight and with bad reasons.
func TestLogout(t *testing.T) {
	e := newEnv(t, nil)
	t.Run("idle", func(t *testing.T) {
		c := e.login(t)
		if code, err := c.Logout(ctxT(t), initiator.LogoutSession); err != nil || code != 0 {
			t.Fatalf("logout: %d %v", code, err)
		}
		expectClosed(t, c)
	})
	t.Run("the nexus is gone when the response comes", func(t *testing.T) {
		// A RESERVE (6) ends with its I_T nexus: once the Logout Response
		// is in, another session must not meet it. Repeated, since ending
		// the nexus after the response raced with the next command.
		other := e.login(t)
		for i := range 50 {
			c := e.login(t)
			if r, err := c.Do(ctxT(t), &initiator.Command{CDB: []byte{0x16, 0, 0, 0, 0, 0}}); err != nil || r.Status != 0 {
				t.Fatalf("round %d: RESERVE (6): %+v %v", i, r, err)
			}
			if code, err := c.Logout(ctxT(t), initiator.LogoutSession); err != nil || code != 0 {
				t.Fatalf("round %d: logout: %d %v", i, code, err)
			}
			r, err := other.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)})
			if err != nil {
				t.Fatalf("round %d: TEST UNIT READY: %v", i, err)
			}
			if r.Status != 0 {
				t.Fatalf("round %d: TEST UNIT READY from another session after the logout: status %#x sense %x",
					i, r.Status, r.Sense)
			}
			expectClosed(t, c)
		}
	})
	t.Run("reads in flight complete first", func(t *testing.T) {
		c := e.login(t)
		var tasks []*initiator.Task
		for i := range 16 {
			task, err := c.Start(ctxT(t), &initiator.Command{CDB: initiator.Read16(uint64(i)*128, 128), ReadLen: 65536, Attr: 1})
			if err != nil {
				t.Fatal(err)
			}
			tasks = append(tasks, task)
		}
		if code, err := c.Logout(ctxT(t), initiator.LogoutConnection); err != nil || code != 0 {
			t.Fatalf("logout: %d %v", code, err)
		}
		for i, task := range tasks {
			select {
			case <-task.Done():
			default:
				t.Fatalf("read %d had no response when the Logout Response came", i)
			}
			if r, err := task.Wait(ctxT(t)); err != nil || r.Status != 0 {
				t.Fatalf("read %d: %v", i, err)
			}
		}
		expectClosed(t, c)
	})
	t.Run("write waiting for data is dropped", func(t *testing.T) {
		c := e.login(t, kv("ImmediateData", "No", "InitialR2T", "Yes")...)
		rawWrite(t, c, 700, 8192)
		if code, err := c.Logout(ctxT(t), initiator.LogoutSession); err != nil || code != 0 {
			t.Fatalf("logout: %d %v", code, err)
		}
		expectClosed(t, c)
	})
	cases := []struct {
		name   string
		reason byte
		want   byte
	}{{"connection recovery", initiator.LogoutRecovery, 2}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.login(t)
			if code, err := c.Logout(ctxT(t), tc.reason); err != nil || code != tc.want {
				t.Fatalf("logout: %d %v, want %d", code, err, tc.want)
			}
			checkUsable(t, c)
		})
	}
}

// TestReinstatement logs in again with the same ISID: the old session ends.
func TestReinstatement(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name     string
		sameISID bool
	}{{"same ISID reinstates", true}, {"other ISID adds a session", false}}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			isid := [6]byte{0x80, 0, 0, 0, 0x42, byte(i)}
			first := e.dial(t)
			if _, err := first.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget, ISID: isid}); err != nil {
				t.Fatal(err)
			}
			clearUA(t, first)
			data := pattern(4096, byte(i+10))
			writeBlocks(t, first, 800, data)
			second := e.dial(t)
			if !tc.sameISID {
				isid[5] ^= 0x80
			}
			if _, err := second.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget, ISID: isid}); err != nil {
				t.Fatal(err)
			}
			if second.TSIH() == first.TSIH() {
				t.Errorf("new session got the old TSIH %d", first.TSIH())
			}
			if tc.sameISID {
				expectClosed(t, first)
			} else {
				checkUsable(t, first)
			}
			clearUA(t, second)
			checkSame(t, "data through the new session", readBlocks(t, second, 800, 4096).Data, data)
			tsihs := map[uint16]bool{}
			for _, s := range e.srv.Sessions() {
				tsihs[s.TSIH()] = true
			}
			if tsihs[first.TSIH()] == tc.sameISID || !tsihs[second.TSIH()] {
				t.Errorf("sessions by TSIH %v: old %d present=%v, new %d present=%v", tsihs, first.TSIH(),
					tsihs[first.TSIH()], second.TSIH(), tsihs[second.TSIH()])
			}
		})
	}
}

// TestMalformedPDUs sends broken requests: each gets a Reject carrying the
// offending header, and the connection stays usable.
func TestMalformedPDUs(t *testing.T) {
	e := newEnv(t, nil)
	cmd := func(c *initiator.Conn, flags byte, edtl uint32, data []byte) *initiator.PDU {
		p := &initiator.PDU{Data: data}
		p.BHS[0] = byte(iscsi.OpSCSICmd)
		p.BHS[1] = flags
		p.BHS.SetU32(16, c.NewITT())
		p.BHS.SetU32(20, edtl)
		p.BHS.SetU32(24, c.ReserveCmdSN(1))
		copy(p.BHS[32:], initiator.Write16(0, uint32(edtl/blockSize)))
		return p
	}
	cases := []struct {
		name   string
		keys   []iscsi.KV
		pdu    func(t *testing.T, c *initiator.Conn) *initiator.PDU
		reason byte
	}{
		{"unknown opcode", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{Data: []byte("junk")}
			p.BHS[0] = 0x1e | 0x40
			p.BHS.SetU32(16, c.NewITT())
			return p
		}, 0x05},
		{"SNACK at ErrorRecoveryLevel 0", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{}
			p.BHS[0] = byte(iscsi.OpSNACK)
			p.BHS[1] = 0x80
			return p
		}, 0x05},
		{"login request in full feature phase", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{Data: iscsi.EncodeText(ident())}
			p.BHS[0] = byte(iscsi.OpLoginReq) | 0x40
			p.BHS[1] = 0x87
			return p
		}, 0x04},
		{"data segment without the W bit", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			return cmd(c, 0x80|0x40, 4096, pattern(512, 1))
		}, 0x04},
		{"immediate data beyond EDTL", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			return cmd(c, 0x80|0x20, 512, pattern(1024, 1))
		}, 0x04},
		{"immediate data with ImmediateData=No", kv("ImmediateData", "No"), func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			return cmd(c, 0x80|0x20, 4096, pattern(512, 1))
		}, 0x04},
		{"F bit clear with InitialR2T=Yes", kv("InitialR2T", "Yes"), func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			return cmd(c, 0x20, 4096, nil)
		}, 0x04},
		{"Data-Out with an unknown TTT", kv("ImmediateData", "No", "InitialR2T", "Yes"), func(t *testing.T, c *initiator.Conn) *initiator.PDU {
			w, r2t := rawWrite(t, c, 900, 4096)
			return dataOut(c, w.BHS.ITT(), r2t.BHS.U32(20)+1000, 0, 0, true, pattern(4096, 1))
		}, 0x09},
		{"Data-Out out of order", kv("ImmediateData", "No", "InitialR2T", "Yes"), func(t *testing.T, c *initiator.Conn) *initiator.PDU {
			w, r2t := rawWrite(t, c, 900, 4096)
			return dataOut(c, w.BHS.ITT(), r2t.BHS.U32(20), 1, 512, true, pattern(512, 1))
		}, 0x04},
		{"Text Request with the C bit", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{Data: iscsi.EncodeText(kv("SendTargets", "All"))}
			p.BHS[0] = byte(iscsi.OpTextReq) | 0x40
			p.BHS[1] = 0x40
			p.BHS.SetU32(16, c.NewITT())
			p.BHS.SetU32(20, iscsi.NoTag)
			return p
		}, 0x05},
		{"Text Request with malformed text", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{Data: []byte("SendTargets\x00")}
			p.BHS[0] = byte(iscsi.OpTextReq) | 0x40
			p.BHS[1] = 0x80
			p.BHS.SetU32(16, c.NewITT())
			p.BHS.SetU32(20, iscsi.NoTag)
			return p
		}, 0x04},
		{"Logout with a reserved reason", nil, func(_ *testing.T, c *initiator.Conn) *initiator.PDU {
			p := &initiator.PDU{}
			p.BHS[0] = byte(iscsi.OpLogoutReq) | 0x40
			p.BHS[1] = 0x80 | 9
			p.BHS.SetU32(16, c.NewITT())
			return p
		}, 0x09},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.login(t, tc.keys...)
			p := tc.pdu(t, c)
			if p.BHS.Opcode() != iscsi.OpDataOut && p.BHS.Opcode() != iscsi.OpSCSICmd {
				p.BHS.SetU32(24, c.CmdSN())
			}
			p.BHS.SetU32(28, c.ExpStatSN())
			if err := c.WritePDU(p); err != nil {
				t.Fatal(err)
			}
			rej := expectPDU(t, c, iscsi.OpReject)
			if rej.BHS[2] != tc.reason {
				t.Errorf("Reject reason 0x%02x, want 0x%02x", rej.BHS[2], tc.reason)
			}
			if !bytes.Equal(rej.Data, p.BHS[:]) {
				t.Errorf("Reject carries header %x, want %x", rej.Data, p.BHS[:])
			}
			checkUsable(t, c)
		})
	}
}

// TestDroppedConnectionLeaksNothing drops connections in the middle of a
// Data-Out burst and checks every goroutine they started ends.
func TestDroppedConnectionLeaksNothing(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name string
		send func(t *testing.T, c *initiator.Conn, cmd, r2t *initiator.PDU)
	}{
		{"after the R2T", func(*testing.T, *initiator.Conn, *initiator.PDU, *initiator.PDU) {}},
		{"after half the burst", func(t *testing.T, c *initiator.Conn, cmd, r2t *initiator.PDU) {
			if err := c.WritePDU(dataOut(c, cmd.BHS.ITT(), r2t.BHS.U32(20), 0, 0, false, pattern(32<<10, 1))); err != nil {
				t.Fatal(err)
			}
		}},
		{"inside a Data-Out PDU", func(t *testing.T, c *initiator.Conn, cmd, r2t *initiator.PDU) {
			frame, err := c.Encode(dataOut(c, cmd.BHS.ITT(), r2t.BHS.U32(20), 0, 0, true, pattern(64<<10, 1)))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.WriteRaw(frame[:len(frame)/2]); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			for range 3 {
				c := e.login(t, kv("ImmediateData", "No", "InitialR2T", "Yes")...)
				cmd, r2t := rawWrite(t, c, 1000, 64<<10)
				tc.send(t, c, cmd, r2t)
				c.Close()
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				n := runtime.NumGoroutine()
				if n <= base && len(e.srv.Sessions()) == 0 {
					break
				}
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<20)
					t.Fatalf("%d goroutines, %d before; %d sessions left\n%s", n, base, len(e.srv.Sessions()),
						buf[:runtime.Stack(buf, true)])
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestRejectedCommandFailsTask checks the initiator side: a Reject naming a
// pending command fails it with a RejectError.
func TestRejectedCommandFailsTask(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial(t)
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, Discovery: true}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)})
	var rej *initiator.RejectError
	if !errors.As(err, &rej) || rej.Reason != 0x04 {
		t.Fatalf("SCSI command in a discovery session: %v, want a protocol-error Reject", err)
	}
}

// TestOversizedCommand sends a write beyond the target's transfer limit
// followed at once by a Data-Out for it: the command is answered with CHECK
// CONDITION and its Data-Out must not start a transfer for the dead task.
func TestOversizedCommand(t *testing.T) {
	e := newEnv(t, nil)
	for range 3 { // the Data-Out races the writer answering the command
		c := e.login(t)
		const edtl = 65 << 20
		cmd := &initiator.PDU{}
		cmd.BHS[0] = byte(iscsi.OpSCSICmd)
		cmd.BHS[1] = 0x80 | 0x20 | 1
		cmd.BHS.SetU32(16, c.NewITT())
		cmd.BHS.SetU32(20, edtl)
		cmd.BHS.SetU32(24, c.ReserveCmdSN(1))
		copy(cmd.BHS[32:], initiator.Write16(0, edtl/blockSize))
		var frames []byte
		for _, p := range []*initiator.PDU{cmd, dataOut(c, cmd.BHS.ITT(), iscsi.NoTag, 0, 0, true, nil)} {
			f, err := c.Encode(p)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, f...)
		}
		if err := c.WriteRaw(frames); err != nil {
			t.Fatal(err)
		}
		resp := expectPDU(t, c, iscsi.OpSCSIResp)
		if sense := resp.Data[min(2, len(resp.Data)):]; resp.BHS[3] != 0x02 || len(sense) < 13 || sense[12] != 0x24 {
			t.Fatalf("oversized write: status 0x%02x sense %x, want CHECK CONDITION 24h", resp.BHS[3], sense)
		}
		expectNothing(t, c)
		checkUsable(t, c)
	}
}

// TestTMFResponseTag sends a LOGICAL UNIT RESET and a NOP-Out back to back:
// the reset is answered from another goroutine once its tasks are gone, and
// its response must carry its own task tag, not that of the PDU read next.
func TestTMFResponseTag(t *testing.T) {
	e := newEnv(t, nil)
	c := e.login(t)
	for range 5 {
		tmf := &initiator.PDU{}
		tmf.BHS[0] = byte(iscsi.OpTaskMgmt) | 0x40
		tmf.BHS[1] = 0x80 | initiator.TMFLUReset
		tmf.BHS.SetU32(16, c.NewITT())
		tmf.BHS.SetU32(20, iscsi.NoTag)
		tmf.BHS.SetU32(24, c.CmdSN())
		nop := &initiator.PDU{}
		nop.BHS[0] = byte(iscsi.OpNOPOut) | 0x40
		nop.BHS[1] = 0x80
		nop.BHS.SetU32(16, c.NewITT())
		nop.BHS.SetU32(20, iscsi.NoTag)
		nop.BHS.SetU32(24, c.CmdSN())
		var frames []byte
		for _, p := range []*initiator.PDU{tmf, nop} {
			f, err := c.Encode(p)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, f...)
		}
		if err := c.WriteRaw(frames); err != nil {
			t.Fatal(err)
		}
		got := map[iscsi.Opcode]uint32{}
		for range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			p, err := c.ReadUnsolicited(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			got[p.BHS.Opcode()] = p.BHS.ITT()
		}
		if got[iscsi.OpTaskResp] != tmf.BHS.ITT() || got[iscsi.OpNOPIn] != nop.BHS.ITT() {
			t.Fatalf("answers by opcode and tag %v; want the Task Management Response for 0x%x and the NOP-In for 0x%x",
				got, tmf.BHS.ITT(), nop.BHS.ITT())
		}
	}
}

// TestShutdown shuts the server down under load: commands in flight are
// answered, then connections close and Shutdown returns.
func TestShutdown(t *testing.T) {
	e := newEnv(t, nil)
	readers := e.login(t)
	writer := e.login(t, kv("ImmediateData", "No", "InitialR2T", "Yes")...)
	var tasks []*initiator.Task
	for i := range 16 {
		task, err := readers.Start(ctxT(t), &initiator.Command{CDB: initiator.Read16(uint64(i)*64, 64), ReadLen: 32 << 10, Attr: 1})
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, task)
	}
	rawWrite(t, writer, 0, 8192) // waits for data that never comes
	// The target reads requests in order: once the ping is answered it has
	// taken every read, and each must then be answered before the close.
	if _, err := readers.Ping(ctxT(t), nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for i, task := range tasks {
		if r, err := task.Wait(ctxT(t)); err != nil || r.Status != 0 {
			t.Fatalf("read %d in flight at shutdown: %v", i, err)
		}
	}
	expectClosed(t, readers)
	expectClosed(t, writer)
	if n := len(e.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions left after shutdown", n)
	}
}

// TestResetAcrossSessions resets the LU from one session while another
// keeps writing: the writer's tasks may vanish (TAS=0) but the target must
// stay consistent and the writer's session usable.
func TestResetAcrossSessions(t *testing.T) {
	e := newEnv(t, nil)
	resetter := e.login(t)
	writer := e.login(t, kv("ImmediateData", "No", "InitialR2T", "Yes", "MaxBurstLength", "4096")...)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			task, err := writer.Start(ctx, &initiator.Command{CDB: initiator.Write16(uint64(i%64)*64, 64), DataOut: pattern(32<<10, byte(i)), Attr: 1})
			if err == nil {
				if _, err := task.Wait(ctx); err != nil {
					task.Abandon() // aborted by the reset: no answer comes
				}
			}
			cancel()
		}
	}()
	for range 10 {
		if code, err := resetter.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFLUReset}); err != nil || code != 0 {
			t.Fatalf("LOGICAL UNIT RESET: %d %v", code, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	<-done
	clearUA(t, writer)
	checkUsable(t, writer)
}

// TestTaskManagementDuringSanitize: a SANITIZE without IMMED waits for its
// overwrite, which lasts seconds at the LUN's sanitize rate. ABORT TASK
// ends the command (no response) without waiting for the overwrite, which
// goes on, as it does across a LOGICAL UNIT RESET; nothing is left in
// flight, and the overwrite completes.
func TestTaskManagementDuringSanitize(t *testing.T) {
	const name = "iqn.2026-01.test.iserd:sanitize"
	e := newEnv(t, nil)
	st := scsi.NewTarget(name)
	disk, err := scsi.NewDisk(bdev.NewMemory(4<<20), scsi.DiskConfig{BlockSize: blockSize, SanitizeRate: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddLUN(0, disk); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.AddTarget(&iscsi.Target{Name: name, SCSI: st}); err != nil {
		t.Fatal(err)
	}
	login := func() *initiator.Conn {
		c := e.dial(t)
		if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: name}); err != nil {
			t.Fatalf("login: %v", err)
		}
		clearUA(t, c)
		return c
	}
	// sanitizing reports whether TEST UNIT READY says SANITIZE IN PROGRESS
	// (after any unit attention) rather than GOOD.
	sanitizing := func(c *initiator.Conn) bool {
		t.Helper()
		for range 4 {
			r, err := c.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)})
			if err != nil {
				t.Fatalf("TEST UNIT READY: %v", err)
			}
			switch {
			case r.Status == 0:
				return false
			case len(r.Sense) >= 14 && r.Sense[2]&0x0f == 0x02 && r.Sense[12] == 0x04 && r.Sense[13] == 0x1b:
				return true
			case len(r.Sense) < 3 || r.Sense[2]&0x0f != 0x06:
				t.Fatalf("TEST UNIT READY: status %#x sense %x", r.Status, r.Sense)
			}
		}
		t.Fatal("TEST UNIT READY keeps reporting unit attentions")
		return false
	}
	a, b := login(), login()
	params := []byte{1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef} // one pass of a 4-byte pattern
	san, err := a.Start(ctxT(t), &initiator.Command{CDB: []byte{0x48, 0x01, 0, 0, 0, 0, 0, 0, byte(len(params)), 0}, DataOut: params, Attr: 1})
	if err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 2*time.Second, "no SANITIZE IN PROGRESS", func() bool { return sanitizing(b) })
	if code, err := a.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFAbortTask, RefTask: san}); err != nil || code != 0 {
		t.Fatalf("ABORT TASK: %d %v", code, err)
	}
	if !sanitizing(b) {
		t.Fatal("the overwrite ended with the aborted command, or ABORT TASK waited for it")
	}
	select {
	case <-san.Done():
		t.Fatal("the aborted SANITIZE was answered")
	default:
		san.Abandon()
	}
	if code, err := b.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFLUReset}); err != nil || code != 0 {
		t.Fatalf("LOGICAL UNIT RESET: %d %v", code, err)
	}
	if !sanitizing(b) {
		t.Fatal("the overwrite ended with the LOGICAL UNIT RESET")
	}
	if n := e.srv.Target(name).LUNStats(0).InFlight; n != 0 {
		t.Fatalf("%d commands in flight after the abort", n)
	}
	polltest.Until(t, 15*time.Second, "the overwrite did not end", func() bool { return !sanitizing(b) })
	checkSame(t, "after the overwrite", readBlocks(t, b, 8191, blockSize).Data, bytes.Repeat(params[4:], blockSize/4))
	clearUA(t, a) // the reset's
	checkSame(t, "read by the aborting session", readBlocks(t, a, 0, blockSize).Data, bytes.Repeat(params[4:], blockSize/4))
}
