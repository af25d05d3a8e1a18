package cawlock_test

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/cluster/cawlock"
	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/scsi"
)

// noLock runs the nodes without the cluster lock, to see the counter test
// fail: go test ./cluster/cawlock -run Counter -nolock.
var noLock = flag.Bool("nolock", false, "serve COMPARE AND WRITE without the cluster lock (TestCompareAndWriteCounter must then fail)")

// Test set-up: cluster nodes on one etcd, each with its own scsi.Disk over
// one shared backing file opened as a cluster opens LUNs (io_uring, direct
// I/O only), its own target and one nexus.
const (
	testNAA    = 0x0abcdef12345678
	blockSize  = 4096 // a direct-I/O multiple on every store, for the data-out halves
	diskBytes  = 1 << 20
	opCAW      = 0x89 // COMPARE AND WRITE
	opRead16   = 0x88
	keyNotRdy  = 0x02
	keyUA      = 0x06
	keyMiscmp  = 0x0e
	ascUnavail = 0x040c // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE
)

// member is a cluster node whose fence a test can close (cut), as the
// node's own fence closes when it cannot renew its lease in time.
type member struct {
	*cluster.Node
	cut atomic.Bool
}

// Allowed is false once cut, else the node's own fence.
func (m *member) Allowed() bool { return !m.cut.Load() && m.Node.Allowed() }

