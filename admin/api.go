package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/iserd/iserd/iscsi"
)

// TargetInfo is a target as the API shows it: its configuration without
// CHAP secrets (a chap object with a user means a secret is set), each
// LUN's current size, and how many sessions are logged in.
type TargetInfo struct {
	TargetConfig
	Sessions int `json:"sessions"`
}

// TargetSettings changes a target's settings; absent fields stay.
type TargetSettings struct {
	Open                    *bool `json:"open,omitempty"`
	MaxSessions             *int  `json:"max_sessions,omitempty"`
	MaxSessionsPerInitiator *int  `json:"max_sessions_per_initiator,omitempty"`
}

// ResizeRequest sets a LUN's capacity. Shrinking needs Force.
type ResizeRequest struct {
	Size  Size `json:"size"`
	Force bool `json:"force,omitempty"`
}

// Result answers a change: what was done and the file it was saved to.
type Result struct {
	Message string `json:"message"`
	Saved   string `json:"saved,omitempty"`
}

// SessionInfo describes a logged-in session. iserd runs one connection
// per session.
type SessionInfo struct {
	TSIH           uint16    `json:"tsih"`
	Type           string    `json:"type"` // Normal or Discovery
	Target         string    `json:"target,omitempty"`
	Initiator      string    `json:"initiator"`
	InitiatorAlias string    `json:"initiator_alias,omitempty"`
	ISID           string    `json:"isid"`
	LoginTime      time.Time `json:"login_time"`
	// LUNs maps the LUN numbers the initiator sees to the target's; absent
	// when they are the target's own.
	LUNs        map[uint64]uint64 `json:"luns,omitempty"`
	Connections []ConnectionInfo  `json:"connections"`
	Stats       Stats             `json:"stats"`
	// CmdWindow is how many commands the session may have outstanding;
	// QoSLimited says rate limits shrink it.
	CmdWindow  uint32 `json:"cmd_window"`
	QoSLimited bool   `json:"qos_limited,omitempty"`
}

// ConnectionInfo is one connection of a session and its negotiated
// parameters (keys named as in RFC 7143 and RFC 7145).
type ConnectionInfo struct {
	Remote    string       `json:"remote"`
	Transport string       `json:"transport"` // tcp or iser
	Params    iscsi.Params `json:"params"`
}

// Stats are command counters of a session or LUN.
type Stats struct {
	Commands   uint64 `json:"commands"`
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	Errors     uint64 `json:"errors"`
	InFlight   int64  `json:"in_flight"`
	// Latency counts completed commands by latency: each bucket holds those
	// faster than LE and not faster than the bucket before.
	Latency []LatencyBucket `json:"latency"`
}

// LatencyBucket is one bucket of a latency histogram.
type LatencyBucket struct {
	LE    string `json:"le"` // upper bound, e.g. "250µs", or "+Inf"
	Count uint64 `json:"count"`
}

func statsOf(s iscsi.SessionStats) Stats {
	out := Stats{Commands: s.Commands, ReadBytes: s.ReadBytes, WriteBytes: s.WriteBytes, Errors: s.Errors, InFlight: s.InFlight}
	for i, n := range s.LatencyBuckets {
		le := "+Inf"
		if i < len(iscsi.LatencyBounds) {
			le = iscsi.LatencyBounds[i].String()
		}
		out.Latency = append(out.Latency, LatencyBucket{LE: le, Count: n})
	}
	return out
}

// sessionInfo describes s.
func sessionInfo(s *iscsi.Session) SessionInfo {
	p := s.Params()
	transport := "tcp"
	if p.RDMAExtensions {
		transport = "iser"
	}
	w, limited := s.Window()
	return SessionInfo{TSIH: s.TSIH(), Type: p.SessionType, Target: s.TargetName(), Initiator: s.InitiatorName(),
		InitiatorAlias: p.InitiatorAlias, ISID: s.ISID(), LoginTime: s.LoginTime(), LUNs: s.LUNs(),
		Connections: []ConnectionInfo{{Remote: s.RemoteAddr(), Transport: transport, Params: p}},
		Stats:       statsOf(s.Stats()), CmdWindow: w, QoSLimited: limited}
}

