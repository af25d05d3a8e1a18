package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/internal/cli/clitest"
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
	m, err := admin.New(cfg, admin.Options{Log: zap.NewNop(), Path: filepath.Join(dir, "iserd.yaml"), Listen: listen,
		RDMA: func() admin.RDMAStatus { return testRDMA }})
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

// testRDMA is what the test daemon reports for GET /v1/rdma: one device in use, one no provider
// can drive.
var testRDMA = admin.RDMAStatus{Provider: "libibverbs", Libibverbs: "loaded", Devices: []admin.RDMADevice{
	{Name: "mlx5_0", Driver: "mlx5_core", NodeGUID: "0002c90300012345", Netdevs: []string{"ens1f0"},
		Ports:    []admin.RDMAPort{{Num: 1, State: "ACTIVE", LinkLayer: "Ethernet", GIDs: []string{"192.0.2.7"}}},
		Provider: "libibverbs", Open: true, QPs: 2, CQs: 2, MRs: 5},
	{Name: "qedr0", Driver: "qede", Netdevs: []string{}, ProviderError: "libibverbs has no user-space provider"},
}}

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
		{args: "chap set " + target + " -discovery -user x", env: env, code: 2, errOut: "either a TARGET or --discovery"},
		{args: "target set " + target, code: 2, errOut: "nothing to set"},
		{args: "target set " + target + " -open=true -max-sessions 0", out: []string{"updated"}},
		{args: "target show " + target, out: []string{"open:          yes", "max sessions:  -"}},
		{args: "portal list", out: []string{"ADDRESS", "127.0.0.1:3260", "tcp", "TPGT"}},
		{args: "portal add 127.0.0.1:3261 -tpgt 7", out: []string{"saved to "}},
		{args: "portal list", out: []string{"127.0.0.1:3261  tcp        7"}},
		{args: "portal remove 127.0.0.1:3261", out: []string{"saved to "}},
		{args: "session list", out: []string{"TSIH"}},
		{args: "session logout 77", code: 1, errOut: "session 77: not found"},
		{args: "rdma", out: []string{"provider: libibverbs", "libibverbs: loaded", "DEVICE", "mlx5_0  mlx5_core  ens1f0  1:ACTIVE/Ethernet",
			"192.0.2.7", "2/2/5", "qedr0", "none: libibverbs has no user-space provider"}},
		{args: "cluster status", code: 1, errOut: "this gateway has no cluster section"},
		{args: "rdma --json", out: []string{`"name": "mlx5_0"`, `"open": true`, `"qps": 2`, `"provider_error": "libibverbs has no`}},
		{args: "metrics", out: []string{`iserd_lun_capacity_bytes{lun="0",target="` + target + `"} 4.194304e+06`}},
		{args: "config show", out: []string{"name: " + target, "user: disc"}},
		{args: "qos set " + target + " -lun 0 -iops 2000 -bandwidth 40MiB -burst 200ms", out: []string{"LUN QoS of " + target + " set"}},
		{args: "qos set " + target + " -acl iqn.2026-11.org.iserd.test:h1 -weight 3", out: []string{"QoS of iqn.2026-11.org.iserd.test:h1"}},
		{args: "qos set " + target + " -acl iqn.2026-11.org.iserd.test:h1 -write-bandwidth 10MiB/s", out: []string{"set"}},
		{args: "qos set " + target + " -initiator-default -read-iops 500", out: []string{"initiator QoS of"}},
		{args: "qos set " + target + " -iops 10000", out: []string{"QoS of " + target + " set"}},
		{args: "qos set " + target + " -weight 2", code: 2, errOut: "--weight goes with --acl"},
		{args: "qos set " + target + " -lun 0 -acl x", code: 2, errOut: "at most one of"},
		{args: "qos set " + target + " -lun 0", code: 2, errOut: "nothing to set"},
		{args: "qos set " + target + " -lun 0 -iops 5 -burst 1ms", code: 1, errOut: "burst 1ms is outside"},
		{args: "qos set " + target + " -bandwidth 4Q", code: 2, errOut: "not bytes per second"},
		{args: "qos show " + target, out: []string{"lun 0           iops=2000 bandwidth=40MiB/s burst=200ms",
			"acl iqn.2026-11.org.iserd.test:h1  weight 3  write_bandwidth=10MiB/s", "initiator_qos:  read_iops=500",
			"qos:            iops=10000", "LIMITER", "target", "lun 0", "CMD-WINDOW"}},
		{args: "qos clear " + target + " -lun 0", out: []string{"LUN QoS of " + target + ": no limit"}},
		{args: "qos clear " + target + " -acl iqn.2026-11.org.iserd.test:h1", out: []string{"cleared"}},
		{args: "config show", out: []string{"initiator_qos:", "read_iops: 500"}},
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

