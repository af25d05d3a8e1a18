package admin

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

const (
	db          = "iqn.2026-11.com.example:db"
	dbPath      = "/v1/targets/" + db
	host2       = "iqn.2026-11.com.example:host2"
	chapSecret  = "target-secret-0123"
	aclSecret   = "acl-secret-456789"
	discoSecret = "discovery-secret-42"
)

// TestAPI drives the admin API through a sequence of changes, good and
// bad. A refused change must leave the running configuration and the file
// exactly as they were.
func TestAPI(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	empty := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name, method, path, body string
		status                   int
		want                     string // in the answer (the error message when status != 200)
		check                    func(t *testing.T)
	}{
		{name: "create target", method: "POST", path: "/v1/targets",
			body:   `{"name":"` + db + `","luns":[{"lun":0,"backend":"memory","size":"8MiB"}]}`,
			status: 200, want: "created", check: func(t *testing.T) {
				if h.m.Server().Target(db) == nil {
					t.Error("the engine has no target " + db)
				}
			}},
		{name: "duplicate target", method: "POST", path: "/v1/targets", body: `{"name":"` + db + `"}`,
			status: 409, want: "already exists"},
		{name: "invalid target name", method: "POST", path: "/v1/targets", body: `{"name":"db"}`,
			status: 400, want: "does not start with iqn., eui. or naa"},
		{name: "malformed JSON", method: "POST", path: "/v1/targets", body: `{"name":"iqn.`,
			status: 400, want: "not valid JSON"},
		{name: "unknown field", method: "POST", path: "/v1/targets", body: `{"nmae":"` + db + `2"}`,
			status: 400, want: `unknown field "nmae"`},
		{name: "wrong type", method: "POST", path: dbPath + "/luns", body: `{"lun":"one"}`,
			status: 400, want: `field "lun" must be a uint64`},
		{name: "empty body", method: "POST", path: "/v1/targets", status: 400, want: "request body is empty"},
		{name: "two JSON values", method: "POST", path: "/v1/targets", body: `{"name":"` + db + `3"} {}`,
			status: 400, want: "more than one JSON value"},
		{name: "add file LUN", method: "POST", path: dbPath + "/luns", body: `{"lun":1,"path":"db1.img","size":"4MiB"}`,
			status: 200, want: "LUN 1 added", check: func(t *testing.T) {
				st, err := os.Stat(filepath.Join(dir, "db1.img"))
				if err != nil || st.Size() != 4<<20 {
					t.Errorf("backing file: %v, %v", st, err)
				}
				if !h.m.Server().Target(db).SCSI.HasLUN(1) {
					t.Error("LUN 1 is not attached")
				}
			}},
		{name: "duplicate LUN number", method: "POST", path: dbPath + "/luns", body: `{"lun":1,"backend":"memory","size":"1MiB"}`,
			status: 409, want: "choose a free LUN number"},
		{name: "missing file without size", method: "POST", path: dbPath + "/luns", body: `{"lun":2,"path":"nothere.img"}`,
			status: 400, want: "does not exist: give the LUN a size"},
		{name: "missing directory", method: "POST", path: dbPath + "/luns",
			body:   `{"lun":2,"path":"` + filepath.Join(dir, "no/such/dir/x.img") + `","size":"1MiB"}`,
			status: 400, want: "does not exist: create it first"},
		{name: "file too small", method: "POST", path: dbPath + "/luns", body: `{"lun":2,"path":"` + empty + `"}`,
			status: 400, want: "less than one 512-byte block"},
		{name: "path used twice", method: "POST", path: dbPath + "/luns", body: `{"lun":2,"path":"db1.img"}`,
			status: 400, want: "already the backing store of target " + db + " lun 1"},
		{name: "size not a multiple of the block size", method: "POST", path: dbPath + "/luns",
			body: `{"lun":2,"backend":"memory","size":1000}`, status: 400, want: "not a multiple of the block size"},
		{name: "LUN number too large", method: "POST", path: dbPath + "/luns", body: `{"lun":16384,"backend":"memory","size":"1MiB"}`,
			status: 400, want: "LUN numbers go from 0 to 16383"},
		{name: "physical block size not a power of two", method: "POST", path: dbPath + "/luns",
			body:   `{"lun":3,"backend":"memory","size":"1MiB","physical_block_size":3072}`,
			status: 400, want: "physical_block_size: physical block size 3072: must be a power of two"},
		{name: "physical block smaller than a block", method: "POST", path: dbPath + "/luns",
			body:   `{"lun":3,"backend":"memory","size":"1MiB","block_size":4096,"physical_block_size":512}`,
			status: 400, want: "from the block size 4096"},
		{name: "LUN with physical blocks and a sanitize rate", method: "POST", path: dbPath + "/luns",
			body:   `{"lun":3,"backend":"memory","size":"1MiB","physical_block_size":4096,"sanitize_rate":"8MiB"}`,
			status: 200, check: func(t *testing.T) {
				cfg := h.m.Server().Target(db).SCSI.LUN(3).Config()
				if cfg.PhysicalBlockSize != 4096 || cfg.SanitizeRate != 8<<20 {
					t.Errorf("LUN 3: %d-byte physical blocks, sanitize rate %d", cfg.PhysicalBlockSize, cfg.SanitizeRate)
				}
			}},
		{name: "remove it", method: "DELETE", path: dbPath + "/luns/3", status: 200},
		{name: "LUN on a missing target", method: "POST", path: "/v1/targets/iqn.2026-11.com.example:nope/luns",
			body: `{"lun":0,"backend":"memory","size":"1MiB"}`, status: 404, want: "not found"},
		{name: "grow", method: "POST", path: dbPath + "/luns/1/resize", body: `{"size":"8MiB"}`,
			status: 200, want: "resized to 8MiB", check: func(t *testing.T) {
				if n := h.m.LUNSize(db, 1); n != 8<<20 {
					t.Errorf("LUN 1 is %d bytes after growing to 8MiB", n)
				}
			}},
		{name: "shrink without force", method: "POST", path: dbPath + "/luns/1/resize", body: `{"size":"2MiB"}`,
			status: 400, want: "pass --force"},
		{name: "shrink with force", method: "POST", path: dbPath + "/luns/1/resize", body: `{"size":"2MiB","force":true}`,
			status: 200, check: func(t *testing.T) {
				st, _ := os.Stat(filepath.Join(dir, "db1.img"))
				if n := h.m.LUNSize(db, 1); n != 2<<20 || st.Size() != 2<<20 {
					t.Errorf("after shrinking to 2MiB: LUN %d bytes, file %d", n, st.Size())
				}
			}},
		{name: "resize without size", method: "POST", path: dbPath + "/luns/1/resize", body: `{"force":true}`,
			status: 400, want: "give the new size"},
		{name: "resize a missing LUN", method: "POST", path: dbPath + "/luns/9/resize", body: `{"size":"1MiB"}`,
			status: 404},
		{name: "bad LUN in path", method: "DELETE", path: dbPath + "/luns/x", status: 400, want: "is not a number"},
		{name: "invalid initiator", method: "POST", path: dbPath + "/acls", body: `{"initiator":"iqn.x"}`,
			status: 400, want: "iqn.yyyy-mm"},
		{name: "ACL mapping a missing LUN", method: "POST", path: dbPath + "/acls",
			body: `{"initiator":"` + testInitiator + `","luns":{"0":7}}`, status: 400, want: "target LUN 7, which does not exist"},
		{name: "ACL with a short secret", method: "POST", path: dbPath + "/acls",
			body:   `{"initiator":"` + testInitiator + `","chap":{"user":"u","secret":"short"}}`,
			status: 400, want: "12 to 255 characters"},
		{name: "ACL", method: "POST", path: dbPath + "/acls",
			body:   `{"initiator":"` + testInitiator + `","luns":{"0":1},"chap":{"user":"host1","secret":"` + aclSecret + `"}}`,
			status: 200, check: func(t *testing.T) {
				acl := h.m.Server().Target(db).Access().ACLs[testInitiator]
				if acl == nil || acl.LUNs[0] != 1 || acl.CHAP == nil || acl.CHAP.Secret != aclSecret {
					t.Errorf("engine ACL %+v", acl)
				}
			}},
		{name: "duplicate ACL", method: "POST", path: dbPath + "/acls", body: `{"initiator":"` + testInitiator + `"}`,
			status: 409, want: "replace it with PUT"},
		{name: "read-only ACL", method: "PUT", path: dbPath + "/acls/" + host2, body: `{"read_only":true}`,
			status: 200, check: func(t *testing.T) {
				if acl := h.m.Server().Target(db).Access().ACLs[host2]; acl == nil || !acl.ReadOnly {
					t.Errorf("engine ACL %+v", acl)
				}
			}},
		{name: "ACL body names another initiator", method: "PUT", path: dbPath + "/acls/" + host2,
			body: `{"initiator":"` + testInitiator + `"}`, status: 400, want: "but the path"},
		{name: "remove a mapped LUN", method: "DELETE", path: dbPath + "/luns/1", status: 400, want: "change that ACL first"},
		{name: "target CHAP", method: "PUT", path: dbPath + "/chap",
			body:   `{"user":"db","secret":"` + chapSecret + `","mutual_user":"tgt","mutual_secret":"` + chapSecret + `x"}`,
			status: 200, check: func(t *testing.T) {
				if c := h.m.Server().Target(db).Access().CHAP; c == nil || c.MutualUser != "tgt" {
					t.Errorf("engine CHAP %+v", c)
				}
			}},
		{name: "mutual secret equal to the secret", method: "PUT", path: dbPath + "/chap",
			body:   `{"user":"db","secret":"` + chapSecret + `","mutual_user":"tgt","mutual_secret":"` + chapSecret + `"}`,
			status: 400, want: "must differ"},
		{name: "discovery CHAP", method: "PUT", path: "/v1/discovery/chap", body: `{"user":"disc","secret":"` + discoSecret + `"}`,
			status: 200},
		{name: "session limits", method: "PATCH", path: dbPath, body: `{"max_sessions":3,"max_sessions_per_initiator":1}`,
			status: 200},
		{name: "negative limit", method: "PATCH", path: dbPath, body: `{"max_sessions":-1}`, status: 400, want: "cannot be negative"},
		{name: "portal with a bad address", method: "POST", path: "/v1/portals", body: `{"address":"localhost"}`,
			status: 400, want: "is not host:port"},
		{name: "remove ACL", method: "DELETE", path: dbPath + "/acls/" + host2, status: 200},
		{name: "remove a missing ACL", method: "DELETE", path: dbPath + "/acls/" + host2, status: 404},
		{name: "bad TSIH", method: "POST", path: "/v1/sessions/abc/logout", status: 400, want: "is not a TSIH"},
		{name: "missing session", method: "GET", path: "/v1/sessions/999", status: 404},
		{name: "unknown route", method: "GET", path: "/v1/lunz", status: 404},
		{name: "delete a missing target", method: "DELETE", path: "/v1/targets/iqn.2026-11.com.example:nope", status: 404},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := h.m.cfg.Clone()
			file, _ := os.ReadFile(h.m.Path())
			status, answer := h.call(s.method, s.path, s.body)
			if status != s.status || !strings.Contains(answer, s.want) {
				t.Fatalf("%s %s: status %d %q, want %d with %q", s.method, s.path, status, answer, s.status, s.want)
			}
			after, _ := os.ReadFile(h.m.Path())
			if s.status != 200 {
				if !reflect.DeepEqual(before, h.m.cfg) {
					t.Errorf("a refused request changed the running configuration")
				}
				if string(file) != string(after) {
					t.Errorf("a refused request changed the file")
				}
			} else if s.method != "GET" {
				saved, err := LoadConfig(h.m.Path())
				if err != nil || !reflect.DeepEqual(saved, h.m.cfg) {
					t.Errorf("the saved configuration differs from the running one (%v)", err)
				}
			}
			if s.check != nil {
				s.check(t)
			}
		})
	}

	t.Run("secrets are write-only", func(t *testing.T) {
		var shown []string
		for _, p := range []string{"/v1/config", "/v1/targets", dbPath} {
			_, body := h.call("GET", p, "")
			shown = append(shown, body)
		}
		shown = append(shown, h.logs.String())
		for _, secret := range []string{chapSecret, aclSecret, discoSecret} {
			for i, s := range shown {
				if strings.Contains(s, secret) {
					t.Errorf("output %d shows a secret", i)
				}
			}
		}
		if !strings.Contains(shown[2], `"user": "host1"`) {
			t.Errorf("target view does not name the ACL's CHAP user:\n%s", shown[2])
		}
		st, err := os.Stat(h.m.Path())
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("config file %v mode %v: want 0600, it holds secrets", err, st.Mode())
		}
	})

	t.Run("restart restores the configuration", func(t *testing.T) {
		saved, err := LoadConfig(h.m.Path())
		if err != nil {
			t.Fatal(err)
		}
		h.m.Server().Shutdown(context.Background())
		h.m.Close()
		h2 := start(t, dir, saved)
		if !reflect.DeepEqual(h2.m.cfg, h.m.cfg) {
			t.Errorf("after restart:\n%+v\nbefore:\n%+v", h2.m.cfg, h.m.cfg)
		}
		if n := h2.m.LUNSize(db, 1); n != 2<<20 {
			t.Errorf("LUN 1 is %d bytes after restart, want 2MiB", n)
		}
		if acl := h2.m.Server().Target(db).Access().ACLs[testInitiator]; acl == nil || acl.CHAP.Secret != aclSecret {
			t.Errorf("ACL after restart: %+v", acl)
		}
	})
}

