package admin

import (
	"context"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/iserd/iserd/iscsi/initiator"
)

// TestReload edits the configuration file and reloads it: good changes
// apply to the engine, bad ones leave the running configuration alone.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	if err := h.m.cfg.Save(h.m.Path()); err != nil {
		t.Fatal(err)
	}
	other := "iqn.2026-11.org.iserd.test:t1"
	steps := []struct {
		name  string
		edit  func(c *Config)
		raw   string // file contents instead of an edit
		err   string
		check func(t *testing.T)
	}{
		{name: "add a LUN and an ACL", edit: func(c *Config) {
			c.Targets[0].LUNs = append(c.Targets[0].LUNs, LUNConfig{LUN: 1, Backend: "memory", Size: 1 << 20})
			c.Targets[0].Open = false
			c.Targets[0].ACLs = []ACLConfig{{Initiator: testInitiator, ReadOnly: true}}
		}, check: func(t *testing.T) {
			tg := h.m.Server().Target(testTarget)
			if !tg.SCSI.HasLUN(1) || tg.Access().Open || tg.Access().ACLs[testInitiator] == nil {
				t.Errorf("engine after reload: LUN 1 %v, access %+v", tg.SCSI.HasLUN(1), tg.Access())
			}
		}},
		{name: "unknown field", raw: "targets:\n  - name: " + testTarget + "\n    lunz: []\n", err: "field lunz not found"},
		{name: "shrink", edit: func(c *Config) { c.Targets[0].LUNs[0].Size = 1 << 20 }, err: "pass --force"},
		{name: "no targets", raw: "portals: []\n", err: "no targets"},
		{name: "replace the target", edit: func(c *Config) {
			c.Targets[0].Name = other
			c.Targets[0].ACLs = nil
			c.Targets[0].LUNs = c.Targets[0].LUNs[:1]
		}, check: func(t *testing.T) {
			if h.m.Server().Target(testTarget) != nil || h.m.Server().Target(other) == nil {
				t.Error("target not replaced")
			}
			if _, left := h.m.luns[lunKey{testTarget, 1}]; left {
				t.Error("the removed target's LUN is still open")
			}
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := h.m.cfg.Clone()
			if s.raw != "" {
				if err := os.WriteFile(h.m.Path(), []byte(s.raw), 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				next := before.Clone()
				s.edit(next)
				if err := next.Save(h.m.Path()); err != nil {
					t.Fatal(err)
				}
			}
			err := h.m.Reload()
			if s.err != "" {
				if err == nil || !strings.Contains(err.Error(), s.err) {
					t.Fatalf("reload: %v, want an error with %q", err, s.err)
				}
				if !reflect.DeepEqual(before, h.m.cfg) {
					t.Error("a refused reload changed the running configuration")
				}
				if err := before.Save(h.m.Path()); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
			s.check(t)
		})
	}
}

// TestLiveLUN adds a LUN while a session is logged in: the session gets
// REPORTED LUNS DATA HAS CHANGED and libiscsi's iscsi-ls, when installed,
// lists the new LUN.
func TestLiveLUN(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	c, err := h.login(testInitiator, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tur := &initiator.Command{CDB: make([]byte, 6)}
	c.Do(context.Background(), tur) // consumes POWER ON, RESET
	if r, err := c.Do(context.Background(), tur); err != nil || r.Status != 0 {
		t.Fatalf("TEST UNIT READY: %+v %v", r, err)
	}
	list := func() string {
		out, err := exec.Command("iscsi-ls", "-s", "iscsi://"+h.portal()).CombinedOutput()
		if err != nil {
			t.Fatalf("iscsi-ls: %v\n%s", err, out)
		}
		return string(out)
	}
	_, lookErr := exec.LookPath("iscsi-ls")
	if lookErr == nil {
		if out := list(); strings.Contains(out, "Lun:1") {
			t.Fatalf("LUN 1 listed before it was added:\n%s", out)
		}
	}
	var r Result
	if err := h.client.Do(context.Background(), "POST", "/v1/targets/"+testTarget+"/luns",
		LUNConfig{LUN: 1, Backend: "memory", Size: 32 << 20}, &r); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(context.Background(), tur)
	if err != nil || resp.Status != 0x02 || len(resp.Sense) < 14 || resp.Sense[12] != 0x3f || resp.Sense[13] != 0x0e {
		t.Errorf("the logged-in session got %+v, %v; want REPORTED LUNS DATA HAS CHANGED", resp, err)
	}
	if lookErr != nil {
		t.Skip("iscsi-ls (libiscsi-bin) not installed: libiscsi part skipped")
	}
	// iscsi-ls prints the size up to the last LBA, one block short: 31M.
	if out := list(); !strings.Contains(out, "Lun:1    Type:DIRECT_ACCESS (Size:31M)") {
		t.Errorf("iscsi-ls does not list the 32 MiB LUN 1 added live:\n%s", out)
	}
}

// TestLibiscsiCHAP sets CHAP credentials through the API and logs in with
// libiscsi's iscsi-inq (user%secret@ URLs): the right secret gets in, a
// wrong one and none are refused, and no secret reaches the log.
func TestLibiscsiCHAP(t *testing.T) {
	if _, err := exec.LookPath("iscsi-inq"); err != nil {
		t.Skip("iscsi-inq (libiscsi-bin) not installed")
	}
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	const secret, wrong = "libiscsi-chap-secret", "not-the-chap-secret"
	acl := ACLConfig{Initiator: "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq", CHAP: &CHAPConfig{User: "inq", Secret: secret}}
	if err := h.client.Do(context.Background(), "POST", "/v1/targets/"+testTarget+"/acls", acl, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.client.Do(context.Background(), "PATCH", "/v1/targets/"+testTarget, TargetSettings{Open: new(bool)}, nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, user string
		ok         bool
		want       string
	}{
		{"right secret", "inq%" + secret + "@", true, "DIRECT_ACCESS"},
		{"wrong secret", "inq%" + wrong + "@", false, "Authentication failure"},
		{"no CHAP", "", false, "Authentication failure"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := exec.Command("iscsi-inq", "iscsi://"+c.user+h.portal()+"/"+testTarget+"/0").CombinedOutput()
			if (err == nil) != c.ok || !strings.Contains(string(out), c.want) {
				t.Errorf("iscsi-inq: %v, want success %v with %q:\n%s", err, c.ok, c.want, out)
			}
		})
	}
	if logs := h.logs.String(); strings.Contains(logs, secret) || strings.Contains(logs, wrong) {
		t.Error("a CHAP secret reached the log")
	}
}
