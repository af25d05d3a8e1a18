package cluster

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/scsi"
)

// testTTL is the lease TTL of the test nodes: the shortest allowed, so
// expiry tests stay short.
const testTTL = MinLeaseTTL

// testClock is a monotonic clock a test can move on, as a pause would.
type testClock struct {
	base time.Time
	skew atomic.Int64
}

func newTestClock() *testClock { return &testClock{base: time.Now()} }

func (c *testClock) now() time.Duration { return time.Since(c.base) + time.Duration(c.skew.Load()) }

// pause makes d pass at once, as it does for a process stopped for d.
func (c *testClock) pause(d time.Duration) { c.skew.Add(int64(d)) }

// startNode starts node name with one portal of TPGT tpgt in the cluster
// "test" on s, closed at cleanup.
func startNode(t *testing.T, s *etcdtest.Server, name string, tpgt uint16, clock *testClock) *Node {
	t.Helper()
	o := Options{Name: "test", Node: name, Endpoints: s.Endpoints(), LeaseTTL: testTTL,
		Portals: []Portal{{Address: "192.0.2.1:3260", TPGT: tpgt}}}
	if clock != nil {
		o.Clock = clock.now
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// stateOf is the state node n reports for group id of target "t" (0xff
// when it reports no such group).
func stateOf(n *Node, id uint16) scsi.ALUAState {
	for _, g := range n.PortGroups("t") {
		if g.ID == id {
			return g.State
		}
	}
	return 0xff
}

// startPair starts nodes a (TPGT 1) and b (TPGT 2) and waits until both
// are allowed and see each other active.
func startPair(t *testing.T, s *etcdtest.Server, clock *testClock) (a, b *Node) {
	t.Helper()
	a, b = startNode(t, s, "a", 1, clock), startNode(t, s, "b", 2, nil)
	polltest.Until(t, 10*time.Second, "both nodes allowed and seeing each other", func() bool {
		return a.Allowed() && b.Allowed() && stateOf(a, 2) == scsi.ActiveOptimized && stateOf(b, 1) == scsi.ActiveOptimized
	})
	return a, b
}

// stopKeepalives stops n's goroutines without revoking its lease, as a
// node that dies or hangs does.
func stopKeepalives(n *Node) {
	n.cancel()
	n.wg.Wait()
}

// TestNodeLoss: when a node goes, its peer reports its port group
// unavailable: at once when it closes (the lease is revoked), within the
// TTL when it just stops renewing.
func TestNodeLoss(t *testing.T) {
	s := etcdtest.Start(t)
	tests := []struct {
		name  string
		lose  func(*Node)
		limit time.Duration
	}{
		{"closed", func(n *Node) { n.Close() }, time.Second},
		// etcd checks expiries every 500 ms; the last renewal was up to
		// TTL/4 before the stop.
		{"keepalives stopped", stopKeepalives, testTTL + time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Client().Delete(context.Background(), Prefix("test"), clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			a, b := startPair(t, s, nil)
			tc.lose(b)
			took := polltest.Until(t, tc.limit, "b's group unavailable at a", func() bool { return stateOf(a, 2) == scsi.Unavailable })
			t.Logf("a reports b unavailable %v after the loss", took.Round(time.Millisecond))
			if stateOf(a, 1) != scsi.ActiveOptimized || !a.Allowed() {
				t.Fatalf("a: own group %v, allowed %v", stateOf(a, 1), a.Allowed())
			}
		})
	}
}

// TestLeaseLoss: a node whose lease is revoked behind its back is fenced
// at its next renewal (well within its deadline), then grants a new lease,
// publishes its record again and is allowed again.
func TestLeaseLoss(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := startPair(t, s, nil)
	old := a.LeaseID()
	if _, err := s.Client().Revoke(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	// The fence closes when the renewal finds the lease gone; the new
	// lease follows within milliseconds, too fast to poll Allowed.
	took := polltest.Until(t, testTTL-Margin(testTTL), "a fenced", func() bool { return a.Status().LeasesLost == 1 })
	t.Logf("fenced %v after the revocation", took.Round(time.Millisecond))
	polltest.Until(t, 5*time.Second, "a allowed on a new lease", func() bool { return a.Allowed() && a.LeaseID() != old })
	polltest.Until(t, 5*time.Second, "b sees a again", func() bool { return stateOf(b, 1) == scsi.ActiveOptimized })
}

// TestEtcdOutage: with etcd stopped both nodes are fenced within the
// deadline of their last renewal (TTL - margin); when it returns they are
// allowed again, on the same leases (etcd gives leases a fresh TTL when it
// starts).
func TestEtcdOutage(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := startPair(t, s, nil)
	s.Stop()
	for _, n := range []*Node{a, b} {
		took := polltest.Until(t, testTTL-Margin(testTTL)+100*time.Millisecond, n.Name()+" fenced", func() bool { return !n.Allowed() })
		t.Logf("%s fenced %v after etcd stopped", n.Name(), took.Round(time.Millisecond))
		polltest.Until(t, time.Second, n.Name()+" reports its own group unavailable", func() bool {
			return stateOf(n, n.record().Group()) == scsi.Unavailable
		})
	}
	s.Restart()
	for _, n := range []*Node{a, b} {
		took := polltest.Until(t, 10*time.Second, n.Name()+" allowed again", func() bool { return n.Allowed() })
		t.Logf("%s allowed %v after etcd restarted", n.Name(), took.Round(time.Millisecond))
	}
	polltest.Until(t, 5*time.Second, "both groups active everywhere", func() bool {
		return stateOf(a, 1) == scsi.ActiveOptimized && stateOf(a, 2) == scsi.ActiveOptimized &&
			stateOf(b, 1) == scsi.ActiveOptimized && stateOf(b, 2) == scsi.ActiveOptimized
	})
}

// TestPause: a node paused past its TTL (SIGSTOP; here its clock jumps)
// is fenced the instant it runs again, before any goroutine of it ran, and
// allowed again once it renewed.
func TestPause(t *testing.T) {
	s := etcdtest.Start(t)
	clock := newTestClock()
	a, _ := startPair(t, s, clock)
	clock.pause(2 * testTTL)
	if a.Allowed() {
		t.Fatal("allowed right after a pause of twice the TTL")
	}
	polltest.Until(t, 5*time.Second, "a allowed after renewing", a.Allowed)
}

// TestPortGroups: SET TARGET PORT GROUPS stored by one node reaches the
// other; a fenced node reports its own group unavailable; a node whose
// TPGT clashes with another's is left out.
func TestPortGroups(t *testing.T) {
	s := etcdtest.Start(t)
	clock := newTestClock()
	a, b := startPair(t, s, clock)
	if err := a.SetPortGroupStates("t", map[uint16]scsi.ALUAState{2: scsi.Standby}); err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 5*time.Second, "b in standby at b", func() bool { return stateOf(b, 2) == scsi.Standby })
	if got := stateOf(b, 1); got != scsi.ActiveOptimized {
		t.Fatalf("b reports a %v", got)
	}
	if got := b.PortGroups("other"); len(got) != 2 || got[1].State != scsi.ActiveOptimized {
		t.Fatalf("another target's groups: %+v", got)
	}
	c := startNode(t, s, "c", 2, nil)
	polltest.Until(t, 5*time.Second, "c live at a", func() bool { return a.LiveNodes() == 3 })
	if gs := a.PortGroups("t"); len(gs) != 2 || !slices.Equal(gs[1].Ports, []uint16{2}) {
		t.Fatalf("a's groups with a TPGT clash: %+v", gs)
	}
	if gs := c.PortGroups("t"); len(gs) != 2 || gs[1].ID != 2 || gs[0].ID != 1 {
		t.Fatalf("c's groups (itself first): %+v", gs)
	}
	clock.pause(2 * testTTL)
	if got := stateOf(a, 1); got != scsi.Unavailable {
		t.Fatalf("fenced a reports itself %v", got)
	}
	if err := a.SetPortGroupStates("t", map[uint16]scsi.ALUAState{1: scsi.Standby}); err != scsi.ErrFenced {
		t.Fatalf("fenced a set states: %v", err)
	}
}

// TestSetPortals: a node's new portals reach its peers' port groups.
func TestSetPortals(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := startPair(t, s, nil)
	a.SetPortals([]Portal{{Address: "192.0.2.1:3260", TPGT: 1}, {Address: "192.0.2.1:3261", TPGT: 5}})
	polltest.Until(t, 5*time.Second, "b sees a's second port", func() bool {
		gs := b.PortGroups("t")
		return len(gs) == 2 && slices.Equal(gs[0].Ports, []uint16{1, 5})
	})
}

// TestUnreachable: a node whose etcd does not answer at start keeps
// trying, says so once, stays fenced and reports its own group
// unavailable; it closes at once.
func TestUnreachable(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nobody listens there now
	n, err := New(Options{Name: "test", Node: "a", Endpoints: []string{addr}, LeaseTTL: testTTL, Log: zap.New(core),
		Portals: []Portal{{Address: "192.0.2.1:3260", TPGT: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 5*time.Second, "the warning", func() bool { return logs.FilterMessageSnippet("cannot reach etcd").Len() > 0 })
	if n.Allowed() || stateOf(n, 1) != scsi.Unavailable || n.Status().Failures == 0 {
		t.Fatalf("allowed %v, own group %v, status %+v", n.Allowed(), stateOf(n, 1), n.Status())
	}
	if got := logs.FilterMessageSnippet("cannot reach etcd").Len(); got != 1 {
		t.Errorf("%d warnings, want 1 until the outage lasts 30s", got)
	}
	start := time.Now()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

// TestStatus reports both nodes and the lease.
func TestStatus(t *testing.T) {
	s := etcdtest.Start(t)
	a, _ := startPair(t, s, nil)
	st := a.Status()
	if st.Fenced || st.Lease == "" || st.Renewals == 0 || st.Deadline <= 0 || st.LeaseTTL != testTTL || len(st.Nodes) != 2 ||
		!st.Nodes[0].Self || !st.Nodes[1].Live || st.Nodes[1].Group != 2 {
		t.Fatalf("status %+v", st)
	}
}

// TestCheck validates options.
func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Options)
		want string // part of the error; "" for none
	}{
		{"plain", func(*Options) {}, ""},
		{"default TTL", func(o *Options) { o.LeaseTTL = 0 }, ""},
		{"bare endpoint", func(o *Options) { o.Endpoints = []string{"192.0.2.10:2379"} }, ""},
		{"https with tls", func(o *Options) {
			o.Endpoints, o.TLS = []string{"https://etcd.example:2379"}, &TLSFiles{CA: "ca.pem"}
		}, ""},
		{"cluster name with a slash", func(o *Options) { o.Name = "a/b" }, "cluster name"},
		{"empty node name", func(o *Options) { o.Node = "" }, "node name"},
		{"node name too long", func(o *Options) { o.Node = strings.Repeat("n", 64) }, "node name"},
		{"no endpoints", func(o *Options) { o.Endpoints = nil }, "no etcd endpoints"},
		{"endpoint without port", func(o *Options) { o.Endpoints = []string{"http://etcd.example"} }, "no port"},
		{"endpoint with a path", func(o *Options) { o.Endpoints = []string{"http://etcd.example:2379/v3"} }, "client URL"},
		{"https without tls", func(o *Options) { o.Endpoints = []string{"https://etcd.example:2379"} }, "add a tls section"},
		{"http with tls", func(o *Options) { o.TLS = &TLSFiles{CA: "ca.pem"} }, "plain http"},
		{"unknown scheme", func(o *Options) { o.Endpoints = []string{"unix://etcd:1"} }, "scheme"},
		{"TTL too short", func(o *Options) { o.LeaseTTL = time.Second }, "lease_ttl"},
		{"TTL not whole seconds", func(o *Options) { o.LeaseTTL = 2500 * time.Millisecond }, "whole seconds"},
		{"cert without key", func(o *Options) {
			o.Endpoints, o.TLS = []string{"https://etcd.example:2379"}, &TLSFiles{Cert: "c.pem"}
		}, "both cert and key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Name: "prod", Node: "gw-1", Endpoints: []string{"http://192.0.2.10:2379"}, LeaseTTL: 5 * time.Second}
			tc.edit(&o)
			err := o.Check()
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestMargin: max(TTL/5, 500ms).
func TestMargin(t *testing.T) {
	for ttl, want := range map[time.Duration]time.Duration{2 * time.Second: 500 * time.Millisecond,
		5 * time.Second: time.Second, 30 * time.Second: 6 * time.Second} {
		if got := Margin(ttl); got != want {
			t.Errorf("Margin(%v) = %v, want %v", ttl, got, want)
		}
	}
}
