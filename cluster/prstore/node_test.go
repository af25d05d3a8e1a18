package prstore_test

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/cluster/prstore"
	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/scsi"
)

// Test set-up: "nodes" that share one etcd, each with its own etcd
// client and lease, scsi.Target, nexuses and Disk for the one logical unit.

const (
	testNAA   = 0x123456789abcdef
	leaseTTL  = 2 // seconds; etcd's minimum
	diskBytes = 1 << 20
	// Sense data of the outcomes the tests expect.
	keyNotReady, keyIllegalRequest, keyUnitAttention, keyAborted = 0x02, 0x05, 0x06, 0x0b
)

// Additional sense codes (ASC << 8 | ASCQ).
const (
	ascPowerOn          = 0x2900
	ascPowerOnOccurred  = 0x2901
	ascBusDeviceReset   = 0x2903
	ascResvPreempted    = 0x2a03
	ascResvReleased     = 0x2a04
	ascRegsPreempted    = 0x2a05
	ascUnavailable      = 0x040c
	ascTimeoutDuringCmd = 0x2e02
	ascInvalidRelease   = 0x2604
)

// PERSISTENT RESERVE OUT service actions and reservation types.
const (
	proRegister, proReserve, proRelease, proClear, proPreempt, proPreemptAbort, proRegisterIgnore, proRegisterMove = 0, 1, 2, 3, 4, 5, 6, 7
	typeWE, typeEA, typeWERO, typeEARO, typeWEAR, typeEAAR                                                         = 1, 3, 5, 6, 7, 8
	flagSpecIPT, flagAllTgPt, flagAPTPL                                                                            = 0x08, 0x04, 0x01
)

// node is one cluster node of a test.
type node struct {
	t       *testing.T
	name    string
	port    uint16 // relative target port (the node's portal tpgt)
	client  *clientv3.Client
	lease   atomic.Int64
	stopKA  context.CancelFunc
	allowed atomic.Bool
	store   *prstore.Store
	rec     *recorder
	tgt     *scsi.Target
	disk    *scsi.Disk

	mu      sync.Mutex
	aborted []uint64 // IDs of the nexuses PREEMPT AND ABORT aborted here
}

// newNode starts node name of cluster, its target port port, on a lease
// of its own.
func newNode(t *testing.T, etcd *etcdtest.Server, cluster, name string, port uint16) *node {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &node{t: t, name: name, port: port, client: c}
	n.allowed.Store(true)
	n.grant()
	st, err := prstore.New(n.client, cluster, name, func() clientv3.LeaseID { return clientv3.LeaseID(n.lease.Load()) }, n.allowed.Load)
	if err != nil {
		t.Fatal(err)
	}
	n.store = st
	n.open()
	t.Cleanup(func() { n.disk.Close(); n.stopKA() })
	// It joins the unit on its own goroutine; until then its PR OUT is refused.
	polltest.Wait(t, name+" to join", func() bool {
		r, err := c.Get(context.Background(), memberKey(n, name))
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease == n.lease.Load()
	})
	return n
}

// memberKey is the member key of node name for the test's logical unit.
func memberKey(n *node, name string) string {
	return strings.Replace(n.store.RecordKey(testNAA), "/pr/", "/pr-members/", 1) + "/" + name
}

// grant takes a new lease and keeps it alive.
func (n *node) grant() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := n.client.Grant(ctx, leaseTTL)
	if err != nil {
		n.t.Fatalf("%s: grant: %v", n.name, err)
	}
	kctx, stop := context.WithCancel(context.Background())
	ch, err := n.client.KeepAlive(kctx, g.ID)
	if err != nil {
		n.t.Fatalf("%s: keepalive: %v", n.name, err)
	}
	go func() {
		for range ch {
		}
	}()
	n.lease.Store(int64(g.ID))
	n.stopKA = stop
}

// open makes the node's Disk and target, as at a start of the node.
func (n *node) open() {
	n.t.Helper()
	n.rec = &recorder{PRStore: n.store.LUN(testNAA)}
	d, err := scsi.NewDisk(bdev.NewMemory(diskBytes), scsi.DiskConfig{NAA: testNAA, PRStore: n.rec})
	if err != nil {
		n.t.Fatalf("%s: new disk: %v", n.name, err)
	}
	n.disk = d
	n.tgt = scsi.NewTarget("iqn.2026-12.test:tgt")
	if err := n.tgt.AddLUN(0, d); err != nil {
		n.t.Fatal(err)
	}
	n.tgt.OnAbort(func(x *scsi.Nexus, lun uint64) {
		n.mu.Lock()
		n.aborted = append(n.aborted, x.ID)
		n.mu.Unlock()
	})
}

