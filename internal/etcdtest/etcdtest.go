// Package etcdtest runs a real etcd server (Debian's etcd-server package,
// /usr/bin/etcd) for tests: one member on loopback ports of its own, with
// its data in the test's temporary directory, that a test can stop and
// start again to see what its code does while etcd is gone.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Binary is the etcd server the tests run; scripts/install-deps.sh installs it
// (etcd-server).
const Binary = "/usr/bin/etcd"

// startTimeout bounds how long a start waits for etcd to answer.
const startTimeout = 20 * time.Second

// Server is one etcd member started for a test.
type Server struct {
	t       testing.TB
	dir     string
	client  string // client URL
	peer    string // peer URL
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// Start runs etcd for t and stops it at cleanup. The test is skipped when
// etcd is not installed (scripts/install-deps.sh installs it) and fails when
// it does not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("%s not installed (Debian package etcd-server; scripts/install-deps.sh installs it)", Binary)
	}
	s := &Server{t: t, dir: t.TempDir()}
	s.logPath = filepath.Join(s.dir, "etcd.log")
	s.client = "http://" + freeAddr(t)
	s.peer = "http://" + freeAddr(t)
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(s.logPath); err == nil {
				t.Logf("etcd log (last lines):\n%s", tail(string(b), 20))
			}
		}
	})
	return s
}

// Endpoints are the client URLs of the server.
func (s *Server) Endpoints() []string { return []string{s.client} }

// Client returns a client of the server, closed at cleanup.
func (s *Server) Client() *clientv3.Client {
	s.t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		s.t.Fatalf("etcdtest: client: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Stop ends the server (SIGTERM, then SIGKILL after 5 s) and keeps its
// data, so Restart brings the same state back. Stopping a stopped server
// does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Restart starts a stopped server again on the same ports and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("etcdtest: restart: %v", err)
	}
}

// start runs the etcd process and waits until it answers.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("etcd log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(Binary,
		"--name", "test",
		"--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", s.client, "--advertise-client-urls", s.client,
		"--listen-peer-urls", s.peer, "--initial-advertise-peer-urls", s.peer,
		"--initial-cluster", "test="+s.peer,
		"--log-level", "warn", "--logger", "zap")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", Binary, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	return s.waitReady(exited)
}

// waitReady polls the server until a read succeeds.
func (s *Server) waitReady(exited <-chan struct{}) error {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.client}, DialTimeout: time.Second})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = c.Get(ctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(s.logPath)
			return fmt.Errorf("etcd exited at start: %s", tail(string(b), 10))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not ready after %v: %w", startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
