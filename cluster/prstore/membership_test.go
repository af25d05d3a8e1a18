package prstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/scsitest"
	"github.com/iserd/iserd/scsi"
)

// TestCrashedNodeRestartsWithinTTL: a node process that crashed and
// started again before its old lease expired puts its member key again (on
// its new lease). A change committed in between, which the new process
// never acknowledges (it read the record after it), must not wait for it
// until AbortWait: the node's old process is gone with its lease, and the
// new one installed the change when it opened.
func TestCrashedNodeRestartsWithinTTL(t *testing.T) {
	etcd := etcdtest.Start(t)
	a, b := newNode(t, etcd, "crash", "a", 1), newNode(t, etcd, "crash", "b", 2)
	b.store.AbortWait = 4 * leaseTTL * time.Second
	b1 := b.nexus(1, "iqn.b", 2)
	a.stopKA()
	a.client.Close() // A's process is gone: its member key stays until its lease expires
	began := time.Now()
	before := b.rec.last.Load()
	done := make(chan *scsi.Command, 1)
	go func() { done <- b.prout(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0)) }()
	polltest.Wait(t, "B to commit", func() bool { return b.rec.last.Load() != before })
	// A starts again at once, well within its old lease's TTL.
	a2 := newNode(t, etcd, "crash", "a", 1)
	c := <-done
	took := time.Since(began)
	if c.Status != scsi.StatusGood {
		k, asc := sense(c)
		t.Fatalf("REGISTER on B while A restarted: status %#x sense %x/%04x after %v", c.Status, k, asc, took)
	}
	if took > 2*leaseTTL*time.Second {
		t.Fatalf("REGISTER on B took %v, beyond A's old lease TTL (%ds)", took, leaseTTL)
	}
	a21 := a2.nexus(1, "iqn.a", 1)
	if _, ks := a2.keys(a21); len(ks) != 1 {
		t.Fatalf("the new A reports keys %x", ks)
	}
}

// TestRejoinAfterCompaction: a node whose lease was lost puts its member
// key again on its new lease, also when etcd compacted the revisions its
// watch of the key would resume from (the watch broke while etcd
// restarted); otherwise no change waits for the node any more.
func TestRejoinAfterCompaction(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newNode(t, etcd, "compact", "a", 1)
	member := memberKey(a, "a")
	ctx := context.Background()
	for range 10 {
		if _, err := a.client.Put(ctx, "/unrelated", "x"); err != nil {
			t.Fatal(err)
		}
	}
	r, err := a.client.Get(ctx, "/unrelated")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	etcd.Restart()
	// The lease is lost (revoked: its keys go at once) and a new one granted.
	old := a.lease.Load()
	a.stopKA()
	if _, err := a.client.Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	a.grant()
	polltest.Wait(t, "A to join again on its new lease", func() bool {
		r, err := a.client.Get(ctx, member)
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease == a.lease.Load()
	})
}

// TestAcksBounded: acknowledgements nobody deletes (the node that waited
// for them crashed right after its commit) do not pile up in etcd for as
// long as the acknowledging node lives: it keeps one per logical unit.
func TestAcksBounded(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newNode(t, etcd, "acks", "a", 1)
	a1 := a.nexus(1, "iqn.a", 1)
	const crashes = 2
	for i := range crashes {
		b := newNode(t, etcd, "acks", "b", 2)
		b1 := b.nexus(1, "iqn.b", uint64(2+i))                      // another initiator port each time
		b.rec.afterCommit = func() { b.stopKA(); b.client.Close() } // b dies before it cleans up
		c := b.prout(b1, proRegister, 0, scsitest.PROutParams(0, keyB+uint64(i), 0))
		if c.Status == scsi.StatusGood {
			t.Fatalf("REGISTER on a node whose client closed after the commit completed GOOD")
		}
		want := b.rec.last.Load()
		polltest.Wait(t, "A to install B's change", func() bool {
			r, err := a.client.Get(context.Background(), a.store.RecordKey(testNAA))
			gen, _ := a.keys(a1)
			return err == nil && len(r.Kvs) == 1 && r.Kvs[0].ModRevision == want && gen == uint32(i+1)
		})
	}
	acks := strings.Replace(a.store.RecordKey(testNAA), "/pr/", "/pr-acks/", 1) + "/"
	var n int64
	polltest.Wait(t, "A's acknowledgements", func() bool {
		r, err := a.client.Get(context.Background(), acks, clientv3.WithPrefix(), clientv3.WithCountOnly())
		n = r.Count
		return err == nil && n > 0
	})
	if n > 1 {
		t.Fatalf("%d acknowledgement keys left in etcd after %d changes whose waiter died, want at most 1 per node", n, crashes)
	}
}

// TestRejoinSoonAfterRegrant: when a node's lease is lost, its member key
// goes before the node itself learns it (at its next renewal), so the
// first attempt to join again uses the lost lease; the node must still join
// as soon as it holds the new one, as after its first grant.
func TestRejoinSoonAfterRegrant(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newNode(t, etcd, "regrant", "a", 1)
	member := memberKey(a, "a")
	ctx := context.Background()
	a.stopKA()
	if _, err := a.client.Revoke(ctx, clientv3.LeaseID(a.lease.Load())); err != nil {
		t.Fatal(err)
	}
	// The node holds on to the lost lease for a moment, then gets a new one.
	time.Sleep(300 * time.Millisecond)
	a.grant()
	granted := time.Now()
	polltest.Wait(t, "A to join on its new lease", func() bool {
		r, err := a.client.Get(ctx, member)
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease == a.lease.Load()
	})
	if took := time.Since(granted); took > joinBound {
		t.Fatalf("the node joined %v after its new grant, more than %v", took, joinBound)
	}
}
