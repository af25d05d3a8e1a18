// Package cluster lets several iserd gateways serve the same LUNs (shared
// storage: Ceph RBD through krbd, a SAN LUN, DRBD) with etcd v3 as their
// coordinator. A Node holds an etcd lease that it renews, publishes its
// node record (its portals and their TPGTs) under that lease, and watches
// the other nodes' records: a node is live while its record exists. From
// that it derives the ALUA target port groups (one group per node) and
// fences itself: past the deadline of its last lease renewal it refuses
// writes (see Node.Allowed), so that once its lease may have expired and
// its peers consider it gone, it changes nothing on the shared storage.
//
// No consensus code lives here: etcd decides; a node only keeps its lease
// alive and reads what etcd says.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/iserd/iserd/internal/retry"
)

// revokeTimeout bounds the lease revocation when a node stops.
const revokeTimeout = 2 * time.Second

// Node is this process's membership in a cluster. Its methods are safe for
// concurrent use.
type Node struct {
	opts   Options
	log    *zap.Logger
	cli    *clientv3.Client
	prefix string
	margin time.Duration
	now    func() time.Duration

	// deadline is the clock reading (ns) before which writes are allowed;
	// 0 until the first lease is granted and after it is lost.
	deadline atomic.Int64
	lease    atomic.Int64 // the current lease ID; 0: none
	// lastRenew is the clock reading of the last successful renewal
	// request's sending (or grant), 0 before the first.
	lastRenew atomic.Int64
	renewals  atomic.Uint64
	failures  atomic.Uint64
	lost      atomic.Uint64 // leases found expired or revoked
	// fencedNow mirrors the fence for reports (the monitor goroutine
	// updates it); Allowed reads the clock instead.
	fencedNow atomic.Bool

	view      atomic.Pointer[view]
	mu        sync.Mutex
	portals   []Portal
	onChange  []func()
	republish chan struct{} // the node record changed: publish it again
	extended  chan struct{} // the deadline moved: the monitor looks again

	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New checks opts, connects to etcd and starts the node: it grants a lease
// and publishes the node's record as soon as etcd answers, and keeps
// trying (fenced meanwhile) while it does not. New does not wait for etcd.
func New(opts Options) (*Node, error) {
	if err := opts.Check(); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	tc, err := opts.TLS.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	log = log.With(zap.String("cluster", opts.Name), zap.String("node", opts.Node))
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: opts.Endpoints,
		TLS:       tc,
		// grpc's own reports of each failed dial would flood the log
		// while etcd is away; the node says it once, in its own words.
		Logger:               log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel)),
		DialKeepAliveTime:    opts.LeaseTTL / 2,
		DialKeepAliveTimeout: opts.LeaseTTL / 4,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client: %w", err)
	}
	n := &Node{opts: opts, log: log, cli: cli, prefix: Prefix(opts.Name), margin: Margin(opts.LeaseTTL),
		now: opts.Clock, portals: slices.Clone(opts.Portals),
		republish: make(chan struct{}, 1), extended: make(chan struct{}, 1)}
	if n.now == nil {
		base := time.Now()
		n.now = func() time.Duration { return time.Since(base) }
	}
	n.view.Store(newView())
	n.fencedNow.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.keepLease(ctx) }()
	go func() { defer n.wg.Done(); n.watch(ctx) }()
	go func() { defer n.wg.Done(); n.monitor(ctx) }()
	return n, nil
}

// Allowed reports whether this node may change shared state now: it holds
// a lease and the deadline of its last renewal has not passed. The
// deadline is (monotonic time the last successful renewal request was
// sent) + TTL - Margin(TTL); etcd counts the lease from when it received
// that request, later, so the lease cannot have expired before it. A node
// that was paused (SIGSTOP, a stall) sees itself fenced the instant it
// runs again, since the clock moved on while it slept. It costs an atomic
// load and a clock read, and allocates nothing.
func (n *Node) Allowed() bool { return int64(n.now()) < n.deadline.Load() }

// Name is this node's name.
func (n *Node) Name() string { return n.opts.Node }

// Client is the node's etcd client (for the cluster's other users, such as
// persistent reservations).
func (n *Node) Client() *clientv3.Client { return n.cli }

