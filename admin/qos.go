package admin

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/qos"
)

// QoSConfig is a qos: block: rate limits, each optional, on a LUN, a
// target, an ACL entry, or every initiator of a target (initiator_qos:).
type QoSConfig struct {
	IOPS      int64 `yaml:"iops,omitempty" json:"iops,omitempty"`
	ReadIOPS  int64 `yaml:"read_iops,omitempty" json:"read_iops,omitempty"`
	WriteIOPS int64 `yaml:"write_iops,omitempty" json:"write_iops,omitempty"`
	// Bandwidth, ReadBandwidth and WriteBandwidth are bytes per second,
	// written as sizes: 40MiB (or 40MiB/s).
	Bandwidth      Rate `yaml:"bandwidth,omitempty" json:"bandwidth,omitempty"`
	ReadBandwidth  Rate `yaml:"read_bandwidth,omitempty" json:"read_bandwidth,omitempty"`
	WriteBandwidth Rate `yaml:"write_bandwidth,omitempty" json:"write_bandwidth,omitempty"`
	// Burst is how much unused rate each limit keeps, as time at its rate
	// (default 50ms): after an idle spell that much passes at full speed.
	Burst Duration `yaml:"burst,omitempty" json:"burst,omitempty"`
}

// maxWeight bounds an ACL entry's weight.
const maxWeight = 1000

// limits converts the block; nil is no limit.
func (q *QoSConfig) limits() qos.Limits {
	if q == nil {
		return qos.Limits{}
	}
	return qos.Limits{IOPS: float64(q.IOPS), ReadIOPS: float64(q.ReadIOPS), WriteIOPS: float64(q.WriteIOPS),
		Bandwidth: float64(q.Bandwidth), ReadBandwidth: float64(q.ReadBandwidth),
		WriteBandwidth: float64(q.WriteBandwidth), Burst: time.Duration(q.Burst)}
}

// check validates a qos: block.
func (q *QoSConfig) check() error {
	if q == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"iops", q.IOPS}, {"read_iops", q.ReadIOPS}, {"write_iops", q.WriteIOPS}, {"bandwidth", int64(q.Bandwidth)},
		{"read_bandwidth", int64(q.ReadBandwidth)}, {"write_bandwidth", int64(q.WriteBandwidth)}} {
		if f.v < 0 {
			return fmt.Errorf("qos %s %d is negative (leave it out for no limit)", f.name, f.v)
		}
	}
	if err := q.limits().Check(); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	if q.Burst != 0 && q.limits().Zero() {
		return fmt.Errorf("qos: a burst without a limit: give iops or bandwidth too")
	}
	return nil
}

// empty reports whether the block limits nothing (and can be left out).
func (q *QoSConfig) empty() bool { return q == nil || *q == QoSConfig{} }

// checkQoS validates a target's qos blocks and weights.
func (t *TargetConfig) checkQoS() error {
	if err := t.QoS.check(); err != nil {
		return err
	}
	if err := t.InitiatorQoS.check(); err != nil {
		return fmt.Errorf("initiator_%w", err)
	}
	for _, l := range t.LUNs {
		if err := l.QoS.check(); err != nil {
			return fmt.Errorf("lun %d: %w", l.LUN, err)
		}
	}
	for _, a := range t.ACLs {
		if err := a.QoS.check(); err != nil {
			return fmt.Errorf("acl %s: %w", a.Initiator, err)
		}
		if a.Weight < 0 || a.Weight > maxWeight {
			return fmt.Errorf("acl %s: weight %d is outside 1..%d (0 or none: 1)", a.Initiator, a.Weight, maxWeight)
		}
	}
	return nil
}

// qos builds the engine's form of a target's limits and weights.
func (t *TargetConfig) qos() iscsi.QoS {
	q := iscsi.QoS{Target: t.QoS.limits(), Initiator: t.InitiatorQoS.limits()}
	for _, l := range t.LUNs {
		if !l.QoS.empty() {
			if q.LUNs == nil {
				q.LUNs = map[uint64]qos.Limits{}
			}
			q.LUNs[l.LUN] = l.QoS.limits()
		}
	}
	for _, a := range t.ACLs {
		if a.QoS.empty() && a.Weight == 0 {
			continue
		}
		iq := iscsi.InitiatorQoS{Weight: float64(a.Weight)}
		if !a.QoS.empty() {
			lim := a.QoS.limits()
			iq.Limits = &lim
		}
		if q.Initiators == nil {
			q.Initiators = map[string]iscsi.InitiatorQoS{}
		}
		q.Initiators[a.Initiator] = iq
	}
	return q
}

// Rate is bytes per second, written as a size with an optional /s: 40MiB,
// 40MiB/s, 1G.
type Rate int64

// ParseRate parses a rate such as 40MiB or 40MiB/s.
func ParseRate(s string) (int64, error) {
	n, err := ParseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if err != nil {
		return 0, fmt.Errorf("rate %q is not bytes per second such as 40MiB or 1GiB/s", s)
	}
	return n, nil
}

// UnmarshalYAML reads rates such as 40MiB.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseRate(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*r = Rate(v)
	return nil
}

// MarshalYAML writes the rate as a size.
func (r Rate) MarshalYAML() (any, error) { return r.String(), nil }

// UnmarshalJSON accepts a number of bytes per second or a string such as
// "40MiB".
func (r *Rate) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		str = string(b)
	}
	v, err := ParseRate(str)
	if err != nil {
		return err
	}
	*r = Rate(v)
	return nil
}

// MarshalJSON writes the rate as a size string.
func (r Rate) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// String formats the rate as a size, such as 40MiB.
func (r Rate) String() string { return Size(r).String() }

// String formats the duration as 200ms.
func (d Duration) String() string { return time.Duration(d).String() }