// restart closes the node's Disk and opens a new one.
func (n *node) restart() {
	n.t.Helper()
	if err := n.disk.Close(); err != nil {
		n.t.Fatalf("%s: close: %v", n.name, err)
	}
	n.open()
}

// nexus adds an I_T nexus from initiator port "<initiator>,i,0x<isid>" to
// the node's port and takes its power-on unit attention.
func (n *node) nexus(id uint64, initiator string, isid uint64) *scsi.Nexus {
	n.t.Helper()
	x := &scsi.Nexus{ID: id, InitiatorName: initiator, InitiatorPort: initiator + ",i,0x" + hex12(isid),
		TargetPort: "iqn.2026-12.test:tgt,t,0x" + hex12(uint64(n.port)), RelativePort: n.port}
	n.tgt.AddNexus(x)
	n.expectUA(x, ascPowerOn)
	return x
}

func hex12(v uint64) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 12)
	for i := 11; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b)
}

// exec runs cdb from x and waits for it.
func (n *node) exec(x *scsi.Nexus, cdb, out []byte) *scsi.Command {
	n.t.Helper()
	done := make(chan struct{})
	c := &scsi.Command{Nexus: x, CDB: cdb, DataOut: out, DataIn: make([]byte, 1<<16)}
	c.Done = func(*scsi.Command) { close(done) }
	n.tgt.Execute(c)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		n.t.Fatalf("%s: cdb % x: not done", n.name, cdb)
	}
	return c
}

// sense returns the sense key and ASC/ASCQ of c (fixed format).
func sense(c *scsi.Command) (byte, uint16) {
	if c.SenseLen < 14 {
		return 0, 0
	}
	return c.Sense[2] & 0x0f, binary.BigEndian.Uint16(c.Sense[12:])
}

// prout runs PERSISTENT RESERVE OUT.
func (n *node) prout(x *scsi.Nexus, sa, typ byte, params []byte) *scsi.Command {
	n.t.Helper()
	cdb := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[5:], uint32(len(params)))
	return n.exec(x, cdb, params)
}

// mustPROut runs PERSISTENT RESERVE OUT and fails unless it ends in want.
func (n *node) mustPROut(x *scsi.Nexus, sa, typ byte, params []byte, want scsi.Status) {
	n.t.Helper()
	if c := n.prout(x, sa, typ, params); c.Status != want {
		k, a := sense(c)
		n.t.Fatalf("%s: PR OUT sa %d type %d from %s: status %#x sense %x/%04x, want %#x", n.name, sa, typ, x.InitiatorPort, c.Status, k, a, want)
	}
}

