package cluster

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/iserd/iserd/internal/retry"
)

// watch keeps the node's view of the cluster: it reads the node, member
// and ALUA keys, then follows their changes from the next revision. When
// the watch breaks (etcd away, compaction) it reads everything again.
func (n *Node) watch(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := n.load(ctx)
		if err != nil {
			n.log.Debug("cannot read the cluster's keys: trying again", zap.Error(err))
			retry.Sleep(ctx, n.retryEvery())
			continue
		}
		n.follow(ctx, rev)
	}
}

// load reads the keys the view holds, all at one revision, and replaces
// the view.
func (n *Node) load(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, n.renewEvery())
	defer cancel()
	resp, err := n.cli.Txn(lctx).Then(
		clientv3.OpGet(n.Key(nodesDir), clientv3.WithPrefix()),
		clientv3.OpGet(n.Key(membersDir), clientv3.WithPrefix()),
		clientv3.OpGet(n.Key(aluaDir), clientv3.WithPrefix()),
		clientv3.OpGet(n.Key(configKey)),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("read cluster keys: %w", err)
	}
	v := newView()
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			n.applyKey(v, string(kv.Key), kv.Value, kv.ModRevision, false)
		}
	}
	n.view.Store(v)
	n.notify()
	return resp.Header.Revision, nil
}

// follow applies the changes after revision rev until the watch ends.
func (n *Node) follow(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range n.cli.Watch(wctx, n.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			n.log.Debug("cluster watch ended: reading the keys again", zap.Error(err))
			return
		}
		v := n.view.Load().clone()
		for _, ev := range resp.Events {
			n.applyKey(v, string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision, ev.Type == clientv3.EventTypeDelete)
		}
		n.view.Store(v)
		n.notify()
	}
}

// applyKey applies one key to v; a malformed value is logged and skipped.
func (n *Node) applyKey(v *view, key string, value []byte, rev int64, del bool) {
	if err := v.apply(strings.TrimPrefix(key, n.prefix), value, rev, del); err != nil {
		n.log.Warn("ignoring a malformed cluster key", zap.Error(err))
	}
}