// TestMain lets the tests run this test binary as iserctl itself (for the
// shell completion, which calls "iserctl __complete ...").
func TestMain(m *testing.M) {
	if os.Getenv("ISERCTL_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// TestCompletion asks for completions the way the shells do (cobra's
// hidden __complete command) and checks they come from the daemon.
func TestCompletion(t *testing.T) {
	sock := startDaemon(t)
	base := "iqn.2026-11.org.iserd.test:base"
	cases := []struct {
		args string
		want []string
		not  []string
	}{
		{args: "target show ''", want: []string{base + "\t1 LUNs, 0 sessions"}},
		{args: "lun remove ''", want: []string{base}},
		{args: "lun remove " + base + " ''", want: []string{"0\t1MiB memory"}, not: []string{base}},
		{args: "lun resize " + base + " 0 ''", not: []string{"0\t"}},
		{args: "session logout ''", not: []string{base}},
		{args: "session list --target ''", want: []string{base}},
		{args: "portal add 127.0.0.1:3261 --transport ''", want: []string{"tcp", "iser", "both"}},
		{args: "lun ''", want: []string{"add", "remove", "resize", "list"}},
	}
	for _, c := range cases {
		t.Run(c.args, func(t *testing.T) {
			args := append([]string{"__complete", "--socket", sock}, strings.Fields(strings.ReplaceAll(c.args, "''", "\x00"))...)
			for i := range args {
				args[i] = strings.ReplaceAll(args[i], "\x00", "")
			}
			var stdout, stderr bytes.Buffer
			if code := run(args, nil, &stdout, &stderr, func(string) string { return "" }); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			for _, w := range c.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("completion lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, n := range c.not {
				if strings.Contains(stdout.String(), n) {
					t.Errorf("completion offers %q:\n%s", n, stdout.String())
				}
			}
		})
	}
}

// TestBashCompletion loads the bash completion script the package
// installs, checks that complete -p knows iserctl, and completes a
// scripted command line (COMP_WORDS) against a running daemon.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	const bashCompletion = "/usr/share/bash-completion/bash_completion" // Debian's bash-completion
	if _, err := os.Stat(bashCompletion); err != nil {
		t.Skipf("%s is missing (scripts/install-deps.sh installs it)", bashCompletion)
	}
	sock := startDaemon(t)
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/bin/sh\nISERCTL_TEST_MAIN=1 exec " + self + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iserctl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	var script, stderr bytes.Buffer
	if code := run([]string{"completion", "bash"}, nil, &script, &stderr, os.Getenv); code != 0 {
		t.Fatalf("completion bash: %d %s", code, stderr.String())
	}
	if err := os.WriteFile(filepath.Join(dir, "iserctl.bash"), script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		words string // COMP_WORDS; the cursor is on the last word
		want  string // COMPREPLY, one per line
	}{
		// bash splits words at ':' (COMP_WORDBREAKS), so the reply is what follows the last colon
		{"iserctl --socket " + sock + " lun remove iqn.2026-11.org.iserd.test:b", "base"},
		{"iserctl --socket " + sock + " lun remove iqn.2026-11.org.iserd.test:base ''", "0"},
		{"iserctl ses", "session"},
		{"iserctl session logout --n", "--now"},
	}
	for _, c := range cases {
		t.Run(c.words, func(t *testing.T) {
			prog := `set -e
source ` + bashCompletion + `
source "$DIR/iserctl.bash"
complete -p iserctl
compopt() { :; } # the builtin works only under a real completion; the options it sets are not under test
COMP_WORDS=(` + c.words + `)
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
__start_iserctl iserctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
`
			cmd := exec.Command(bash, "--norc", "-c", prog)
			cmd.Env = append(os.Environ(), "DIR="+dir, "PATH="+dir+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if !strings.HasPrefix(lines[0], "complete -o default -F __start_iserctl iserctl") {
				t.Errorf("complete -p: %q", lines[0])
			}
			if got := strings.TrimSpace(strings.Join(lines[1:], "\n")); got != c.want {
				t.Errorf("COMPREPLY %q, want %q", got, c.want)
			}
		})
	}
}

// TestUsage checks the command line mistakes and the commands that need
// no daemon.
func TestUsage(t *testing.T) {
	cases := []struct {
		args string
		code int
		out  string // in standard output or error
	}{
		{"version", 0, "iserctl "},
		{"target frob", 2, `unknown command "frob"`},
		{"sesion list", 2, "did you mean session"},
		{"target list --frob", 2, "unknown flag: --frob"},
		{"lun add -size", 2, "flag needs an argument"},
		{"target", 0, "Available Commands"},
		{"--help", 0, "import"},
	}
	for _, c := range cases {
		t.Run(c.args, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(strings.Fields(c.args), nil, &stdout, &stderr, os.Getenv)
			if code != c.code || !strings.Contains(stdout.String()+stderr.String(), c.out) {
				t.Errorf("exit %d, %q %q; want %d with %q", code, stdout.String(), stderr.String(), c.code, c.out)
			}
		})
	}
}

// TestManPage renders the manual page and checks that it describes every
// command and flag --help does, and that man(1) formats it.
func TestManPage(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"gendocs", dir}, nil, &stdout, &stderr, os.Getenv); code != 0 {
		t.Fatalf("gendocs: %d %s", code, stderr.String())
	}
	page, err := os.ReadFile(filepath.Join(dir, "iserctl.8"))
	if err != nil {
		t.Fatal(err)
	}
	var visit func(c *cobra.Command)
	visit = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		if c.Runnable() && !c.HasAvailableSubCommands() && !strings.Contains(string(page), c.Name()) {
			t.Errorf("the page lacks %s", c.CommandPath())
		}
		c.NonInheritedFlags().VisitAll(func(f *pflag.Flag) {
			if !strings.Contains(string(page), "--"+f.Name+" ") {
				t.Errorf("the page lacks %s --%s", c.CommandPath(), f.Name)
			}
		})
		for _, s := range c.Commands() {
			visit(s)
		}
	}
	visit(newRoot(&app{}))
	clitest.RenderManPage(t, filepath.Join(dir, "iserctl.8"), "lun resize")
}
