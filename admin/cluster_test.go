package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/scsi"
)

// clusterConfig is a gateway "a" of cluster "test" on etcd endpoints, with
// a portal of TPGT 1 and a direct file LUN in dir.
func clusterConfig(dir string, endpoints []string) *Config {
	return &Config{DataDir: dir, Portals: []PortalConfig{{Address: "127.0.0.1:3260", TPGT: 1}},
		Targets: []TargetConfig{{Name: testTarget, Open: true,
			LUNs: []LUNConfig{{LUN: 0, Path: filepath.Join(dir, "shared.img"), Size: 4 << 20, Direct: true}}}},
		Cluster: &ClusterConfig{Name: "test", Node: "a", Endpoints: endpoints}}
}

// TestCheckCluster: what a cluster asks of the configuration.
func TestCheckCluster(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // part of the error; "" for none
	}{
		{"plain", func(*Config) {}, ""},
		{"no cluster: memory LUN", func(c *Config) {
			c.Cluster = nil
			c.Targets[0].LUNs[0] = LUNConfig{Backend: "memory", Size: 1 << 20}
		}, ""},
		{"memory LUN", func(c *Config) { c.Targets[0].LUNs[0] = LUNConfig{Backend: "memory", Size: 1 << 20} }, "memory LUN"},
		{"buffered LUN", func(c *Config) { c.Targets[0].LUNs[0].Direct = false }, "direct: true"},
		{"threads backend", func(c *Config) { c.Targets[0].LUNs[0].IO = "threads" }, "io: uring"},
		{"relative path", func(c *Config) { c.Targets[0].LUNs[0].Path = "shared.img" }, "must be absolute"},
		{"port groups", func(c *Config) {
			c.Targets[0].PortGroups = []PortGroupConfig{{ID: 1, State: "standby", TPGTs: []uint16{1}}}
		}, "port_groups cannot"},
		{"portal without tpgt", func(c *Config) { c.Portals[0].TPGT = 0 }, "needs a tpgt"},
		{"bad node name", func(c *Config) { c.Cluster.Node = "gw/1" }, "cluster: node name"},
		{"no endpoints", func(c *Config) { c.Cluster.Endpoints = nil }, "cluster: no etcd endpoints"},
		{"short TTL", func(c *Config) { c.Cluster.LeaseTTL = Duration(time.Second) }, "lease_ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clusterConfig(t.TempDir(), []string{"http://192.0.2.10:2379"})
			tc.edit(cfg)
			err := cfg.Check()
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: %v, want an error with %q", err, tc.want)
			}
			if err == nil && cfg.Cluster != nil && cfg.Cluster.LeaseTTL != Duration(cluster.DefaultLeaseTTL) {
				t.Fatalf("lease_ttl %v, want the default", cfg.Cluster.LeaseTTL)
			}
		})
	}
}

