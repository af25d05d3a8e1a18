package admin

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/qos"
)

// QoSInfo is a target's rate limits as configured, what each limiter has
// done, and the CmdSN window of each session.
type QoSInfo struct {
	Target       string     `json:"target"`
	QoS          *QoSConfig `json:"qos,omitempty"`
	InitiatorQoS *QoSConfig `json:"initiator_qos,omitempty"`
	LUNs         []LUNQoS   `json:"luns,omitempty"`
	ACLs         []ACLQoS   `json:"acls,omitempty"`
	// Limiters are the limiters at work: the target's, the LUNs', and one
	// per initiator logged in under an initiator limit.
	Limiters []LimiterInfo `json:"limiters"`
	Sessions []WindowInfo  `json:"sessions"`
}

// LUNQoS is a LUN's qos block.
type LUNQoS struct {
	LUN uint64     `json:"lun"`
	QoS *QoSConfig `json:"qos"`
}

// ACLQoS is an ACL entry's qos block and weight; as a request body (PUT
// .../acls/{initiator}/qos) a field left out keeps its value.
type ACLQoS struct {
	Initiator string     `json:"initiator,omitempty"`
	QoS       *QoSConfig `json:"qos,omitempty"`
	Weight    *int       `json:"weight,omitempty"`
}

// LimiterInfo is one limiter's counters.
type LimiterInfo struct {
	Scope     string  `json:"scope"` // target, lun or initiator
	LUN       *uint64 `json:"lun,omitempty"`
	Initiator string  `json:"initiator,omitempty"`
	// Admitted commands and their bytes; Throttled those that waited, for
	// ThrottledSeconds in all; Overdrawn those admitted after waiting the
	// most a command may (1s), into debt; Queued those waiting now.
	Admitted         uint64  `json:"admitted"`
	Bytes            uint64  `json:"bytes"`
	Throttled        uint64  `json:"throttled"`
	ThrottledSeconds float64 `json:"throttled_seconds"`
	Overdrawn        uint64  `json:"overdrawn"`
	Queued           int     `json:"queued"`
	// Wait counts admitted commands by how long they waited here.
	Wait []LatencyBucket `json:"wait"`
}

// WindowInfo is a session's CmdSN window: how many commands it may have
// outstanding, and whether rate limits shrink it.
type WindowInfo struct {
	TSIH      uint16 `json:"tsih"`
	Initiator string `json:"initiator"`
	Window    uint32 `json:"cmd_window"`
	Limited   bool   `json:"limited"`
}

// limiterInfo converts a limiter's counters.
func limiterInfo(st iscsi.QoSStat) LimiterInfo {
	s := st.Stats
	li := LimiterInfo{Scope: st.Scope, Initiator: st.Initiator, Admitted: s.Admitted, Bytes: s.Bytes,
		Throttled: s.Throttled, ThrottledSeconds: float64(s.ThrottledNanos) / 1e9, Overdrawn: s.Overdrawn, Queued: s.Queued}
	if st.Scope == "lun" {
		li.LUN = &st.LUN
	}
	for i, n := range s.Wait {
		le := "+Inf"
		if i < len(qos.WaitBounds) {
			le = qos.WaitBounds[i].String()
		}
		li.Wait = append(li.Wait, LatencyBucket{LE: le, Count: n})
	}
	return li
}

