package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

const (
	testTarget    = "iqn.2026-11.org.iserd.test:t0"
	testInitiator = "iqn.2026-11.org.iserd.test:host1"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// harness is an iserd in the test process: a Manager whose portals listen
// on ephemeral loopback ports, and its admin API on a unix socket.
type harness struct {
	t      *testing.T
	dir    string
	sock   string
	m      *Manager
	client *Client
	logs   *lockedBuffer

	mu    sync.Mutex
	addrs map[string]string // configured portal address -> real one
}

// baseConfig is a target with one memory LUN, open to all.
func baseConfig(dir string) *Config {
	c := &Config{DataDir: dir, Portals: []PortalConfig{{Address: "127.0.0.1:3260"}},
		Targets: []TargetConfig{{Name: testTarget, Open: true,
			LUNs: []LUNConfig{{LUN: 0, Backend: "memory", Size: 16 << 20}}}}}
	if err := c.Check(); err != nil {
		panic(err)
	}
	return c
}

// start runs a Manager on cfg with its state in dir.
func start(t *testing.T, dir string, cfg *Config) *harness {
	t.Helper()
	return startIn(t, dir, cfg, nil)
}

// startIn runs a Manager on cfg with its state in dir, as a node of the
// cluster node (nil: none).
func startIn(t *testing.T, dir string, cfg *Config, node *cluster.Node) *harness {
	t.Helper()
	h := &harness{t: t, dir: dir, logs: &lockedBuffer{}, addrs: map[string]string{}}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(h.logs), zap.DebugLevel)
	ctx, cancel := context.WithCancel(context.Background())
	m, err := New(cfg, Options{Log: zap.New(core), Path: filepath.Join(dir, "iserd.yaml"), Listen: h.listen(ctx), Cluster: node})
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	h.m = m
	sock := filepath.Join(t.TempDir(), "admin.sock")
	h.sock = sock
	l, err := ListenSocket(sock)
	if err != nil {
		cancel()
		t.Fatalf("ListenSocket: %v", err)
	}
	served := make(chan struct{})
	go func() { m.ServeAPI(ctx, l); close(served) }()
	h.client = NewClient(sock)
	t.Cleanup(func() {
		cancel()
		<-served
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		m.Server().Shutdown(sctx)
		m.Close()
	})
	return h
}

// listen serves each configured portal on an ephemeral loopback port.
func (h *harness) listen(ctx context.Context) func(*iscsi.Server, PortalConfig) (io.Closer, error) {
	return func(srv *iscsi.Server, p PortalConfig) (io.Closer, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		h.mu.Lock()
		h.addrs[p.Address] = l.Addr().String()
		h.mu.Unlock()
		srv.AddPortal(iscsi.Portal{Addr: l.Addr().String(), TPGT: p.TPGT})
		pctx, cancel := context.WithCancel(ctx)
		go srv.Serve(pctx, l)
		return closerFunc(cancel), nil
	}
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// portal is the real address of the first configured portal.
func (h *harness) portal() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.addrs[h.m.Config().Portals[0].Address]
}

// call sends a request with a raw body (possibly invalid JSON) and
// returns the status and the answer, or the error message of a failure.
func (h *harness) call(method, path, body string) (int, string) {
	h.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.sock)
	}}}
	req, err := http.NewRequest(method, "http://iserd"+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if err := json.Unmarshal(raw, &e); err != nil {
			h.t.Fatalf("%s %s: status %d with a body that is not a JSON error: %q", method, path, resp.StatusCode, raw)
		}
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, string(raw)
}

// login opens a session as initiator to target.
func (h *harness) login(initiatorName, target string) (*initiator.Conn, error) {
	c, err := initiator.Dial(context.Background(), h.portal())
	if err != nil {
		return nil, err
	}
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: initiatorName, TargetName: target}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
