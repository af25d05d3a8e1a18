package iscsi

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/scsi"
)

// Target is an iSCSI target node: a name, the SCSI target behind it and the
// portal group it is reachable through.
type Target struct {
	Name  string
	Alias string
	SCSI  *scsi.Target

	access   atomic.Pointer[Access]
	limits   atomic.Pointer[Limits]
	lunStats sync.Map // LUN -> *sessionCounters
	qos      targetQoS
}

// SetAccess replaces the target's access policy; logins after the call use
// it, sessions already in place keep theirs.
func (t *Target) SetAccess(a *Access) { t.access.Store(a) }

// Access returns the target's access policy (nil: open to all, no CHAP).
func (t *Target) Access() *Access { return t.access.Load() }

// Portal is an address the server listens on, reported by SendTargets.
type Portal struct {
	Addr string // host:port; an unspecified host is reported as the connection's local address
	// TPGT is the target portal group tag of the portal (1 when 0). Each
	// tag is one SCSI target port, with the tag as its relative target
	// port identifier, so ALUA port groups are made of tags.
	TPGT uint16
}

// tpgt returns the portal group tag of the portal at local address a: the
// portal with that exact address, or one listening on any address with the
// same port; 1 when none matches.
func (s *Server) tpgt(a net.Addr) uint16 {
	host, port, _ := net.SplitHostPort(a.String())
	ip := net.ParseIP(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	best := uint16(1)
	for _, p := range s.portals {
		ph, pp, err := net.SplitHostPort(p.Addr)
		if err != nil || pp != port {
			continue
		}
		pip := net.ParseIP(ph)
		switch {
		case pip != nil && ip != nil && pip.Equal(ip):
			return p.TPGT
		case ph == "" || pip != nil && pip.IsUnspecified():
			best = p.TPGT
		}
	}
	return best
}

// Options tune a Server.
type Options struct {
	Limits TargetLimits
	// CmdWindow is the CmdSN window (commands in flight) per session.
	CmdWindow uint32
	// NopInterval is how long a connection may stay silent before the target
	// pings it with a NOP-In; NopTimeout is how long it waits for the answer.
	NopInterval, NopTimeout time.Duration
	// LoginTimeout bounds the whole login phase.
	LoginTimeout time.Duration
	// Pool supplies command data buffers; RDMA transports and io_uring
	// register its regions. NewServer makes one when it is nil.
	Pool *bdev.Pool
	PeerLimits
}

// PeerLimits bound what an initiator, logged in or not, can make the
// target hold. Each is enforced where the resource is taken.
type PeerLimits struct {
	// Connections caps all connections, logging in or logged in; one
	// beyond it is closed at once.
	Connections int
	// LoginConns caps the connections still in their login phase, and
	// LoginConnsPerHost those from one IP address; a connection beyond
	// either is closed at once. Each holds at most one 8 KiB Login Request
	// and 64 KiB of login text for at most LoginTimeout.
	LoginConns, LoginConnsPerHost int
	// HeldBytes caps the data of the commands one session holds back
	// because they arrived ahead of a CmdSN gap; a command beyond it is
	// dropped (logged) as if it had never come.
	HeldBytes int
	// QueuedControl caps the bytes of PDUs queued on one connection that no
	// task accounts for (NOP-In echoes, Rejects, Text and TMF responses):
	// the reader stops taking requests until the initiator has read them.
	QueuedControl int
	// ImmediateTasks is how many immediate SCSI commands one session may
	// have in flight on top of its CmdSN window; more get Reject (reason
	// 0x06, too many immediate commands).
	ImmediateTasks int
	// AbortDataTimeout is how long task management waits for Data-Out that
	// an initiator still owes for a task it aborted from another session;
	// the connection that owes it is then closed, which ends the task.
	AbortDataTimeout time.Duration
}

// DefaultPeerLimits are the limits a Server applies where Options leave
// them zero.
func DefaultPeerLimits() PeerLimits {
	return PeerLimits{Connections: 4096, LoginConns: 64, LoginConnsPerHost: 16, HeldBytes: 4 << 20, QueuedControl: 1 << 20,
		ImmediateTasks: 16, AbortDataTimeout: 10 * time.Second}
}

// withDefaults fills the limits left zero from DefaultPeerLimits.
func (l PeerLimits) withDefaults() PeerLimits {
	d := DefaultPeerLimits()
	for _, f := range []struct{ v, def *int }{{&l.Connections, &d.Connections}, {&l.LoginConns, &d.LoginConns}, {&l.LoginConnsPerHost, &d.LoginConnsPerHost},
		{&l.HeldBytes, &d.HeldBytes}, {&l.QueuedControl, &d.QueuedControl}, {&l.ImmediateTasks, &d.ImmediateTasks}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if l.AbortDataTimeout <= 0 {
		l.AbortDataTimeout = d.AbortDataTimeout
	}
	return l
}

// DefaultOptions are the server defaults.
func DefaultOptions() Options {
	return Options{Limits: DefaultLimits(), CmdWindow: 128, NopInterval: 15 * time.Second,
		NopTimeout: 30 * time.Second, LoginTimeout: 30 * time.Second, PeerLimits: DefaultPeerLimits()}
}

// Server holds targets and sessions. Transports hand it connections.
type Server struct {
	log  *zap.Logger
	opts Options
	pool *bdev.Pool

	mu       sync.Mutex
	targets  map[string]*Target
	portals  []Portal
	sessions map[uint16]*Session // by TSIH
	conns    map[*conn]struct{}
	logins   int            // connections in their login phase
	loginsBy map[string]int // the same, by remote IP address
	lastTSIH uint16
	closed   bool
	wg       sync.WaitGroup

	nexusID       atomic.Uint64
	discoveryCHAP atomic.Pointer[CHAPSecret]
	refusedLogins atomic.Uint64 // connections closed by the connection limits
	refusalLogged atomic.Int64  // unix seconds of the last such log line
	busyNoBuffer  atomic.Uint64 // commands answered BUSY: the buffer pool was exhausted
	busyLogged    atomic.Int64  // unix seconds of the last such log line
}

// SetDiscoveryCHAP requires CHAP from discovery sessions (nil: none).
func (s *Server) SetDiscoveryCHAP(c *CHAPSecret) { s.discoveryCHAP.Store(c) }

// NewServer returns a server with no targets.
func NewServer(log *zap.Logger, opts Options) (*Server, error) {
	if opts.CmdWindow == 0 {
		opts.CmdWindow = 128
	}
	opts.PeerLimits = opts.PeerLimits.withDefaults()
	if opts.Pool == nil {
		p, err := bdev.NewPool(bdev.PoolOptions{})
		if err != nil {
			return nil, fmt.Errorf("buffer pool: %w", err)
		}
		opts.Pool = p
	}
	return &Server{log: log, opts: opts, pool: opts.Pool, targets: make(map[string]*Target),
		sessions: make(map[uint16]*Session), conns: make(map[*conn]struct{}), loginsBy: make(map[string]int)}, nil
}

// Pool is the server's command buffer pool.
func (s *Server) Pool() *bdev.Pool { return s.pool }

// AddTarget makes a target available to logins.
func (s *Server) AddTarget(t *Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.targets[t.Name]; dup {
		return fmt.Errorf("target %s already exists", t.Name)
	}
	s.targets[t.Name] = t
	s.watchTarget(t)
	return nil
}

// AddPortal records an address reported to discovery sessions.
func (s *Server) AddPortal(p Portal) {
	if p.TPGT == 0 {
		p.TPGT = 1
	}
	s.mu.Lock()
	s.portals = append(s.portals, p)
	s.mu.Unlock()
}

// RemovePortal stops reporting an address added with AddPortal.
func (s *Server) RemovePortal(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.portals = slices.DeleteFunc(s.portals, func(p Portal) bool { return p.Addr == addr })
}

func (s *Server) target(name string) *Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

// Serve accepts connections from l until it is closed or ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
			tc.SetKeepAlivePeriod(30 * time.Second)
		}
		tr := NewTCPTransport(nc)
		if !s.ServeTransport(tr) {
			tr.Close()
		}
	}
}

