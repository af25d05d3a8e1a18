package admin

import (
	"context"
	"os/exec"
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
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	lintMetrics(t, text)
}
