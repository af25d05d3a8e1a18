// Package cawlock makes SCSI COMPARE AND WRITE atomic across the nodes of
// an iserd cluster that serve one logical unit (scsi.CAWLock), with one
// lock per logical unit in etcd v3.
//
// Keys, under /iserd/<cluster>/, with <naa> the logical unit's NAA
// designator as 16 hexadecimal digits:
//
//	caw/<naa>/<node>    a node that holds or wants the lock, on the node's lease
//
// The node whose key has the lowest create revision holds the lock; the
// others queue behind it in create order. A holder keeps its key, and so
// the lock, across its COMPARE AND WRITEs for as long as no other key
// exists: a node alone costs no etcd request per command. Once another
// node's key appears, the holder admits no new command, lets those that
// hold the lock finish and deletes its key; its later commands queue
// again, behind the others.
//
// The key is attached to the node's lease, so a node that dies or loses
// its lease loses the lock when etcd expires the lease. It writes only
// while the lease it took the lock under is still its lease and its fence
// (cluster.Node.Allowed) allows writes, which it stops doing before etcd
// can expire that lease.
package cawlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// Bounds of the lock.
const (
	// DefaultWait bounds how long a COMPARE AND WRITE waits for the lock
	// before it ends with BUSY. It covers many handovers between busy
	// nodes (a few etcd round trips each); a holder that died keeps the
	// lock until its lease expires, longer than that, and the initiator
	// retries meanwhile.
	DefaultWait = 2 * time.Second
	// pollEvery is how often a node with waiting commands, or with a
	// handover that failed, looks again without a watch event: whether it
	// may still write, which waits ran out, whether etcd answers again.
	pollEvery = 50 * time.Millisecond
	// opTimeout bounds one etcd request of the lock.
	opTimeout = 2 * time.Second
)

// Member is what the locks need of this cluster node; cluster.Node
// provides it.
type Member interface {
	// Client is the node's etcd client.
	Client() *clientv3.Client
	// Key is the etcd key rel under the cluster's prefix.
	Key(rel string) string
	// Name is the node's name, unique in the cluster.
	Name() string
	// LeaseID is the node's current lease, 0 while it holds none.
	LeaseID() clientv3.LeaseID
	// Allowed reports whether the node may write to shared storage now.
	Allowed() bool
}

// Locks hands out the COMPARE AND WRITE locks of the logical units of one
// cluster node.
type Locks struct {
	m   Member
	log *zap.Logger
	// Wait bounds a command's wait for the lock (DefaultWait). Set it
	// before LUN.
	Wait time.Duration
}

// New returns the locks of node m; log receives their reports (nil:
// none).
func New(m Member, log *zap.Logger) (*Locks, error) {
	if m == nil {
		return nil, errors.New("compare and write locks: no cluster node")
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Locks{m: m, log: log, Wait: DefaultWait}, nil
}

// dir is the etcd prefix of the lock keys of the logical unit whose NAA
// value (scsi.DiskConfig.NAA) is naa.
func (s *Locks) dir(naa uint64) string {
	const naaLocal, naaMask = 3 << 60, 1<<60 - 1 // NAA 3h, locally assigned
	return s.m.Key(fmt.Sprintf("caw/%016x/", naaLocal|naa&naaMask))
}

// LUN returns the lock of the logical unit whose NAA value (the same on
// every node) is naa, for scsi.DiskConfig.CAWLock. It talks to etcd from
// the first COMPARE AND WRITE on.
func (s *Locks) LUN(naa uint64) scsi.CAWLock {
	dir := s.dir(naa)
	return &lunLock{s: s, dir: dir, key: dir + s.m.Name(), log: s.log.With(zap.String("caw_lock", dir)),
		kick: make(chan struct{}, 1)}
}

// hold is one tenure of the lock: from the moment this node's key was
// first to its deletion or loss.
type hold struct {
	token uint64
	lease clientv3.LeaseID // the lease the key is attached to
	rev   int64            // the key's create revision
}

// waiter is a command waiting for the lock.
type waiter struct {
	granted func(uint64, error)
	until   time.Time
}

// lunLock is the scsi.CAWLock of one logical unit.
type lunLock struct {
	s    *Locks
	dir  string // prefix of the lock keys
	key  string // this node's key
	log  *zap.Logger
	kick chan struct{} // wakes the keeper

	held atomic.Pointer[hold] // nil: not held

	mu       sync.Mutex
	yielding bool // another node waits: admit no more commands
	inflight int  // commands granted and not released
	waiters  []waiter
	tokens   uint64 // the last token handed out
	cancel   context.CancelFunc
	done     chan struct{} // closed when the keeper ended
	closed   bool
	keyLeft  bool // the keeper ended with this node's key in etcd
}

// Acquire implements scsi.CAWLock: a held lock that no other node waits
// for is granted at once; otherwise the command waits for the keeper.
func (l *lunLock) Acquire(granted func(uint64, error)) uint64 {
	l.mu.Lock()
	if h := l.held.Load(); h != nil && !l.yielding && !l.closed && len(l.waiters) == 0 && l.valid(h) {
		l.inflight++
		l.mu.Unlock()
		return h.token
	}
	if l.closed {
		l.mu.Unlock()
		granted(0, scsi.ErrFenced)
		return 0
	}
	l.waiters = append(l.waiters, waiter{granted: granted, until: time.Now().Add(l.s.Wait)})
	if l.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel, l.done = cancel, make(chan struct{})
		go l.keep(ctx)
	}
	l.mu.Unlock()
	signal(l.kick)
	return 0
}

