package iser

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

func TestParseMessage(t *testing.T) {
	write := iscsi.RemoteBuffer{STag: 0x1234, VA: 0xa000_0000_0001, Valid: true}
	read := iscsi.RemoteBuffer{STag: 0x5678, VA: 0xb000_0000_0002, Valid: true}
	var cmd iscsi.BHS
	cmd[0] = byte(iscsi.OpSCSICmd)
	cmd.SetU32(16, 7)
	withAHS := cmd
	withAHS[4] = 2 // 8 bytes of AHS
	data := []byte("sixteen bytes!!!")
	tests := []struct {
		name        string
		msg         []byte
		wantErr     string
		write, read iscsi.RemoteBuffer
		dataOff     int
	}{
		{name: "both STags", msg: appendMessage(nil, &cmd, data, write, read), write: write, read: read,
			dataOff: hdrLen + iscsi.BHSLen},
		{name: "write STag only", msg: appendMessage(nil, &cmd, nil, write, iscsi.RemoteBuffer{}), write: write,
			dataOff: hdrLen + iscsi.BHSLen},
		{name: "no STags", msg: appendMessage(nil, &cmd, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{}),
			dataOff: hdrLen + iscsi.BHSLen},
		{name: "AHS", msg: append(appendMessage(nil, &withAHS, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{}), make([]byte, 8)...),
			dataOff: hdrLen + iscsi.BHSLen + 8},
		{name: "shorter than the headers", msg: appendMessage(nil, &cmd, nil, write, read)[:hdrLen+iscsi.BHSLen-1],
			wantErr: "shorter than its headers"},
		{name: "empty", msg: nil, wantErr: "shorter than its headers"},
		{name: "hello message", msg: func() []byte {
			m := appendMessage(nil, &cmd, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
			m[0] = flagHello
			return m
		}(), wantErr: "not an iSCSI control PDU"},
		{name: "data beyond the message", msg: appendMessage(nil, &cmd, data, write, read)[:hdrLen+iscsi.BHSLen+len(data)-1],
			wantErr: "the message holds 15"},
		{name: "AHS beyond the message", msg: appendMessage(nil, &withAHS, nil, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{}),
			wantErr: "says 8 AHS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := iscsi.Header{ReadBuf: read, WriteBuf: write} // what the previous PDU left
			off, err := parseMessage(tc.msg, &h)
			if tc.wantErr != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if off != tc.dataOff || h.WriteBuf != tc.write || h.ReadBuf != tc.read || h.ITT() != 7 ||
				len(h.AHS) != tc.dataOff-hdrLen-iscsi.BHSLen {
				t.Errorf("data at %d, write %+v, read %+v, ITT %d, %d AHS bytes; want %d, %+v, %+v, 7, %d",
					off, h.WriteBuf, h.ReadBuf, h.ITT(), len(h.AHS), tc.dataOff, tc.write, tc.read, tc.dataOff-hdrLen-iscsi.BHSLen)
			}
		})
	}
}

