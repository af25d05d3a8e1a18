package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/scsi"
)

// Config is the daemon's configuration: the YAML file iserd reads and the
// model the admin API edits. The JSON field names are the YAML ones.
type Config struct {
	// DataDir holds relative LUN paths and state files.
	DataDir string         `yaml:"data_dir" json:"data_dir"`
	Portals []PortalConfig `yaml:"portals" json:"portals"`
	Targets []TargetConfig `yaml:"targets" json:"targets"`
	Log     LogConfig      `yaml:"log" json:"log"`
	// DiscoveryCHAP, when set, is required from discovery sessions.
	DiscoveryCHAP *CHAPConfig `yaml:"discovery_chap,omitempty" json:"discovery_chap,omitempty"`
	// Limits bound the resources of the whole daemon.
	Limits LimitsConfig `yaml:"limits,omitempty" json:"limits"`
	// Metrics optionally serves /metrics on a TCP address too.
	Metrics MetricsConfig `yaml:"metrics,omitempty" json:"metrics"`
	// RDMA says how iSER portals drive their RDMA devices. It takes effect at start.
	RDMA RDMAConfig `yaml:"rdma,omitempty" json:"rdma"`
	// Cluster, when set, makes this gateway one node of a cluster.
	Cluster *ClusterConfig `yaml:"cluster,omitempty" json:"cluster,omitempty"`
}

// RDMAConfig chooses the RDMA provider.
type RDMAConfig struct {
	// Provider is auto (default: the native provider where iserd has one for the device's
	// driver, i.e. rxe, else libibverbs), native (kernel ABI only), or libibverbs (every device
	// through libibverbs.so.1 and rdma-core's user-space providers: mlx5, bnxt_re, irdma, efa...).
	Provider string `yaml:"provider,omitempty" json:"provider,omitempty"`
}

// rdmaProviders are the values RDMAConfig.Provider takes.
var rdmaProviders = []string{"", "auto", "native", "libibverbs"}

// LimitsConfig bounds daemon-wide resources. They take effect at start.
type LimitsConfig struct {
	// BufferMemory caps the memory mapped for command data buffers
	// (default 1GiB); a command that finds the pool exhausted gets BUSY.
	BufferMemory Size `yaml:"buffer_memory,omitempty" json:"buffer_memory,omitempty"`
	// BufferIdle is how long a buffer region stays mapped unused before it
	// is given back to the system (default 30s).
	BufferIdle Duration `yaml:"buffer_idle,omitempty" json:"buffer_idle,omitempty"`
	// CmdWindow is how many commands one session may have outstanding
	// (the MaxCmdSN window, default 128).
	CmdWindow uint32 `yaml:"cmd_window,omitempty" json:"cmd_window,omitempty"`
	// The rest bound what one initiator can make iserd hold (see
	// iscsi.PeerLimits; zero takes its default).
	// Connections caps all iSCSI connections, logged in or not (4096).
	Connections int `yaml:"connections,omitempty" json:"connections,omitempty"`
	// LoginConnections caps the connections still logging in (64), and
	// LoginConnectionsPerHost those from one IP address (16).
	LoginConnections        int `yaml:"login_connections,omitempty" json:"login_connections,omitempty"`
	LoginConnectionsPerHost int `yaml:"login_connections_per_host,omitempty" json:"login_connections_per_host,omitempty"`
	// HeldBytes caps the data of commands a session holds behind a CmdSN
	// gap (4MiB).
	HeldBytes Size `yaml:"held_bytes,omitempty" json:"held_bytes,omitempty"`
	// QueuedControl caps the answers queued on a connection that no task
	// accounts for: NOP-In echoes, Rejects, Text and TMF responses (1MiB).
	QueuedControl Size `yaml:"queued_control,omitempty" json:"queued_control,omitempty"`
	// ImmediateTasks is how many immediate commands a session may have in
	// flight beyond its window (16).
	ImmediateTasks int `yaml:"immediate_tasks,omitempty" json:"immediate_tasks,omitempty"`
	// AbortDataTimeout is how long task management waits for Data-Out an
	// initiator owes for an aborted task before closing its connection (10s).
	AbortDataTimeout Duration `yaml:"abort_data_timeout,omitempty" json:"abort_data_timeout,omitempty"`
}

