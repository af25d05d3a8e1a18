package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iserd/iserd/admin"
)

func (a *app) clusterCommand() *cobra.Command {
	c := group("cluster", "the cluster of gateways this one belongs to (the cluster section of iserd.yaml)")
	c.AddCommand(leaf("status", "show this gateway's lease (TTL, last renewal, fenced or not) and every node, live or not, with its ALUA port group and portals", func([]string) error {
		return show(a, "/v1/cluster", a.clusterTable)
	}))
	return c
}

// clusterTable prints GET /v1/cluster.
func (a *app) clusterTable(st admin.ClusterStatus) {
	fmt.Fprintf(a.out, "cluster: %s\nnode:    %s\netcd:    %s\n", st.Cluster, st.Node, strings.Join(st.Endpoints, ", "))
	lease := st.Lease
	if lease == "" {
		lease = "none"
	}
	fmt.Fprintf(a.out, "lease:   %s (ttl %v, writes stop %v before it could expire)\n", lease, st.LeaseTTL, st.Margin)
	if st.SinceRenewal > 0 {
		fmt.Fprintf(a.out, "renewed: %v ago (%d renewals, %d failures, %d leases lost)\n",
			st.SinceRenewal.Round(time.Millisecond), st.Renewals, st.Failures, st.LeasesLost)
	}
	if st.Fenced {
		fmt.Fprintln(a.out, "state:   FENCED: writes and reservation changes are refused (NOT READY 04h/0Ch) until the lease is renewed")
	} else {
		fmt.Fprintf(a.out, "state:   allowed (for %v without another renewal)\n", st.Deadline.Round(time.Millisecond))
	}
	var rows [][]string
	for _, n := range st.Nodes {
		name, live := n.Node, "no"
		if n.Self {
			name += " (this)"
		}
		if n.Live {
			live = "yes"
		}
		var portals []string
		for _, p := range n.Portals {
			portals = append(portals, fmt.Sprintf("%s tpgt %d", p.Address, p.TPGT))
		}
		rows = append(rows, []string{name, live, fmt.Sprint(n.Group), strings.Join(portals, ", ")})
	}
	fmt.Fprintln(a.out)
	a.table("NODE\tLIVE\tGROUP\tPORTALS", rows)
	rows = nil
	for _, t := range st.Targets {
		for _, g := range t.PortGroups {
			rows = append(rows, []string{t.Name, fmt.Sprint(g.ID), g.State, fmt.Sprint(g.TPGTs)})
		}
	}
	if len(rows) > 0 {
		fmt.Fprintln(a.out)
		a.table("TARGET\tGROUP\tSTATE\tTPGTS", rows)
	}
}