func TestSocketPermissions(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	st, err := os.Stat(h.sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("admin socket mode %v, want a socket with 0600", st.Mode())
	}
	if _, err := ListenSocket(h.sock); !errors.Is(err, ErrSocketBusy) {
		t.Errorf("a second ListenSocket on a live socket: %v, want ErrSocketBusy", err)
	}
}

// TestSessions checks session listing, counters, metrics, limits and a
// logout over real logins.
func TestSessions(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	if status, msg := h.call("PATCH", "/v1/targets/"+testTarget, `{"max_sessions_per_initiator":1}`); status != 200 {
		t.Fatal(msg)
	}
	c, err := h.login(testInitiator, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// a second session of the same initiator is beyond the limit
	_, err = h.login(testInitiator, testTarget)
	var le *initiator.LoginError
	if !errors.As(err, &le) || le.Status != iscsi.LoginTooManyConnections {
		t.Errorf("second session: %v, want status 0206", err)
	}
	// a READ CAPACITY (16) passes the power-on unit attention first
	for range 2 {
		c.Do(context.Background(), &initiator.Command{CDB: []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, ReadLen: 32})
	}
	// the engine counts a command just after sending its response
	var ss []SessionInfo
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if err := h.client.Do(context.Background(), "GET", "/v1/sessions", nil, &ss); err != nil {
			t.Fatal(err)
		}
		if len(ss) != 1 || ss[0].Stats.Commands == 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(ss) != 1 || ss[0].Initiator != testInitiator || ss[0].Target != testTarget || ss[0].Stats.Commands != 2 ||
		ss[0].Stats.Errors != 1 || ss[0].Stats.ReadBytes != 32 || ss[0].Connections[0].Params.MaxBurstLength == 0 {
		t.Fatalf("sessions: %+v", ss)
	}
	metrics := h.metrics()
	for _, want := range []string{
		`iserd_target_sessions{target="` + testTarget + `"} 1`,
		`iserd_session_commands_total{initiator="` + testInitiator + `",isid="`,
		`iserd_lun_errors_total{lun="0",target="` + testTarget + `"} 1`,
		`iserd_lun_command_duration_seconds_bucket{lun="0",target="` + testTarget + `",le="+Inf"} 2`,
		`iserd_lun_capacity_bytes{lun="0",target="` + testTarget + `"} 1.6777216e+07`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	lintMetrics(t, metrics)
	tsih := ss[0].TSIH
	var r Result
	if err := h.client.Do(context.Background(), "POST", "/v1/sessions/"+itoa(tsih)+"/logout?close=true", nil, &r); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	for deadline := time.Now().Add(2 * time.Second); h.m.Server().Session(tsih) != nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the session is still registered 2s after it was closed")
		}
	}
	if _, err := h.login(testInitiator, testTarget); err != nil {
		t.Errorf("login after the old session was closed: %v", err)
	}
}

func itoa(n uint16) string {
	b, _ := json.Marshal(n)
	return string(b)
}
