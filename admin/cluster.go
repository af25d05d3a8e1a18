package admin

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/scsi"
)

// ClusterConfig joins this gateway to a cluster of gateways serving the
// same LUNs from shared storage, coordinated through etcd (README
// "Scale-out"). It takes effect at start.
type ClusterConfig struct {
	// Name is the cluster's name: its etcd keys live under /iserd/<name>/.
	Name string `yaml:"name" json:"name"`
	// Node is this gateway's name, unique in the cluster.
	Node string `yaml:"node" json:"node"`
	// Endpoints are etcd's client URLs.
	Endpoints []string          `yaml:"endpoints" json:"endpoints"`
	TLS       *ClusterTLSConfig `yaml:"tls,omitempty" json:"tls,omitempty"`
	// LeaseTTL is the liveness lease (default 5s, at least 2s, whole
	// seconds): a gateway that stops renewing it is reported unavailable
	// by the others within it, and stops writing before it runs out.
	LeaseTTL Duration `yaml:"lease_ttl,omitempty" json:"lease_ttl,omitempty"`
}

// ClusterTLSConfig names the PEM files securing the etcd connections.
type ClusterTLSConfig struct {
	CA   string `yaml:"ca,omitempty" json:"ca,omitempty"`
	Cert string `yaml:"cert,omitempty" json:"cert,omitempty"`
	Key  string `yaml:"key,omitempty" json:"key,omitempty"`
}

// ClusterOptions are the options of this gateway's cluster.Node: the
// cluster section and the portals of c, which must have passed Check.
func (c *Config) ClusterOptions(log *zap.Logger) cluster.Options {
	cc := c.Cluster
	o := cluster.Options{Name: cc.Name, Node: cc.Node, Endpoints: cc.Endpoints, LeaseTTL: time.Duration(cc.LeaseTTL),
		Portals: c.clusterPortals(), Log: log}
	if t := cc.TLS; t != nil {
		o.TLS = &cluster.TLSFiles{CA: t.CA, Cert: t.Cert, Key: t.Key}
	}
	return o
}

// clusterPortals are the portals as the node record shows them.
func (c *Config) clusterPortals() []cluster.Portal {
	out := make([]cluster.Portal, 0, len(c.Portals))
	for _, p := range c.Portals {
		out = append(out, cluster.Portal{Address: p.Address, TPGT: p.TPGT})
	}
	return out
}

// checkCluster validates the cluster section and what a cluster asks of
// the rest: portals with explicit TPGTs (one target port each, unique in
// the cluster), no configured port groups (each node is one group), and
// LUNs every gateway can serve without a cache of its own: file or block
// stores opened with O_DIRECT through io_uring.
func (c *Config) checkCluster() error {
	if c.Cluster == nil {
		return nil
	}
	o := c.ClusterOptions(nil)
	if err := o.Check(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	c.Cluster.LeaseTTL = Duration(o.LeaseTTL)
	for i, p := range c.Portals {
		if p.TPGT == 0 {
			return fmt.Errorf("portals[%d] (%s): in a cluster every portal needs a tpgt, unique across the cluster's nodes "+
				"(it is the relative target port identifier the nodes and persistent reservations tell apart)", i, p.Address)
		}
	}
	for _, t := range c.Targets {
		if len(t.PortGroups) > 0 {
			return fmt.Errorf("target %s: port_groups cannot be configured in a cluster: each node is one ALUA port group, "+
				"active while it holds its lease", t.Name)
		}
		for _, l := range t.LUNs {
			if err := l.checkShared(); err != nil {
				return fmt.Errorf("target %s lun %d: %w", t.Name, l.LUN, err)
			}
		}
	}
	return nil
}

// checkShared refuses a LUN that a gateway of a cluster could serve from a
// cache of its own.
func (l *LUNConfig) checkShared() error {
	switch {
	case l.Backend == "memory":
		return errors.New("a memory LUN cannot be shared by the gateways of a cluster: give the path of the shared device")
	case !l.Direct:
		return errors.New("in a cluster a LUN must be opened with direct: true (O_DIRECT), so that no gateway serves " +
			"a block from its own cache after another gateway rewrote it")
	case l.IO == "threads":
		return errors.New("in a cluster a LUN needs io: uring (the threads backend has no O_DIRECT path)")
	case !filepath.IsAbs(l.Path):
		return fmt.Errorf("in a cluster a LUN's path must be absolute, the shared device as every gateway names it "+
			"(%q would be a file in each gateway's own data_dir)", l.Path)
	}
	return nil
}

// setClusterGroups gives st the port groups the cluster reports now.
func (m *Manager) setClusterGroups(st *scsi.Target) {
	if err := st.SetPortGroups(m.cluster.PortGroups(st.Name())); err != nil {
		m.log.Error("setting the cluster's ALUA port groups", zap.String("target", st.Name()), zap.Error(err))
	}
}

// ClusterStatus is GET /v1/cluster: the node's report and the ALUA port
// groups each target reports now.
type ClusterStatus struct {
	cluster.Status
	Targets []ClusterTarget `json:"targets"`
}

// ClusterTarget is one target's port groups as this gateway reports them.
type ClusterTarget struct {
	Name       string           `json:"name"`
	PortGroups []PortGroupState `json:"port_groups"`
}

// PortGroupState is one ALUA target port group and its state.
type PortGroupState struct {
	ID    uint16   `json:"id"`
	State string   `json:"state"`
	TPGTs []uint16 `json:"tpgts"`
}

// ClusterStatus reports the cluster as this gateway sees it; ErrNotFound
// when it is not in one.
func (m *Manager) ClusterStatus() (ClusterStatus, error) {
	if m.cluster == nil {
		return ClusterStatus{}, fmt.Errorf("cluster: %w: this gateway has no cluster section", ErrNotFound)
	}
	st := ClusterStatus{Status: m.cluster.Status(), Targets: []ClusterTarget{}}
	for _, t := range m.srv.Targets() {
		ct := ClusterTarget{Name: t.Name}
		for _, g := range t.SCSI.PortGroups() {
			ct.PortGroups = append(ct.PortGroups, PortGroupState{ID: g.ID, State: g.State.String(), TPGTs: g.Ports})
		}
		st.Targets = append(st.Targets, ct)
	}
	return st, nil
}