// ServeTransport runs one connection in its own goroutines. It returns
// false when it did not take the connection (the caller closes it): the
// server is shutting down, or there are too many connections, or too many
// logging in (PeerLimits.Connections, LoginConns, LoginConnsPerHost).
func (s *Server) ServeTransport(tr Transport) bool {
	host := remoteHost(tr.RemoteAddr())
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	if len(s.conns) >= s.opts.Connections || s.logins >= s.opts.LoginConns || s.loginsBy[host] >= s.opts.LoginConnsPerHost {
		conns, logins, mine := len(s.conns), s.logins, s.loginsBy[host]
		s.mu.Unlock()
		s.refuseConn(host, conns, logins, mine)
		return false
	}
	s.logins++
	s.loginsBy[host]++
	c := newConn(s, tr)
	c.loginHost = host
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	return true
}

// loginEnded takes a connection off the login counts, once its login phase
// is over (in full feature phase, refused or dropped).
func (s *Server) loginEnded(c *conn) {
	s.mu.Lock()
	s.logins--
	if s.loginsBy[c.loginHost]--; s.loginsBy[c.loginHost] <= 0 {
		delete(s.loginsBy, c.loginHost)
	}
	s.mu.Unlock()
}

// refuseConn logs a connection closed by the connection limits, at most
// once a second (a flood must not flood the log too), with the count so far.
func (s *Server) refuseConn(host string, conns, logins, fromHost int) {
	n := s.refusedLogins.Add(1)
	now := time.Now().Unix()
	if last := s.refusalLogged.Load(); now > last && s.refusalLogged.CompareAndSwap(last, now) {
		msg := "connection closed: too many connections are logging in"
		if conns >= s.opts.Connections {
			msg = "connection closed: too many connections"
		}
		s.log.Warn(msg, zap.String("remote", host), zap.Int("connections", conns),
			zap.Int("connections_limit", s.opts.Connections), zap.Int("logging_in", logins),
			zap.Int("from_this_host", fromHost), zap.Int("limit", s.opts.LoginConns),
			zap.Int("limit_per_host", s.opts.LoginConnsPerHost), zap.Uint64("refused_since_start", n))
	}
}

