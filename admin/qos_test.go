package admin

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/qos"
)

func TestQoSConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string // a target's extra keys, then its LUN's and its ACL's
		want string // the error, "" for none
	}{
		{"all scopes", `
    qos: {iops: 5000, bandwidth: 200MiB/s, burst: 250ms}
    initiator_qos: {read_iops: 1000, write_bandwidth: 40MiB}
    luns: [{lun: 0, backend: memory, size: 1MiB, qos: {write_iops: 2000}}]
    acls: [{initiator: ` + testInitiator + `, weight: 3, qos: {iops: 100}}]`, ""},
		{"negative", `
    qos: {iops: -1}
    luns: [{lun: 0, backend: memory, size: 1MiB}]`, "qos iops -1 is negative"},
		{"bad rate", `
    qos: {bandwidth: fast}
    luns: [{lun: 0, backend: memory, size: 1MiB}]`, `rate "fast" is not bytes per second`},
		{"bad burst", `
    qos: {iops: 10, burst: soon}
    luns: [{lun: 0, backend: memory, size: 1MiB}]`, `invalid duration "soon"`},
		{"burst too short", `
    luns: [{lun: 0, backend: memory, size: 1MiB, qos: {iops: 10, burst: 1ms}}]`, "lun 0: qos: burst 1ms is outside 10ms..1h0m0s"},
		{"burst alone", `
    initiator_qos: {burst: 1s}
    luns: [{lun: 0, backend: memory, size: 1MiB}]`, "initiator_qos: a burst without a limit"},
		{"weight", `
    luns: [{lun: 0, backend: memory, size: 1MiB}]
    acls: [{initiator: ` + testInitiator + `, weight: 1001}]`, "weight 1001 is outside 1..1000"},
		{"unknown key", `
    qos: {iosp: 10}
    luns: [{lun: 0, backend: memory, size: 1MiB}]`, "field iosp not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "iserd.yaml")
			raw := "targets:\n  - name: " + testTarget + tt.yaml + "\n"
			if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(path)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want one with %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc := cfg.Targets[0]
			q := tc.qos()
			if q.Target != (qos.Limits{IOPS: 5000, Bandwidth: 200 << 20, Burst: 250 * time.Millisecond}) ||
				q.Initiator != (qos.Limits{ReadIOPS: 1000, WriteBandwidth: 40 << 20}) ||
				q.LUNs[0] != (qos.Limits{WriteIOPS: 2000}) ||
				*q.Initiators[testInitiator].Limits != (qos.Limits{IOPS: 100}) || q.Initiators[testInitiator].Weight != 3 {
				t.Errorf("engine QoS %+v", q)
			}
			// Saved and read back, the blocks are the same.
			if err := cfg.Save(path); err != nil {
				t.Fatal(err)
			}
			back, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := js(t, back.Targets[0]), js(t, tc); got != want {
				t.Errorf("after save and load:\n%s\nwant\n%s", got, want)
			}
			if saved, _ := os.ReadFile(path); !strings.Contains(string(saved), "bandwidth: 200MiB") ||
				!strings.Contains(string(saved), "burst: 250ms") {
				t.Errorf("saved file:\n%s", saved)
			}
		})
	}
}