// apiFunc handles one request and returns the value to send as JSON.
type apiFunc func(r *http.Request) (any, error)

// Handler returns the admin API (under /v1/) and /metrics.
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	routes := []struct {
		pattern string
		h       apiFunc
	}{
		{"GET /v1/config", func(*http.Request) (any, error) { return m.Config(), nil }},
		{"POST /v1/reload", m.reload},
		{"GET /v1/targets", m.listTargets},
		{"POST /v1/targets", m.createTarget},
		{"GET /v1/targets/{target}", m.getTarget},
		{"PATCH /v1/targets/{target}", m.setTarget},
		{"DELETE /v1/targets/{target}", m.deleteTarget},
		{"POST /v1/targets/{target}/luns", m.addLUN},
		{"DELETE /v1/targets/{target}/luns/{lun}", m.removeLUN},
		{"POST /v1/targets/{target}/luns/{lun}/resize", m.resizeLUN},
		{"POST /v1/targets/{target}/acls", m.addACL},
		{"PUT /v1/targets/{target}/acls/{initiator}", m.putACL},
		{"DELETE /v1/targets/{target}/acls/{initiator}", m.deleteACL},
		{"PUT /v1/targets/{target}/chap", m.setTargetCHAP},
		{"DELETE /v1/targets/{target}/chap", m.clearTargetCHAP},
		{"PUT /v1/discovery/chap", m.setDiscoveryCHAP},
		{"DELETE /v1/discovery/chap", m.clearDiscoveryCHAP},
		{"GET /v1/portals", func(*http.Request) (any, error) { return m.Config().Portals, nil }},
		{"POST /v1/portals", m.addPortal},
		{"DELETE /v1/portals/{address}", m.deletePortal},
		{"GET /v1/targets/{target}/qos", m.getQoS},
		{"PUT /v1/targets/{target}/qos", m.setQoS("QoS", targetQoS)},
		{"DELETE /v1/targets/{target}/qos", m.setQoS("QoS", targetQoS)},
		{"PUT /v1/targets/{target}/initiator_qos", m.setQoS("initiator QoS", initiatorQoS)},
		{"DELETE /v1/targets/{target}/initiator_qos", m.setQoS("initiator QoS", initiatorQoS)},
		{"PUT /v1/targets/{target}/luns/{lun}/qos", m.setQoS("LUN QoS", lunQoS)},
		{"DELETE /v1/targets/{target}/luns/{lun}/qos", m.setQoS("LUN QoS", lunQoS)},
		{"PUT /v1/targets/{target}/acls/{initiator}/qos", m.setACLQoS},
		{"DELETE /v1/targets/{target}/acls/{initiator}/qos", m.setACLQoS},
		{"GET /v1/sessions", m.listSessions},
		{"GET /v1/sessions/{tsih}", m.getSession},
		{"POST /v1/sessions/{tsih}/logout", m.logoutSession},
		{"GET /v1/cluster", func(*http.Request) (any, error) { return m.ClusterStatus() }},
		{"GET /v1/rdma", func(*http.Request) (any, error) {
			if m.rdma == nil {
				return nil, fmt.Errorf("RDMA devices: %w: this server has no RDMA support", ErrNotFound)
			}
			return m.rdma(), nil
		}},
	}
	for _, rt := range routes {
		mux.HandleFunc(rt.pattern, m.serveJSON(rt.h))
	}
	mux.Handle("GET /metrics", m.metricsHandler())
	mux.HandleFunc("/", m.serveJSON(func(r *http.Request) (any, error) {
		return nil, fmt.Errorf("%s %s: %w: see the API reference in README.md", r.Method, r.URL.Path, ErrNotFound)
	}))
	return mux
}