// ServerStats are the server-wide counters and the buffer pool's figures.
type ServerStats struct {
	// RefusedConns counts connections closed at once by the connection
	// limits (PeerLimits.Connections, LoginConns, LoginConnsPerHost).
	RefusedConns uint64
	// BusyNoBuffer counts commands answered BUSY because the buffer pool
	// was exhausted.
	BusyNoBuffer uint64
	// BufferMapped is the memory the pool has mapped, BufferInUse what
	// commands hold of it, BufferLimit its cap.
	BufferMapped, BufferInUse, BufferLimit int64
}

// Stats reads the server-wide counters.
func (s *Server) Stats() ServerStats {
	_, inUse := s.pool.Outstanding()
	return ServerStats{RefusedConns: s.refusedLogins.Load(), BusyNoBuffer: s.busyNoBuffer.Load(),
		BufferMapped: s.pool.Mapped(), BufferInUse: inUse, BufferLimit: s.pool.Limit()}
}

// noBuffer counts a command answered BUSY for want of a buffer, and logs it
// at most once a second (an exhausted pool must not flood the log too).
func (s *Server) noBuffer(edtl uint32, err error) {
	n := s.busyNoBuffer.Add(1)
	now := time.Now().Unix()
	if last := s.busyLogged.Load(); now > last && s.busyLogged.CompareAndSwap(last, now) {
		s.log.Warn("no buffer for the command: answering BUSY", zap.Uint32("edtl", edtl), zap.Error(err),
			zap.Int64("buffer_memory", s.pool.Limit()), zap.Uint64("busy_since_start", n))
	}
}

// remoteHost is the IP address of a peer, or the whole address when it has
// no port.
func remoteHost(a net.Addr) string {
	if a == nil {
		return ""
	}
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// Shutdown stops taking connections, asks every connection to finish its
// in-flight commands and close, and waits until they have or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.close()
		}
		return fmt.Errorf("shutdown: %d connections still busy: %w", len(conns), ctx.Err())
	}
}

// Sessions lists the current sessions.
func (s *Server) Sessions() []*Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

// sessionsOf returns the sessions logged in to target t.
func (s *Server) sessionsOf(t *Target) []*Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Session
	for _, ss := range s.sessions {
		if ss.target == t {
			out = append(out, ss)
		}
	}
	return out
}