// PeerLimits are the iscsi.PeerLimits the configuration sets; zero fields
// take the defaults.
func (l LimitsConfig) PeerLimits() iscsi.PeerLimits {
	return iscsi.PeerLimits{Connections: l.Connections, LoginConns: l.LoginConnections,
		LoginConnsPerHost: l.LoginConnectionsPerHost, HeldBytes: int(l.HeldBytes), QueuedControl: int(l.QueuedControl),
		ImmediateTasks: l.ImmediateTasks, AbortDataTimeout: time.Duration(l.AbortDataTimeout)}
}

// check validates the limits.
func (l LimitsConfig) check() error {
	if m := l.BufferMemory; m != 0 && m < bdev.DefaultRegionSize {
		return fmt.Errorf("limits.buffer_memory %s is below one buffer region (%s)", m, Size(bdev.DefaultRegionSize))
	}
	if w := l.CmdWindow; w > 65535 {
		return fmt.Errorf("limits.cmd_window %d is above 65535", w)
	}
	for _, f := range []struct {
		name string
		v    int64
		max  int64
	}{
		{"connections", int64(l.Connections), 1 << 20},
		{"login_connections", int64(l.LoginConnections), 1 << 16},
		{"login_connections_per_host", int64(l.LoginConnectionsPerHost), 1 << 16},
		{"held_bytes", int64(l.HeldBytes), 1 << 30},
		{"queued_control", int64(l.QueuedControl), 1 << 30},
		{"immediate_tasks", int64(l.ImmediateTasks), 1 << 16},
		{"abort_data_timeout", int64(l.AbortDataTimeout), int64(time.Hour)},
		{"buffer_idle", int64(l.BufferIdle), int64(24 * time.Hour)},
	} {
		if f.v < 0 || f.v > f.max {
			return fmt.Errorf("limits.%s %d is outside 0..%d (0 takes the default)", f.name, f.v, f.max)
		}
	}
	if l.LoginConnectionsPerHost > 0 && l.LoginConnections > 0 && l.LoginConnectionsPerHost > l.LoginConnections {
		return fmt.Errorf("limits.login_connections_per_host %d is above limits.login_connections %d",
			l.LoginConnectionsPerHost, l.LoginConnections)
	}
	return nil
}

// Duration is a time span written as Go writes durations: 10s, 1m30s.
type Duration time.Duration

// UnmarshalYAML reads a duration such as 10s.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as 10s.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalJSON accepts "10s" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		var ns int64
		if err := json.Unmarshal(b, &ns); err != nil {
			return fmt.Errorf("duration %s: want a string such as \"10s\"", b)
		}
		*d = Duration(ns)
		return nil
	}
	v, err := time.ParseDuration(str)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as "10s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// MetricsConfig places the Prometheus endpoint on a TCP address, in
// addition to the admin socket.
type MetricsConfig struct {
	Address string `yaml:"address,omitempty" json:"address,omitempty"` // host:port
}

// CHAPConfig holds CHAP credentials; mutual_* authenticate the target too.
// The admin API accepts secrets but never returns them.
type CHAPConfig struct {
	User         string `yaml:"user" json:"user"`
	Secret       string `yaml:"secret,omitempty" json:"secret,omitempty"`
	MutualUser   string `yaml:"mutual_user,omitempty" json:"mutual_user,omitempty"`
	MutualSecret string `yaml:"mutual_secret,omitempty" json:"mutual_secret,omitempty"`
}