// serveJSON runs h and writes its value or error as JSON. Request bodies
// are never logged: they may hold CHAP secrets.
func (m *Manager) serveJSON(h apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := h(r)
		status := http.StatusOK
		if err != nil {
			var internal *internalError
			switch {
			case errors.Is(err, ErrNotFound):
				status = http.StatusNotFound
			case errors.Is(err, ErrExists):
				status = http.StatusConflict
			case errors.As(err, &internal):
				status = http.StatusInternalServerError
			default:
				status = http.StatusBadRequest
			}
			v = map[string]string{"error": err.Error()}
		}
		if r.Method != http.MethodGet {
			m.log.Info("admin request", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Int("status", status))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(v)
	}
}

// decode reads a request body of exactly one JSON value into v. Unknown
// fields are errors.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		return fmt.Errorf("reading the request body: %v", err)
	}
	if len(body) > 1<<20 {
		return fmt.Errorf("request body is over 1 MiB")
	}
	return decodeBody(body, v)
}

// decodeBody decodes a request body of exactly one JSON value into v.
func decodeBody(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return fmt.Errorf("request body is not valid JSON (at byte %d): %v", syn.Offset, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return errors.New("request body is not valid JSON: it ends in the middle of a value")
		case errors.As(err, &typ):
			return fmt.Errorf("request body: field %q must be a %s, not %s", typ.Field, typ.Type, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return fmt.Errorf("request body: %s: check the field names in the API reference",
				strings.TrimPrefix(err.Error(), "json: "))
		default:
			return fmt.Errorf("request body: %v", err)
		}
	}
	if dec.More() {
		return fmt.Errorf("request body holds more than one JSON value")
	}
	return nil
}

// result describes a change that was applied and saved.
func (m *Manager) result(format string, a ...any) Result {
	return Result{Message: fmt.Sprintf(format, a...), Saved: m.path}
}

func (m *Manager) reload(*http.Request) (any, error) {
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return Result{Message: "reloaded " + m.path}, nil
}

// targetOf finds the target named in the request path in c.
func targetOf(c *Config, r *http.Request) (*TargetConfig, error) {
	name := r.PathValue("target")
	if t := c.Target(name); t != nil {
		return t, nil
	}
	return nil, fmt.Errorf("target %s: %w", name, ErrNotFound)
}

// lunOf parses the LUN number in the request path.
func lunOf(r *http.Request) (uint64, error) {
	n, err := strconv.ParseUint(r.PathValue("lun"), 10, 64)
	if err != nil || n > maxLUN {
		return 0, fmt.Errorf("LUN %q is not a number from 0 to %d", r.PathValue("lun"), maxLUN)
	}
	return n, nil
}

func (m *Manager) info(t TargetConfig) TargetInfo {
	for i := range t.LUNs {
		t.LUNs[i].Size = Size(m.LUNSize(t.Name, t.LUNs[i].LUN))
	}
	n := 0
	for _, s := range m.srv.Sessions() {
		if s.TargetName() == t.Name {
			n++
		}
	}
	return TargetInfo{TargetConfig: t, Sessions: n}
}

func (m *Manager) listTargets(*http.Request) (any, error) {
	out := []TargetInfo{}
	for _, t := range m.Config().Targets {
		out = append(out, m.info(t))
	}
	return out, nil
}

func (m *Manager) getTarget(r *http.Request) (any, error) {
	t, err := targetOf(m.Config(), r)
	if err != nil {
		return nil, err
	}
	return m.info(*t), nil
}

func (m *Manager) createTarget(r *http.Request) (any, error) {
	var t TargetConfig
	if err := decode(r, &t); err != nil {
		return nil, err
	}
	err := m.Update(func(c *Config) error {
		if c.Target(t.Name) != nil {
			return fmt.Errorf("target %s: %w: choose another name or delete it first", t.Name, ErrExists)
		}
		c.Targets = append(c.Targets, t)
		return nil
	}, false)
	if err != nil {
		return nil, err
	}
	return m.result("target %s created", t.Name), nil
}

