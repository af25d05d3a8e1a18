// Package prstore keeps the SCSI persistent reservations of an iserd
// cluster's logical units in etcd v3, so that every node serving a logical
// unit enforces and reports one reservation state (scsi.PRStore).
//
// Keys, under /iserd/<cluster>/, with <naa> the logical unit's NAA
// designator as 16 hexadecimal digits:
//
//	pr/<naa>                       the record: state (persistent reservations, the SCSI-2 reservation) and the event of its last change
//	pr-members/<naa>/<node>        the nodes serving the unit, on each node's lease
//	pr-acks/<naa>/<node>           the last revision the node installed (and aborted what it preempted), on its lease
//
// Changes are transactions that compare the record's mod revision (and
// that the committing node's member key, hence its lease, still exists).
package prstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/iserd/iserd/internal/retry"
	"github.com/iserd/iserd/scsi"
)

// Defaults of the bounds a Store applies.
const (
	// DefaultAbortWait bounds how long a change (PERSISTENT RESERVE OUT, a
	// reset) waits for the other nodes to acknowledge that they installed
	// it and, for PREEMPT AND ABORT, aborted the preempted nexuses' tasks.
	// It must exceed the node lease TTL, so that a node that died
	// silently has its lease, and with it its member key, expire within
	// the wait.
	DefaultAbortWait = 15 * time.Second
	// opTimeout bounds the single requests the store makes on its own:
	// joining a logical unit, acknowledging, leaving.
	opTimeout = 5 * time.Second
	// retryDelay spaces the attempts to re-establish a watch or a member
	// key while etcd is unreachable.
	retryDelay = time.Second
	// leasePoll spaces the looks for a lease of a logical unit that opened
	// before its node held one (no request to etcd): the node joins the
	// unit, and may change its reservations, this soon after its grant.
	leasePoll = 20 * time.Millisecond
)

// naaMask keeps the 60 bits of a locally assigned NAA value.
const naaMask = 1<<60 - 1

// naaLocal is the NAA field (3h, locally assigned) of the designator.
const naaLocal = 3 << 60

// errLeaseLost is returned when a commit finds the node's member key gone:
// its lease expired, and with it its right to change reservations.
var errLeaseLost = errors.New("the node's lease is gone")

// errNoLease is returned when the node holds no lease at the moment (before
// its first grant, or between a lost lease and the next).
var errNoLease = errors.New("the node holds no lease")

// Store hands out the reservation stores of the logical units of one
// cluster node.
type Store struct {
	client  *clientv3.Client
	prefix  string // /iserd/<cluster>/
	node    string
	lease   func() clientv3.LeaseID
	allowed func() bool
	// AbortWait bounds a PREEMPT AND ABORT's wait for the other nodes'
	// acknowledgements (DefaultAbortWait). Set it before LUN.
	AbortWait time.Duration
}

// New returns the reservation stores of node in cluster, kept through
// client. lease returns the node's current lease (0 while it has none),
// to which the node's keys are attached; allowed reports whether the node
// may change reservations now (false once it may have lost its lease: it
// fences itself).
func New(client *clientv3.Client, cluster, node string, lease func() clientv3.LeaseID, allowed func() bool) (*Store, error) {
	switch {
	case client == nil:
		return nil, errors.New("reservation store: no etcd client")
	case lease == nil || allowed == nil:
		return nil, errors.New("reservation store: lease and allowed functions are required")
	}
	for what, s := range map[string]string{"cluster": cluster, "node": node} {
		if s == "" || strings.ContainsAny(s, "/ \t\n") {
			return nil, fmt.Errorf("reservation store: %s name %q: must be non-empty, without '/' or spaces", what, s)
		}
	}
	return &Store{client: client, prefix: "/iserd/" + cluster + "/", node: node, lease: lease, allowed: allowed,
		AbortWait: DefaultAbortWait}, nil
}

// RecordKey is the etcd key of the record of the logical unit whose NAA
// value (scsi.DiskConfig.NAA) is naa.
func (s *Store) RecordKey(naa uint64) string { return s.prefix + "pr/" + designator(naa) }

// designator is the NAA designator of naa as 16 hexadecimal digits.
func designator(naa uint64) string { return fmt.Sprintf("%016x", naaLocal|naa&naaMask) }