// ACLConfig lets one initiator in.
type ACLConfig struct {
	Initiator string `yaml:"initiator" json:"initiator"`
	// LUNs maps the LUN numbers the initiator sees to the target's; empty
	// shows every LUN under its own number.
	LUNs     map[uint64]uint64 `yaml:"luns,omitempty" json:"luns,omitempty"`
	ReadOnly bool              `yaml:"read_only,omitempty" json:"read_only,omitempty"`
	CHAP     *CHAPConfig       `yaml:"chap,omitempty" json:"chap,omitempty"`
	// QoS limits this initiator's sessions together, in place of the
	// target's initiator_qos.
	QoS *QoSConfig `yaml:"qos,omitempty" json:"qos,omitempty"`
	// Weight is each of this initiator's sessions' share of the target's
	// and LUNs' limits when initiators contend for them (default 1).
	Weight int `yaml:"weight,omitempty" json:"weight,omitempty"`
}

// PortalConfig is one listening address.
type PortalConfig struct {
	Address string `yaml:"address" json:"address"` // host:port
	// Transport is tcp (default), iser, or both: iSER listens through
	// rdma_cm on the same address and port as TCP.
	Transport string `yaml:"transport,omitempty" json:"transport,omitempty"`
	// TPGT is the portal's target portal group tag (default 1). Each tag
	// is one SCSI target port; ALUA port groups are made of tags.
	TPGT uint16 `yaml:"tpgt,omitempty" json:"tpgt,omitempty"`
}

// TCP and ISER report which listeners a portal needs.
func (p PortalConfig) TCP() bool { return p.Transport != "iser" }

// ISER reports whether the portal listens for iSER (RDMA) connections.
func (p PortalConfig) ISER() bool { return p.Transport == "iser" || p.Transport == "both" }

// TargetConfig is one iSCSI target.
type TargetConfig struct {
	Name  string      `yaml:"name" json:"name"`
	Alias string      `yaml:"alias,omitempty" json:"alias,omitempty"`
	LUNs  []LUNConfig `yaml:"luns" json:"luns"`
	// Open lets every initiator in (demo mode). Without it only the
	// initiators in ACLs may log in.
	Open bool        `yaml:"open,omitempty" json:"open,omitempty"`
	CHAP *CHAPConfig `yaml:"chap,omitempty" json:"chap,omitempty"`
	ACLs []ACLConfig `yaml:"acls,omitempty" json:"acls,omitempty"`
	// MaxSessions and MaxSessionsPerInitiator refuse logins beyond them
	// with status 0206; zero means no limit.
	MaxSessions             int `yaml:"max_sessions,omitempty" json:"max_sessions,omitempty"`
	MaxSessionsPerInitiator int `yaml:"max_sessions_per_initiator,omitempty" json:"max_sessions_per_initiator,omitempty"`
	// PortGroups are the ALUA target port groups; without them every
	// port is active/optimized.
	PortGroups []PortGroupConfig `yaml:"port_groups,omitempty" json:"port_groups,omitempty"`
	// QoS limits all sessions of the target together; InitiatorQoS limits
	// each initiator without a qos block in its ACL entry.
	QoS          *QoSConfig `yaml:"qos,omitempty" json:"qos,omitempty"`
	InitiatorQoS *QoSConfig `yaml:"initiator_qos,omitempty" json:"initiator_qos,omitempty"`
}

// PortGroupConfig is one ALUA target port group.
type PortGroupConfig struct {
	ID uint16 `yaml:"id" json:"id"`
	// State is active/optimized, active/non-optimized, standby,
	// unavailable or transitioning. SET TARGET PORT GROUPS from an
	// initiator changes it, and the change is saved here.
	State     string `yaml:"state" json:"state"`
	Preferred bool   `yaml:"preferred,omitempty" json:"preferred,omitempty"`
	// TPGTs are the portal group tags (SCSI target ports) in the group.
	TPGTs []uint16 `yaml:"tpgts" json:"tpgts"`
}