func (m *Manager) deleteTarget(r *http.Request) (any, error) {
	name := r.PathValue("target")
	err := m.Update(func(c *Config) error {
		if _, err := targetOf(c, r); err != nil {
			return err
		}
		c.Targets = slices.DeleteFunc(c.Targets, func(t TargetConfig) bool { return t.Name == name })
		if len(c.Targets) == 0 {
			return errors.New("cannot delete the last target: create another one first")
		}
		return nil
	}, false)
	if err != nil {
		return nil, err
	}
	return m.result("target %s deleted, its sessions closed", name), nil
}

// editTarget decodes the request body into v (unless nil) and applies
// edit to the target named in the path.
func (m *Manager) editTarget(r *http.Request, v any, force bool, edit func(*TargetConfig) error) error {
	if v != nil {
		if err := decode(r, v); err != nil {
			return err
		}
	}
	return m.Update(func(c *Config) error {
		t, err := targetOf(c, r)
		if err != nil {
			return err
		}
		return edit(t)
	}, force)
}

func (m *Manager) setTarget(r *http.Request) (any, error) {
	var s TargetSettings
	err := m.editTarget(r, &s, false, func(t *TargetConfig) error {
		if s.Open != nil {
			t.Open = *s.Open
		}
		if s.MaxSessions != nil {
			t.MaxSessions = *s.MaxSessions
		}
		if s.MaxSessionsPerInitiator != nil {
			t.MaxSessionsPerInitiator = *s.MaxSessionsPerInitiator
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("target %s updated", r.PathValue("target")), nil
}

func (m *Manager) addLUN(r *http.Request) (any, error) {
	var l LUNConfig
	err := m.editTarget(r, &l, false, func(t *TargetConfig) error {
		if t.LUN(l.LUN) != nil {
			return fmt.Errorf("target %s lun %d: %w: choose a free LUN number", t.Name, l.LUN, ErrExists)
		}
		t.LUNs = append(t.LUNs, l)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("LUN %d added to %s", l.LUN, r.PathValue("target")), nil
}

func (m *Manager) removeLUN(r *http.Request) (any, error) {
	n, err := lunOf(r)
	if err != nil {
		return nil, err
	}
	err = m.editTarget(r, nil, false, func(t *TargetConfig) error {
		if t.LUN(n) == nil {
			return fmt.Errorf("target %s lun %d: %w", t.Name, n, ErrNotFound)
		}
		for _, a := range t.ACLs {
			for seen, lun := range a.LUNs {
				if lun == n {
					return fmt.Errorf("target %s lun %d is mapped as LUN %d in the ACL of %s: change that ACL first",
						t.Name, n, seen, a.Initiator)
				}
			}
		}
		t.LUNs = slices.DeleteFunc(t.LUNs, func(l LUNConfig) bool { return l.LUN == n })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("LUN %d removed from %s", n, r.PathValue("target")), nil
}

func (m *Manager) resizeLUN(r *http.Request) (any, error) {
	n, err := lunOf(r)
	if err != nil {
		return nil, err
	}
	var req ResizeRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Size <= 0 {
		return nil, fmt.Errorf("give the new size, e.g. {\"size\": \"20GiB\"}")
	}
	err = m.editTarget(r, nil, req.Force, func(t *TargetConfig) error {
		l := t.LUN(n)
		if l == nil {
			return fmt.Errorf("target %s lun %d: %w", t.Name, n, ErrNotFound)
		}
		l.Size = req.Size
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("LUN %d of %s resized to %s", n, r.PathValue("target"), req.Size), nil
}

func (m *Manager) addACL(r *http.Request) (any, error) {
	var a ACLConfig
	err := m.editTarget(r, &a, false, func(t *TargetConfig) error {
		if t.ACL(a.Initiator) != nil {
			return fmt.Errorf("target %s: ACL for %s %w: replace it with PUT (iserctl acl add --replace)", t.Name, a.Initiator, ErrExists)
		}
		t.ACLs = append(t.ACLs, a)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("%s may log in to %s", a.Initiator, r.PathValue("target")), nil
}

func (m *Manager) putACL(r *http.Request) (any, error) {
	var a ACLConfig
	initiator := r.PathValue("initiator")
	err := m.editTarget(r, &a, false, func(t *TargetConfig) error {
		if a.Initiator == "" {
			a.Initiator = initiator
		}
		if a.Initiator != initiator {
			return fmt.Errorf("the body names initiator %s but the path %s", a.Initiator, initiator)
		}
		if old := t.ACL(initiator); old != nil {
			*old = a
		} else {
			t.ACLs = append(t.ACLs, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("ACL of %s on %s set", initiator, r.PathValue("target")), nil
}

func (m *Manager) deleteACL(r *http.Request) (any, error) {
	initiator := r.PathValue("initiator")
	err := m.editTarget(r, nil, false, func(t *TargetConfig) error {
		if t.ACL(initiator) == nil {
			return fmt.Errorf("target %s: ACL for %s: %w", t.Name, initiator, ErrNotFound)
		}
		t.ACLs = slices.DeleteFunc(t.ACLs, func(a ACLConfig) bool { return a.Initiator == initiator })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.result("ACL of %s removed from %s", initiator, r.PathValue("target")), nil
}

func (m *Manager) setTargetCHAP(r *http.Request) (any, error) {
	var c CHAPConfig
	if err := m.editTarget(r, &c, false, func(t *TargetConfig) error { t.CHAP = &c; return nil }); err != nil {
		return nil, err
	}
	return m.result("CHAP credentials of %s set", r.PathValue("target")), nil
}

func (m *Manager) clearTargetCHAP(r *http.Request) (any, error) {
	if err := m.editTarget(r, nil, false, func(t *TargetConfig) error { t.CHAP = nil; return nil }); err != nil {
		return nil, err
	}
	return m.result("CHAP credentials of %s cleared", r.PathValue("target")), nil
}

func (m *Manager) setDiscoveryCHAP(r *http.Request) (any, error) {
	var c CHAPConfig
	if err := decode(r, &c); err != nil {
		return nil, err
	}
	if err := m.Update(func(cfg *Config) error { cfg.DiscoveryCHAP = &c; return nil }, false); err != nil {
		return nil, err
	}
	return m.result("discovery sessions need CHAP"), nil
}

func (m *Manager) clearDiscoveryCHAP(*http.Request) (any, error) {
	if err := m.Update(func(cfg *Config) error { cfg.DiscoveryCHAP = nil; return nil }, false); err != nil {
		return nil, err
	}
	return m.result("discovery sessions need no CHAP"), nil
}

func (m *Manager) addPortal(r *http.Request) (any, error) {
	var p PortalConfig
	if err := decode(r, &p); err != nil {
		return nil, err
	}
	err := m.Update(func(c *Config) error {
		if c.portal(p.Address) != nil {
			return fmt.Errorf("portal %s %w", p.Address, ErrExists)
		}
		c.Portals = append(c.Portals, p)
		return nil
	}, false)
	if err != nil {
		return nil, err
	}
	return m.result("listening on %s", p.Address), nil
}

func (m *Manager) deletePortal(r *http.Request) (any, error) {
	addr := r.PathValue("address")
	err := m.Update(func(c *Config) error {
		if c.portal(addr) == nil {
			return fmt.Errorf("portal %s: %w", addr, ErrNotFound)
		}
		c.Portals = slices.DeleteFunc(c.Portals, func(p PortalConfig) bool { return p.Address == addr })
		if len(c.Portals) == 0 {
			return errors.New("cannot delete the last portal: add another one first")
		}
		return nil
	}, false)
	if err != nil {
		return nil, err
	}
	return m.result("portal %s closed", addr), nil
}

func (m *Manager) listSessions(r *http.Request) (any, error) {
	target := r.URL.Query().Get("target")
	out := []SessionInfo{}
	for _, s := range m.srv.Sessions() {
		if target == "" || s.TargetName() == target {
			out = append(out, sessionInfo(s))
		}
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return int(a.TSIH) - int(b.TSIH) })
	return out, nil
}

// sessionOf finds the session named by TSIH in the request path.
func (m *Manager) sessionOf(r *http.Request) (*iscsi.Session, error) {
	n, err := strconv.ParseUint(r.PathValue("tsih"), 0, 16)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("session %q is not a TSIH from 1 to 65535 (see iserctl session list)", r.PathValue("tsih"))
	}
	s := m.srv.Session(uint16(n))
	if s == nil {
		return nil, fmt.Errorf("session %d: %w", n, ErrNotFound)
	}
	return s, nil
}

func (m *Manager) getSession(r *http.Request) (any, error) {
	s, err := m.sessionOf(r)
	if err != nil {
		return nil, err
	}
	return sessionInfo(s), nil
}

// logoutSession asks the initiator to log out within ?wait= (default
// LogoutWait), or closes the session at once with ?close=true.
func (m *Manager) logoutSession(r *http.Request) (any, error) {
	s, err := m.sessionOf(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	if c := q.Get("close"); c != "" {
		if now, err := strconv.ParseBool(c); err != nil || !now {
			return nil, fmt.Errorf("close=%q: use close=true to close the session at once", c)
		}
		s.Close()
		m.log.Info("session closed by the administrator", zap.Uint16("tsih", s.TSIH()), zap.String("initiator", s.InitiatorName()))
		return Result{Message: fmt.Sprintf("session %d closed", s.TSIH())}, nil
	}
	wait := LogoutWait
	if w := q.Get("wait"); w != "" {
		if wait, err = time.ParseDuration(w); err != nil || wait < time.Second || wait > time.Hour {
			return nil, fmt.Errorf("wait=%q is not a duration from 1s to 1h", w)
		}
	}
	s.RequestLogout(wait)
	return Result{Message: fmt.Sprintf("session %d asked to log out within %s, then closed", s.TSIH(), wait)}, nil
}

// DefaultSocket is where iserd serves the admin API.
const DefaultSocket = "/run/iserd/admin.sock"

// ErrSocketBusy means another process serves the admin socket.
var ErrSocketBusy = errors.New("another iserd serves this admin socket")

// ListenSocket creates the admin socket at path, readable and writable by
// its owner only, in a directory it creates with mode 0700 when missing.
// A stale socket left by a crash is replaced; a live one is not.
func ListenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, ErrSocketBusy)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: remove stale %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

// peerKey carries the connecting process's uid in a request context.
type peerKey struct{}

// peerUID reads the uid of the process at the other end of a unix socket.
func peerUID(c net.Conn) (uint32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, false
	}
	return cred.Uid, true
}

// ServeAPI serves the admin API on l (from ListenSocket) until ctx ends.
// Only root and the daemon's own user may use it, whatever the socket's
// permissions.
func (m *Manager) ServeAPI(ctx context.Context, l net.Listener) error {
	h := m.Handler()
	me := uint32(os.Geteuid())
	hs := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uid, ok := peerUID(c); ok {
				return context.WithValue(ctx, peerKey{}, uid)
			}
			return ctx
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if uid, ok := r.Context().Value(peerKey{}).(uint32); ok && uid != 0 && uid != me {
				http.Error(w, `{"error": "the admin API is for root only"}`, http.StatusForbidden)
				return
			}
			h.ServeHTTP(w, r)
		}),
	}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin API: %w", err)
	}
	return nil
}

// ServeMetrics serves only /metrics on l (a TCP listener) until ctx ends.
func (m *Manager) ServeMetrics(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.metricsHandler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
