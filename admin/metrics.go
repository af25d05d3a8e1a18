package admin

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/iserd/iserd/iscsi"
)

// series is one labelled set of counters.
type series struct {
	labels string // `name="value",...` without braces
	stats  iscsi.SessionStats
}

// family describes the metrics written for a kind of series.
type family struct {
	prefix string // iserd_lun or iserd_session
	what   string // "the LUN" or "the session", for HELP
}

// serveMetrics writes the counters of every LUN and session in the
// Prometheus text exposition format (version 0.0.4).
func (m *Manager) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	m.WriteMetrics(w)
}

// WriteMetrics writes the metrics to w.
func (m *Manager) WriteMetrics(w io.Writer) {
	var luns, sessions []series
	var sizes []string
	perTarget := map[string]int{}
	for _, s := range m.srv.Sessions() {
		if s.TargetName() == "" {
			continue // discovery
		}
		perTarget[s.TargetName()]++
		sessions = append(sessions, series{labels: labels("target", s.TargetName(), "initiator", s.InitiatorName(),
			"isid", s.ISID(), "tsih", strconv.Itoa(int(s.TSIH()))), stats: s.Stats()})
	}
	targets := m.srv.Targets()
	for _, t := range targets {
		for _, lun := range t.SCSI.LUNs() {
			l := labels("target", t.Name, "lun", strconv.FormatUint(lun, 10))
			luns = append(luns, series{labels: l, stats: t.LUNStats(lun)})
			sizes = append(sizes, fmt.Sprintf("iserd_lun_capacity_bytes{%s} %d\n", l, m.LUNSize(t.Name, lun)))
		}
	}
	fmt.Fprint(w, "# HELP iserd_target_sessions Sessions logged in to the target.\n# TYPE iserd_target_sessions gauge\n")
	for _, t := range targets {
		fmt.Fprintf(w, "iserd_target_sessions{%s} %d\n", labels("target", t.Name), perTarget[t.Name])
	}
	fmt.Fprint(w, "# HELP iserd_lun_capacity_bytes Capacity of the LUN.\n# TYPE iserd_lun_capacity_bytes gauge\n")
	fmt.Fprint(w, strings.Join(sizes, ""))
	writeFamily(w, family{"iserd_lun", "the LUN since iserd started, over all sessions"}, luns)
	writeFamily(w, family{"iserd_session", "the session since it logged in"}, sessions)
}

// writeFamily writes the command counters and latency histogram of a set
// of series. The engine keeps no latency sum, so histograms have buckets
// and a count only.
func writeFamily(w io.Writer, f family, ss []series) {
	counters := []struct {
		name, help, typ string
		value           func(iscsi.SessionStats) string
	}{
		{"commands_total", "SCSI commands completed by", "counter", func(s iscsi.SessionStats) string { return u(s.Commands) }},
		{"read_bytes_total", "Bytes read from", "counter", func(s iscsi.SessionStats) string { return u(s.ReadBytes) }},
		{"write_bytes_total", "Bytes written to", "counter", func(s iscsi.SessionStats) string { return u(s.WriteBytes) }},
		{"errors_total", "Commands that ended with a status other than GOOD on", "counter",
			func(s iscsi.SessionStats) string { return u(s.Errors) }},
		{"in_flight", "Commands received and not yet answered (queue depth) on", "gauge",
			func(s iscsi.SessionStats) string { return strconv.FormatInt(s.InFlight, 10) }},
	}
	for _, c := range counters {
		fmt.Fprintf(w, "# HELP %s_%s %s %s.\n# TYPE %s_%s %s\n", f.prefix, c.name, c.help, f.what, f.prefix, c.name, c.typ)
		for _, s := range ss {
			fmt.Fprintf(w, "%s_%s{%s} %s\n", f.prefix, c.name, s.labels, c.value(s.stats))
		}
	}
	name := f.prefix + "_command_duration_seconds"
	fmt.Fprintf(w, "# HELP %s Latency of the commands of %s.\n# TYPE %s histogram\n", name, f.what, name)
	for _, s := range ss {
		var cum uint64
		for i, n := range s.stats.LatencyBuckets {
			cum += n
			le := "+Inf"
			if i < len(iscsi.LatencyBounds) {
				le = strconv.FormatFloat(iscsi.LatencyBounds[i].Seconds(), 'g', -1, 64)
			}
			fmt.Fprintf(w, "%s_bucket{%s,le=\"%s\"} %d\n", name, s.labels, le, cum)
		}
		fmt.Fprintf(w, "%s_sum{%s} %g\n", name, s.labels, float64(s.stats.LatencyNanos)/1e9)
		fmt.Fprintf(w, "%s_count{%s} %d\n", name, s.labels, cum)
	}
}

func u(v uint64) string { return strconv.FormatUint(v, 10) }

// labels formats name/value pairs as Prometheus labels, escaping values.
func labels(kv ...string) string {
	var b strings.Builder
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=\"%s\"", kv[i], esc.Replace(kv[i+1]))
	}
	return b.String()
}