// portGroups converts the configuration to the SCSI layer's form.
func (t *TargetConfig) portGroups() []scsi.PortGroup {
	var out []scsi.PortGroup
	for _, g := range t.PortGroups {
		st, _ := scsi.ParseALUAState(g.State) // checked by Check
		out = append(out, scsi.PortGroup{ID: g.ID, State: st, Preferred: g.Preferred, Ports: g.TPGTs})
	}
	return out
}

// checkPortGroups validates ALUA port groups.
func (t *TargetConfig) checkPortGroups() error {
	ids, ports := map[uint16]bool{}, map[uint16]uint16{}
	for i, g := range t.PortGroups {
		if g.ID == 0 {
			return fmt.Errorf("port_groups[%d]: id must be 1 or more", i)
		}
		if ids[g.ID] {
			return fmt.Errorf("port_groups[%d]: id %d is used twice", i, g.ID)
		}
		ids[g.ID] = true
		if _, err := scsi.ParseALUAState(g.State); err != nil {
			return fmt.Errorf("port_groups[%d]: %w", i, err)
		}
		if len(g.TPGTs) == 0 {
			return fmt.Errorf("port_groups[%d]: list the portal group tags (tpgts) in the group", i)
		}
		for _, p := range g.TPGTs {
			if other, dup := ports[p]; dup {
				return fmt.Errorf("port_groups[%d]: tpgt %d is already in group %d", i, p, other)
			}
			ports[p] = g.ID
		}
	}
	return nil
}

// LUNConfig is one logical unit.
type LUNConfig struct {
	LUN     uint64 `yaml:"lun" json:"lun"`
	Backend string `yaml:"backend,omitempty" json:"backend,omitempty"` // file (default) or memory
	// IO selects how a file backend is driven: uring (default; falls back
	// to threads when the kernel refuses io_uring) or threads.
	IO string `yaml:"io,omitempty" json:"io,omitempty"`
	// Direct opens the file with O_DIRECT, bypassing the page cache.
	Direct    bool   `yaml:"direct,omitempty" json:"direct,omitempty"`
	Path      string `yaml:"path,omitempty" json:"path,omitempty"`
	Size      Size   `yaml:"size,omitempty" json:"size,omitempty"`
	BlockSize uint32 `yaml:"block_size,omitempty" json:"block_size,omitempty"`
	// PhysicalBlockSize is the physical block size the LUN reports (READ
	// CAPACITY (16), Block Limits VPD page): a power of two from
	// block_size to 64KiB; absent: block_size.
	PhysicalBlockSize uint32 `yaml:"physical_block_size,omitempty" json:"physical_block_size,omitempty"`
	Thin              *bool  `yaml:"thin,omitempty" json:"thin,omitempty"`
	ReadOnly          bool   `yaml:"read_only,omitempty" json:"read_only,omitempty"`
	Serial            string `yaml:"serial,omitempty" json:"serial,omitempty"`
	// SanitizeRate bounds SANITIZE OVERWRITE to this many bytes per second
	// so that it runs as long as on a disk; absent: as fast as the backing
	// store allows.
	SanitizeRate Size `yaml:"sanitize_rate,omitempty" json:"sanitize_rate,omitempty"`
	// QoS limits the LUN over all sessions.
	QoS *QoSConfig `yaml:"qos,omitempty" json:"qos,omitempty"`
}

// LogConfig selects log verbosity and format.
type LogConfig struct {
	Level  string `yaml:"level,omitempty" json:"level,omitempty"`   // debug, info, warn, error
	Format string `yaml:"format,omitempty" json:"format,omitempty"` // console or json
}

// Size is a byte count written as a number with an optional unit
// (K, M, G, T with or without "iB").
type Size int64

// UnmarshalYAML reads sizes such as 1GiB, 512M or 1048576.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = Size(v)
	return nil
}

