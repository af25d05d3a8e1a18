package iser

import (
	"bytes"
	"testing"
	"time"

	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/targettest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

// Task management functions and responses (RFC 7143 11.5, 11.6).
const (
	tmfAbortTask = 1
	tmfLUReset   = 5
	tmfComplete  = 0
)

// TestServeReadWrite runs SCSI WRITEs and READs through the iSCSI engine
// over the connection: data leaves by RDMA WRITE and comes by immediate
// data and RDMA READ from the buffers named in the iSER header.
func TestServeReadWrite(t *testing.T) {
	in := newInit(t, 4, nil)
	tests := []struct {
		name   string
		n, imm int
	}{
		{"4 KiB as immediate data", 4096, 4096},
		{"64 KiB by RDMA READ", 64 << 10, 0},
		{"64 KiB: 8 KiB immediate, the rest by RDMA READ", 64 << 10, 8192},
		{"1 MiB by RDMA READ", 1 << 20, 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lba := uint64(i) * 4096
			data := pattern(tc.n, byte(i+1))
			in.write(t, lba, data, tc.imm)
			got := in.read(t, lba, tc.n)
			if !bytes.Equal(got, data) {
				t.Fatal("read back different data")
			}
		})
	}
	waitIdle(t, in.testConn)
}

// write writes data at lba, imm bytes of it as immediate data, and fails
// the test unless it ends GOOD.
func (in *testInit) write(t testing.TB, lba uint64, data []byte, imm int) {
	t.Helper()
	var rest iscsi.RemoteBuffer
	if imm < len(data) { // the initiator names the data after the immediate part (as Linux's ib_iser does)
		rest = in.f.expose(data[imm:])
	}
	itt := in.command(t, rw(true, lba, len(data)), 0, uint32(len(data)), data[:imm], rest, iscsi.RemoteBuffer{})
	if st := in.status(t, itt); st != statusGood {
		t.Fatalf("WRITE of %d bytes: status %#x", len(data), st)
	}
}

// read reads n bytes at lba and fails the test unless it ends GOOD.
func (in *testInit) read(t testing.TB, lba uint64, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	itt := in.command(t, rw(false, lba, n), 0, uint32(n), nil, iscsi.RemoteBuffer{}, in.f.expose(buf))
	if st := in.status(t, itt); st != statusGood {
		t.Fatalf("READ of %d bytes: status %#x", n, st)
	}
	return buf
}

// TestAbortLeavesNothing aborts write commands whose data the connection
// is fetching: once task management has answered, the aborted tasks have
// left nothing in the connection (no RDMA READ in flight or queued, so
// none of their STags or buffers), nothing in flight in the session, and
// their task tags serve new commands with new buffers.
func TestAbortLeavesNothing(t *testing.T) {
	const n = 64 << 10
	tests := []struct {
		name     string
		depth    int
		writes   int
		function byte
		aborted  func(i int) bool // which writes the function aborts
	}{
		{"ABORT TASK of a write whose READ is in flight", 4, 1, tmfAbortTask, func(int) bool { return true }},
		{"ABORT TASK of a write queued behind the initiator depth", 1, 2, tmfAbortTask, func(i int) bool { return i == 1 }},
		{"LOGICAL UNIT RESET with READs in flight and queued", 1, 3, tmfLUReset, func(int) bool { return true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := newInit(t, tc.depth, nil)
			in.f.holdFrom(rdma.OpRDMARead)
			var itts, sns []uint32
			for i := range tc.writes {
				sns = append(sns, in.cmdSN)
				itts = append(itts, in.command(t, rw(true, uint64(i)*256, n), 0, n, nil, in.f.expose(pattern(n, 1)), iscsi.RemoteBuffer{}))
			}
			polltest.Wait(t, "the READs to be posted and queued", func() bool {
				return in.f.posts(rdma.OpRDMARead) == min(tc.writes, tc.depth) && queuedReads(in.testConn) == tc.writes-min(tc.writes, tc.depth)
			})
			last := len(itts) - 1
			tmf := in.tmf(t, tc.function, 0, itts[last], sns[last])
			in.settle(t)
			in.f.release()
			answered := map[uint32]bool{}
			for !answered[tmf] {
				h, _ := in.recv(t)
				switch {
				case h.Opcode() == iscsi.OpTaskResp && h.ITT() == tmf:
					if h[2] != tmfComplete {
						t.Fatalf("task management response %d", h[2])
					}
				case h.Opcode() == iscsi.OpSCSIResp && h[3] == statusGood:
				default:
					t.Fatalf("got %v for %#x (status %#x)", h.Opcode(), h.ITT(), h[3])
				}
				answered[h.ITT()] = true
			}
			for i, itt := range itts {
				if !tc.aborted(i) && !answered[itt] {
					answered[itt] = in.status(t, itt) == statusGood
				}
				if answered[itt] == tc.aborted(i) {
					t.Errorf("write %d (aborted %v) answered %v", i, tc.aborted(i), answered[itt])
				}
			}
			waitIdle(t, in.testConn)
			if f := in.srv.Sessions()[0].Stats().InFlight; f != 0 {
				t.Errorf("%d commands still in flight", f)
			}
			in.clearUA(t) // a reset queues one
			// The aborted tag again, with a buffer of its own.
			in.itt = itts[last] - 1
			data := pattern(n, 9)
			in.write(t, 0, data, 0)
			if !bytes.Equal(in.read(t, 0, n), data) {
				t.Error("the write that reused an aborted task's tag did not take its own data")
			}
		})
	}
}