// LUN returns the store of the logical unit whose NAA value
// (scsi.DiskConfig.NAA, the same on every node) is naa, for
// scsi.DiskConfig.PRStore.
func (s *Store) LUN(naa uint64) scsi.PRStore {
	id := designator(naa)
	l := &lunStore{
		s:       s,
		key:     s.prefix + "pr/" + id,
		members: s.prefix + "pr-members/" + id + "/",
		acks:    s.prefix + "pr-acks/" + id + "/",
	}
	l.self = l.members + s.node
	l.ack = l.acks + s.node
	return l
}

// lunStore is the scsi.PRStore of one logical unit.
type lunStore struct {
	s       *Store
	key     string // the record
	members string // prefix of the member keys
	self    string // this node's member key
	acks    string // prefix of the acknowledgements
	ack     string // this node's acknowledgement

	mu     sync.Mutex
	cancel context.CancelFunc // stops the goroutines; nil before Open
	wg     sync.WaitGroup
	closed bool

	// powerOn is the record that replaces the one of revision
	// powerOn.Rev when this node first joins; nil when there is none or
	// the first join happened. Only keepMember uses it after Open.
	powerOn *scsi.PRRecord
}

// Open reads the record and the members at one revision, watches the
// record and the members from there (members gets the node names), and joins the logical unit (this node's member key)
// as soon as the node holds a lease. When no node served the unit, the
// first join also puts what powerOn made of the record, unless the record
// changed by then.
func (l *lunStore) Open(apply func(scsi.PRRecord), powerOn func(scsi.PRRecord) []byte, members func([]string)) (scsi.PRRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.cancel != nil {
		return scsi.PRRecord{}, errors.New("reservation store: opened twice or closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := l.s.client.Txn(ctx).Then(clientv3.OpGet(l.key), clientv3.OpGet(l.members, clientv3.WithPrefix())).Commit()
	if err != nil {
		return scsi.PRRecord{}, fmt.Errorf("read reservation record %s: %w", l.key, err)
	}
	cur := record(resp.Responses[0].GetResponseRange().Kvs)
	nodes := make(map[string]bool)
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		nodes[strings.TrimPrefix(string(kv.Key), l.members)] = true
	}
	// Alone: no node serves the unit, this one included (a reopened unit,
	// or a process that restarted within its old lease's TTL, is no power
	// cycle).
	if len(nodes) == 0 {
		if v := powerOn(cur); v != nil {
			l.powerOn = &scsi.PRRecord{Rev: cur.Rev, Value: v}
		}
	}
	wctx, wcancel := context.WithCancel(context.Background())
	l.cancel = wcancel
	l.wg.Add(3)
	go l.watch(wctx, resp.Header.Revision+1, apply)
	go l.keepMember(wctx)
	go l.watchMembers(wctx, resp.Header.Revision+1, nodes, members)
	return cur, nil
}

// watchMembers calls members with the nodes that serve the unit: first
// with nodes, read at revision from-1, then after every change of a member
// key from revision from on. When the watch breaks it resumes from the
// next revision; when that was compacted away, it reads the members again.
func (l *lunStore) watchMembers(ctx context.Context, from int64, nodes map[string]bool, members func([]string)) {
	defer l.wg.Done()
	report := func() {
		list := make([]string, 0, len(nodes))
		for n := range nodes {
			list = append(list, n)
		}
		slices.Sort(list)
		members(list)
	}
	report()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range l.s.client.Watch(wctx, l.members, clientv3.WithPrefix(), clientv3.WithRev(from)) {
			if wr.CompactRevision != 0 {
				if r, err := l.s.client.Get(wctx, l.members, clientv3.WithPrefix()); err == nil {
					clear(nodes)
					for _, kv := range r.Kvs {
						nodes[strings.TrimPrefix(string(kv.Key), l.members)] = true
					}
					from = r.Header.Revision + 1
					report()
				}
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				node := strings.TrimPrefix(string(ev.Kv.Key), l.members)
				if ev.Type == clientv3.EventTypeDelete {
					delete(nodes, node)
				} else {
					nodes[node] = true
				}
				from = ev.Kv.ModRevision + 1
			}
			report()
		}
		cancel()
		retry.Sleep(ctx, retryDelay)
	}
}

