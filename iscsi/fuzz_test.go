package iscsi_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// FuzzParseText feeds arbitrary data segments to the key=value parser: it
// must not panic, and what it accepts must survive an encode/parse round
// trip unchanged, with unique, well-formed keys.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.2026-01.test:x\x00SessionType=Normal\x00"))
	f.Add([]byte("A=\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kvs, err := iscsi.ParseText(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, kv := range kvs {
			if kv.Key == "" || len(kv.Key) > 63 || seen[kv.Key] {
				t.Fatalf("accepted key %q (seen before: %v)", kv.Key, seen[kv.Key])
			}
			seen[kv.Key] = true
		}
		again, err := iscsi.ParseText(iscsi.EncodeText(kvs))
		if err != nil {
			t.Fatalf("re-parsing %v: %v", kvs, err)
		}
		if !slices.Equal(kvs, again) {
			t.Fatalf("round trip changed %v into %v", kvs, again)
		}
	})
}

// fuzzServer is a server with the test targets whose logins time out fast.
func fuzzServer(f *testing.F) *iscsi.Server {
	opts := iscsi.DefaultOptions()
	opts.LoginTimeout = 2 * time.Second
	return newServer(f, opts)
}

// FuzzLoginPDU feeds arbitrary bytes to a new connection in login phase:
// the target must answer with a Login Response or close, never panic or hang.
func FuzzLoginPDU(f *testing.F) {
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) { loginInput(t, srv, data) })
}

// loginInput is one FuzzLoginPDU case.
func loginInput(t *testing.T, srv *iscsi.Server, data []byte) {
	client, server := net.Pipe()
	defer client.Close()
	if !srv.ServeTransport(iscsi.NewTCPTransport(&eofAfter{Conn: server, left: len(data)})) {
		t.Fatal("server refused the connection")
	}
	go client.Write(bytes.Clone(data)) // ends at the latest when the pipe closes
	if err := client.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return // the target has closed the connection already
	}
	var bhs iscsi.BHS
	_, err := io.ReadFull(client, bhs[:])
	switch {
	case err == nil:
		if bhs.Opcode() != iscsi.OpLoginResp {
			t.Fatalf("answered login-phase input with a %v", bhs.Opcode())
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatal("no Login Response and no close within 3 s")
	}
}

// eofAfter is the target's end of a pipe that reads as closed once the
// fuzz input is consumed, as a TCP connection whose peer shut down writing.
type eofAfter struct {
	net.Conn
	left int
}

func (c *eofAfter) Read(b []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	n, err := c.Conn.Read(b[:min(len(b), c.left)])
	c.left -= n
	return n, err
}

// FuzzFFPDU logs in, then sends arbitrary bytes: the target must not panic,
// must keep reading, and must end the session once the connection closes.
func FuzzFFPDU(f *testing.F) {
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) { ffpInput(t, srv, data) })
}

// ffpInput is one FuzzFFPDU case.
func ffpInput(t *testing.T, srv *iscsi.Server, data []byte) {
	client, server := net.Pipe()
	if !srv.ServeTransport(iscsi.NewTCPTransport(server)) {
		t.Fatal("server refused the connection")
	}
	c := initiator.New(client)
	defer c.Close()
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget}); err != nil {
		t.Fatalf("login: %v", err)
	}
	if err := client.SetWriteDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRaw(bytes.Clone(data)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the target stopped reading: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Sessions()) > 0 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("session still open 5 s after the connection closed\n%s", buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}