// TestTeardownWithDataInFlight ends connections while RDMA READs are in
// flight and queued: every task ends and the session goes.
func TestTeardownWithDataInFlight(t *testing.T) {
	tests := []struct {
		name string
		end  func(in *testInit)
	}{
		{"the initiator disconnects", func(in *testInit) { in.f.disconnect() }},
		{"the target closes the session", func(in *testInit) { in.srv.Sessions()[0].Close() }},
		{"the connection is closed", func(in *testInit) { in.Close() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := newInit(t, 1, nil)
			in.f.holdFrom(rdma.OpRDMARead)
			for i := range 3 {
				in.command(t, rw(true, uint64(i)*128, 65536), 0, 65536, nil, in.f.expose(make([]byte, 65536)), iscsi.RemoteBuffer{})
			}
			polltest.Wait(t, "the READs to be posted and queued", func() bool { return queuedReads(in.testConn) == 2 })
			tc.end(in)
			polltest.Wait(t, "the session to end", func() bool { return len(in.srv.Sessions()) == 0 })
		})
	}
}

// TestAsyncEvents: asynchronous messages reach iSER initiators, at most
// two that the initiator has not acknowledged at a time.
func TestAsyncEvents(t *testing.T) {
	in := newInit(t, 4, nil)
	acked := in.expStatSN
	for lun := range uint64(5) { // five REPORTED LUNS DATA HAS CHANGED events
		targettest.AddLUN(t, in.target, lun+1, 1<<20)
	}
	for i := range 2 {
		if h, _ := in.recv(t); h.Opcode() != iscsi.OpAsync || h[36] != 0 {
			t.Fatalf("message %d: %v (event %d), want an asynchronous SCSI event", i, h.Opcode(), h[36])
		}
	}
	expectPong := func(what string) {
		t.Helper()
		itt := in.ping(t, acked)
		if h, _ := in.recv(t); h.Opcode() != iscsi.OpNOPIn || h.ITT() != itt {
			t.Fatalf("%s: got %v (event %d), want the NOP-In", what, h.Opcode(), h[36])
		}
	}
	expectPong("after two unacknowledged events")
	targettest.AddLUN(t, in.target, 6, 1<<20)
	in.srv.Sessions()[0].RequestLogout(time.Hour)
	expectPong("events while two are unacknowledged")

	acked = in.expStatSN // acknowledges both
	expectPong("acknowledging")
	in.srv.Sessions()[0].RequestLogout(time.Hour)
	if h, _ := in.recv(t); h.Opcode() != iscsi.OpAsync || h[36] != 1 {
		t.Fatalf("got %v (event %d), want the asynchronous logout request", h.Opcode(), h[36])
	}
}
