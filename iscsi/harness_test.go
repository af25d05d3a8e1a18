package iscsi_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/internal/targettest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

const (
	testInitiator = "iqn.2026-01.test.iserd:initiator"
	testTarget    = "iqn.2026-01.test.iserd:disk1"
	otherTarget   = "iqn.2026-01.test.iserd:disk2"
	blockSize     = targettest.BlockSize
	diskSize      = 64 << 20
)

// env is a server on 127.0.0.1 with two targets, each with a memory LUN 0.
type env struct {
	srv  *iscsi.Server
	addr string
}

// newEnv starts a server; tune adjusts its options first.
func newEnv(t testing.TB, tune func(*iscsi.Options)) *env {
	t.Helper()
	opts := iscsi.DefaultOptions()
	opts.LoginTimeout = 5 * time.Second
	if tune != nil {
		tune(&opts)
	}
	srv, err := iscsi.NewServer(zap.NewNop(), opts)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	for _, name := range []string{testTarget, otherTarget} {
		addTarget(t, srv, name)
	}
	// Cleanups run last first: Listen's stops serving, then this one shuts
	// the server down.
	t.Cleanup(func() {
		sctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if n, bytes := srv.Pool().Outstanding(); n != 0 {
			t.Errorf("after shutdown %d command buffers (%d bytes) were never given back to the pool", n, bytes)
		}
	})
	return &env{srv: srv, addr: targettest.Listen(t, srv, 0)}
}

// newServer returns a server with the two test targets and its own buffer
// pool; at cleanup it is shut down and the pool closed.
func newServer(t testing.TB, opts iscsi.Options) *iscsi.Server {
	t.Helper()
	srv := targettest.NewServer(t, opts)
	for _, name := range []string{testTarget, otherTarget} {
		addTarget(t, srv, name)
	}
	return srv
}

// addTarget adds a target with a thin memory LUN 0.
func addTarget(t testing.TB, srv *iscsi.Server, name string) {
	t.Helper()
	targettest.AddTarget(t, srv, name, diskSize)
}

// dial connects a new initiator; the connection is closed at cleanup.
func (e *env) dial(t testing.TB) *initiator.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := initiator.Dial(ctx, e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := c.StatSNErrors(); n != 0 {
			t.Errorf("%d responses out of StatSN sequence", n)
		}
		c.Close()
	})
	return c
}

// login dials and logs in to testTarget offering keys.
func (e *env) login(t testing.TB, keys ...iscsi.KV) *initiator.Conn {
	t.Helper()
	c := e.dial(t)
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget, Keys: keys}); err != nil {
		t.Fatalf("login: %v", err)
	}
	clearUA(t, c)
	return c
}

// clearUA consumes the unit attentions a new nexus starts with, as an
// initiator does with TEST UNIT READY after login.
func clearUA(t testing.TB, c *initiator.Conn) {
	t.Helper()
	for range 4 {
		r, err := c.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)})
		if err != nil {
			t.Fatalf("TEST UNIT READY: %v", err)
		}
		if r.Status == 0 {
			return
		}
		if r.Status != 0x02 || len(r.Sense) < 3 || r.Sense[2]&0x0f != 0x06 {
			t.Fatalf("TEST UNIT READY: status 0x%02x sense %x, want GOOD or UNIT ATTENTION", r.Status, r.Sense)
		}
	}
	t.Fatal("TEST UNIT READY still reports UNIT ATTENTION")
}

// kv builds a key list from alternating keys and values.
func kv(pairs ...string) []iscsi.KV {
	out := make([]iscsi.KV, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, iscsi.KV{Key: pairs[i], Value: pairs[i+1]})
	}
	return out
}

// ctxT is a context that ends with a generous per-operation timeout.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pattern returns n bytes that differ per seed and offset.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>9) ^ seed
	}
	return b
}

// writeBlocks writes data at lba and checks GOOD status.
func writeBlocks(t testing.TB, c *initiator.Conn, lba uint64, data []byte) *initiator.Response {
	t.Helper()
	r, err := c.Do(ctxT(t), &initiator.Command{CDB: initiator.Write16(lba, uint32(len(data)/blockSize)), DataOut: data})
	if err != nil {
		t.Fatalf("write %d bytes at LBA %d: %v", len(data), lba, err)
	}
	if r.Status != 0 {
		t.Fatalf("write %d bytes at LBA %d: status 0x%02x sense %x", len(data), lba, r.Status, r.Sense)
	}
	return r
}

// readBlocks reads n bytes at lba and checks GOOD status.
func readBlocks(t testing.TB, c *initiator.Conn, lba uint64, n int) *initiator.Response {
	t.Helper()
	r, err := c.Do(ctxT(t), &initiator.Command{CDB: initiator.Read16(lba, uint32(n/blockSize)), ReadLen: uint32(n)})
	if err != nil {
		t.Fatalf("read %d bytes at LBA %d: %v", n, lba, err)
	}
	if r.Status != 0 {
		t.Fatalf("read %d bytes at LBA %d: status 0x%02x sense %x", n, lba, r.Status, r.Sense)
	}
	return r
}

// checkSame fails when got differs from want, naming the first difference.
func checkSame(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: %d bytes differ from the %d expected, first at offset %d", what, len(got), len(want), i)
}

// loginStatus returns the status of a refused login, or fails.
func loginStatus(t testing.TB, err error) iscsi.LoginStatus {
	t.Helper()
	var le *initiator.LoginError
	if !errors.As(err, &le) {
		t.Fatalf("login: got %v, want a refusal", err)
	}
	return le.Status
}
