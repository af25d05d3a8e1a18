package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/iscsi"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	saved := filepath.Join(dir, "iserd.yaml")
	other := filepath.Join(dir, "other.yaml")
	cfg := admin.DefaultConfig()
	cfg.Targets[0].Name = "iqn.2026-11.org.iserd.test:saved"
	if err := cfg.Save(other); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name         string
		flags        flags
		before       func()
		wantPath     string
		wantEmbedded bool
		wantTarget   string
	}{
		{name: "embedded default", flags: flags{dataDir: dir}, wantPath: saved, wantEmbedded: true,
			wantTarget: "iqn.2026-11.org.iserd:disk0"},
		{name: "saved by the admin API", flags: flags{dataDir: dir}, before: func() {
			if err := cfg.Save(saved); err != nil {
				t.Fatal(err)
			}
		}, wantPath: saved, wantTarget: "iqn.2026-11.org.iserd.test:saved"},
		{name: "-config", flags: flags{config: other, listen: "127.0.0.1:3299"}, wantPath: other,
			wantTarget: "iqn.2026-11.org.iserd.test:saved"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.before != nil {
				c.before()
			}
			got, path, embedded, err := loadConfig(&c.flags)
			if err != nil {
				t.Fatal(err)
			}
			if path != c.wantPath || embedded != c.wantEmbedded || got.Targets[0].Name != c.wantTarget {
				t.Errorf("path %s embedded %v target %s; want %s %v %s", path, embedded, got.Targets[0].Name,
					c.wantPath, c.wantEmbedded, c.wantTarget)
			}
			if c.flags.listen != "" && got.Portals[0].Address != c.flags.listen {
				t.Errorf("-listen not applied: %+v", got.Portals)
			}
		})
	}
}

// TestSIGHUP sends the process SIGHUP after editing the file and waits
// for the new LUN to appear in the engine.
func TestSIGHUP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "iserd.yaml")
	cfg := &admin.Config{DataDir: dir, Targets: []admin.TargetConfig{{Name: "iqn.2026-11.org.iserd.test:hup", Open: true,
		LUNs: []admin.LUNConfig{{LUN: 0, Backend: "memory", Size: 1 << 20}}}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	m, err := admin.New(cfg, admin.Options{Log: zap.NewNop(), Path: path,
		Listen: func(*iscsi.Server, admin.PortalConfig) (io.Closer, error) { return io.NopCloser(nil), nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go reloadOnHUP(ctx, m, zap.NewNop(), hup, newNotifier(zap.NewNop()))

	cfg.Targets[0].LUNs = append(cfg.Targets[0].LUNs, admin.LUNConfig{LUN: 3, Backend: "memory", Size: 2 << 20})
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !m.Server().Target("iqn.2026-11.org.iserd.test:hup").SCSI.HasLUN(3) {
		if time.Now().After(deadline) {
			t.Fatal("LUN 3 did not appear after SIGHUP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := m.LUNSize("iqn.2026-11.org.iserd.test:hup", 3); n != 2<<20 {
		t.Errorf("LUN 3 has %d bytes", n)
	}
}

// TestJoinCluster: without a cluster section there is no node (nothing
// dials etcd); with one, the node starts fenced and waits for etcd.
func TestJoinCluster(t *testing.T) {
	tests := []struct {
		name    string
		cluster *admin.ClusterConfig
	}{
		{"no cluster section", nil},
		// 192.0.2.0/24 is TEST-NET-1: nothing answers there.
		{"etcd unreachable", &admin.ClusterConfig{Name: "test", Node: "gw-1", Endpoints: []string{"http://192.0.2.250:2379"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := admin.DefaultConfig()
			cfg.DataDir = t.TempDir()
			cfg.Cluster = tc.cluster
			if tc.cluster != nil {
				cfg.Portals[0].TPGT = 1
				cfg.Targets[0].LUNs[0].Direct = true
				cfg.Targets[0].LUNs[0].Path = filepath.Join(cfg.DataDir, "lun0.img")
			}
			if err := cfg.Check(); err != nil {
				t.Fatal(err)
			}
			node, err := joinCluster(cfg, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			if (node != nil) != (tc.cluster != nil) {
				t.Fatalf("node %v with cluster section %v", node, tc.cluster)
			}
			if node != nil {
				if node.Allowed() {
					t.Fatal("allowed before any lease")
				}
				leaveCluster(node, zap.NewNop())
			}
		})
	}
}
