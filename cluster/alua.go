package cluster

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// PortGroups are the ALUA target port groups of target as this node
// reports them: one group per node (ID: the node's lowest TPGT; ports: its
// TPGTs). A node's group is unavailable while the node is not live (this
// node: while it is fenced), else in the state SET TARGET PORT GROUPS set
// cluster-wide, else active/optimized. A node whose TPGTs collide with an
// earlier node's (this node first, then by name) is left out and logged:
// TPGTs must be unique in the cluster.
func (n *Node) PortGroups(target string) []scsi.PortGroup {
	v := n.view.Load()
	self := n.record()
	recs := []Record{self}
	for name, r := range v.members {
		if name != self.Node {
			recs = append(recs, r)
		}
	}
	slices.SortFunc(recs[1:], func(a, b Record) int { return cmp.Compare(a.Node, b.Node) })
	owner := map[uint16]string{}
	var out []scsi.PortGroup
	for _, r := range recs {
		tpgts := r.TPGTs()
		if len(tpgts) == 0 {
			continue
		}
		if clash := slices.IndexFunc(tpgts, func(p uint16) bool { return owner[p] != "" }); clash >= 0 {
			n.log.Error("two nodes use the same TPGT: leaving the second out of the ALUA port groups; give every portal in the cluster its own tpgt",
				zap.String("node", r.Node), zap.String("other", owner[tpgts[clash]]), zap.Uint16("tpgt", tpgts[clash]))
			continue
		}
		for _, p := range tpgts {
			owner[p] = r.Node
		}
		g := scsi.PortGroup{ID: r.Group(), State: scsi.ActiveOptimized, Ports: tpgts}
		if st, ok := v.states[target][g.ID]; ok {
			g.State = st
		}
		if live := v.live[r.Node]; r.Node == self.Node && !n.Allowed() || r.Node != self.Node && !live {
			g.State = scsi.Unavailable
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b scsi.PortGroup) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// SetPortGroupStates stores states (group ID -> state) for target
// cluster-wide, as SET TARGET PORT GROUPS asked; every node applies them
// when its watch sees them. The write only succeeds while this node holds
// its lease (an etcd transaction on the lease of its node record), so a
// node fenced or expired cannot change them: it gets scsi.ErrFenced.
func (n *Node) SetPortGroupStates(target string, states map[uint16]scsi.ALUAState) error {
	if !n.Allowed() {
		return scsi.ErrFenced
	}
	var ops []clientv3.Op
	for id, st := range states {
		ops = append(ops, clientv3.OpPut(n.Key(aluaKey(target, id)), st.String()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.renewEvery())
	defer cancel()
	resp, err := n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(n.Key(nodesDir+n.opts.Node)), "=", n.LeaseID())).
		Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("cluster: store ALUA states of %s: %w", target, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("cluster: store ALUA states of %s: this node no longer holds its lease: %w", target, scsi.ErrFenced)
	}
	n.log.Info("ALUA states set cluster-wide", zap.String("target", target), zap.Any("states", states))
	return nil
}

// Status is a report of the node and of the cluster as the node sees it.
type Status struct {
	Cluster   string   `json:"cluster"`
	Node      string   `json:"node"`
	Endpoints []string `json:"endpoints"`
	// LeaseTTL and Margin: writes stop Margin before the lease could expire.
	LeaseTTL time.Duration `json:"lease_ttl"`
	Margin   time.Duration `json:"margin"`
	// Lease is the current lease ID in hex ("" when none).
	Lease  string `json:"lease,omitempty"`
	Fenced bool   `json:"fenced"`
	// Deadline is how long writes stay allowed without another renewal
	// (negative or zero: fenced).
	Deadline time.Duration `json:"deadline"`
	// SinceRenewal is the time since the last successful renewal request
	// was sent (zero before the first).
	SinceRenewal time.Duration `json:"since_renewal"`
	Renewals     uint64        `json:"renewals"`
	Failures     uint64        `json:"failures"`
	// LeasesLost counts the leases found expired or revoked (each was
	// replaced by a new one).
	LeasesLost uint64       `json:"leases_lost"`
	Nodes      []NodeStatus `json:"nodes"`
}

// NodeStatus is one node of the cluster.
type NodeStatus struct {
	Node    string   `json:"node"`
	Live    bool     `json:"live"`
	Self    bool     `json:"self,omitempty"`
	Group   uint16   `json:"group"`
	Portals []Portal `json:"portals"`
}

// Status reports the node's lease and the nodes it knows.
func (n *Node) Status() Status {
	now := n.now()
	s := Status{Cluster: n.opts.Name, Node: n.opts.Node, Endpoints: n.opts.Endpoints, LeaseTTL: n.opts.LeaseTTL,
		Margin: n.margin, Fenced: !n.Allowed(), Renewals: n.renewals.Load(), Failures: n.failures.Load(), LeasesLost: n.lost.Load()}
	if id := n.lease.Load(); id != 0 {
		s.Lease = fmt.Sprintf("%x", id)
	}
	if dl := n.deadline.Load(); dl != 0 {
		s.Deadline = time.Duration(dl) - now
	}
	if lr := n.lastRenew.Load(); lr != 0 {
		s.SinceRenewal = now - time.Duration(lr)
	}
	v := n.view.Load()
	self := n.record()
	s.Nodes = append(s.Nodes, NodeStatus{Node: self.Node, Live: v.live[self.Node], Self: true, Group: self.Group(), Portals: self.Portals})
	for name, r := range v.members {
		if name != self.Node {
			s.Nodes = append(s.Nodes, NodeStatus{Node: name, Live: v.live[name], Group: r.Group(), Portals: r.Portals})
		}
	}
	slices.SortFunc(s.Nodes, func(a, b NodeStatus) int { return cmp.Compare(a.Node, b.Node) })
	return s
}

// LiveNodes counts the nodes whose record exists, as last seen.
func (n *Node) LiveNodes() int { return len(n.view.Load().live) }