// Key is the etcd key rel under the cluster's prefix.
func (n *Node) Key(rel string) string { return n.prefix + rel }

// LeaseID is the node's current lease, 0 when it holds none.
func (n *Node) LeaseID() clientv3.LeaseID { return clientv3.LeaseID(n.lease.Load()) }

// OnChange registers fn to be called, from the node's goroutines and
// without its locks, whenever what PortGroups reports may have changed:
// a node came or went, an explicit ALUA state changed, this node was
// fenced or allowed again.
func (n *Node) OnChange(fn func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onChange = append(n.onChange, fn)
}

// notify calls the OnChange functions.
func (n *Node) notify() {
	n.mu.Lock()
	fns := slices.Clone(n.onChange)
	n.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// SetPortals changes this node's portals; the node record is published
// again.
func (n *Node) SetPortals(ps []Portal) {
	n.mu.Lock()
	n.portals = slices.Clone(ps)
	n.mu.Unlock()
	signal(n.republish)
}

// record is this node's record.
func (n *Node) record() Record {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Record{Node: n.opts.Node, Portals: slices.Clone(n.portals)}
}

// signal wakes whoever waits on ch without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Close stops the node: it fences itself, stops renewing and revokes its
// lease, so its record goes at once and its peers report it unavailable
// without waiting for the TTL.
func (n *Node) Close() error {
	if n.closed.Swap(true) {
		return nil
	}
	n.deadline.Store(0)
	n.cancel()
	n.wg.Wait()
	var errs []error
	if id := n.LeaseID(); id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), revokeTimeout)
		if _, err := n.cli.Revoke(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("cluster: revoke lease %x: %w (peers see this node go when its TTL runs out)", int64(id), err))
		}
		cancel()
		n.lease.Store(0)
	}
	if err := n.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, fmt.Errorf("cluster: close etcd client: %w", err))
	}
	n.log.Info("left the cluster")
	return errors.Join(errs...)
}

// Renewal pacing, as fractions of the TTL: a renewal every TTL/4, each
// bounded by TTL/4; after a failure, a retry every TTL/20 (at least
// minRetry), so a short etcd hiccup costs no fencing.
const minRetry = 100 * time.Millisecond

func (n *Node) renewEvery() time.Duration { return n.opts.LeaseTTL / 4 }
func (n *Node) retryEvery() time.Duration { return max(n.opts.LeaseTTL/20, minRetry) }

// keepLease grants the lease, publishes the node record under it and
// renews it until ctx ends. A lost lease (expired, revoked) is replaced by
// a new one as soon as etcd answers again.
func (n *Node) keepLease(ctx context.Context) {
	var lease clientv3.LeaseID
	var down downReport
	dirty := false // the record changed but could not be published yet
	for ctx.Err() == nil {
		if lease == 0 {
			id, err := n.grant(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				n.failures.Add(1)
				down.failed(n, err)
				retry.Sleep(ctx, n.retryEvery())
				continue
			}
			lease, dirty = id, false
			down.recovered()
			n.log.Info("lease granted and node record published", zap.String("lease", fmt.Sprintf("%x", int64(id))),
				zap.Duration("ttl", n.opts.LeaseTTL), zap.Duration("margin", n.margin))
		}
		wait := n.renewEvery()
		if !down.ok() {
			wait = n.retryEvery()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-n.republish:
			t.Stop()
			if err := n.publish(ctx, lease); err != nil {
				n.log.Warn("cannot publish the node record: trying again after the next renewal", zap.Error(err))
				dirty = true
			}
			continue
		case <-t.C:
		}
		sent := n.now()
		rctx, cancel := context.WithTimeout(ctx, n.renewEvery())
		resp, err := n.cli.KeepAliveOnce(rctx, lease)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			n.renewed(sent, resp.TTL)
			if dirty && n.publish(ctx, lease) == nil {
				dirty = false
			}
			if down.recovered() {
				n.log.Info("etcd answers again: lease renewed", zap.String("lease", fmt.Sprintf("%x", int64(lease))))
			}
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			n.failures.Add(1)
			n.lost.Add(1)
			n.deadline.Store(0)
			n.lease.Store(0)
			signal(n.extended)
			n.log.Warn("the lease expired or was revoked: fenced; granting a new one", zap.String("lease", fmt.Sprintf("%x", int64(lease))))
			lease = 0
		default:
			n.failures.Add(1)
			down.failed(n, err)
		}
	}
}

