package admin

import (
	"strings"
	"testing"

	"github.com/iserd/iserd/scsi"
)

// TestCheckStrings refuses configured strings that the protocols cannot
// carry: a target alias iSCSI would send broken, a serial the SCSI disk
// would refuse when the LUN is attached, a CHAP user name with a NUL.
func TestCheckStrings(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string // part of the error; "" for none
	}{
		{"plain", func(*Config) {}, ""},
		{"alias", func(c *Config) { c.Targets[0].Alias = "lab disk" }, ""},
		{"alias with NUL", func(c *Config) { c.Targets[0].Alias = "a\x00TargetAddress=10.0.0.9" }, "targets[0].alias"},
		{"alias too long", func(c *Config) { c.Targets[0].Alias = strings.Repeat("a", 256) }, "targets[0].alias"},
		{"longest serial", func(c *Config) { c.Targets[0].LUNs[0].Serial = strings.Repeat("s", scsi.MaxSerialLen) }, ""},
		{"serial too long", func(c *Config) { c.Targets[0].LUNs[0].Serial = strings.Repeat("s", scsi.MaxSerialLen+1) }, "serial"},
		{"serial with a newline", func(c *Config) { c.Targets[0].LUNs[0].Serial = "S\n1" }, "printable ASCII"},
		{"mutual CHAP user with NUL", func(c *Config) {
			c.Targets[0].CHAP = &CHAPConfig{User: "u", Secret: "secret-secret", MutualUser: "t\x00x", MutualSecret: "other-secret-1"}
		}, "CHAP user name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseConfig(t.TempDir())
			c.edit(cfg)
			err := cfg.Check()
			if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Check: %v, want an error with %q", err, c.want)
			}
		})
	}
}
