package iscsi_test

import (
	"net"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// gatedLogin logs in to testTarget over a connection with a small receive
// buffer whose reads the test can hold, like an initiator that stops
// reading.
func (e *env) gatedLogin(t testing.TB, keys ...iscsi.KV) (*initiator.Conn, *initiator.Gate) {
	t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	g := initiator.NewGate(nc)
	c := initiator.New(g)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget, Keys: keys}); err != nil {
		t.Fatalf("login: %v", err)
	}
	clearUA(t, c)
	return c, g
}

// TestInitiatorStopsReading answers reads that add up to far more than the
// socket buffers hold while the initiator reads nothing: the reader's
// writes that do not wait come up short, the writer goroutine finishes
// them, and once the initiator reads again every byte arrives in order
// and the connection goes on working.
func TestInitiatorStopsReading(t *testing.T) {
	e := newEnv(t, nil)
	c, g := e.gatedLogin(t)
	var err error
	const size, reads = 1 << 20, 24
	want := pattern(8*size, 0x5a)
	writeBlocks(t, c, 0, want)

	g.Hold()
	tasks := make([]*initiator.Task, reads)
	for i := range tasks {
		off := i % 8 * size
		tasks[i], err = c.Start(ctxT(t), &initiator.Command{CDB: initiator.Read16(uint64(off/blockSize), size/blockSize), ReadLen: size})
		if err != nil {
			g.Release()
			t.Fatalf("read %d: %v", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the target fills its socket and waits
	g.Release()
	for i, task := range tasks {
		r, err := task.Wait(ctxT(t))
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if r.Status != 0 {
			t.Fatalf("read %d: status 0x%02x", i, r.Status)
		}
		off := i % 8 * size
		checkSame(t, "read back", r.Data, want[off:off+size])
	}
	checkSame(t, "after the stall", readBlocks(t, c, 0, size).Data, want[:size])
}