// gated passes a node's requests to the shared store, counts its writes
// and, when armed, holds back the completion of its next read until
// released: the read returned the data of that moment, and the command
// goes on from there only later.
type gated struct {
	bdev.Device
	writes  atomic.Int64
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (g *gated) Submit(r *bdev.Request) {
	if r.Op == bdev.OpWrite {
		g.writes.Add(1)
	}
	if r.Op == bdev.OpRead && g.armed.CompareAndSwap(true, false) {
		done := r.Done
		r.Done = func(r *bdev.Request) {
			r.Done = done
			go func() {
				g.reached <- struct{}{}
				<-g.release
				done(r)
			}()
		}
	}
	g.Device.Submit(r)
}

// node is one gateway of a test.
type node struct {
	t     *testing.T
	name  string
	m     *member
	locks *cawlock.Locks
	dev   *gated
	disk  *scsi.Disk
	tgt   *scsi.Target
	x     *scsi.Nexus
	pool  *bdev.Pool
}

// startNodes starts one node per name in cluster clusterName, on the
// backing file path, and waits until they may write.
func startNodes(t *testing.T, etcd *etcdtest.Server, clusterName, path string, wait time.Duration, names ...string) []*node {
	t.Helper()
	pool, err := bdev.NewPool(bdev.PoolOptions{Max: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	var ns []*node
	for i, name := range names {
		cn, err := cluster.New(cluster.Options{Name: clusterName, Node: name, Endpoints: etcd.Endpoints(),
			LeaseTTL: cluster.MinLeaseTTL, Portals: []cluster.Portal{{Address: "192.0.2.1:3260", TPGT: uint16(i + 1)}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close() })
		n := &node{t: t, name: name, m: &member{Node: cn}, pool: pool}
		u, err := bdev.NewUring(path, bdev.UringOptions{FileOptions: bdev.FileOptions{Size: diskBytes, Create: true}, DirectOnly: true})
		if errors.Is(err, bdev.ErrNoUring) {
			t.Skipf("io_uring: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		n.dev = &gated{Device: u, reached: make(chan struct{}), release: make(chan struct{})}
		cfg := scsi.DiskConfig{BlockSize: blockSize, NAA: testNAA, Fence: n.m}
		if !*noLock {
			if n.locks, err = cawlock.New(n.m, nil); err != nil {
				t.Fatal(err)
			}
			n.locks.Wait = wait
			cfg.CAWLock = n.locks.LUN(testNAA)
		}
		if n.disk, err = scsi.NewDisk(n.dev, cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.disk.Close() })
		n.tgt = scsi.NewTarget("iqn.2026-12.test:caw")
		if err := n.tgt.AddLUN(0, n.disk); err != nil {
			t.Fatal(err)
		}
		n.x = &scsi.Nexus{ID: uint64(i + 1), InitiatorName: "iqn.2026-12.test:host", InitiatorPort: "iqn.2026-12.test:host,i,0x1",
			TargetPort: fmt.Sprintf("iqn.2026-12.test:caw,t,0x%x", i+1), RelativePort: uint16(i + 1)}
		n.tgt.AddNexus(n.x)
		ns = append(ns, n)
	}
	for _, n := range ns {
		polltest.Wait(t, n.name+" allowed", n.m.Allowed)
		for i := 0; ; i++ { // the power-on unit attention
			if st, k, _ := n.exec(make([]byte, 6), nil, nil); st == scsi.StatusGood {
				break
			} else if k != keyUA || i == 10 {
				t.Fatalf("%s: TEST UNIT READY: status %#x key %#x", n.name, st, k)
			}
		}
	}
	return ns
}

// buf is a page-aligned buffer from the node's pool, as commands get.
func (n *node) buf(size int) []byte {
	b, err := n.pool.Get(size)
	if err != nil {
		n.t.Fatal(err)
	}
	return b.Bytes()
}

// exec runs cdb with data-out out and data-in buffer in (page-aligned, as
// the transports' buffers are) and returns its status, sense key and
// ASC/ASCQ.
func (n *node) exec(cdb, out, in []byte) (scsi.Status, byte, uint16) {
	done := make(chan struct{})
	c := &scsi.Command{Nexus: n.x, CDB: cdb, DataOut: out, DataIn: in}
	c.Done = func(*scsi.Command) { close(done) }
	n.tgt.Execute(c)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		panic(fmt.Sprintf("%s: cdb % x not done", n.name, cdb))
	}
	if c.Status == scsi.StatusCheckCondition && c.SenseLen >= 14 {
		return c.Status, c.Sense[2] & 0x0f, binary.BigEndian.Uint16(c.Sense[12:])
	}
	return c.Status, 0, 0
}

// counter reads block 0 into block and returns its first 8 bytes.
func (n *node) counter(block []byte) uint64 {
	cdb := make([]byte, 16)
	cdb[0], cdb[13] = opRead16, 1
	if st, k, a := n.exec(cdb, nil, block); st != scsi.StatusGood {
		n.t.Errorf("%s: READ: status %#x sense %x/%04x", n.name, st, k, a)
	}
	return binary.BigEndian.Uint64(block)
}

// caw runs COMPARE AND WRITE of block 0 from counter value old to new,
// with data (two blocks) as its data-out buffer.
func (n *node) caw(data []byte, old, new uint64) (scsi.Status, byte, uint16) {
	clear(data)
	binary.BigEndian.PutUint64(data, old)
	binary.BigEndian.PutUint64(data[blockSize:], new)
	cdb := make([]byte, 16)
	cdb[0], cdb[13] = opCAW, 1
	return n.exec(cdb, data, nil)
}

// counterRun is what increments saw.
type counterRun struct {
	ok, miscompares, busy int64
	took                  time.Duration
	changes               int64           // etcd revisions: lock keys put and deleted
	lat                   []time.Duration // of every COMPARE AND WRITE, sorted
}

func (r *counterRun) String() string {
	n := len(r.lat)
	return fmt.Sprintf("%d successful COMPARE AND WRITEs, %d miscompares, %d BUSY, %d lock keys put or deleted in %v; latency of all %d: median %v, p99 %v, max %v",
		r.ok, r.miscompares, r.busy, r.changes, r.took.Round(time.Millisecond), n,
		r.lat[n/2].Round(time.Microsecond), r.lat[n*99/100].Round(time.Microsecond), r.lat[n-1].Round(time.Microsecond))
}

// increment increments the counter in block 0 from workers goroutines on
// every node until each had incs successful commands: read it, COMPARE
// AND WRITE old to old+1, again on a miscompare or BUSY. Any other answer
// fails the test. The counter must have grown by the number of successful
// commands.
func increment(t *testing.T, ns []*node, workers, incs int) *counterRun {
	t.Helper()
	before, rev := ns[0].counter(ns[0].buf(blockSize)), revision(t, ns[0])
	var (
		wg                     sync.WaitGroup
		mu                     sync.Mutex
		r                      counterRun
		ok, miscompares, busys atomic.Int64
		failed                 atomic.Bool
	)
	start := time.Now()
	for _, n := range ns {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				block, data := n.buf(blockSize), n.buf(2*blockSize)
				var lat []time.Duration
				for done := 0; done < incs && !failed.Load(); {
					cur := n.counter(block)
					t0 := time.Now()
					st, k, a := n.caw(data, cur, cur+1)
					lat = append(lat, time.Since(t0))
					switch {
					case st == scsi.StatusGood:
						ok.Add(1)
						done++
					case st == scsi.StatusCheckCondition && k == keyMiscmp:
						miscompares.Add(1)
					case st == scsi.StatusBusy:
						busys.Add(1)
					default:
						failed.Store(true)
						t.Errorf("%s: COMPARE AND WRITE: status %#x sense %x/%04x", n.name, st, k, a)
					}
				}
				mu.Lock()
				r.lat = append(r.lat, lat...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	r.took, r.ok, r.miscompares, r.busy = time.Since(start), ok.Load(), miscompares.Load(), busys.Load()
	r.changes = revision(t, ns[0]) - rev
	slices.Sort(r.lat)
	t.Log(r.String())
	if got := ns[0].counter(ns[0].buf(blockSize)) - before; got != uint64(r.ok) {
		t.Fatalf("the counter grew by %d with %d successful increments: %d lost", got, r.ok, r.ok-int64(got))
	}
	return &r
}

// lockedPair starts etcd and nodes a and b of cluster clusterName with
// the lock; the test is skipped with -nolock.
func lockedPair(t *testing.T, clusterName string) (*etcdtest.Server, *node, *node) {
	t.Helper()
	if *noLock {
		t.Skip("needs the cluster lock")
	}
	etcd := etcdtest.Start(t)
	ns := startNodes(t, etcd, clusterName, filepath.Join(t.TempDir(), "lu"), cawlock.DefaultWait, "a", "b")
	return etcd, ns[0], ns[1]
}

// revision is etcd's current revision, as n sees it.
func revision(t *testing.T, n *node) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := n.m.Client().Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestCompareAndWriteCounter increments a counter from every worker of
// every node (see increment): no increment may be lost. With two nodes it
// holds only with the cluster lock (-nolock shows it failing). It reports
// the latency of the commands.
func TestCompareAndWriteCounter(t *testing.T) {
	etcd := etcdtest.Start(t)
	tests := []struct {
		name    string
		nodes   []string
		workers int // per node
		incs    int // successful commands per worker
	}{
		{"one node", []string{"a"}, 4, 200},
		{"two nodes", []string{"a", "b"}, 4, 100},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := startNodes(t, etcd, fmt.Sprintf("counter%d", i), filepath.Join(t.TempDir(), "lu"), cawlock.DefaultWait, tc.nodes...)
			increment(t, ns, tc.workers, tc.incs)
		})
	}
}

// TestCompareAndWriteEtcdLoss stops etcd while node a holds the lock: a
// goes on alone until its fence closes, b never gets the lock (NOT READY
// 04h/0Ch once fenced, or BUSY before), neither writes once fenced; with
// etcd back both increment again without a lost update.
func TestCompareAndWriteEtcdLoss(t *testing.T) {
	etcd, a, b := lockedPair(t, "etcdloss")
	ns := []*node{a, b}
	data := a.buf(2 * blockSize)
	if st, k, asc := a.caw(data, 0, 1); st != scsi.StatusGood {
		t.Fatalf("a: status %#x sense %x/%04x", st, k, asc)
	}
	etcd.Stop()
	if st, k, asc := a.caw(data, 1, 2); st != scsi.StatusGood {
		t.Fatalf("a, holding the lock, etcd away, not fenced yet: status %#x sense %x/%04x", st, k, asc)
	}
	bWrites := b.dev.writes.Load()
	if got := outcomeOf(b.caw(b.buf(2*blockSize), 2, 3)); got != notReady && got != busy {
		t.Fatalf("b, etcd away: %+v, want NOT READY 04h/0Ch or BUSY", got)
	}
	polltest.Wait(t, "both fenced", func() bool { return !a.m.Allowed() && !b.m.Allowed() })
	aWrites := a.dev.writes.Load()
	for _, n := range ns {
		if got := outcomeOf(n.caw(data, 2, 3)); got != notReady {
			t.Fatalf("%s fenced: %+v, want NOT READY 04h/0Ch", n.name, got)
		}
	}
	if a.dev.writes.Load() != aWrites || b.dev.writes.Load() != bWrites {
		t.Fatalf("writes while fenced: a %d, b %d", a.dev.writes.Load()-aWrites, b.dev.writes.Load()-bWrites)
	}
	etcd.Restart()
	polltest.Wait(t, "both allowed again", func() bool { return a.m.Allowed() && b.m.Allowed() })
	increment(t, ns, 2, 25)
	if c := a.counter(a.buf(blockSize)); c != 2+2*2*25 {
		t.Fatalf("counter %d, want %d", c, 2+2*2*25)
	}
}

// outcome is how a command ends.
type outcome struct {
	status scsi.Status
	key    byte
	asc    uint16
}

func outcomeOf(st scsi.Status, key byte, asc uint16) outcome { return outcome{st, key, asc} }

var (
	good     = outcome{scsi.StatusGood, 0, 0}
	busy     = outcome{scsi.StatusBusy, 0, 0}
	notReady = outcome{scsi.StatusCheckCondition, keyNotRdy, ascUnavail}
)

// TestCompareAndWriteLeaseLoss: node h holds the lock for a COMPARE AND
// WRITE whose read is held back; node w's command waits for it. Then
// nothing happens (w's wait runs out: BUSY), or w loses its lease (its
// command ends with NOT READY 04h/0Ch, without waiting out the bound), or
// h loses its lease (w gets the lock and writes; h's command, whose compare
// then matches the data it read before, ends with NOT READY 04h/0Ch, also
// when h is allowed to write again on a new lease by then). A node whose
// command did not end GOOD never wrote. Afterwards the nodes that may
// write get the lock in turn.
func TestCompareAndWriteLeaseLoss(t *testing.T) {
	if *noLock {
		t.Skip("needs the cluster lock")
	}
	etcd := etcdtest.Start(t)
	const shortWait = 500 * time.Millisecond
	tests := []struct {
		name             string
		wait             time.Duration // the lock's bound on w
		cut              string        // the node that loses its lease: "h", "w" or none
		renew            bool          // the node gets a new lease before h's command goes on
		holder, waiter   outcome
		counter          uint64        // block 0 afterwards
		maxWaiterLatency time.Duration // from the loss (or start) to w's answer
	}{
		{"wait bound", shortWait, "", false, good, busy, 1, shortWait + time.Second},
		{"lease lost while waiting", cawlock.DefaultWait, "w", false, good, notReady, 1, cawlock.DefaultWait / 2},
		{"lease lost while holding", cawlock.DefaultWait, "h", false, notReady, good, 1, cawlock.DefaultWait / 2},
		{"lease lost and replaced while holding", cawlock.DefaultWait, "h", true, notReady, good, 1, cawlock.DefaultWait / 2},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := startNodes(t, etcd, fmt.Sprintf("loss%d", i), filepath.Join(t.TempDir(), "lu"), tc.wait, "h", "w")
			h, w := ns[0], ns[1]
			run := func(n *node) <-chan outcome {
				ch := make(chan outcome, 1)
				go func() {
					ch <- outcomeOf(n.caw(n.buf(2*blockSize), 0, 1))
				}()
				return ch
			}
			h.dev.armed.Store(true)
			hDone := run(h)
			<-h.dev.reached // h holds the lock and read block 0
			wDone := run(w)
			time.Sleep(100 * time.Millisecond) // w asked for the lock
			writes := map[*node]int64{h: h.dev.writes.Load(), w: w.dev.writes.Load()}
			t0 := time.Now()
			switch tc.cut {
			case "h":
				loseLease(t, etcd, h)
			case "w":
				loseLease(t, etcd, w)
			}
			var wGot outcome
			select {
			case wGot = <-wDone:
			case <-time.After(tc.maxWaiterLatency):
				close(h.dev.release)
				t.Fatalf("w: no answer %v after the loss", tc.maxWaiterLatency)
			}
			waited := time.Since(t0)
			if tc.renew { // the fence opens again on the node's next lease
				lost := h.m.LeaseID()
				h.m.cut.Store(false)
				polltest.Wait(t, "h on a new lease", func() bool { return h.m.LeaseID() != lost && h.m.Allowed() })
			}
			close(h.dev.release)
			hGot := <-hDone
			t.Logf("w answered %+v %v after the loss, h %+v", wGot, waited.Round(time.Millisecond), hGot)
			if hGot != tc.holder || wGot != tc.waiter {
				t.Fatalf("h ended %+v, w %+v; want %+v, %+v", hGot, wGot, tc.holder, tc.waiter)
			}
			for n, got := range map[*node]outcome{h: hGot, w: wGot} {
				if wrote := n.dev.writes.Load() - writes[n]; got != good && wrote != 0 {
					t.Errorf("%s ended %+v but wrote %d times", n.name, got, wrote)
				}
			}
			reader := h
			if tc.cut == "h" {
				reader = w
			}
			if c := reader.counter(reader.buf(blockSize)); c != tc.counter {
				t.Errorf("counter %d, want %d", c, tc.counter)
			}
			// The nodes that may write get the lock again, in turn: a key
			// left queued by a command that gave up (BUSY) blocks nobody.
			for _, n := range []*node{h, w, h} {
				if n.m.cut.Load() {
					continue
				}
				c := n.counter(n.buf(blockSize))
				if got := outcomeOf(n.caw(n.buf(2*blockSize), c, c+1)); got != good {
					t.Errorf("%s afterwards: %+v", n.name, got)
				}
			}
		})
	}
}

// loseLease makes n lose its lease as a node does that cannot renew it:
// its fence closes, then etcd drops the lease (and the keys on it).
func loseLease(t *testing.T, etcd *etcdtest.Server, n *node) {
	t.Helper()
	n.m.cut.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := etcd.Client().Revoke(ctx, n.m.LeaseID()); err != nil {
		t.Fatal(err)
	}
}

// TestCompareAndWriteLockClose: a unit closed on the node that holds its
// lock (a reload, a shutdown) gives the lock up at once, without waiting
// for the node's lease: the other node's command is granted.
func TestCompareAndWriteLockClose(t *testing.T) {
	_, a, b := lockedPair(t, "close")
	if got := outcomeOf(a.caw(a.buf(2*blockSize), 0, 1)); got != good {
		t.Fatalf("a: %+v", got)
	}
	if err := a.disk.Config().CAWLock.Close(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if got := outcomeOf(b.caw(b.buf(2*blockSize), 1, 2)); got != good {
		t.Fatalf("b after a closed the unit: %+v", got)
	}
	t.Logf("b granted %v after a closed the unit", time.Since(t0).Round(time.Millisecond))
}

// TestCompareAndWriteStrayKey: a key of node a that a's keeper does not
// know as its own (a put whose answer was lost but that took effect)
// appears behind b's: a deletes it, so b gets the lock again after handing
// it over instead of queuing behind a key nobody will take.
func TestCompareAndWriteStrayKey(t *testing.T) {
	const clusterName = "stray"
	etcd, a, b := lockedPair(t, clusterName)
	for i, n := range []*node{a, b} { // a takes the lock, then hands it to b
		if got := outcomeOf(n.caw(n.buf(2*blockSize), uint64(i), uint64(i+1))); got != good {
			t.Fatalf("%s: %+v", n.name, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := fmt.Sprintf("/iserd/%s/caw/%016x/a", clusterName, 3<<60|testNAA)
	if _, err := etcd.Client().Put(ctx, key, "", clientv3.WithLease(a.m.LeaseID())); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := outcomeOf(b.caw(b.buf(2*blockSize), uint64(2+i), uint64(3+i))); got != good {
			t.Fatalf("b's command %d after a's stray key: %+v", i, got)
		}
	}
	polltest.Wait(t, "a's stray key gone", func() bool {
		r, err := etcd.Client().Get(ctx, key, clientv3.WithCountOnly())
		return err == nil && r.Count == 0
	})
}
