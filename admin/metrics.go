package admin

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/qos"
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

// qosFamily is the metrics of the rate limiters, labelled by target,
// scope (target, lun or initiator), lun and initiator (empty when the
// scope has none).
type qosFamily struct {
	admitted, bytes, throttled, throttledSeconds, overdrawn, queued, wait, limit *prometheus.Desc
}

func newQoSFamily() qosFamily {
	labels := []string{"target", "scope", "lun", "initiator"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc("iserd_qos_"+name, help, append(labels, extra...), nil)
	}
	return qosFamily{
		admitted:         d("admitted_total", "Commands the rate limiter admitted, at once or after waiting."),
		bytes:            d("admitted_bytes_total", "Bytes of the commands the rate limiter admitted."),
		throttled:        d("throttled_total", "Commands that waited in the rate limiter."),
		throttledSeconds: d("throttled_seconds_total", "Time commands waited in the rate limiter, summed."),
		overdrawn:        d("overdrawn_total", "Commands admitted after waiting the longest a command may (1s), beyond the limit."),
		queued:           d("queued", "Commands waiting in the rate limiter now."),
		wait:             d("wait_seconds", "How long admitted commands waited in the rate limiter."),
		limit:            d("limit", "A configured limit: commands or bytes per second, or the burst in seconds.", "limit"),
	}
}

func (f qosFamily) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{f.admitted, f.bytes, f.throttled, f.throttledSeconds, f.overdrawn, f.queued, f.wait, f.limit} {
		ch <- d
	}
}

// collect writes one limiter's series.
func (f qosFamily) collect(ch chan<- prometheus.Metric, target string, st iscsi.QoSStat) {
	lun := ""
	if st.Scope == "lun" {
		lun = strconv.FormatUint(st.LUN, 10)
	}
	labels := []string{target, st.Scope, lun, st.Initiator}
	s := st.Stats
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	counter(f.admitted, float64(s.Admitted))
	counter(f.bytes, float64(s.Bytes))
	counter(f.throttled, float64(s.Throttled))
	counter(f.throttledSeconds, float64(s.ThrottledNanos)/1e9)
	counter(f.overdrawn, float64(s.Overdrawn))
	ch <- prometheus.MustNewConstMetric(f.queued, prometheus.GaugeValue, float64(s.Queued), labels...)
	buckets := make(map[float64]uint64, len(qos.WaitBounds))
	var count uint64
	for i, n := range s.Wait {
		count += n
		if i < len(qos.WaitBounds) {
			buckets[qos.WaitBounds[i].Seconds()] = count
		}
	}
	ch <- prometheus.MustNewConstHistogram(f.wait, count, float64(s.ThrottledNanos)/1e9, buckets, labels...)
	l := st.Limits
	for _, v := range []struct {
		name string
		v    float64
	}{{"iops", l.IOPS}, {"read_iops", l.ReadIOPS}, {"write_iops", l.WriteIOPS}, {"bandwidth", l.Bandwidth},
		{"read_bandwidth", l.ReadBandwidth}, {"write_bandwidth", l.WriteBandwidth}, {"burst_seconds", l.Burst.Seconds()}} {
		if v.v != 0 {
			ch <- prometheus.MustNewConstMetric(f.limit, prometheus.GaugeValue, v.v, append(labels, v.name)...)
		}
	}
}

// collector reads the engine's per-target, per-LUN and per-session
// counters at each scrape.
type collector struct {
	m                                       *Manager
	targetSessions, capacity, sessionWindow *prometheus.Desc
	lun, session                            family
	qos                                     qosFamily
	// server-wide
	refusedConns, busyNoBuffer             *prometheus.Desc
	bufferMapped, bufferInUse, bufferLimit *prometheus.Desc
	cluster                                clusterDescs
}

// clusterDescs are the series of a gateway in a cluster.
type clusterDescs struct {
	fenced, nodesLive, renewals, failures, lost *prometheus.Desc
}

func newClusterDescs() clusterDescs {
	return clusterDescs{
		fenced: prometheus.NewDesc("iserd_cluster_fenced",
			"1 while this gateway is fenced (no lease renewal in time): writes and reservation changes are refused.", nil, nil),
		nodesLive: prometheus.NewDesc("iserd_cluster_nodes_live", "Gateways of the cluster whose lease is held, this one included, as last seen.", nil, nil),
		renewals:  prometheus.NewDesc("iserd_cluster_lease_renewals_total", "Successful lease grants and renewals.", nil, nil),
		failures:  prometheus.NewDesc("iserd_cluster_lease_failures_total", "Lease grants and renewals that failed.", nil, nil),
		lost:      prometheus.NewDesc("iserd_cluster_leases_lost_total", "Leases found expired or revoked (each replaced by a new one).", nil, nil),
	}
}

func (d clusterDescs) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.fenced, d.nodesLive, d.renewals, d.failures, d.lost} {
		ch <- x
	}
}

// collect reports a cluster node's status.
func (d clusterDescs) collect(ch chan<- prometheus.Metric, st cluster.Status) {
	fenced, live := 0.0, 0.0
	if st.Fenced {
		fenced = 1
	}
	for _, n := range st.Nodes {
		if n.Live {
			live++
		}
	}
	ch <- prometheus.MustNewConstMetric(d.fenced, prometheus.GaugeValue, fenced)
	ch <- prometheus.MustNewConstMetric(d.nodesLive, prometheus.GaugeValue, live)
	ch <- prometheus.MustNewConstMetric(d.renewals, prometheus.CounterValue, float64(st.Renewals))
	ch <- prometheus.MustNewConstMetric(d.failures, prometheus.CounterValue, float64(st.Failures))
	ch <- prometheus.MustNewConstMetric(d.lost, prometheus.CounterValue, float64(st.LeasesLost))
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
		sessionWindow: prometheus.NewDesc("iserd_session_cmd_window", "Commands the session may have outstanding (its CmdSN window; rate limits shrink it).",
			[]string{"target", "initiator", "isid", "tsih"}, nil),
		qos:     newQoSFamily(),
		cluster: newClusterDescs(),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.targetSessions
	ch <- c.capacity
	ch <- c.sessionWindow
	c.lun.describe(ch)
	c.session.describe(ch)
	for _, d := range []*prometheus.Desc{c.refusedConns, c.busyNoBuffer, c.bufferMapped, c.bufferInUse, c.bufferLimit} {
		ch <- d
	}
	c.qos.describe(ch)
	c.cluster.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if cs, err := c.m.ClusterStatus(); err == nil {
		c.cluster.collect(ch, cs.Status)
	}
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
		labels := []string{s.TargetName(), s.InitiatorName(), s.ISID(), strconv.Itoa(int(s.TSIH()))}
		c.session.collect(ch, s.Stats(), labels...)
		w, _ := s.Window()
		ch <- prometheus.MustNewConstMetric(c.sessionWindow, prometheus.GaugeValue, float64(w), labels...)
	}
	for _, t := range c.m.srv.Targets() {
		ch <- prometheus.MustNewConstMetric(c.targetSessions, prometheus.GaugeValue, float64(perTarget[t.Name]), t.Name)
		for _, lun := range t.SCSI.LUNs() {
			n := strconv.FormatUint(lun, 10)
			ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(c.m.LUNSize(t.Name, lun)), t.Name, n)
			c.lun.collect(ch, t.LUNStats(lun), t.Name, n)
		}
		for _, st := range t.QoSStats() {
			c.qos.collect(ch, t.Name, st)
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
