package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/iserd/iserd/scsi"
)

// ErrConfigChanged fails a PutConfig whose base revision is no longer the
// stored configuration's: another node changed it first.
var ErrConfigChanged = errors.New("the cluster configuration was changed by another node meanwhile: retry")

// Config returns the cluster-wide configuration as last seen (nil when
// none is stored) and the revision that wrote it (0 for none). OnChange
// functions run when it changes.
func (n *Node) Config() ([]byte, int64) {
	v := n.view.Load()
	return v.config, v.configRev
}

// PutConfig stores the cluster-wide configuration doc in place of the one
// written at revision base (0: none may be stored yet), and returns the new
// revision. It fails with ErrConfigChanged when another node wrote it
// since, and with scsi.ErrFenced when this node does not hold its lease.
func (n *Node) PutConfig(doc []byte, base int64) (int64, error) {
	if !n.Allowed() {
		return 0, fmt.Errorf("cluster: store the configuration: %w", scsi.ErrFenced)
	}
	key := n.Key(configKey)
	ctx, cancel := context.WithTimeout(context.Background(), n.renewEvery())
	defer cancel()
	resp, err := n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(n.Key(nodesDir+n.opts.Node)), "=", n.LeaseID()),
			clientv3.Compare(clientv3.ModRevision(key), "=", base)).
		Then(clientv3.OpPut(key, string(doc))).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, fmt.Errorf("cluster: store the configuration: %w", err)
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].ModRevision != base || len(kvs) == 0 && base != 0 {
			return 0, fmt.Errorf("cluster: store the configuration: %w", ErrConfigChanged)
		}
		return 0, fmt.Errorf("cluster: store the configuration: this node no longer holds its lease: %w", scsi.ErrFenced)
	}
	return resp.Header.Revision, nil
}