// MarshalYAML writes the size with the largest binary unit that divides it.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// UnmarshalJSON accepts a number of bytes or a string such as "1GiB".
func (s *Size) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		str = string(b)
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// String formats the size as 1GiB, 512MiB or a plain byte count.
func (s Size) String() string {
	for _, u := range sizeUnits[:4] {
		if s != 0 && int64(s)%u.m == 0 {
			return strconv.FormatInt(int64(s)/u.m, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

var sizeUnits = []struct {
	suffix string
	m      int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}}

// ParseSize parses a byte count with an optional binary unit suffix.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is not a byte count such as 1GiB, 512MiB or 4096", s)
	}
	return v * mult, nil
}

// DefaultConfig is the embedded zero-config target: one thin 1 GiB LUN on
// 127.0.0.1:3260.
func DefaultConfig() *Config {
	thin := true
	return &Config{
		DataDir: "data",
		Portals: []PortalConfig{{Address: "127.0.0.1:3260"}},
		Targets: []TargetConfig{{
			Name: "iqn.2026-11.org.iserd:disk0",
			Open: true,
			LUNs: []LUNConfig{{LUN: 0, Path: "lun0.img", Size: 1 << 30, BlockSize: 512, Thin: &thin}},
		}},
		Log: LogConfig{Level: "info", Format: "console"},
	}
}

// LoadConfig reads and checks a YAML file (JSON, a subset of YAML, works
// too). Unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := parseConfig(raw, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// parseConfig decodes and checks the text of a configuration file; dir is
// the data directory when the file names none.
func parseConfig(raw []byte, dir string) (*Config, error) {
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) { // an empty file is an empty config
		return nil, err
	}
	if cfg.DataDir == "" {
		cfg.DataDir = dir
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Save writes the configuration to path atomically: a temporary file in
// the same directory, fsync, rename over path, fsync of the directory. A
// crash leaves either the old file or the new one. The file holds CHAP
// secrets, so it is readable by its owner only.
func (c *Config) Save(path string) error {
	raw, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("save config %s: %w", path, err)
	}
	head := "# Written by iserd's admin API; edit it and send SIGHUP (or run iserctl reload) to apply.\n"
	if _, err := f.WriteString(head); err != nil {
		return fail(err)
	}
	if _, err := f.Write(raw); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save config %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save config %s: open directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save config %s: sync directory: %w", path, err)
	}
	return nil
}

// Clone returns a deep copy.
func (c *Config) Clone() *Config {
	raw, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("config clone: %v", err)) // every field is plain data
	}
	out := &Config{}
	if err := json.Unmarshal(raw, out); err != nil {
		panic(fmt.Sprintf("config clone: %v", err))
	}
	return out
}

// Redacted returns a deep copy without CHAP secrets, for display.
func (c *Config) Redacted() *Config {
	out := c.Clone()
	out.DiscoveryCHAP.redact()
	for i := range out.Targets {
		out.Targets[i].redact()
	}
	return out
}

// redact blanks the target's secrets in place.
func (t *TargetConfig) redact() {
	t.CHAP.redact()
	for j := range t.ACLs {
		t.ACLs[j].CHAP.redact()
	}
}

func (c *CHAPConfig) redact() {
	if c != nil {
		c.Secret, c.MutualSecret = "", ""
	}
}

// Target returns the target named name, or nil.
func (c *Config) Target(name string) *TargetConfig {
	for i := range c.Targets {
		if c.Targets[i].Name == name {
			return &c.Targets[i]
		}
	}
	return nil
}

// LUN returns the LUN numbered n, or nil.
func (t *TargetConfig) LUN(n uint64) *LUNConfig {
	for i := range t.LUNs {
		if t.LUNs[i].LUN == n {
			return &t.LUNs[i]
		}
	}
	return nil
}

// ACL returns the ACL of initiator, or nil.
func (t *TargetConfig) ACL(initiator string) *ACLConfig {
	for i := range t.ACLs {
		if t.ACLs[i].Initiator == initiator {
			return &t.ACLs[i]
		}
	}
	return nil
}

// maxLUN is the largest LUN number REPORT LUNS encodes.
const maxLUN = 16383