// Valid implements scsi.CAWLock: the tenure is the current one, and the
// node may still write under the lease the key is attached to.
func (l *lunLock) Valid(token uint64) bool {
	h := l.held.Load()
	return h != nil && h.token == token && l.valid(h)
}

// valid reports whether the node may still write under h. The lease is
// read after the fence: a new lease is stored before its deadline, so a
// deadline of a later lease is never taken for one of h's.
func (l *lunLock) valid(h *hold) bool {
	return l.s.m.Allowed() && l.s.m.LeaseID() == h.lease
}

// Release implements scsi.CAWLock.
func (l *lunLock) Release(uint64) {
	l.mu.Lock()
	l.inflight--
	last := l.inflight == 0 && l.yielding
	l.mu.Unlock()
	if last {
		signal(l.kick)
	}
}

// Close implements scsi.CAWLock: it stops the keeper, fails the waiting
// commands and deletes this node's key.
func (l *lunLock) Close() error {
	l.mu.Lock()
	l.closed = true
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	l.failWaiters(func(waiter) bool { return true }, scsi.ErrFenced)
	l.held.Store(nil)
	if !l.keyLeft {
		return nil
	}
	ctx, cancelDel := context.WithTimeout(context.Background(), opTimeout)
	defer cancelDel()
	if _, err := l.s.m.Client().Delete(ctx, l.key); err != nil {
		return fmt.Errorf("compare and write lock: delete %s: %w (it goes with the node's lease)", l.key, err)
	}
	return nil
}

// signal wakes whoever waits on ch without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// failWaiters ends the waiting commands that drop selects with err.
func (l *lunLock) failWaiters(drop func(waiter) bool, err error) {
	var failed []waiter
	l.mu.Lock()
	kept := l.waiters[:0]
	for _, w := range l.waiters {
		if drop(w) {
			failed = append(failed, w)
		} else {
			kept = append(kept, w)
		}
	}
	clear(l.waiters[len(kept):])
	l.waiters = kept
	l.mu.Unlock()
	for _, w := range failed {
		w.granted(0, err)
	}
}

// keeper is the state of the goroutine that takes, keeps and hands over
// the lock.
type keeper struct {
	*lunLock
	keys    map[string]int64 // the lock keys and their create revisions, as of rev
	rev     int64            // the revision keys reflect
	watch   clientv3.WatchChan
	stopW   context.CancelFunc // ends watch
	mine    int64              // create revision of this node's key; 0: none
	mineFor clientv3.LeaseID   // the lease it is attached to
	gone    int64              // create revision of the key handOver or drop deleted last
}

