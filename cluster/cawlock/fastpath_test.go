package cawlock

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// fakeHolder is a Member that holds lease 1 and may write; the fast path asks
// nothing else of it.
type fakeHolder struct{ Member }

func (fakeHolder) Name() string              { return "a" }
func (fakeHolder) Key(rel string) string     { return "/iserd/test/" + rel }
func (fakeHolder) LeaseID() clientv3.LeaseID { return 1 }
func (fakeHolder) Allowed() bool             { return true }

// TestHeldLockAllocatesNothing: a COMPARE AND WRITE on a node that holds
// the lock, unchallenged, takes and releases it without an allocation
// (and without etcd).
func TestHeldLockAllocatesNothing(t *testing.T) {
	s, err := New(fakeHolder{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := s.LUN(1).(*lunLock)
	l.held.Store(&hold{token: 1, lease: 1, rev: 5})
	allocs := testing.AllocsPerRun(1000, func() {
		tok := l.Acquire(nil)
		if tok != 1 || !l.Valid(tok) {
			t.Fatalf("token %d, valid %v", tok, l.Valid(tok))
		}
		l.Release(tok)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per command", allocs)
	}
}
