package admin

import (
	"bytes"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/scsi"
)

// FuzzConfig feeds text to the two configuration loaders: the file iserd
// reads (YAML, or JSON as a subset of it) and a target as the admin API's
// POST /targets receives it (JSON, added to the default configuration).
// Neither may panic. A configuration they accept must pass Check again, be
// copied and redacted, build every LUN's SCSI disk (what Check lets
// through, attaching must not refuse), and be saved as YAML that loads back
// to the same configuration: the admin API saves what it applied, and the
// next start reads it.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("portals:\n  - address: 0.0.0.0:3260\ntargets:\n  - name: iqn.2026-11.org.example:disk\n    luns:\n      - lun: 0\n        backend: memory\n        size: 64MiB\n"), false)
	f.Add([]byte(`{"name":"iqn.2026-11.org.example:t2","luns":[{"lun":1,"backend":"memory","size":"1GiB","serial":"S1"}],"acls":[{"initiator":"iqn.2026-11.org.example:host","luns":{"0":1}}]}`), true)
	const dir = "/srv/iserd"
	f.Fuzz(func(t *testing.T, raw []byte, apiTarget bool) {
		var cfg *Config
		if apiTarget {
			var tc TargetConfig
			if decodeBody(raw, &tc) != nil {
				return
			}
			cfg = DefaultConfig()
			cfg.Targets = append(cfg.Targets, tc)
			if cfg.Check() != nil {
				return
			}
		} else {
			var err error
			if cfg, err = parseConfig(raw, dir); err != nil {
				return
			}
		}
		saved := marshal(t, cfg)
		if err := cfg.Check(); err != nil {
			t.Fatalf("accepted configuration fails a second Check: %v\n%s", err, saved)
		}
		if got := marshal(t, cfg.Clone()); !bytes.Equal(got, saved) {
			t.Fatalf("clone differs:\n%s\nfrom\n%s", got, saved)
		}
		cfg.Redacted()
		for _, tc := range cfg.Targets {
			tc.access()
			tc.portGroups()
			for _, lc := range tc.LUNs {
				d, err := scsi.NewDisk(bdev.NewMemory(1<<20), diskConfig(tc.Name, lc, ""))
				if err != nil {
					t.Fatalf("target %s LUN %d passed Check but cannot be attached: %v", tc.Name, lc.LUN, err)
				}
				d.Close()
			}
		}
		back, err := parseConfig(saved, dir)
		if err != nil {
			t.Fatalf("saved configuration does not load: %v\n%s", err, saved)
		}
		if got := marshal(t, back); !bytes.Equal(got, saved) {
			t.Fatalf("saved and loaded back as\n%s\nfrom\n%s", got, saved)
		}
	})
}

// marshal is the YAML Save writes.
func marshal(t *testing.T, c *Config) []byte {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}