// grant asks for a new lease and publishes the node record under it.
func (n *Node) grant(ctx context.Context) (clientv3.LeaseID, error) {
	sent := n.now()
	gctx, cancel := context.WithTimeout(ctx, n.renewEvery())
	defer cancel()
	g, err := n.cli.Grant(gctx, int64(n.opts.LeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	if err := n.publish(gctx, g.ID); err != nil {
		rctx, rcancel := context.WithTimeout(context.Background(), revokeTimeout)
		_, _ = n.cli.Revoke(rctx, g.ID) // best effort: it expires anyway
		rcancel()
		return 0, err
	}
	n.lease.Store(int64(g.ID))
	n.renewed(sent, g.TTL)
	return g.ID, nil
}

// publish writes the node record: under the lease (liveness) and as the
// member record that outlives it.
func (n *Node) publish(ctx context.Context, lease clientv3.LeaseID) error {
	b, err := json.Marshal(n.record())
	if err != nil {
		return fmt.Errorf("node record: %w", err)
	}
	_, err = n.cli.Txn(ctx).Then(
		clientv3.OpPut(n.Key(nodesDir+n.opts.Node), string(b), clientv3.WithLease(lease)),
		clientv3.OpPut(n.Key(membersDir+n.opts.Node), string(b)),
	).Commit()
	if err != nil {
		return fmt.Errorf("publish node record: %w", err)
	}
	signal(n.extended) // the monitor reports the new record
	return nil
}

// renewed moves the deadline after a successful grant or renewal whose
// request was sent at clock reading sent; ttl is the TTL etcd reported
// (seconds).
func (n *Node) renewed(sent time.Duration, ttl int64) {
	d := min(n.opts.LeaseTTL, time.Duration(ttl)*time.Second)
	n.lastRenew.Store(int64(sent))
	n.deadline.Store(int64(sent + d - n.margin))
	n.renewals.Add(1)
	signal(n.extended)
}

// monitor reports the fence's transitions: it logs them and calls the
// OnChange functions, so this node's own port group turns unavailable when
// it is fenced and active again when it is allowed. Writes do not depend
// on it: Allowed reads the clock.
func (n *Node) monitor(ctx context.Context) {
	for {
		now, dl := n.now(), time.Duration(n.deadline.Load())
		fenced := now >= dl
		if n.fencedNow.Swap(fenced) != fenced {
			if fenced {
				n.log.Warn("fenced: no lease renewal in time; writes and reservation changes are refused (NOT READY, 04h/0Ch)",
					zap.Duration("since_last_renewal", now-time.Duration(n.lastRenew.Load())))
			} else {
				n.log.Info("allowed: the lease is held; writes go on", zap.Duration("until_deadline", dl-now))
			}
			n.notify()
		}
		var timeout <-chan time.Time
		var t *time.Timer
		if !fenced {
			t = time.NewTimer(dl - now)
			timeout = t.C
		}
		select {
		case <-ctx.Done():
		case <-n.extended:
		case <-timeout:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// downReport logs etcd outages once when they start, every
// downReportEvery while they last, and once when they end.
type downReport struct {
	since, last time.Time
}

const downReportEvery = 30 * time.Second

func (d *downReport) ok() bool { return d.since.IsZero() }

func (d *downReport) failed(n *Node, err error) {
	now := time.Now()
	switch {
	case d.since.IsZero():
		d.since, d.last = now, now
		n.log.Warn("cannot reach etcd: fenced once the lease deadline passes, until etcd answers",
			zap.Strings("endpoints", n.opts.Endpoints), zap.Error(err))
	case now.Sub(d.last) >= downReportEvery:
		d.last = now
		n.log.Warn("still cannot reach etcd", zap.Strings("endpoints", n.opts.Endpoints),
			zap.Duration("for", now.Sub(d.since).Round(time.Second)), zap.Error(err))
	}
}

// recovered ends an outage and reports whether there was one.
func (d *downReport) recovered() bool {
	was := !d.since.IsZero()
	d.since = time.Time{}
	return was
}
