package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// metrics scrapes /metrics from the admin socket.
func (h *harness) metrics() string {
	h.t.Helper()
	raw, err := h.client.Raw(context.Background(), "GET", "/metrics", nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return string(raw)
}

// lintMetrics checks an exposition with the linter of promtool check
// metrics (promlint), and with promtool itself when it is installed
// (Debian's prometheus package).
func lintMetrics(t *testing.T, text string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: promlint only")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestMetricsFamilies checks that an idle daemon serves the engine's, the
// Go runtime's and the process's metrics, in a form promtool accepts.
func TestMetricsFamilies(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	text := h.metrics()
	for _, want := range []string{
		"# TYPE iserd_lun_command_duration_seconds histogram",
		`iserd_lun_command_duration_seconds_bucket{lun="0",target="` + testTarget + `",le="5e-05"} 0`,
		`iserd_lun_command_duration_seconds_sum{lun="0",target="` + testTarget + `"} 0`,
		"# TYPE iserd_lun_commands_total counter",
		"# TYPE iserd_lun_in_flight gauge",
		"iserd_commands_busy_no_buffer_total 0",
		"iserd_connections_refused_total 0",
		"iserd_buffer_limit_bytes 1.073741824e+09",
		"# TYPE iserd_buffer_in_use_bytes gauge",
		"# TYPE iserd_buffer_mapped_bytes gauge",
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	lintMetrics(t, text)
}

// dashboard is the part of a Grafana dashboard (schemaVersion 39) that
// Grafana needs to load it.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			X, Y, W, H int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// TestContrib checks contrib/: the dashboard has what Grafana needs, and
// every iserd_* series it or the alert rules name is one iserd serves;
// with promtool, the rules and the dashboard's queries parse.
func TestContrib(t *testing.T) {
	raw, err := os.ReadFile("../contrib/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 || len(d.Templating.List) == 0 {
		t.Fatalf("dashboard lacks uid, title, schemaVersion, panels or variables: %+v", d)
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] || p.Type == "" || p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: duplicate id, or no type, title, size or queries", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, q := range p.Targets {
			if q.RefID == "" || q.Expr == "" {
				t.Errorf("panel %q: a query without refId or expr", p.Title)
			}
			exprs = append(exprs, q.Expr)
		}
	}
	alerts, err := os.ReadFile("../contrib/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	h := start(t, dir, baseConfig(dir))
	c, err := h.login(testInitiator, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	served := h.metrics()
	name := regexp.MustCompile(`\biserd_[a-z_]+`)
	for _, n := range name.FindAllString(string(raw)+string(alerts), -1) {
		if !strings.Contains(served, "\n"+n+"{") && !strings.Contains(served, "\n"+n+" ") {
			t.Errorf("contrib/ names %s, which iserd does not serve", n)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed: the PromQL is not parsed")
	}
	// the dashboard's queries, with Grafana's variables filled in, as
	// recording rules promtool can check
	fill := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$target", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(fill.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(dir, "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"../contrib/prometheus-alerts.yml", file} {
		if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules %s: %v\n%s", f, err, out)
		}
	}
}