// prin runs PERSISTENT RESERVE IN service action sa and returns its data.
func (n *node) prin(x *scsi.Nexus, sa byte) []byte {
	n.t.Helper()
	c := n.exec(x, []byte{0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, nil)
	if c.Status != scsi.StatusGood {
		k, a := sense(c)
		n.t.Fatalf("%s: PR IN %d: status %#x sense %x/%04x", n.name, sa, c.Status, k, a)
	}
	return c.DataIn[:c.InLen]
}

// keys returns the generation and the keys READ KEYS reports.
func (n *node) keys(x *scsi.Nexus) (uint32, []uint64) {
	b := n.prin(x, 0)
	var ks []uint64
	for off := 8; off < 8+int(binary.BigEndian.Uint32(b[4:])); off += 8 {
		ks = append(ks, binary.BigEndian.Uint64(b[off:]))
	}
	return binary.BigEndian.Uint32(b), ks
}

// reservation returns the key and type READ RESERVATION reports.
func (n *node) reservation(x *scsi.Nexus) (uint64, byte) {
	b := n.prin(x, 1)
	if binary.BigEndian.Uint32(b[4:]) == 0 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(b[8:]), b[21] & 0x0f
}

// fullStatus returns the data of READ FULL STATUS after its header.
func (n *node) fullStatus(x *scsi.Nexus) []byte { return n.prin(x, 3)[4:] }

// write runs WRITE (10) of one block at lba from x.
func (n *node) write(x *scsi.Nexus, lba uint32) *scsi.Command {
	cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	return n.exec(x, cdb, make([]byte, 512))
}

// expectUA runs TEST UNIT READY from x: a unit attention with code, or
// GOOD when code is 0.
func (n *node) expectUA(x *scsi.Nexus, code uint16) {
	n.t.Helper()
	c := n.exec(x, make([]byte, 6), nil)
	k, a := sense(c)
	if code == 0 && c.Status != scsi.StatusGood || code != 0 && (k != keyUnitAttention || a != code) {
		n.t.Fatalf("%s: TEST UNIT READY from %s: status %#x sense %x/%04x, want unit attention %04x", n.name, x.InitiatorPort, c.Status, k, a, code)
	}
}

// pollUA runs TEST UNIT READY from x until it reports a unit attention
// (the watch raises them a moment after the change), which must be code.
func (n *node) pollUA(x *scsi.Nexus, code uint16) {
	n.t.Helper()
	var c *scsi.Command
	polltest.Wait(n.t, "a unit attention", func() bool {
		c = n.exec(x, make([]byte, 6), nil)
		return c.Status != scsi.StatusGood
	})
	if k, a := sense(c); k != keyUnitAttention || a != code {
		n.t.Fatalf("%s: TEST UNIT READY from %s: sense %x/%04x, want unit attention %04x", n.name, x.InitiatorPort, k, a, code)
	}
}

// drainUA takes the unit attentions queued for x.
func (n *node) drainUA(x *scsi.Nexus) {
	n.t.Helper()
	for i := 0; n.exec(x, make([]byte, 6), nil).Status != scsi.StatusGood; i++ {
		if i == 100 {
			n.t.Fatalf("%s: unit attentions for %s do not end", n.name, x.InitiatorPort)
		}
	}
}

// reserve6 is the CDB of RESERVE (6).
var reserve6 = []byte{0x16, 0, 0, 0, 0, 0}

// sorted returns ids in increasing order.
func sorted(ids []uint64) []uint64 {
	slices.Sort(ids)
	return ids
}

// abortedNexuses returns the IDs of the nexuses aborted here so far.
func (n *node) abortedNexuses() []uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.aborted)
}

// moveList is the parameter list of REGISTER AND MOVE to initiator port
// port through relative target port rel.
func moveList(rk, sark uint64, unreg bool, rel uint16, port string) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, rk)
	binary.BigEndian.PutUint64(b[8:], sark)
	if unreg {
		b[17] = 0x02
	}
	binary.BigEndian.PutUint16(b[18:], rel)
	t := tid(port, true)
	binary.BigEndian.PutUint32(b[20:], uint32(len(t)))
	return append(b, t...)
}

// tid is the iSCSI TransportID of s: format 01b (an initiator port) when
// port is set, else 00b (an initiator name).
func tid(s string, port bool) []byte {
	n := (len(s) + 1 + 3) &^ 3
	n = max(n, 20)
	b := []byte{0x05, 0, byte(n >> 8), byte(n)}
	if port {
		b[0] |= 0x40
	}
	b = append(b, s...)
	return append(b, make([]byte, n-len(s))...)
}

// recorder passes a node's store through and remembers the revision of
// its last successful commit, after which it calls afterCommit if set.
type recorder struct {
	scsi.PRStore
	last        atomic.Int64
	afterCommit func()
}

func (r *recorder) Commit(ctx context.Context, prev int64, value []byte) (scsi.PRRecord, bool, error) {
	rec, ok, err := r.PRStore.Commit(ctx, prev, value)
	if ok && err == nil {
		r.last.Store(rec.Rev)
		if r.afterCommit != nil {
			r.afterCommit()
		}
	}
	return rec, ok, err
}

// history returns the records of the logical unit from revision from to
// the current one, in order.
func history(t *testing.T, c *clientv3.Client, store *prstore.Store, from int64) []scsi.PRRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := store.RecordKey(testNAA)
	cur, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.Kvs) == 0 {
		return nil
	}
	last := cur.Kvs[0].ModRevision
	var out []scsi.PRRecord
	for wr := range c.Watch(ctx, key, clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			t.Fatalf("history: %v", err)
		}
		for _, ev := range wr.Events {
			out = append(out, scsi.PRRecord{Rev: ev.Kv.ModRevision, Value: ev.Kv.Value})
			if ev.Kv.ModRevision >= last {
				return out
			}
		}
	}
	t.Fatal("history: watch ended")
	return nil
}