// TestClusterGateway runs a gateway in a cluster with a second node: its
// target reports both nodes' port groups, the other node's unavailable
// once it leaves; the LUN is served direct; the API and the metrics show
// the cluster.
func TestClusterGateway(t *testing.T) {
	s := etcdtest.Start(t)
	dir := t.TempDir()
	cfg := clusterConfig(dir, s.Endpoints())
	cfg.Cluster.LeaseTTL = Duration(cluster.MinLeaseTTL)
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	a, err := cluster.New(cfg.ClusterOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := cluster.New(cluster.Options{Name: "test", Node: "b", Endpoints: s.Endpoints(), LeaseTTL: cluster.MinLeaseTTL,
		Portals: []cluster.Portal{{Address: "192.0.2.2:3260", TPGT: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	h := startIn(t, dir, cfg, a)
	st := h.m.Server().Target(testTarget).SCSI
	groups := func() map[uint16]scsi.ALUAState {
		m := map[uint16]scsi.ALUAState{}
		for _, g := range st.PortGroups() {
			m[g.ID] = g.State
		}
		return m
	}
	polltest.Wait(t, "both groups active/optimized", func() bool {
		g := groups()
		return a.Allowed() && len(g) == 2 && g[1] == scsi.ActiveOptimized && g[2] == scsi.ActiveOptimized // (0 for a missing group too)
	})

	c, err := h.login(testInitiator, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := bytes.Repeat([]byte("cluster!"), 512)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var r *initiator.Response
	for range 3 { // the power-on unit attention first
		if r, err = c.Do(ctx, &initiator.Command{CDB: initiator.Write16(8, 8), DataOut: data}); err != nil {
			t.Fatalf("WRITE: %v", err)
		}
		if r.Status == 0 {
			break
		}
	}
	if r.Status != 0 {
		t.Fatalf("WRITE: status %#x sense % x", r.Status, r.Sense)
	}
	if r, err = c.Do(ctx, &initiator.Command{CDB: initiator.Read16(8, 8), ReadLen: 4096}); err != nil {
		t.Fatalf("READ: %v", err)
	}
	if !bytes.Equal(r.Data, data) {
		t.Fatal("READ: other data than written")
	}

	_, body := h.call("GET", "/v1/cluster", "")
	var cs ClusterStatus
	if err := json.Unmarshal([]byte(body), &cs); err != nil || cs.Node != "a" || len(cs.Nodes) != 2 || cs.Fenced ||
		len(cs.Targets) != 1 || len(cs.Targets[0].PortGroups) != 2 || cs.Targets[0].PortGroups[1].State != "active/optimized" {
		t.Fatalf("GET /v1/cluster: %v %s", err, body)
	}
	_, metrics := h.call("GET", "/metrics", "")
	for _, want := range []string{"iserd_cluster_fenced 0", "iserd_cluster_nodes_live 2", "iserd_cluster_lease_renewals_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	b.Close()
	polltest.Wait(t, "b's group unavailable", func() bool { return groups()[2] == scsi.Unavailable })
}

// TestClusterConfig: the targets, LUNs and ACLs are the cluster's: the
// first gateway stores its own in etcd, a change made on either gateway
// reaches the other (and its file), and a reload keeps them.
func TestClusterConfig(t *testing.T) {
	s := etcdtest.Start(t)
	shared := t.TempDir() // the "shared storage" both gateways open
	gw := func(node string, tpgt uint16) *harness {
		dir := t.TempDir()
		cfg := clusterConfig(dir, s.Endpoints())
		cfg.Cluster.Node, cfg.Portals[0].TPGT = node, tpgt
		cfg.Targets[0].LUNs[0].Path = shared + "/lun0.img"
		if err := cfg.Check(); err != nil {
			t.Fatal(err)
		}
		n, err := cluster.New(cfg.ClusterOptions(nil))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		polltest.Wait(t, node+" allowed", n.Allowed)
		return startIn(t, dir, cfg, n)
	}
	a := gw("a", 1)
	polltest.Wait(t, "a's targets stored in etcd", func() bool { _, rev := a.m.cluster.Config(); return rev != 0 })
	b := gw("b", 2)

	const t2 = "iqn.2026-11.org.iserd.test:t2"
	if err := a.m.Update(func(c *Config) error {
		c.Targets = append(c.Targets, TargetConfig{Name: t2, LUNs: []LUNConfig{{LUN: 0, Path: shared + "/t2.img", Size: 1 << 20, Direct: true}}})
		return nil
	}, false); err != nil {
		t.Fatal(err)
	}
	polltest.Wait(t, "b serves the target a added", func() bool { return b.m.Server().Target(t2) != nil })
	if saved, err := LoadConfig(b.m.Path()); err != nil || saved.Target(t2) == nil {
		t.Fatalf("b's file: %v, target %s saved: %v", err, t2, err == nil && saved.Target(t2) != nil)
	}
	if err := b.m.Update(func(c *Config) error {
		c.Target(t2).ACLs = []ACLConfig{{Initiator: testInitiator}}
		return nil
	}, false); err != nil {
		t.Fatal(err)
	}
	polltest.Wait(t, "a has the ACL b added", func() bool { return a.m.Config().Target(t2).ACL(testInitiator) != nil })

	_, rev := a.m.cluster.Config()
	if _, err := a.m.cluster.PutConfig([]byte(`{}`), rev-1); !errors.Is(err, cluster.ErrConfigChanged) {
		t.Fatalf("PutConfig on a stale revision: %v", err)
	}
	file := clusterConfig(b.dir, s.Endpoints())
	file.Cluster.Node, file.Portals[0].TPGT = "b", 2
	file.Targets[0].LUNs[0].Path = shared + "/lun0.img"
	if err := file.Save(b.m.Path()); err != nil {
		t.Fatal(err)
	}
	if err := b.m.Reload(); err != nil {
		t.Fatal(err)
	}
	if b.m.Config().Target(t2) == nil {
		t.Fatal("a reload dropped a target of the cluster configuration")
	}
}
