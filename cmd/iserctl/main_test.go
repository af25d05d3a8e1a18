package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/iscsi"
)

const target = "iqn.2026-11.org.iserd.test:ctl"

// startDaemon runs the admin API of an in-process iserd and returns its
// socket.
func startDaemon(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := &admin.Config{DataDir: dir, Targets: []admin.TargetConfig{{Name: "iqn.2026-11.org.iserd.test:base", Open: true,
		LUNs: []admin.LUNConfig{{LUN: 0, Backend: "memory", Size: 1 << 20}}}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	listen := func(srv *iscsi.Server, _ admin.PortalConfig) (io.Closer, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		go srv.Serve(ctx, l)
		return l, nil
	}
	m, err := admin.New(cfg, admin.Options{Log: zap.NewNop(), Path: filepath.Join(dir, "iserd.yaml"), Listen: listen})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	l, err := admin.ListenSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.ServeAPI(ctx, l); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		m.Server().Shutdown(sctx)
		m.Close()
	})
	return sock
}

func TestCommands(t *testing.T) {
	sock := startDaemon(t)
	const secret = "a-secret-of-16ch"
	env := map[string]string{"ISERCTL_SECRET": secret}
	steps := []struct {
		args   string
		env    map[string]string
		code   int
		out    []string // in standard output
		errOut string   // in standard error
	}{
		{args: "target create " + target + " -max-sessions 2", out: []string{"target " + target + " created", "saved to "}},
		{args: "target list", out: []string{"TARGET", target, "iqn.2026-11.org.iserd.test:base"}},
		{args: "target create bad-name", code: 1, errOut: "does not start with iqn., eui. or naa"},
		{args: "lun add " + target + " 0 -memory -size 8MiB", out: []string{"LUN 0 added"}},
		{args: "lun add " + target + " 0 -memory -size 8MiB", code: 1, errOut: "choose a free LUN number"},
		{args: "lun add " + target + " -memory", code: 2, errOut: "expected TARGET LUN"},
		{args: "lun add " + target + " 1 -memory -size 1X", code: 2, errOut: "not a byte count"},
		{args: "lun resize " + target + " 0 4MiB", code: 1, errOut: "pass --force"},
		{args: "lun resize " + target + " 0 4MiB -force", out: []string{"resized to 4MiB"}},
		{args: "lun list " + target, out: []string{"LUN", "memory", "4MiB"}},
		{args: "acl add " + target + " iqn.2026-11.org.iserd.test:h1 -map 5=0 -read-only -chap-user h1", env: env,
			out: []string{"iqn.2026-11.org.iserd.test:h1 may log in"}},
		{args: "acl add " + target + " iqn.2026-11.org.iserd.test:h2 -chap-user h2", code: 2,
			errOut: "never taken from the command line"},
		{args: "acl add " + target + " iqn.2026-11.org.iserd.test:h2 -map 1", code: 2, errOut: "SEEN=LUN pairs"},
		{args: "acl list " + target, out: []string{"iqn.2026-11.org.iserd.test:h1", "5=0", "yes", "h1"}},
		{args: "chap set -discovery -user disc", env: env, out: []string{"discovery sessions need CHAP"}},
		{args: "chap set " + target + " -discovery -user x", env: env, code: 2, errOut: "either a TARGET or -discovery"},
		{args: "target set " + target, code: 2, errOut: "nothing to set"},
		{args: "target set " + target + " -open=true -max-sessions 0", out: []string{"updated"}},
		{args: "target show " + target, out: []string{"open:          yes", "max sessions:  -"}},
		{args: "portal list", out: []string{"ADDRESS", "127.0.0.1:3260", "tcp"}},
		{args: "session list", out: []string{"TSIH"}},
		{args: "session logout 77", code: 1, errOut: "session 77: not found"},
		{args: "metrics", out: []string{`iserd_lun_capacity_bytes{target="` + target + `",lun="0"} 4194304`}},
		{args: "config show", out: []string{"name: " + target, "user: disc"}},
		{args: "lun remove " + target + " 0", code: 1, errOut: "change that ACL first"},
		{args: "target delete " + target, out: []string{"deleted"}},
		{args: "frobnicate", code: 2, errOut: "unknown command"},
	}
	for _, s := range steps {
		t.Run(s.args, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"-socket", sock}, strings.Fields(s.args)...)
			code := run(args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return s.env[k] })
			if code != s.code || !strings.Contains(stderr.String(), s.errOut) {
				t.Fatalf("exit %d, stderr %q; want %d with %q", code, stderr.String(), s.code, s.errOut)
			}
			for _, o := range s.out {
				if !strings.Contains(stdout.String(), o) {
					t.Errorf("output lacks %q:\n%s", o, stdout.String())
				}
			}
			if strings.Contains(stdout.String()+stderr.String(), secret) {
				t.Error("the secret was printed")
			}
		})
	}
}

func TestJSON(t *testing.T) {
	sock := startDaemon(t)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-socket", sock, "-json", "target", "list"}, nil, &stdout, &stderr, func(string) string { return "" }); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var ts []admin.TargetInfo
	if err := json.Unmarshal(stdout.Bytes(), &ts); err != nil || len(ts) != 1 || ts[0].LUNs[0].Size != 1<<20 {
		t.Errorf("-json target list: %v %+v", err, ts)
	}
}

func TestNoDaemon(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-socket", filepath.Join(t.TempDir(), "none.sock"), "target", "list"}, nil, &stdout, &stderr,
		func(string) string { return "" })
	if code != 1 || !strings.Contains(stderr.String(), "is it running") {
		t.Errorf("exit %d, %q", code, stderr.String())
	}
}