// keep runs the keeper until ctx ends.
func (l *lunLock) keep(ctx context.Context) {
	k := &keeper{lunLock: l}
	defer func() {
		k.unwatch()
		l.keyLeft = k.mine != 0 // read by Close once done is closed
		close(l.done)
	}()
	poll := time.NewTimer(pollEvery)
	defer poll.Stop()
	for {
		if k.watch == nil {
			k.load(ctx)
		}
		var tick <-chan time.Time
		if k.step(ctx) || k.watch == nil {
			poll.Reset(pollEvery)
			tick = poll.C
		}
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		case <-tick:
		case wr, ok := <-k.watch:
			k.apply(wr, ok)
		}
	}
}

// load reads the lock keys and watches them from there.
func (k *keeper) load(ctx context.Context) {
	cli := k.s.m.Client()
	gctx, cancel := k.requestContext(ctx)
	resp, err := cli.Get(gctx, k.dir, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return // the poll tries again
	}
	k.keys, k.rev = make(map[string]int64, len(resp.Kvs)), resp.Header.Revision
	for _, kv := range resp.Kvs {
		k.keys[string(kv.Key)] = kv.CreateRevision
	}
	wctx, stop := context.WithCancel(clientv3.WithRequireLeader(ctx))
	k.watch, k.stopW = cli.Watch(wctx, k.dir, clientv3.WithPrefix(), clientv3.WithRev(k.rev+1)), stop
}

// unwatch ends the watch; load starts it again.
func (k *keeper) unwatch() {
	if k.stopW != nil {
		k.stopW()
	}
	k.watch, k.stopW, k.keys = nil, nil, nil
}

// apply brings the keys up to date with a watch response; a broken watch
// (compacted, no leader, closed) is started again from a fresh read.
func (k *keeper) apply(wr clientv3.WatchResponse, ok bool) {
	if !ok || wr.Err() != nil || wr.Canceled {
		k.unwatch()
		return
	}
	for _, ev := range wr.Events {
		if ev.Type == mvccpb.DELETE {
			delete(k.keys, string(ev.Kv.Key))
		} else {
			k.keys[string(ev.Kv.Key)] = ev.Kv.CreateRevision
		}
		k.rev = max(k.rev, ev.Kv.ModRevision)
	}
}

// step moves the lock on from what the keeper knows: it ends the waits
// that ran out, notices a lost tenure, takes the lock when this node's key
// came first (waiting commands or not: a queued key blocks the others until
// its node holds the lock and hands it over), hands the lock over to a
// waiting node, puts this node's key for waiting commands and grants them.
// It reports whether it wants to look again without an event. Decisions
// about a key wait until the watch has shown it (rev reaches its create
// revision): before that, keys may miss keys created just before it.
func (k *keeper) step(ctx context.Context) bool {
	now := time.Now()
	k.failWaiters(func(w waiter) bool { return now.After(w.until) }, scsi.ErrCAWBusy)
	if k.keys != nil {
		if k.mine != 0 && k.rev >= k.mine && k.keys[k.key] != k.mine {
			k.mine = 0 // the key went with its lease
		}
		if c, ok := k.keys[k.key]; ok && k.mine == 0 && k.held.Load() == nil && c != k.gone && k.rev >= c {
			if !k.drop(ctx, c) {
				return true
			}
		}
		if k.held.Load() == nil && k.first() {
			k.hold()
		}
		if h := k.held.Load(); h != nil && k.rev >= h.rev {
			switch {
			case k.keys[k.key] != h.rev || k.s.m.LeaseID() != h.lease:
				k.lose()
			case k.others():
				if again := k.handOver(ctx, h); k.held.Load() != nil {
					return again
				}
			default:
				k.setYielding(false) // the node that waited left
			}
		}
	}
	if !k.waiting() {
		return false
	}
	if k.held.Load() == nil {
		if !k.s.m.Allowed() {
			k.failWaiters(func(waiter) bool { return true }, scsi.ErrFenced)
			return false
		}
		if k.keys == nil || !k.take(ctx) {
			return true
		}
	}
	k.grant()
	return false
}

// waiting reports whether commands wait for the lock.
func (k *keeper) waiting() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.waiters) > 0
}

// requestContext bounds one etcd request by opTimeout and by the wait of
// the first waiting command.
func (k *keeper) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	by := time.Now().Add(opTimeout)
	k.mu.Lock()
	if len(k.waiters) > 0 && k.waiters[0].until.Before(by) {
		by = k.waiters[0].until
	}
	k.mu.Unlock()
	return context.WithDeadline(ctx, by)
}