// Node is the name of this node.
func (l *lunStore) Node() string { return l.s.node }

// join puts this node's member key on lease and returns the revision of
// the put. The first join puts the power-on record as well, in the same
// transaction, if the record is still the one it replaces.
func (l *lunStore) join(ctx context.Context, lease clientv3.LeaseID) (int64, error) {
	put := clientv3.OpPut(l.self, "", clientv3.WithLease(lease))
	txn := l.s.client.Txn(ctx)
	if p := l.powerOn; p != nil {
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(l.key), "=", p.Rev)).
			Then(put, clientv3.OpPut(l.key, string(p.Value))).
			Else(put)
	} else {
		txn = txn.Then(put)
	}
	r, err := txn.Commit()
	if err != nil {
		return 0, fmt.Errorf("join %s: %w", l.self, err)
	}
	l.powerOn = nil
	return r.Header.Revision, nil
}

// record is the record in the result of a read of the record key.
func record(kvs []*mvccpb.KeyValue) scsi.PRRecord {
	if len(kvs) == 0 {
		return scsi.PRRecord{}
	}
	return scsi.PRRecord{Rev: kvs[0].ModRevision, Value: kvs[0].Value}
}

// watch delivers every record from revision from on to apply, in order.
// When the watch breaks (etcd unreachable, leader lost) it resumes from
// the next revision; when that revision was compacted away, it delivers
// the current record (the events in between are lost).
func (l *lunStore) watch(ctx context.Context, from int64, apply func(scsi.PRRecord)) {
	defer l.wg.Done()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range l.s.client.Watch(wctx, l.key, clientv3.WithRev(from)) {
			if wr.CompactRevision != 0 {
				if r, err := l.s.client.Get(wctx, l.key); err == nil {
					apply(record(r.Kvs))
					from = r.Header.Revision + 1
				}
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				rec := scsi.PRRecord{Rev: ev.Kv.ModRevision, Value: ev.Kv.Value}
				if ev.Type == clientv3.EventTypeDelete {
					rec.Value = nil
				}
				apply(rec)
				from = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		retry.Sleep(ctx, retryDelay)
	}
}

// keepMember keeps this node's member key: it puts it once the node holds
// a lease, and again whenever it vanished (the node lost its lease and got
// a new one), so that the others wait for this node's acknowledgements.
// A lease etcd no longer knows (the key went with it before the node
// learnt it lost the lease) is not tried again: the node joins once it
// holds another one.
func (l *lunStore) keepMember(ctx context.Context) {
	defer l.wg.Done()
	lost := clientv3.NoLease
	for ctx.Err() == nil {
		lease := l.s.lease()
		if lease == clientv3.NoLease || lease == lost {
			retry.Sleep(ctx, leasePoll)
			continue
		}
		jctx, jcancel := context.WithTimeout(ctx, opTimeout)
		rev, err := l.join(jctx, lease)
		jcancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			lost = lease
			continue
		}
		if err != nil {
			retry.Sleep(ctx, retryDelay)
			continue
		}
		l.untilLeft(ctx, rev+1)
	}
}

// untilLeft returns when this node's member key is deleted at revision
// from or later (or is found missing once etcd compacted the revisions
// the watch would resume from), or when ctx ends.
func (l *lunStore) untilLeft(ctx context.Context, from int64) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range l.s.client.Watch(wctx, l.self, clientv3.WithRev(from)) {
			if wr.CompactRevision != 0 {
				// The revisions since the last look are gone: whether the
				// key is there now says whether this node left.
				r, err := l.s.client.Get(wctx, l.self)
				if err == nil && len(r.Kvs) == 0 {
					cancel()
					return
				}
				if err == nil {
					from = r.Header.Revision + 1
				}
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					cancel()
					return
				}
				from = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		retry.Sleep(ctx, retryDelay)
	}
}

// Get reads the record.
func (l *lunStore) Get(ctx context.Context) (scsi.PRRecord, error) {
	r, err := l.s.client.Get(ctx, l.key)
	if err != nil {
		return scsi.PRRecord{}, fmt.Errorf("read reservation record %s: %w", l.key, err)
	}
	return record(r.Kvs), nil
}

