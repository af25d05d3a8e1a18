package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/iscsi"
)

// Config is the daemon's YAML configuration.
type Config struct {
	// DataDir holds relative LUN paths and state files.
	DataDir string         `yaml:"data_dir"`
	Portals []PortalConfig `yaml:"portals"`
	Targets []TargetConfig `yaml:"targets"`
	Log     LogConfig      `yaml:"log"`
	// DiscoveryCHAP, when set, is required from discovery sessions.
	DiscoveryCHAP *CHAPConfig `yaml:"discovery_chap"`
}

// CHAPConfig holds CHAP credentials; mutual_* authenticate the target too.
type CHAPConfig struct {
	User         string `yaml:"user"`
	Secret       string `yaml:"secret"`
	MutualUser   string `yaml:"mutual_user"`
	MutualSecret string `yaml:"mutual_secret"`
}

// ACLConfig lets one initiator in.
type ACLConfig struct {
	Initiator string `yaml:"initiator"`
	// LUNs maps the LUN numbers the initiator sees to the target's; empty
	// shows every LUN under its own number.
	LUNs     map[uint64]uint64 `yaml:"luns"`
	ReadOnly bool              `yaml:"read_only"`
	CHAP     *CHAPConfig       `yaml:"chap"`
}

// PortalConfig is one listening address.
type PortalConfig struct {
	Address string `yaml:"address"` // host:port
	// Transport is tcp (default), iser, or both: iSER listens through
	// rdma_cm on the same address and port as TCP.
	Transport string `yaml:"transport"`
}

// tcp and iser report which listeners a portal needs.
func (p PortalConfig) tcp() bool  { return p.Transport != "iser" }
func (p PortalConfig) iser() bool { return p.Transport == "iser" || p.Transport == "both" }

// TargetConfig is one iSCSI target.
type TargetConfig struct {
	Name  string      `yaml:"name"`
	Alias string      `yaml:"alias"`
	LUNs  []LUNConfig `yaml:"luns"`
	// Open lets every initiator in (demo mode). Without it only the
	// initiators in ACLs may log in.
	Open bool        `yaml:"open"`
	CHAP *CHAPConfig `yaml:"chap"`
	ACLs []ACLConfig `yaml:"acls"`
}

// LUNConfig is one logical unit.
type LUNConfig struct {
	LUN       uint64 `yaml:"lun"`
	Backend   string `yaml:"backend"` // file (default) or memory
	// IO selects how a file backend is driven: uring (default; falls back
	// to threads when the kernel refuses io_uring) or threads.
	IO string `yaml:"io"`
	// Direct opens the file with O_DIRECT, bypassing the page cache.
	Direct bool `yaml:"direct"`
	Path      string `yaml:"path"`
	Size      Size   `yaml:"size"`
	BlockSize uint32 `yaml:"block_size"`
	Thin      *bool  `yaml:"thin"`
	ReadOnly  bool   `yaml:"read_only"`
	Serial    string `yaml:"serial"`
}

// LogConfig selects log verbosity and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // console or json
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

// ParseSize parses a byte count with an optional binary unit suffix.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
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

// LoadConfig reads and checks a YAML file. Unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) { // an empty file is an empty config
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Dir(path)
	}
	if err := cfg.Check(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Check validates the configuration and fills defaults.
func (c *Config) Check() error {
	if len(c.Portals) == 0 {
		c.Portals = []PortalConfig{{Address: "127.0.0.1:3260"}}
	}
	for i, p := range c.Portals {
		host, port, err := net.SplitHostPort(p.Address)
		if err != nil {
			return fmt.Errorf("portals[%d]: address %q is not host:port (e.g. 0.0.0.0:3260)", i, p.Address)
		}
		if host != "" && net.ParseIP(host) == nil {
			return fmt.Errorf("portals[%d]: %q is not an IP address", i, host)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("portals[%d]: port %q is not 1-65535", i, port)
		}
		switch p.Transport {
		case "", "tcp", "iser", "both":
		default:
			return fmt.Errorf("portals[%d]: transport %q is not tcp, iser or both", i, p.Transport)
		}
		if p.iser() && (host == "" || net.ParseIP(host).IsUnspecified()) {
			return fmt.Errorf("portals[%d]: an iSER portal needs the address of an RDMA device, not %q", i, host)
		}
	}
	if len(c.Targets) == 0 {
		return errors.New("no targets: add at least one under targets:")
	}
	names := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		if err := iscsi.ValidName(t.Name); err != nil {
			return fmt.Errorf("targets[%d].name: %w", i, err)
		}
		if names[t.Name] {
			return fmt.Errorf("targets[%d]: target %s is declared twice", i, t.Name)
		}
		names[t.Name] = true
		if err := checkAccess(t); err != nil {
			return fmt.Errorf("targets[%d] (%s): %w", i, t.Name, err)
		}
		luns := map[uint64]bool{}
		for j := range t.LUNs {
			l := &t.LUNs[j]
			where := fmt.Sprintf("target %s lun %d", t.Name, l.LUN)
			if luns[l.LUN] {
				return fmt.Errorf("%s: LUN number used twice", where)
			}
			luns[l.LUN] = true
			if l.LUN > 16383 {
				return fmt.Errorf("%s: LUN numbers go from 0 to 16383", where)
			}
			if l.BlockSize == 0 {
				l.BlockSize = 512
			}
			if l.BlockSize != 512 && l.BlockSize != 4096 {
				return fmt.Errorf("%s: block_size %d is neither 512 nor 4096", where, l.BlockSize)
			}
			if l.Thin == nil {
				thin := true
				l.Thin = &thin
			}
			switch l.Backend {
			case "", "file":
				l.Backend = "file"
				if l.Path == "" {
					return fmt.Errorf("%s: path is required for a file backend", where)
				}
				switch l.IO {
				case "", "uring", "threads":
				default:
					return fmt.Errorf("%s: io %q is neither uring nor threads", where, l.IO)
				}
			case "memory":
				if l.Size == 0 {
					return fmt.Errorf("%s: a memory backend needs a size", where)
				}
			default:
				return fmt.Errorf("%s: backend %q is neither file nor memory", where, l.Backend)
			}
			if l.Size != 0 && int64(l.Size)%int64(l.BlockSize) != 0 {
				return fmt.Errorf("%s: size %d is not a multiple of the block size %d", where, l.Size, l.BlockSize)
			}
		}
	}
	if c.DiscoveryCHAP != nil {
		if err := c.DiscoveryCHAP.secret().Check(); err != nil {
			return fmt.Errorf("discovery_chap: %w", err)
		}
	}
	return nil
}

// checkAccess validates a target's ACLs and CHAP settings.
func checkAccess(t *TargetConfig) error {
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
