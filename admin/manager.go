// Package admin runs iserd's configuration: it applies a Config to an
// iscsi.Server, changes it live (the admin API, SIGHUP reloads) without
// disturbing sessions the change does not concern, persists it atomically,
// and serves the HTTP+JSON admin API and Prometheus metrics. Client talks
// to that API over its unix socket.
package admin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/cluster/cawlock"
	"github.com/iserd/iserd/cluster/prstore"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/scsi"
)

// LogoutWait is how long a session whose access changed has to log out
// after the target asks it to, before it is closed.
const LogoutWait = 5 * time.Second

// Options configure New.
type Options struct {
	Log *zap.Logger
	// Path is the YAML file changes are saved to and Reload reads.
	Path string
	// Listen starts serving a portal of srv; closing the result stops it.
	// Nil refuses every portal.
	Listen func(srv *iscsi.Server, p PortalConfig) (io.Closer, error)
	// Override adjusts a configuration read by Reload the way the daemon's
	// command line adjusted the first one (may be nil).
	Override func(*Config)
	// RDMA reports the RDMA devices for GET /v1/rdma (nil: the API answers that this server
	// has no RDMA support).
	RDMA func() RDMAStatus
	// Cluster is this gateway's cluster node (nil: not in a cluster). Its
	// fence guards every LUN, its liveness view gives the targets their
	// ALUA port groups, and it learns the portals.
	Cluster *cluster.Node
}

// Manager owns the running configuration of an iscsi.Server. Its methods
// are safe for concurrent use; changes are serialised.
type Manager struct {
	log      *zap.Logger
	srv      *iscsi.Server
	path     string
	listen   func(*iscsi.Server, PortalConfig) (io.Closer, error)
	override func(*Config)
	rdma     func() RDMAStatus
	cluster  *cluster.Node
	prStore  *prstore.Store // the LUNs' persistent reservations in etcd, with cluster
	cawLocks *cawlock.Locks // the LUNs' COMPARE AND WRITE locks in etcd, with cluster

	mu        sync.Mutex
	sharedRev int64 // etcd revision of the cluster configuration applied (see syncShared)
	closed    bool  // Close ran: cluster changes apply no more
	cfg       *Config
	luns      map[lunKey]*liveLUN
	portals   map[string]io.Closer
	pending   *pending // between prepare and commit
}

// lunKey names a LUN of a target.
type lunKey struct {
	target string
	lun    uint64
}

// liveLUN is an open logical unit.
type liveLUN struct {
	dev  bdev.Device
	disk *scsi.Disk
}

// ErrNotFound marks errors about a target, LUN, ACL, portal or session
// that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists marks errors about something that already exists.
var ErrExists = errors.New("already exists")

// New builds the server described by cfg (which must have passed Check):
// it opens every LUN, registers the targets and starts the portals.
func New(cfg *Config, o Options) (*Manager, error) {
	opts := iscsi.DefaultOptions()
	if cfg.Limits.CmdWindow != 0 {
		opts.CmdWindow = cfg.Limits.CmdWindow
	}
	opts.PeerLimits = cfg.Limits.PeerLimits()
	if cfg.Limits.BufferMemory != 0 || cfg.Limits.BufferIdle != 0 {
		pool, err := bdev.NewPool(bdev.PoolOptions{Max: int64(cfg.Limits.BufferMemory), TrimInterval: time.Duration(cfg.Limits.BufferIdle)})
		if err != nil {
			return nil, fmt.Errorf("limits.buffer_memory: %w", err)
		}
		opts.Pool = pool
	}
	srv, err := iscsi.NewServer(o.Log, opts)
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	m := &Manager{log: o.Log, srv: srv, path: o.Path, listen: o.Listen, override: o.Override, rdma: o.RDMA, cluster: o.Cluster,
		cfg:  &Config{DataDir: cfg.DataDir, Log: cfg.Log, Limits: cfg.Limits, Metrics: cfg.Metrics, RDMA: cfg.RDMA, Cluster: cfg.Cluster},
		luns: map[lunKey]*liveLUN{}, portals: map[string]io.Closer{}}
	if m.cluster != nil {
		if m.prStore, err = prstore.New(m.cluster.Client(), cfg.Cluster.Name, m.cluster.Name(), m.cluster.LeaseID, m.cluster.Allowed); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		// A PREEMPT AND ABORT waits for a silent node's lease to expire.
		m.prStore.AbortWait = max(prstore.DefaultAbortWait, 2*time.Duration(cfg.Cluster.LeaseTTL))
		if m.cawLocks, err = cawlock.New(m.cluster, o.Log); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	m.mu.Lock()
	err = m.apply(cfg.Clone(), false)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if m.cluster != nil {
		m.cluster.OnChange(m.clusterChanged)
		m.clusterChanged()
	}
	return m, nil
}

// Server is the iSCSI server the manager configures.
func (m *Manager) Server() *iscsi.Server { return m.srv }

// Path is the file changes are saved to.
func (m *Manager) Path() string { return m.path }

// Config returns a copy of the running configuration without secrets.
func (m *Manager) Config() *Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.Redacted()
}