// Commit puts value if the record's mod revision is prev and this node's
// member key still exists.
func (l *lunStore) Commit(ctx context.Context, prev int64, value []byte) (scsi.PRRecord, bool, error) {
	resp, err := l.s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(l.key), "=", prev),
			clientv3.Compare(clientv3.CreateRevision(l.self), ">", 0)).
		Then(clientv3.OpPut(l.key, string(value))).
		Else(clientv3.OpGet(l.key), clientv3.OpGet(l.self)).
		Commit()
	if err != nil {
		return scsi.PRRecord{}, false, fmt.Errorf("commit reservation record %s: %w", l.key, err)
	}
	if resp.Succeeded {
		return scsi.PRRecord{Rev: resp.Header.Revision, Value: value}, true, nil
	}
	if len(resp.Responses[1].GetResponseRange().Kvs) == 0 {
		return scsi.PRRecord{}, false, fmt.Errorf("commit reservation record %s: %w", l.key, errLeaseLost)
	}
	return record(resp.Responses[0].GetResponseRange().Kvs), false, nil
}

// Ack puts this node's acknowledgement of revision rev on its lease. It
// is one key per node, holding the last revision acknowledged: records
// are delivered in order, so it acknowledges every earlier one too, and
// no acknowledgement outlives its use (a waiter that crashed or gave up
// left none behind).
func (l *lunStore) Ack(ctx context.Context, rev int64) error {
	lease := l.s.lease()
	if lease == clientv3.NoLease {
		return fmt.Errorf("acknowledge revision %d: %w", rev, errNoLease)
	}
	if _, err := l.s.client.Put(ctx, l.ack, strconv.FormatInt(rev, 10), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("acknowledge revision %d: %w", rev, err)
	}
	return nil
}

// WaitAcks waits, at most AbortWait, until every node that joined before
// revision rev (put its member key last before it) and is still a member,
// this one apart, acknowledged rev (or a later revision).
func (l *lunStore) WaitAcks(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, l.s.AbortWait)
	defer cancel()
	for {
		resp, err := l.s.client.Txn(ctx).
			Then(clientv3.OpGet(l.members, clientv3.WithPrefix()), clientv3.OpGet(l.acks, clientv3.WithPrefix())).
			Commit()
		if err != nil {
			return fmt.Errorf("wait for the acknowledgements of revision %d: %w", rev, err)
		}
		acked := make(map[string]bool)
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			if v, err := strconv.ParseInt(string(kv.Value), 10, 64); err == nil && v >= rev {
				acked[strings.TrimPrefix(string(kv.Key), l.acks)] = true
			}
		}
		var missing []string
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			node := strings.TrimPrefix(string(kv.Key), l.members)
			// ModRevision, not CreateRevision: a node process that
			// crashed and started again within its old lease's TTL puts
			// the key again, which keeps its creation; the new process
			// read the record after rev and will not acknowledge it.
			if node != l.s.node && kv.ModRevision < rev && !acked[node] {
				missing = append(missing, node)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if err := l.waitChange(ctx, resp.Header.Revision+1); err != nil {
			return fmt.Errorf("wait for the acknowledgements of revision %d from %s: %w",
				rev, strings.Join(missing, ", "), err)
		}
	}
}

// waitChange returns when a member key or an acknowledgement changes at
// revision from or later, or fails when ctx ends.
func (l *lunStore) waitChange(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	mw := l.s.client.Watch(wctx, l.members, clientv3.WithPrefix(), clientv3.WithRev(from))
	aw := l.s.client.Watch(wctx, l.acks, clientv3.WithPrefix(), clientv3.WithRev(from))
	select {
	case <-mw:
	case <-aw:
	case <-ctx.Done():
	}
	return ctx.Err()
}

// Allowed reports what the node's allowed function says.
func (l *lunStore) Allowed() bool { return l.s.allowed() }

// Close stops the watches and leaves the logical unit (deletes this
// node's member key and acknowledgement), so that no change waits for
// this node.
func (l *lunStore) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.cancel == nil {
		return nil
	}
	l.cancel()
	l.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := l.s.client.Txn(ctx).Then(clientv3.OpDelete(l.self), clientv3.OpDelete(l.ack)).Commit(); err != nil {
		return fmt.Errorf("leave %s: %w", l.self, err)
	}
	return nil
}