// Check validates the configuration and fills defaults.
func (c *Config) Check() error {
	if !slices.Contains(rdmaProviders, c.RDMA.Provider) {
		return fmt.Errorf("rdma.provider %q is not auto, native or libibverbs", c.RDMA.Provider)
	}
	if len(c.Portals) == 0 {
		c.Portals = []PortalConfig{{Address: "127.0.0.1:3260"}}
	}
	seenPortal := map[string]bool{}
	for i, p := range c.Portals {
		if err := p.check(); err != nil {
			return fmt.Errorf("portals[%d]: %w", i, err)
		}
		if seenPortal[p.Address] {
			return fmt.Errorf("portals[%d]: address %s is listed twice", i, p.Address)
		}
		seenPortal[p.Address] = true
	}
	if len(c.Targets) == 0 {
		return errors.New("no targets: add at least one under the targets key")
	}
	names := map[string]bool{}
	paths := map[string]string{}
	for i := range c.Targets {
		t := &c.Targets[i]
		if err := iscsi.ValidName(t.Name); err != nil {
			return fmt.Errorf("targets[%d].name: %w", i, err)
		}
		if err := iscsi.ValidTextValue(t.Alias); err != nil {
			return fmt.Errorf("targets[%d].alias: %w", i, err)
		}
		if names[t.Name] {
			return fmt.Errorf("targets[%d]: target %s is declared twice", i, t.Name)
		}
		names[t.Name] = true
		luns := map[uint64]bool{}
		for j := range t.LUNs {
			l := &t.LUNs[j]
			where := fmt.Sprintf("target %s lun %d", t.Name, l.LUN)
			if luns[l.LUN] {
				return fmt.Errorf("%s: LUN number used twice: choose a free number", where)
			}
			luns[l.LUN] = true
			if err := l.check(); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if l.Backend == "file" {
				p := c.resolve(l.Path)
				if other, dup := paths[p]; dup {
					return fmt.Errorf("%s: path %s is already the backing store of %s", where, l.Path, other)
				}
				paths[p] = where
			}
		}
		if err := t.checkAccess(); err != nil {
			return fmt.Errorf("targets[%d] (%s): %w", i, t.Name, err)
		}
		if err := t.checkPortGroups(); err != nil {
			return fmt.Errorf("targets[%d] (%s): %w", i, t.Name, err)
		}
		if err := t.checkQoS(); err != nil {
			return fmt.Errorf("targets[%d] (%s): %w", i, t.Name, err)
		}
		if t.MaxSessions < 0 || t.MaxSessionsPerInitiator < 0 {
			return fmt.Errorf("targets[%d] (%s): session limits cannot be negative (0 means no limit)", i, t.Name)
		}
	}
	if c.DiscoveryCHAP != nil {
		if err := c.DiscoveryCHAP.secret().Check(); err != nil {
			return fmt.Errorf("discovery_chap: %w", err)
		}
	}
	if err := c.Limits.check(); err != nil {
		return err
	}
	if a := c.Metrics.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("metrics.address %q is not host:port (e.g. 127.0.0.1:9120)", a)
		}
	}
	return c.checkCluster()
}

// resolve makes a LUN path absolute against the data directory.
func (c *Config) resolve(path string) string {
	if filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(c.DataDir, path)
}

