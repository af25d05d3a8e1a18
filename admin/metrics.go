package admin

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iserd/iserd/iscsi"
)

// family is the set of metrics written for one kind of series: per LUN or
// per session.
type family struct {
	commands, readBytes, writeBytes, errors, inFlight, duration *prometheus.Desc
}

// newFamily describes the command counters, queue depth and latency
// histogram of the series named prefix_*, labelled by labels; what ends
// their help texts.
func newFamily(prefix, what string, labels ...string) family {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prefix+"_"+name, help+" "+what+".", labels, nil)
	}
	return family{
		commands:   d("commands_total", "SCSI commands completed by"),
		readBytes:  d("read_bytes_total", "Bytes read from"),
		writeBytes: d("write_bytes_total", "Bytes written to"),
		errors:     d("errors_total", "Commands that ended with a status other than GOOD on"),
		inFlight:   d("in_flight", "Commands received and not yet answered (queue depth) on"),
		duration:   d("command_duration_seconds", "Latency of the commands of"),
	}
}

func (f family) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{f.commands, f.readBytes, f.writeBytes, f.errors, f.inFlight, f.duration} {
		ch <- d
	}
}

// collect writes one series of the family.
func (f family) collect(ch chan<- prometheus.Metric, s iscsi.SessionStats, labels ...string) {
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(f.commands, s.Commands)
	counter(f.readBytes, s.ReadBytes)
	counter(f.writeBytes, s.WriteBytes)
	counter(f.errors, s.Errors)
	ch <- prometheus.MustNewConstMetric(f.inFlight, prometheus.GaugeValue, float64(s.InFlight), labels...)
	buckets := make(map[float64]uint64, len(iscsi.LatencyBounds))
	var count uint64
	for i, n := range s.LatencyBuckets {
		count += n
		if i < len(iscsi.LatencyBounds) {
			buckets[iscsi.LatencyBounds[i].Seconds()] = count
		}
	}
	ch <- prometheus.MustNewConstHistogram(f.duration, count, float64(s.LatencyNanos)/1e9, buckets, labels...)
}

// collector reads the engine's per-target, per-LUN and per-session
// counters at each scrape.
type collector struct {
	m                        *Manager
	targetSessions, capacity *prometheus.Desc
	lun, session             family
	// server-wide
	refusedConns, busyNoBuffer             *prometheus.Desc
	bufferMapped, bufferInUse, bufferLimit *prometheus.Desc
}

func newCollector(m *Manager) *collector {
	return &collector{
		m: m,
		targetSessions: prometheus.NewDesc("iserd_target_sessions", "Sessions logged in to the target.",
			[]string{"target"}, nil),
		capacity: prometheus.NewDesc("iserd_lun_capacity_bytes", "Capacity of the LUN.", []string{"target", "lun"}, nil),
		lun:      newFamily("iserd_lun", "the LUN since iserd started, over all sessions", "target", "lun"),
		session:  newFamily("iserd_session", "the session since it logged in", "target", "initiator", "isid", "tsih"),
		refusedConns: prometheus.NewDesc("iserd_connections_refused_total",
			"Connections closed at once by limits.connections or limits.login_connections[_per_host].", nil, nil),
		busyNoBuffer: prometheus.NewDesc("iserd_commands_busy_no_buffer_total",
			"Commands answered BUSY because limits.buffer_memory was exhausted.", nil, nil),
		bufferMapped: prometheus.NewDesc("iserd_buffer_mapped_bytes", "Command buffer memory mapped now.", nil, nil),
		bufferInUse:  prometheus.NewDesc("iserd_buffer_in_use_bytes", "Command buffer memory held by commands now.", nil, nil),
		bufferLimit:  prometheus.NewDesc("iserd_buffer_limit_bytes", "Most command buffer memory iserd maps (limits.buffer_memory).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.targetSessions
	ch <- c.capacity
	c.lun.describe(ch)
	c.session.describe(ch)
	for _, d := range []*prometheus.Desc{c.refusedConns, c.busyNoBuffer, c.bufferMapped, c.bufferInUse, c.bufferLimit} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.srv.Stats()
	ch <- prometheus.MustNewConstMetric(c.refusedConns, prometheus.CounterValue, float64(st.RefusedConns))
	ch <- prometheus.MustNewConstMetric(c.busyNoBuffer, prometheus.CounterValue, float64(st.BusyNoBuffer))
	ch <- prometheus.MustNewConstMetric(c.bufferMapped, prometheus.GaugeValue, float64(st.BufferMapped))
	ch <- prometheus.MustNewConstMetric(c.bufferInUse, prometheus.GaugeValue, float64(st.BufferInUse))
	ch <- prometheus.MustNewConstMetric(c.bufferLimit, prometheus.GaugeValue, float64(st.BufferLimit))
	perTarget := map[string]int{}
	for _, s := range c.m.srv.Sessions() {
		if s.TargetName() == "" {
			continue // discovery
		}
		perTarget[s.TargetName()]++
		c.session.collect(ch, s.Stats(), s.TargetName(), s.InitiatorName(), s.ISID(), strconv.Itoa(int(s.TSIH())))
	}
	for _, t := range c.m.srv.Targets() {
		ch <- prometheus.MustNewConstMetric(c.targetSessions, prometheus.GaugeValue, float64(perTarget[t.Name]), t.Name)
		for _, lun := range t.SCSI.LUNs() {
			n := strconv.FormatUint(lun, 10)
			ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(c.m.LUNSize(t.Name, lun)), t.Name, n)
			c.lun.collect(ch, t.LUNStats(lun), t.Name, n)
		}
	}
}

// metricsHandler serves the Prometheus metrics: the engine's series, and
// the Go runtime's and the process's (go_*, process_*).
func (m *Manager) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(m), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