// others reports whether a node other than this one holds or wants the
// lock.
func (k *keeper) others() bool {
	for key := range k.keys {
		if key != k.key {
			return true
		}
	}
	return false
}

// lose ends a tenure that the node's lease took with it.
func (k *keeper) lose() {
	k.held.Store(nil)
	k.mine = 0
	k.setYielding(false)
	k.log.Warn("lost the compare and write lock with the node's lease: commands that held it fail (NOT READY, 04h/0Ch)")
}

// take puts this node's key unless it is queued already, and makes the
// node the holder when the key is the first. It reports whether the node
// holds the lock.
func (k *keeper) take(ctx context.Context) bool {
	lease := k.s.m.LeaseID()
	if lease == 0 || k.mine != 0 && k.mineFor == lease {
		return false // no lease, or queued: step takes the lock once the watch shows the key first
	}
	tctx, cancel := k.requestContext(ctx)
	resp, err := k.s.m.Client().Txn(tctx).Then(
		clientv3.OpPut(k.key, "", clientv3.WithLease(lease)),
		clientv3.OpGet(k.key),
		clientv3.OpGet(k.dir, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1)),
	).Commit()
	cancel()
	if err != nil {
		return false // the poll tries again until the commands' waits run out
	}
	mine, head := resp.Responses[1].GetResponseRange().Kvs, resp.Responses[2].GetResponseRange().Kvs
	if len(mine) == 0 || len(head) == 0 {
		return false
	}
	k.mine, k.mineFor = mine[0].CreateRevision, lease
	if string(head[0].Key) != k.key { // at the transaction's revision
		return false
	}
	k.hold()
	return true
}

// first reports whether the watch shows this node's key first in line.
func (k *keeper) first() bool {
	if k.mine == 0 || k.rev < k.mine || k.keys[k.key] != k.mine {
		return false
	}
	for _, rev := range k.keys {
		if rev < k.mine {
			return false
		}
	}
	return true
}

// hold starts a tenure of this node's key.
func (k *keeper) hold() {
	k.mu.Lock()
	k.tokens++
	k.held.Store(&hold{token: k.tokens, lease: k.mineFor, rev: k.mine})
	k.mu.Unlock()
}

// grant hands the held lock to the waiting commands.
func (k *keeper) grant() {
	h := k.held.Load()
	k.mu.Lock()
	ws := k.waiters
	k.waiters = nil
	k.inflight += len(ws)
	k.mu.Unlock()
	for _, w := range ws {
		w.granted(h.token, nil)
	}
}

// handOver stops admitting commands and, once none holds the lock,
// deletes this node's key so that the next node in line gets it. It
// reports whether it must look again without an event (the delete
// failed).
func (k *keeper) handOver(ctx context.Context, h *hold) bool {
	k.mu.Lock()
	k.yielding = true
	busy := k.inflight > 0
	k.mu.Unlock()
	if busy {
		return k.waiting() // the last Release kicks; the poll ends waits that run out
	}
	dctx, cancel := context.WithTimeout(ctx, opTimeout)
	_, err := k.s.m.Client().Txn(dctx).
		If(clientv3.Compare(clientv3.CreateRevision(k.key), "=", h.rev)).
		Then(clientv3.OpDelete(k.key)).Commit()
	cancel()
	if err != nil {
		return true
	}
	k.held.Store(nil)
	k.mine, k.gone = 0, h.rev
	k.setYielding(false)
	return false
}

// drop deletes a key of this node that the keeper does not know as its own
// (a put whose answer was lost, that took effect): queued, it would block
// the other nodes for good once first. It reports whether it succeeded.
func (k *keeper) drop(ctx context.Context, rev int64) bool {
	dctx, cancel := context.WithTimeout(ctx, opTimeout)
	_, err := k.s.m.Client().Txn(dctx).
		If(clientv3.Compare(clientv3.CreateRevision(k.key), "=", rev)).
		Then(clientv3.OpDelete(k.key)).Commit()
	cancel()
	if err != nil {
		return false
	}
	k.gone = rev
	return true
}

// setYielding sets whether commands must wait for a handover.
func (k *keeper) setYielding(y bool) {
	k.mu.Lock()
	k.yielding = y
	k.mu.Unlock()
}