func js(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestQoSAPI sets limits at every scope through the API while a session
// runs: the session is not disturbed (no logout asked, no reconnect), the
// limits are live and saved, and the metrics and GET .../qos show them.
func TestQoSAPI(t *testing.T) {
	dir := t.TempDir()
	cfg := baseConfig(dir)
	cfg.Targets[0].ACLs = []ACLConfig{{Initiator: testInitiator}}
	h := start(t, dir, cfg)
	c, err := h.login(testInitiator, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tur := &initiator.Command{CDB: make([]byte, 6)}
	c.Do(context.Background(), tur) // POWER ON, RESET
	read := func() {
		t.Helper()
		r, err := c.Do(context.Background(), &initiator.Command{CDB: initiator.Read16(0, 8), ReadLen: 4096})
		if err != nil || r.Status != 0 {
			t.Fatalf("read: %+v %v", r, err)
		}
	}
	read()
	tp := "/v1/targets/" + testTarget
	steps := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"target", "PUT", tp + "/qos", `{"iops": 100000, "bandwidth": "1GiB"}`, 200, "QoS of " + testTarget + " set"},
		{"initiator default", "PUT", tp + "/initiator_qos", `{"read_iops": 50000}`, 200, "set"},
		{"lun", "PUT", tp + "/luns/0/qos", `{"write_bandwidth": "40MiB/s", "burst": "200ms"}`, 200, "set"},
		{"no such lun", "PUT", tp + "/luns/7/qos", `{"iops": 1}`, 404, "lun 7"},
		{"acl", "PUT", tp + "/acls/" + testInitiator + "/qos", `{"qos": {"iops": 60000}, "weight": 4}`, 200, "set"},
		{"acl weight only", "PUT", tp + "/acls/" + testInitiator + "/qos", `{"weight": 5}`, 200, "set"},
		{"acl nothing", "PUT", tp + "/acls/" + testInitiator + "/qos", `{}`, 400, "give qos, weight or both"},
		{"no such acl", "PUT", tp + "/acls/iqn.2026-11.org.iserd.test:nobody/qos", `{"weight": 2}`, 404, "add the initiator first"},
		{"bad burst", "PUT", tp + "/qos", `{"iops": 10, "burst": "soon"}`, 400, "invalid duration"},
		{"bad weight", "PUT", tp + "/acls/" + testInitiator + "/qos", `{"weight": -2}`, 400, "weight -2 is outside"},
	}
	for _, s := range steps {
		status, got := h.call(s.method, s.path, s.body)
		if status != s.status || !strings.Contains(got, s.want) {
			t.Errorf("%s: %d %q, want %d with %q", s.name, status, got, s.status, s.want)
		}
	}
	read()
	var info QoSInfo
	if err := h.client.Do(context.Background(), "GET", tp+"/qos", nil, &info); err != nil {
		t.Fatal(err)
	}
	scopes := map[string]LimiterInfo{}
	for _, l := range info.Limiters {
		scopes[l.Scope] = l
	}
	if len(info.Limiters) != 3 || scopes["target"].Admitted != 1 || scopes["initiator"].Initiator != testInitiator ||
		scopes["lun"].Admitted != 0 { // the LUN limits writes only
		t.Errorf("limiters %+v", info.Limiters)
	}
	if len(info.ACLs) != 1 || *info.ACLs[0].Weight != 5 || info.ACLs[0].QoS.IOPS != 60000 {
		t.Errorf("ACL QoS %+v", info.ACLs)
	}
	if len(info.Sessions) != 1 || !info.Sessions[0].Limited || info.Sessions[0].Window > 128 {
		t.Errorf("sessions %+v", info.Sessions)
	}
	saved, err := LoadConfig(filepath.Join(dir, "iserd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if st := saved.Targets[0]; st.QoS == nil || st.QoS.IOPS != 100000 || st.LUNs[0].QoS.Burst != Duration(200*time.Millisecond) ||
		st.ACLs[0].Weight != 5 || st.InitiatorQoS.ReadIOPS != 50000 {
		t.Errorf("saved %+v", js(t, st))
	}
	text := h.metrics()
	for _, want := range []string{
		`iserd_qos_admitted_total{initiator="",lun="",scope="target",target="` + testTarget + `"} 1`,
		`iserd_qos_limit{initiator="",limit="write_bandwidth",lun="0",scope="lun",target="` + testTarget + `"} 4.194304e+07`,
		`iserd_qos_wait_seconds_bucket{initiator="` + testInitiator + `",lun="",scope="initiator",target="` + testTarget + `",le="0.0001"} 1`,
		`iserd_session_cmd_window{initiator="` + testInitiator + `"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	lintMetrics(t, text)
	for _, p := range []string{tp + "/qos", tp + "/initiator_qos", tp + "/luns/0/qos", tp + "/acls/" + testInitiator + "/qos"} {
		if status, got := h.call("DELETE", p, ""); status != 200 {
			t.Errorf("DELETE %s: %d %s", p, status, got)
		}
	}
	read()
	if st := h.m.Server().Target(testTarget).QoSStats(); len(st) != 0 {
		t.Errorf("limiters left after every block was deleted: %+v", st)
	}
	if strings.Contains(h.logs.String(), "asking it to log out") {
		t.Error("a QoS change asked the session to log out")
	}
	if err := c.Err(); err != nil {
		t.Errorf("the session broke: %v", err)
	}
}