// check validates one portal.
func (p PortalConfig) check() error {
	host, port, err := net.SplitHostPort(p.Address)
	if err != nil {
		return fmt.Errorf("address %q is not host:port (e.g. 0.0.0.0:3260)", p.Address)
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	switch p.Transport {
	case "", "tcp", "iser", "both":
	default:
		return fmt.Errorf("transport %q is not tcp, iser or both", p.Transport)
	}
	if p.ISER() && (host == "" || net.ParseIP(host).IsUnspecified()) {
		return fmt.Errorf("an iSER portal needs the address of an RDMA device, not %q", host)
	}
	return nil
}

// check validates one LUN and fills its defaults.
func (l *LUNConfig) check() error {
	if l.LUN > maxLUN {
		return fmt.Errorf("LUN numbers go from 0 to %d", maxLUN)
	}
	if l.BlockSize == 0 {
		l.BlockSize = 512
	}
	if l.BlockSize != 512 && l.BlockSize != 4096 {
		return fmt.Errorf("block_size %d is neither 512 nor 4096", l.BlockSize)
	}
	if l.PhysicalBlockSize != 0 {
		if err := scsi.CheckPhysicalBlockSize(l.BlockSize, l.PhysicalBlockSize); err != nil {
			return fmt.Errorf("physical_block_size: %w", err)
		}
	}
	if l.Thin == nil {
		thin := true
		l.Thin = &thin
	}
	switch l.Backend {
	case "", "file":
		l.Backend = "file"
		if l.Path == "" {
			return errors.New("path is required for a file backend")
		}
		switch l.IO {
		case "", "uring", "threads":
		default:
			return fmt.Errorf("io %q is neither uring nor threads", l.IO)
		}
	case "memory":
		if l.Size == 0 {
			return errors.New("a memory backend needs a size")
		}
		if l.Path != "" || l.IO != "" || l.Direct {
			return errors.New("path, io and direct apply to file backends only")
		}
	default:
		return fmt.Errorf("backend %q is neither file nor memory", l.Backend)
	}
	if l.Size < 0 {
		return fmt.Errorf("size %d is negative", l.Size)
	}
	if err := scsi.CheckSerial(l.Serial); err != nil {
		return err
	}
	if l.Size != 0 && int64(l.Size)%int64(l.BlockSize) != 0 {
		return fmt.Errorf("size %d is not a multiple of the block size %d", l.Size, l.BlockSize)
	}
	return nil
}

// checkAccess validates a target's ACLs and CHAP settings.
func (t *TargetConfig) checkAccess() error {
	if t.CHAP != nil {
		if err := t.CHAP.secret().Check(); err != nil {
			return fmt.Errorf("chap: %w", err)
		}
	}
	seen := map[string]bool{}
	for i, a := range t.ACLs {
		if err := iscsi.ValidName(a.Initiator); err != nil {
			return fmt.Errorf("acls[%d].initiator: %w", i, err)
		}
		if seen[a.Initiator] {
			return fmt.Errorf("acls[%d]: initiator %s listed twice", i, a.Initiator)
		}
		seen[a.Initiator] = true
		for visible, lun := range a.LUNs {
			if visible > maxLUN {
				return fmt.Errorf("acls[%d] (%s): initiator LUN %d is above %d", i, a.Initiator, visible, maxLUN)
			}
			if t.LUN(lun) == nil {
				return fmt.Errorf("acls[%d] (%s): maps LUN %d to target LUN %d, which does not exist: add the LUN or change the map",
					i, a.Initiator, visible, lun)
			}
		}
		if a.CHAP != nil {
			if err := a.CHAP.secret().Check(); err != nil {
				return fmt.Errorf("acls[%d].chap: %w", i, err)
			}
		}
	}
	return nil
}

// secret converts the YAML form to the protocol's.
func (c *CHAPConfig) secret() *iscsi.CHAPSecret {
	if c == nil {
		return nil
	}
	return &iscsi.CHAPSecret{User: c.User, Secret: c.Secret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}
}

// access builds a target's access policy.
func (t *TargetConfig) access() *iscsi.Access {
	a := &iscsi.Access{Open: t.Open, CHAP: t.CHAP.secret(), ACLs: map[string]*iscsi.ACL{}}
	for _, ac := range t.ACLs {
		acl := &iscsi.ACL{Initiator: ac.Initiator, ReadOnly: ac.ReadOnly, CHAP: ac.CHAP.secret()}
		if len(ac.LUNs) > 0 {
			acl.LUNs = ac.LUNs
		}
		a.ACLs[ac.Initiator] = acl
	}
	return a
}
