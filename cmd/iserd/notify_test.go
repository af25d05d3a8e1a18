package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/internal/cli/clitest"
)

// TestMain lets a test run this binary as iserd itself.
func TestMain(m *testing.M) {
	if os.Getenv("ISERD_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSystemdNotify runs iserd as systemd would under Type=notify with
// WatchdogSec: it listens on the NOTIFY_SOCKET it hands to iserd and
// expects READY=1 only once the portal answers, WATCHDOG=1 pings with a
// STATUS= line, RELOADING=1 and READY=1 around a SIGHUP, and STOPPING=1
// on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sockPath := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admSock := filepath.Join(dir, "admin.sock")
	portal := freePort(t)
	cmd := exec.Command(os.Args[0], "-data", dir, "-listen", portal, "-admin-socket", admSock)
	cmd.Env = append(os.Environ(), "ISERD_TEST_MAIN=1", "NOTIFY_SOCKET="+sockPath, "WATCHDOG_USEC=300000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// expect waits for a message holding want and returns it.
	expect := func(want string) string {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %q; iserd said:\n%s", want, stderr.String())
				}
				if strings.Contains(m, want) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q from iserd within 20s; it said:\n%s", want, stderr.String())
			}
		}
	}
	ready := expect("READY=1")
	if !strings.Contains(ready, "STATUS=1 targets, 1 LUNs, 0 sessions") {
		t.Errorf("READY=1 came without the status: %q", ready)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := admin.NewClient(admSock).Raw(ctx, "GET", "/v1/portals", nil); err != nil {
		t.Fatalf("admin API after READY=1: %v", err)
	}
	pc, err := net.Dial("tcp", portal)
	if err != nil {
		t.Fatalf("portal not listening after READY=1: %v", err)
	}
	pc.Close()
	for range 2 {
		if m := expect("WATCHDOG=1"); !strings.Contains(m, "STATUS=1 targets") {
			t.Errorf("watchdog ping without status: %q", m)
		}
	}
	cmd.Process.Signal(syscall.SIGHUP)
	expect("RELOADING=1")
	expect("READY=1")
	cmd.Process.Signal(syscall.SIGTERM)
	expect("STOPPING=1")
	if err := cmd.Wait(); err != nil {
		t.Errorf("iserd exited with %v:\n%s", err, stderr.String())
	}
}

// freePort returns a loopback address no one listens on (until someone
// else takes it: the kernel hands out ports in turn, so not soon).
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestManPages renders iserd.8 and iserd.yaml.5 and checks that man(1)
// formats them and that they describe every flag.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	root := newRoot()
	root.SetArgs([]string{"gendocs", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "iserd.8"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config", "data", "listen", "log-level", "admin-socket", "version"} {
		if !bytes.Contains(page, []byte("--"+f+" ")) {
			t.Errorf("iserd.8 lacks --%s", f)
		}
	}
	clitest.RenderManPage(t, filepath.Join(dir, "iserd.8"), "RELOADING=1")
	clitest.RenderManPage(t, filepath.Join(dir, "iserd.yaml.5"), "max_sessions_per_initiator")
}

// TestExample checks that the annotated example of iserd.yaml(5) loads,
// names every field of the configuration, and is the README's.
func TestExample(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "iserd.yaml")
	if err := os.WriteFile(file, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.LoadConfig(file); err != nil {
		t.Fatalf("the example does not load: %v", err)
	}
	var keys []string
	yamlKeys(reflect.TypeFor[admin.Config](), &keys)
	for _, k := range keys {
		if !strings.Contains(example, k+":") {
			t.Errorf("the example does not show %s", k)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("```yaml\n"+example+"```")) {
		t.Error("README.md's configuration example differs from cmd/iserd/iserd.example.yaml")
	}
}

// yamlKeys collects the YAML field names of t and the structs it holds.
func yamlKeys(t reflect.Type, out *[]string) {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Map:
		yamlKeys(t.Elem(), out)
	case reflect.Struct:
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				if f.Anonymous {
					yamlKeys(f.Type, out)
				}
				continue
			}
			*out = append(*out, name)
			yamlKeys(f.Type, out)
		}
	}
}
