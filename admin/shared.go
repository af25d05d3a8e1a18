package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"go.uber.org/zap"

	"github.com/iserd/iserd/cluster"
)

// sharedConfig is the cluster-wide part of the configuration, kept in etcd
// (cluster.Node.Config): what every gateway of a cluster serves alike. The
// rest (portals, data_dir, limits, metrics, log, rdma, cluster) stays
// per gateway, in its file.
type sharedConfig struct {
	Targets       []TargetConfig `json:"targets"`
	DiscoveryCHAP *CHAPConfig    `json:"discovery_chap,omitempty"`
}

// shared is c's cluster-wide part.
func (c *Config) shared() sharedConfig {
	return sharedConfig{Targets: c.Targets, DiscoveryCHAP: c.DiscoveryCHAP}
}

// withShared returns a copy of c with s as its cluster-wide part.
func (c *Config) withShared(s sharedConfig) *Config {
	out := c.Clone()
	out.Targets, out.DiscoveryCHAP = s.Targets, s.DiscoveryCHAP
	return out.Clone() // no slices shared with s
}

// clusterChanged follows the cluster: the configuration stored in etcd,
// then the ALUA port groups.
func (m *Manager) clusterChanged() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.syncShared()
	for _, t := range m.srv.Targets() {
		m.setClusterGroups(t.SCSI)
	}
}

// syncShared applies the cluster-wide configuration when etcd holds a
// version this gateway has not applied yet, and saves it to the file (a
// restart without etcd then serves the latest); when etcd holds none yet,
// it stores this gateway's. The caller holds m.mu.
func (m *Manager) syncShared() {
	doc, rev := m.cluster.Config()
	if rev == 0 { // none stored, or not read yet (then the store fails with ErrConfigChanged)
		if !m.cluster.Allowed() {
			return
		}
		raw, err := json.Marshal(m.cfg.shared())
		if err == nil {
			rev, err = m.cluster.PutConfig(raw, 0)
		}
		switch {
		case errors.Is(err, cluster.ErrConfigChanged): // another gateway was first: its version comes by the watch
		case err != nil:
			m.log.Error("cannot store the cluster configuration in etcd", zap.Error(err))
		default:
			m.sharedRev = rev
			m.log.Info("this gateway's targets are now the cluster's configuration")
		}
		return
	}
	if rev <= m.sharedRev {
		// Applied already, or older than this gateway's own last store: the
		// watch may still show the revision before it (etcd revisions only
		// grow), and applying that would drop the change just stored.
		return
	}
	m.sharedRev = rev // applied or not, it is not tried again until it changes
	var s sharedConfig
	if err := json.Unmarshal(doc, &s); err != nil {
		m.log.Error("the cluster configuration in etcd does not decode: keeping the running one", zap.Error(err))
		return
	}
	next := m.cfg.withShared(s)
	if reflect.DeepEqual(next.shared(), m.cfg.shared()) {
		return
	}
	if err := next.Check(); err != nil {
		m.log.Error("the cluster configuration in etcd is not valid here: keeping the running one", zap.Error(err))
		return
	}
	// The gateway that made the change decided about shrinking LUNs.
	if _, err := m.prepare(next, true); err != nil {
		m.log.Error("cannot apply the cluster configuration on this gateway: keeping the running one", zap.Error(err))
		return
	}
	if err := next.Save(m.path); err != nil {
		m.log.Error("the cluster configuration applies but cannot be saved to the file", zap.Error(err))
	}
	m.commit(next)
	m.log.Info("cluster configuration applied", zap.Int64("revision", rev))
}

// storeShared writes next's cluster-wide part to etcd when it differs from
// the running one, before a change made on this gateway applies here. The
// caller holds m.mu.
func (m *Manager) storeShared(next *Config) error {
	if m.cluster == nil || reflect.DeepEqual(next.shared(), m.cfg.shared()) {
		return nil
	}
	raw, err := json.Marshal(next.shared())
	if err != nil {
		return fmt.Errorf("cluster configuration: %w", err)
	}
	rev, err := m.cluster.PutConfig(raw, m.sharedRev)
	if err != nil {
		return err
	}
	m.sharedRev = rev
	return nil
}