// LUNSize is the current capacity of a LUN in bytes, 0 when it does not
// exist.
func (m *Manager) LUNSize(target string, lun uint64) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.luns[lunKey{target, lun}]; l != nil {
		return l.dev.Size()
	}
	return 0
}

// Update applies edit to a copy of the running configuration, checks the
// result, applies the difference live and saves it. On any error the
// running configuration and the file are unchanged. force allows a LUN to
// shrink.
func (m *Manager) Update(edit func(*Config) error, force bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.cfg.Clone()
	if err := edit(next); err != nil {
		return err
	}
	if err := next.Check(); err != nil {
		return err
	}
	undo, err := m.prepare(next, force)
	if err != nil {
		return err
	}
	prevRev := m.sharedRev
	if err := m.storeShared(next); err != nil {
		undo()
		return err
	}
	if err := next.Save(m.path); err != nil {
		m.sharedRev = prevRev // etcd has it: the watch applies it again
		undo()
		return &internalError{err}
	}
	m.commit(next)
	return nil
}

// Reload reads the configuration file again and applies the difference.
// Settings that only take effect at start are reported in the log.
func (m *Manager) Reload() error {
	next, err := LoadConfig(m.path)
	if err != nil {
		return err
	}
	if m.override != nil {
		m.override(next)
		if err := next.Check(); err != nil {
			return fmt.Errorf("config %s: %w", m.path, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range restartOnly(m.cfg, next) {
		m.log.Warn("reload: this setting takes effect when iserd restarts", zap.String("setting", f))
	}
	if m.cluster != nil && !reflect.DeepEqual(next.shared(), m.cfg.shared()) {
		m.log.Warn("reload: targets, LUNs, ACLs and CHAP come from the cluster configuration in etcd; "+
			"change them with iserctl (the file's are ignored)", zap.String("config", m.path))
		next = next.withShared(m.cfg.shared())
	}
	return m.apply(next, false)
}

// restartOnly names the settings that differ between a and b and that only
// take effect at start.
func restartOnly(a, b *Config) []string {
	var out []string
	if a.DataDir != b.DataDir {
		out = append(out, "data_dir")
	}
	if a.Log != b.Log {
		out = append(out, "log")
	}
	if a.Limits != b.Limits {
		out = append(out, "limits")
	}
	if a.Metrics != b.Metrics {
		out = append(out, "metrics")
	}
	if a.RDMA != b.RDMA {
		out = append(out, "rdma")
	}
	if !reflect.DeepEqual(a.Cluster, b.Cluster) {
		out = append(out, "cluster")
	}
	for _, t := range b.Targets {
		if o := a.Target(t.Name); o != nil && o.Alias != t.Alias {
			out = append(out, "targets["+t.Name+"].alias")
		}
	}
	return out
}

// apply makes next the running configuration without saving it.
func (m *Manager) apply(next *Config, force bool) error {
	if _, err := m.prepare(next, force); err != nil {
		return err
	}
	m.commit(next)
	return nil
}

// pending holds what prepare opened or changed, for commit or undo.
type pending struct {
	opened    map[lunKey]*liveLUN
	listeners map[string]io.Closer
	resized   map[lunKey]int64 // previous sizes
}

// prepare does everything that can fail: it listens on new portals, opens
// new and replaced LUNs and resizes LUNs. Its undo reverts that. The
// caller holds m.mu.
func (m *Manager) prepare(next *Config, force bool) (undo func(), err error) {
	p := &pending{opened: map[lunKey]*liveLUN{}, listeners: map[string]io.Closer{}, resized: map[lunKey]int64{}}
	undo = func() {
		for _, l := range p.listeners {
			l.Close()
		}
		for _, l := range p.opened {
			l.disk.Close()
		}
		for k, size := range p.resized {
			if err := m.luns[k].disk.Resize(size); err != nil {
				m.log.Error("undoing a resize", zap.String("target", k.target), zap.Uint64("lun", k.lun), zap.Error(err))
			}
		}
		m.pending = nil
	}
	fail := func(err error) (func(), error) {
		undo()
		return nil, err
	}
	for _, pc := range next.Portals {
		if o := m.cfg.portal(pc.Address); o != nil {
			if o.Transport != pc.Transport {
				return fail(fmt.Errorf("portal %s: changing its transport needs a restart (or remove it and add it again)", pc.Address))
			}
			continue
		}
		if m.listen == nil {
			return fail(fmt.Errorf("portal %s: this server does not open portals", pc.Address))
		}
		l, err := m.listen(m.srv, pc)
		if err != nil {
			return fail(fmt.Errorf("portal %s: %w", pc.Address, err))
		}
		p.listeners[pc.Address] = l
	}
	var resizes []func() error
	for _, t := range next.Targets {
		old := m.cfg.Target(t.Name)
		for _, lc := range t.LUNs {
			k := lunKey{t.Name, lc.LUN}
			var ol *LUNConfig
			if old != nil {
				ol = old.LUN(lc.LUN)
			}
			live := m.luns[k]
			switch change(ol, &lc) {
			case lunSame:
				continue
			case lunResize:
				if live == nil {
					return fail(fmt.Errorf("target %s lun %d is not open: remove it and add it again", t.Name, lc.LUN))
				}
				cur, size := live.dev.Size(), int64(lc.Size)
				if size == cur {
					continue
				}
				if size < cur && !force {
					return fail(fmt.Errorf("target %s lun %d: shrinking from %s to %s drops the data beyond %s: "+
						"pass --force (API: \"force\": true) if that is intended", t.Name, lc.LUN, Size(cur), lc.Size, lc.Size))
				}
				resizes = append(resizes, func() error {
					if err := live.disk.Resize(size); err != nil {
						return fmt.Errorf("target %s lun %d: %w", t.Name, lc.LUN, err)
					}
					p.resized[k] = cur
					return nil
				})
			default:
				l, err := m.openLUN(next, t.Name, lc)
				if err != nil {
					return fail(fmt.Errorf("target %s lun %d: %w", t.Name, lc.LUN, err))
				}
				p.opened[k] = l
			}
		}
	}
	for _, r := range resizes {
		if err := r(); err != nil {
			return fail(err)
		}
	}
	m.pending = p
	return undo, nil
}

// lunChange is how a LUN differs between two configurations.
type lunChange int

const (
	lunSame    lunChange = iota
	lunResize            // only the size differs
	lunReplace           // new, or the backing store or its options differ
)

// change compares a LUN's old configuration (nil: new LUN) with its new one.
func change(old, next *LUNConfig) lunChange {
	if old == nil {
		return lunReplace
	}
	a, b := *old, *next
	a.Size, b.Size = 0, 0
	a.QoS, b.QoS = nil, nil // applied live by SetQoS
	if !reflect.DeepEqual(a, b) {
		return lunReplace
	}
	if next.Size != 0 && next.Size != old.Size {
		return lunResize
	}
	return lunSame
}

// commit applies the rest of next, after prepare, and makes it the
// running configuration. Nothing in it fails. The caller holds m.mu.
func (m *Manager) commit(next *Config) {
	p := m.pending
	m.pending = nil
	old := m.cfg
	for _, ot := range old.Targets {
		if next.Target(ot.Name) == nil {
			m.removeTarget(&ot)
		}
	}
	for i := range next.Targets {
		t := &next.Targets[i]
		if ot := old.Target(t.Name); ot != nil {
			m.updateTarget(ot, t, p)
		} else {
			m.addTarget(t, p)
		}
	}
	if !reflect.DeepEqual(old.DiscoveryCHAP, next.DiscoveryCHAP) {
		m.srv.SetDiscoveryCHAP(next.DiscoveryCHAP.secret())
		m.log.Info("discovery CHAP changed", zap.Bool("required", next.DiscoveryCHAP != nil))
	}
	for _, pc := range old.Portals {
		if next.portal(pc.Address) == nil {
			if l := m.portals[pc.Address]; l != nil {
				l.Close()
			}
			delete(m.portals, pc.Address)
			m.log.Info("portal closed", zap.String("portal", pc.Address))
		}
	}
	for a, l := range p.listeners {
		m.portals[a] = l
	}
	if m.cluster != nil && !reflect.DeepEqual(old.Portals, next.Portals) {
		m.cluster.SetPortals(next.clusterPortals())
	}
	m.cfg = next
}

// addTarget registers a new target with the LUNs prepare opened.
func (m *Manager) addTarget(t *TargetConfig, p *pending) {
	st := scsi.NewTarget(t.Name)
	for _, lc := range t.LUNs {
		k := lunKey{t.Name, lc.LUN}
		m.attach(st, k, p.opened[k])
	}
	it := &iscsi.Target{Name: t.Name, Alias: t.Alias, SCSI: st}
	it.SetAccess(t.access())
	it.SetLimits(t.limits())
	it.SetQoS(t.qos())
	if m.cluster != nil {
		m.setClusterGroups(st)
		st.OnSetPortGroups(func(states map[uint16]scsi.ALUAState) error { return m.cluster.SetPortGroupStates(t.Name, states) })
	} else {
		m.setPortGroups(st, t)
		st.OnPortGroupChange(func(gs []scsi.PortGroup) { go m.savePortGroups(t.Name, gs) })
	}
	if err := m.srv.AddTarget(it); err != nil {
		m.log.Error("adding target", zap.String("target", t.Name), zap.Error(err))
		return
	}
	m.log.Info("target added", zap.String("target", t.Name), zap.Int("luns", len(t.LUNs)), zap.Bool("open", t.Open),
		zap.Int("acls", len(t.ACLs)))
}

// setPortGroups gives a target its configured ALUA port groups.
func (m *Manager) setPortGroups(st *scsi.Target, t *TargetConfig) {
	if len(t.PortGroups) == 0 {
		return
	}
	if err := st.SetPortGroups(t.portGroups()); err != nil {
		m.log.Error("setting ALUA port groups", zap.String("target", t.Name), zap.Error(err))
	}
}

// savePortGroups records ALUA states an initiator changed with SET TARGET
// PORT GROUPS in the configuration file.
func (m *Manager) savePortGroups(target string, gs []scsi.PortGroup) {
	err := m.Update(func(c *Config) error {
		t := c.Target(target)
		if t == nil {
			return fmt.Errorf("target %s is gone", target)
		}
		for i := range t.PortGroups {
			for _, g := range gs {
				if g.ID == t.PortGroups[i].ID {
					t.PortGroups[i].State = g.State.String()
				}
			}
		}
		return nil
	}, false)
	if err != nil {
		m.log.Error("saving ALUA states", zap.String("target", target), zap.Error(err))
		return
	}
	m.log.Info("ALUA port group states saved", zap.String("target", target))
}

// attach adds an opened LUN to a SCSI target.
func (m *Manager) attach(st *scsi.Target, k lunKey, l *liveLUN) {
	if err := st.AddLUN(k.lun, l.disk); err != nil {
		m.log.Error("attaching LUN", zap.String("target", k.target), zap.Uint64("lun", k.lun), zap.Error(err))
		l.disk.Close()
		return
	}
	m.luns[k] = l
}

// removeTarget ends a target's sessions and closes its LUNs.
func (m *Manager) removeTarget(t *TargetConfig) {
	if it, err := m.srv.RemoveTarget(t.Name); err != nil {
		m.log.Error("removing target", zap.String("target", t.Name), zap.Error(err))
	} else {
		it.SetQoS(iscsi.QoS{}) // its limiters' pacers stop
	}
	for _, lc := range t.LUNs {
		m.close(lunKey{t.Name, lc.LUN})
	}
	m.log.Info("target removed", zap.String("target", t.Name))
}

// close closes a LUN that is no longer attached.
func (m *Manager) close(k lunKey) {
	if l := m.luns[k]; l != nil {
		if err := l.disk.Close(); err != nil {
			m.log.Error("closing LUN", zap.String("target", k.target), zap.Uint64("lun", k.lun), zap.Error(err))
		}
	}
	delete(m.luns, k)
}

// updateTarget applies LUN, access and limit changes to a live target.
func (m *Manager) updateTarget(old, t *TargetConfig, p *pending) {
	it := m.srv.Target(t.Name)
	if it == nil {
		m.log.Error("target vanished from the server", zap.String("target", t.Name))
		return
	}
	for _, lc := range old.LUNs {
		k := lunKey{t.Name, lc.LUN}
		if t.LUN(lc.LUN) != nil && p.opened[k] == nil {
			continue
		}
		if _, err := it.SCSI.RemoveLUN(lc.LUN); err != nil {
			m.log.Error("removing LUN", zap.String("target", t.Name), zap.Uint64("lun", lc.LUN), zap.Error(err))
		}
		m.close(k)
		m.log.Info("LUN removed", zap.String("target", t.Name), zap.Uint64("lun", lc.LUN))
	}
	for _, lc := range t.LUNs {
		k := lunKey{t.Name, lc.LUN}
		if l := p.opened[k]; l != nil {
			m.attach(it.SCSI, k, l)
			m.log.Info("LUN added", zap.String("target", t.Name), zap.Uint64("lun", lc.LUN), zap.Int64("bytes", l.dev.Size()))
		} else if _, ok := p.resized[k]; ok {
			m.log.Info("LUN resized", zap.String("target", t.Name), zap.Uint64("lun", lc.LUN), zap.Int64("bytes", int64(lc.Size)))
		}
	}
	it.SetLimits(t.limits())
	if q := t.qos(); !reflect.DeepEqual(old.qos(), q) {
		it.SetQoS(q)
		m.log.Info("QoS changed", zap.String("target", t.Name))
	}
	if !reflect.DeepEqual(old.PortGroups, t.PortGroups) {
		m.setPortGroups(it.SCSI, t)
	}
	if reflect.DeepEqual(old.access(), t.access()) {
		return
	}
	it.SetAccess(t.access())
	m.log.Info("access changed", zap.String("target", t.Name), zap.Bool("open", t.Open), zap.Int("acls", len(t.ACLs)))
	for _, s := range m.srv.Sessions() {
		if s.TargetName() != t.Name || reflect.DeepEqual(old.grant(s.InitiatorName()), t.grant(s.InitiatorName())) {
			continue
		}
		m.log.Info("the session's access changed: asking it to log out", zap.String("target", t.Name),
			zap.String("initiator", s.InitiatorName()), zap.Uint16("tsih", s.TSIH()))
		s.RequestLogout(LogoutWait)
	}
}

// grant is what an initiator may do on a target: nil when it may not log in.
type grant struct {
	luns     map[uint64]uint64
	readOnly bool
}

// grant returns the initiator's access, ignoring CHAP (a session that
// authenticated keeps running when credentials change).
func (t *TargetConfig) grant(initiator string) *grant {
	if a := t.ACL(initiator); a != nil {
		g := &grant{readOnly: a.ReadOnly}
		if len(a.LUNs) > 0 {
			g.luns = a.LUNs
		}
		return g
	}
	if t.Open {
		return &grant{}
	}
	return nil
}

// limits converts the target's session limits.
func (t *TargetConfig) limits() iscsi.Limits {
	return iscsi.Limits{MaxSessions: t.MaxSessions, MaxSessionsPerInitiator: t.MaxSessionsPerInitiator}
}

// portal returns the portal with that address, or nil.
func (c *Config) portal(addr string) *PortalConfig {
	for i := range c.Portals {
		if c.Portals[i].Address == addr {
			return &c.Portals[i]
		}
	}
	return nil
}

// Close stops the portals and closes every LUN; call it after the server
// has shut down.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var errs []error
	for a, l := range m.portals {
		l.Close()
		delete(m.portals, a)
	}
	for _, t := range m.srv.Targets() {
		t.SetQoS(iscsi.QoS{})
	}
	for k, l := range m.luns {
		if err := l.disk.Close(); err != nil {
			errs = append(errs, fmt.Errorf("target %s lun %d: %w", k.target, k.lun, err))
		}
		delete(m.luns, k)
	}
	return errors.Join(errs...)
}

// internalError marks a failure of the daemon rather than of the request.
type internalError struct{ err error }

func (e *internalError) Error() string { return e.err.Error() }
func (e *internalError) Unwrap() error { return e.err }

// openLUN opens the backing store of one LUN and wraps it in a SCSI disk.
func (m *Manager) openLUN(cfg *Config, target string, lc LUNConfig) (*liveLUN, error) {
	var dev bdev.Device
	switch lc.Backend {
	case "memory":
		dev = bdev.NewMemory(int64(lc.Size))
	default:
		path := cfg.resolve(lc.Path)
		if err := checkPath(path, lc, !filepath.IsAbs(lc.Path)); err != nil {
			return nil, err
		}
		fo := bdev.FileOptions{Size: int64(lc.Size), ReadOnly: lc.ReadOnly, Create: lc.Size > 0}
		f, err := m.openFile(path, fo, lc)
		if err != nil {
			return nil, err
		}
		dev = f
	}
	stateDir := cfg.resolve("state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		dev.Close()
		return nil, fmt.Errorf("state directory for persistent reservations and sanitize: %w", err)
	}
	dc := diskConfig(target, lc, stateDir)
	if m.cluster != nil {
		dc.Fence = m.cluster
		dc.PRStore = m.prStore.LUN(dc.NAA)
		dc.CAWLock = m.cawLocks.LUN(dc.NAA)
	}
	disk, err := scsi.NewDisk(dev, dc)
	if err != nil {
		dev.Close()
		return nil, err
	}
	return &liveLUN{dev: dev, disk: disk}, nil
}

// diskConfig is the SCSI side of a LUN's configuration.
func diskConfig(target string, lc LUNConfig, stateDir string) scsi.DiskConfig {
	return scsi.DiskConfig{BlockSize: lc.BlockSize, PhysicalBlockSize: lc.PhysicalBlockSize, ReadOnly: lc.ReadOnly,
		Thin: *lc.Thin, Serial: lc.Serial, NAA: naaFor(target, lc.LUN), StateDir: stateDir,
		SanitizeRate: int64(lc.SanitizeRate)}
}

// checkPath rejects a backing store path that cannot serve the LUN, with
// a message that says what to do. Missing directories are created for
// paths relative to the data directory.
func checkPath(path string, lc LUNConfig, relative bool) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if lc.Size == 0 {
			return fmt.Errorf("backing store %s does not exist: give the LUN a size to create it", path)
		}
		if lc.ReadOnly {
			return fmt.Errorf("backing store %s does not exist, and a read-only LUN cannot create it", path)
		}
		dir := filepath.Dir(path)
		if relative {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("create data directory: %w", err)
			}
		} else if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("directory %s of the backing store does not exist: create it first", dir)
		}
		return nil
	case err != nil:
		return fmt.Errorf("backing store: %w", err)
	case st.IsDir():
		return fmt.Errorf("backing store %s is a directory: give a file or block device path", path)
	case st.Mode().IsRegular():
		if lc.Size == 0 && st.Size() < int64(lc.BlockSize) {
			return fmt.Errorf("backing store %s holds %d bytes, less than one %d-byte block: give the LUN a size",
				path, st.Size(), lc.BlockSize)
		}
		return nil
	case st.Mode()&os.ModeDevice != 0:
		return checkDevice(path, lc)
	default:
		return fmt.Errorf("backing store %s is neither a regular file nor a block device", path)
	}
}