func (m *Manager) getQoS(r *http.Request) (any, error) {
	t, err := targetOf(m.Config(), r)
	if err != nil {
		return nil, err
	}
	out := QoSInfo{Target: t.Name, QoS: t.QoS, InitiatorQoS: t.InitiatorQoS, Limiters: []LimiterInfo{}, Sessions: []WindowInfo{}}
	for _, l := range t.LUNs {
		if l.QoS != nil {
			out.LUNs = append(out.LUNs, LUNQoS{LUN: l.LUN, QoS: l.QoS})
		}
	}
	for _, a := range t.ACLs {
		if a.QoS != nil || a.Weight != 0 {
			w := max(a.Weight, 1)
			out.ACLs = append(out.ACLs, ACLQoS{Initiator: a.Initiator, QoS: a.QoS, Weight: &w})
		}
	}
	if it := m.srv.Target(t.Name); it != nil {
		for _, st := range it.QoSStats() {
			out.Limiters = append(out.Limiters, limiterInfo(st))
		}
	}
	for _, s := range m.srv.Sessions() {
		if s.TargetName() == t.Name {
			w, limited := s.Window()
			out.Sessions = append(out.Sessions, WindowInfo{TSIH: s.TSIH(), Initiator: s.InitiatorName(), Window: w, Limited: limited})
		}
	}
	slices.SortFunc(out.Sessions, func(a, b WindowInfo) int { return int(a.TSIH) - int(b.TSIH) })
	return out, nil
}

// qosBlock is what a request leaves of a qos block: nil when it limits
// nothing.
func qosBlock(q *QoSConfig) *QoSConfig {
	if q.empty() {
		return nil
	}
	return q
}

// setQoS handles PUT (body: a qos block) and DELETE of the qos block that
// place finds in the target named in the path.
func (m *Manager) setQoS(what string, place func(*TargetConfig, *http.Request) (**QoSConfig, error)) apiFunc {
	return func(r *http.Request) (any, error) {
		var q *QoSConfig
		if r.Method == http.MethodPut {
			q = &QoSConfig{}
			if err := decode(r, q); err != nil {
				return nil, err
			}
		}
		err := m.editTarget(r, nil, false, func(t *TargetConfig) error {
			p, err := place(t, r)
			if err != nil {
				return err
			}
			*p = qosBlock(q)
			return nil
		})
		if err != nil {
			return nil, err
		}
		if q.empty() {
			return m.result("%s of %s: no limit", what, r.PathValue("target")), nil
		}
		return m.result("%s of %s set", what, r.PathValue("target")), nil
	}
}

// targetQoS, initiatorQoS and lunQoS find the qos blocks of the API paths.
func targetQoS(t *TargetConfig, _ *http.Request) (**QoSConfig, error)    { return &t.QoS, nil }
func initiatorQoS(t *TargetConfig, _ *http.Request) (**QoSConfig, error) { return &t.InitiatorQoS, nil }

func lunQoS(t *TargetConfig, r *http.Request) (**QoSConfig, error) {
	n, err := lunOf(r)
	if err != nil {
		return nil, err
	}
	l := t.LUN(n)
	if l == nil {
		return nil, fmt.Errorf("target %s lun %d: %w", t.Name, n, ErrNotFound)
	}
	return &l.QoS, nil
}

// setACLQoS handles PUT .../acls/{initiator}/qos (qos block and weight,
// each kept when left out) and DELETE (both cleared).
func (m *Manager) setACLQoS(r *http.Request) (any, error) {
	var req ACLQoS
	if r.Method == http.MethodPut {
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if req.QoS == nil && req.Weight == nil {
			return nil, fmt.Errorf("give qos, weight or both, e.g. {\"qos\": {\"iops\": 1000}, \"weight\": 2}")
		}
	}
	initiator := r.PathValue("initiator")
	err := m.editTarget(r, nil, false, func(t *TargetConfig) error {
		a := t.ACL(initiator)
		if a == nil {
			return fmt.Errorf("target %s: ACL for %s: %w: add the initiator first (iserctl acl add)", t.Name, initiator, ErrNotFound)
		}
		if r.Method == http.MethodDelete {
			a.QoS, a.Weight = nil, 0
			return nil
		}
		if req.QoS != nil {
			a.QoS = qosBlock(req.QoS)
		}
		if req.Weight != nil {
			a.Weight = *req.Weight
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if r.Method == http.MethodDelete {
		return m.result("QoS of %s on %s cleared: no own limits, weight 1", initiator, r.PathValue("target")), nil
	}
	return m.result("QoS of %s on %s set", initiator, r.PathValue("target")), nil
}