// TestQueue checks the framing of what the target sends: an iSER header
// with no STags, the BHS with its data length, the data.
func TestQueue(t *testing.T) {
	c := newTestConn(t, 4)
	tests := []struct {
		name    string
		data    int
		wantErr bool
	}{
		{"no data", 0, false},
		{"8 KiB", 8192, false},
		{"as much as a slot holds", slotSize - hdrLen - iscsi.BHSLen, false},
		{"a byte more", slotSize - hdrLen - iscsi.BHSLen + 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b iscsi.BHS
			b[0] = byte(iscsi.OpNOPIn)
			b.SetU32(16, 0x99)
			data := pattern(tc.data, 3)
			err := c.Queue(&b, data)
			if tc.wantErr {
				if err == nil {
					t.Fatal("Queue took a PDU longer than a send slot")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			m := c.f.next(t)
			want := appendMessage(nil, &b, data, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
			if !bytes.Equal(m, want) {
				t.Fatalf("sent %d bytes, want %d: % x...", len(m), len(want), m[:min(len(m), hdrLen+8)])
			}
		})
	}
	waitIdle(t, c)
}

// TestReadHeader takes PDUs through the receive slots: each slot is posted
// again once the next PDU is read, deadlines and disconnects end a read.
func TestReadHeader(t *testing.T) {
	c := newTestConn(t, 4)
	var b iscsi.BHS
	b[0] = byte(iscsi.OpNOPOut)
	data := pattern(100, 5)
	for i := range 2 * numRecv { // every receive is used twice
		b.SetU32(16, uint32(i))
		if err := c.f.deliver(appendMessage(nil, &b, data, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		var h iscsi.Header
		if err := c.ReadHeader(&h); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		got := make([]byte, h.DataLen())
		if _, err := c.ReadData(got, len(got)); err != nil || h.ITT() != uint32(i) || !bytes.Equal(got, data) {
			t.Fatalf("PDU %d: ITT %d, data %x..., err %v", i, h.ITT(), got[:4], err)
		}
	}
	c.SetReadDeadline(time.Now().Add(-time.Second))
	var h iscsi.Header
	if err := c.ReadHeader(&h); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	c.f.disconnect()
	if err := c.ReadHeader(&h); err != io.EOF {
		t.Fatalf("read after the initiator disconnected: %v, want EOF", err)
	}
}

// TestDataMoves moves command data between pool buffers and the
// initiator's buffers and checks each waiter hears once.
func TestDataMoves(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, c *testConn)
	}{
		{"PutData writes the initiator's buffer before the status", func(t *testing.T, c *testConn) {
			b, data := poolBuf(t, c, 64<<10, 1)
			defer c.pool.Put(b)
			dst := make([]byte, len(data))
			w := newWaiter()
			if err := c.PutData(1, c.f.expose(dst), data, w); err != nil {
				t.Fatal(err)
			}
			var status iscsi.BHS
			status[0] = byte(iscsi.OpSCSIResp)
			if err := c.Queue(&status, nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			c.f.next(t) // the status: RC ordering places the data first
			if !bytes.Equal(dst, data) {
				t.Error("the status arrived before the data")
			}
			if err := w.wait(t); err != nil {
				t.Fatal(err)
			}
		}},
		{"GetData reads the initiator's buffer", func(t *testing.T, c *testConn) {
			b, dst := poolBuf(t, c, 1<<20, 0)
			defer c.pool.Put(b)
			src := pattern(len(dst), 2)
			w := newWaiter()
			c.GetData(1, c.f.expose(src), dst, w)
			if err := w.wait(t); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst, src) {
				t.Error("the pool buffer does not hold the initiator's data")
			}
		}},
		{"PutData without a read STag", func(t *testing.T, c *testConn) {
			b, data := poolBuf(t, c, 4096, 1)
			defer c.pool.Put(b)
			w := newWaiter()
			if err := c.PutData(1, iscsi.RemoteBuffer{}, data, w); err == nil {
				t.Fatal("PutData took a command without a read STag")
			}
			if n, _ := w.result(); n != 0 {
				t.Fatalf("DataDone called %d times after an error", n)
			}
		}},
		{"GetData without a write STag", func(t *testing.T, c *testConn) {
			b, dst := poolBuf(t, c, 4096, 0)
			defer c.pool.Put(b)
			w := newWaiter()
			c.GetData(1, iscsi.RemoteBuffer{}, dst, w)
			if n, err := w.result(); n != 1 || err == nil {
				t.Fatalf("DataDone called %d times, error %v; want once with an error", n, err)
			}
		}},
		{"GetData into memory outside the pool", func(t *testing.T, c *testConn) {
			w := newWaiter()
			c.GetData(1, c.f.expose(make([]byte, 4096)), make([]byte, 4096), w)
			if n, err := w.result(); n != 1 || err == nil {
				t.Fatalf("DataDone called %d times, error %v; want once with an error", n, err)
			}
		}},
		{"GetData with an STag the initiator never gave", func(t *testing.T, c *testConn) {
			b, dst := poolBuf(t, c, 4096, 0)
			defer c.pool.Put(b)
			w := newWaiter()
			c.GetData(1, iscsi.RemoteBuffer{STag: 999, VA: fakeVA, Valid: true}, dst, w)
			if err := w.wait(t); err == nil {
				t.Fatal("the READ of an unknown STag succeeded")
			}
			var h iscsi.Header // the queue pair is in error: the connection ends
			if err := c.ReadHeader(&h); err != io.EOF {
				t.Fatalf("ReadHeader after a failed READ: %v, want EOF", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestConn(t, 4)
			tc.run(t, c)
			if !c.isDead() {
				waitIdle(t, c)
			}
		})
	}
}

// TestReadsBeyondDepth: RDMA READs beyond the initiator depth wait in the
// connection and start as earlier ones complete.
func TestReadsBeyondDepth(t *testing.T) {
	const depth, n = 2, 7
	c := newTestConn(t, depth)
	c.f.holdFrom(rdma.OpRDMARead)
	var ws []*waiter
	var dsts, srcs [][]byte
	for i := range n {
		b, dst := poolBuf(t, c, 8192, 0)
		defer c.pool.Put(b)
		src := pattern(len(dst), byte(i))
		w := newWaiter()
		c.GetData(uint32(i), c.f.expose(src), dst, w)
		ws, dsts, srcs = append(ws, w), append(dsts, dst), append(srcs, src)
	}
	if p, q := c.f.posts(rdma.OpRDMARead), queuedReads(c); p != depth || q != n-depth {
		t.Fatalf("%d READs posted and %d queued; want %d and %d", p, q, depth, n-depth)
	}
	c.f.release()
	for i, w := range ws {
		if err := w.wait(t); err != nil {
			t.Fatalf("READ %d: %v", i, err)
		}
		if !bytes.Equal(dsts[i], srcs[i]) {
			t.Errorf("READ %d brought the wrong data", i)
		}
	}
	waitIdle(t, c)
}

// TestCloseEndsDataMoves: every data move that cannot finish, whether in
// flight, queued or started after the connection closed, ends with an
// error, exactly once, by the time Close returns; none starts later.
func TestCloseEndsDataMoves(t *testing.T) {
	tests := []struct {
		name  string
		depth int
		// before runs while the connection is up and returns waiters that
		// Close must end; after runs once it is closed.
		before func(t *testing.T, c *testConn) []*waiter
		after  func(t *testing.T, c *testConn) []*waiter
	}{
		{name: "GetData after Close", depth: 4, after: func(t *testing.T, c *testConn) []*waiter {
			return []*waiter{getData(t, c)}
		}},
		{name: "GetData after the initiator disconnected", depth: 4, before: func(t *testing.T, c *testConn) []*waiter {
			c.f.disconnect()
			w := getData(t, c)
			if err := w.wait(t); err == nil {
				t.Error("a READ on a disconnected connection succeeded")
			}
			return []*waiter{w}
		}},
		{name: "PutData after Close", depth: 4, after: func(t *testing.T, c *testConn) []*waiter {
			b, data := poolBuf(t, c, 4096, 1)
			t.Cleanup(func() { c.pool.Put(b) })
			w := newWaiter()
			if err := c.PutData(1, c.f.expose(make([]byte, 4096)), data, w); err == nil {
				t.Error("PutData on a closed connection succeeded")
			}
			return nil // an error return means DataDone never comes
		}},
		{name: "READ in flight", depth: 4, before: func(t *testing.T, c *testConn) []*waiter {
			c.f.holdFrom(rdma.OpRDMARead)
			return []*waiter{getData(t, c)}
		}},
		{name: "READs queued behind the initiator depth", depth: 1, before: func(t *testing.T, c *testConn) []*waiter {
			c.f.holdFrom(rdma.OpRDMARead)
			ws := []*waiter{getData(t, c), getData(t, c), getData(t, c)}
			if q := queuedReads(c); q != 2 {
				t.Fatalf("%d READs queued, want 2", q)
			}
			return ws
		}},
		{name: "WRITE in flight", depth: 4, before: func(t *testing.T, c *testConn) []*waiter {
			c.f.holdFrom(rdma.OpRDMAWrite)
			b, data := poolBuf(t, c, 4096, 1)
			t.Cleanup(func() { c.pool.Put(b) })
			w := newWaiter()
			if err := c.PutData(1, c.f.expose(make([]byte, 4096)), data, w); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			return []*waiter{w}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestConn(t, tc.depth)
			var ws []*waiter
			if tc.before != nil {
				ws = tc.before(t, c)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.after != nil {
				ws = append(ws, tc.after(t, c)...)
			}
			for i, w := range ws {
				if n, err := w.result(); n != 1 || err == nil {
					t.Errorf("data move %d: DataDone called %d times, error %v; want once with an error", i, n, err)
				}
			}
			if c.f.heldCount() != 0 {
				t.Error("work requests still held after Close")
			}
		})
	}
}

// poolBuf takes a buffer of n bytes from the connection's pool, filled
// with a pattern (seed) unless seed is 0.
func poolBuf(t testing.TB, c *testConn, n int, seed byte) (*bdev.Buf, []byte) {
	t.Helper()
	b, err := c.pool.Get(n)
	if err != nil {
		t.Fatal(err)
	}
	if seed != 0 {
		copy(b.Bytes(), pattern(n, seed))
	}
	return b, b.Bytes()
}

// getData starts an RDMA READ of 4 KiB into a pool buffer that is given
// back at cleanup.
func getData(t *testing.T, c *testConn) *waiter {
	b, dst := poolBuf(t, c, 4096, 0)
	t.Cleanup(func() { c.pool.Put(b) })
	w := newWaiter()
	c.GetData(1, c.f.expose(make([]byte, 4096)), dst, w)
	return w
}

func queuedReads(c *testConn) int {
	c.sqMu.Lock()
	defer c.sqMu.Unlock()
	return len(c.queued)
}

// waitIdle waits until the connection has taken every completion, then
// checks it is idle.
func waitIdle(t testing.TB, c *testConn) {
	t.Helper()
	polltest.Wait(t, "every completion taken and every send queue entry free", func() bool {
		c.sqMu.Lock()
		defer c.sqMu.Unlock()
		return len(c.f.cq) == 0 && c.sqFree == sqDepth // the last completion may be in hand
	})
	c.idle(t)
}

// TestCloseWhileInUse closes connections while their reader takes PDUs
// and a responder queues answers, as a session logout or a dropped
// initiator does: Close must wait for whoever is copying from or into the
// slot memory before the endpoint releases it (the fake unmaps it, so a
// copy after that faults), and both must then see the connection closed.
func TestCloseWhileInUse(t *testing.T) {
	var b iscsi.BHS
	b[0] = byte(iscsi.OpNOPOut)
	msg := appendMessage(nil, &b, pattern(4096, 1), iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})
	answer := pattern(4096, 2)
	for i := range 200 {
		c := newTestConn(t, 4)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the reader
			defer wg.Done()
			dst := make([]byte, 4096)
			for {
				if err := c.f.deliver(msg); err != nil {
					return
				}
				var h iscsi.Header
				if err := c.ReadHeader(&h); err != nil {
					return
				}
				if _, err := c.ReadData(dst, len(dst)); err != nil {
					return
				}
			}
		}()
		go func() { // a responder
			defer wg.Done()
			var nop iscsi.BHS
			nop[0] = byte(iscsi.OpNOPIn)
			for {
				if err := c.Queue(&nop, answer); err != nil {
					return
				}
				if err := c.Flush(); err != nil {
					return
				}
				c.f.drain()
			}
		}()
		time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
		c.Close()
		wg.Wait()
	}
}
