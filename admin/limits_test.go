package admin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi"
)

// TestLimitsConfig reads limits: blocks and checks what reaches the iSCSI
// server, and that bad values are refused with the field's name.
func TestLimitsConfig(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       iscsi.PeerLimits
		err        string
	}{
		{name: "none", yaml: "", want: iscsi.PeerLimits{}},
		{name: "all", yaml: `
  connections: 100
  login_connections: 10
  login_connections_per_host: 2
  held_bytes: 1MiB
  queued_control: 256KiB
  immediate_tasks: 4
  abort_data_timeout: 3s`, want: iscsi.PeerLimits{Connections: 100, LoginConns: 10, LoginConnsPerHost: 2,
			HeldBytes: 1 << 20, QueuedControl: 256 << 10, ImmediateTasks: 4, AbortDataTimeout: 3 * time.Second}},
		{name: "negative", yaml: "\n  connections: -1", err: "limits.connections -1 is outside"},
		{name: "huge held bytes", yaml: "\n  held_bytes: 2GiB", err: "limits.held_bytes"},
		{name: "per host above all", yaml: "\n  login_connections: 4\n  login_connections_per_host: 8",
			err: "login_connections_per_host 8 is above"},
		{name: "bad duration", yaml: "\n  abort_data_timeout: soon", err: "invalid duration"},
		{name: "long timeout", yaml: "\n  abort_data_timeout: 2h", err: "limits.abort_data_timeout"},
		{name: "unknown field", yaml: "\n  sessions: 5", err: "field sessions not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "iserd.yaml")
			if err := os.WriteFile(p, []byte("targets: [{name: iqn.2026-12.org.iserd:t, open: true, luns: [{lun: 0, backend: memory, size: 1MiB}]}]\nlimits:"+c.yaml+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(p)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Limits.PeerLimits(); got != c.want {
				t.Errorf("peer limits %+v, want %+v", got, c.want)
			}
		})
	}
}
