package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/cluster"
)

// TestClusterTable prints a cluster status, fenced and not.
func TestClusterTable(t *testing.T) {
	st := admin.ClusterStatus{Status: cluster.Status{Cluster: "prod", Node: "gw-1", Endpoints: []string{"http://192.0.2.10:2379"}, LeaseTTL: 5 * time.Second,
		Margin: time.Second, Lease: "694d", Deadline: 3 * time.Second, SinceRenewal: time.Second, Renewals: 7, Failures: 1,
		Nodes: []cluster.NodeStatus{
			{Node: "gw-1", Live: true, Self: true, Group: 1, Portals: []cluster.Portal{{Address: "192.0.2.1:3260", TPGT: 1}}},
			{Node: "gw-2", Group: 2, Portals: []cluster.Portal{{Address: "192.0.2.2:3260", TPGT: 2}}},
		}},
		Targets: []admin.ClusterTarget{{Name: "iqn.2026-12.com.example:db", PortGroups: []admin.PortGroupState{
			{ID: 1, State: "active/optimized", TPGTs: []uint16{1}}, {ID: 2, State: "unavailable", TPGTs: []uint16{2}}}}}}
	tests := []struct {
		name   string
		fenced bool
		want   []string
	}{
		{"allowed", false, []string{"cluster: prod", "lease:   694d (ttl 5s, writes stop 1s before", "7 renewals, 1 failures",
			"allowed (for 3s", "gw-1 (this)  yes   1      192.0.2.1:3260 tpgt 1", "gw-2         no    2", "iqn.2026-12.com.example:db  2      unavailable       [2]"}},
		{"fenced", true, []string{"FENCED: writes and reservation changes are refused"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			st.Fenced = tc.fenced
			(&app{out: &out}).clusterTable(st)
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("no %q in:\n%s", w, out.String())
				}
			}
		})
	}
}