// checkDevice rejects a block device smaller than the LUN's size.
func checkDevice(path string, lc LUNConfig) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("backing store: %w", err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of block device %s: %w", path, err)
	}
	if int64(lc.Size) > n {
		return fmt.Errorf("block device %s holds %s, less than the %s asked: give a smaller size or none", path, Size(n), lc.Size)
	}
	return nil
}

// openFile opens a file or block device with io_uring, or with the thread
// pool when io_uring is not wanted or the kernel refuses it. In a cluster
// the store is opened for direct I/O only, and refused when it cannot be.
func (m *Manager) openFile(path string, fo bdev.FileOptions, lc LUNConfig) (bdev.Device, error) {
	if lc.IO != "threads" {
		shared := m.cluster != nil
		u, err := bdev.NewUring(path, bdev.UringOptions{FileOptions: fo, Pool: m.srv.Pool(), Buffered: !lc.Direct,
			DirectOnly: shared, Log: m.log})
		if err == nil && shared {
			if _, _, align := u.Direct(); align > int(lc.BlockSize) {
				u.Close()
				return nil, fmt.Errorf("backing store %s needs direct I/O aligned to %d bytes, more than the LUN's %d-byte blocks: "+
					"give the LUN block_size: %d", path, align, lc.BlockSize, align)
			}
		}
		if err == nil {
			return u, nil
		}
		if !errors.Is(err, bdev.ErrNoUring) {
			return nil, err
		}
		if shared {
			return nil, fmt.Errorf("a cluster LUN is served through io_uring with O_DIRECT only: %w", err)
		}
		m.log.Warn("io_uring unavailable: using the thread pool backend", zap.String("path", path), zap.Error(err))
	}
	return bdev.NewFile(path, fo)
}

// naaFor derives a stable identifier from the target name and LUN, so a
// LUN keeps its WWN across restarts.
func naaFor(target string, lun uint64) uint64 {
	h := uint64(14695981039346656037)
	for _, b := range []byte(target) {
		h = (h ^ uint64(b)) * 1099511628211
	}
	return h ^ lun*0x9e3779b97f4a7c15
}
