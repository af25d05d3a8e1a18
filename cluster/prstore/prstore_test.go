package prstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/scsitest"
	"github.com/iserd/iserd/scsi"
)

const keyA, keyB = 0xaaaa, 0xbbbb

// TestTwoNodes runs reservation scenarios across two nodes sharing one
// etcd: node A serves relative target port 1, node B port 2; a1 and b1 are
// nexuses of initiators iqn.a and iqn.b through them, ab is iqn.a (the
// same initiator port as a1) through B.
func TestTwoNodes(t *testing.T) {
	etcd := etcdtest.Start(t)
	tests := []struct {
		name string
		run  func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus)
	}{
		{"reserve on A makes a write from a non-registrant on B conflict", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			if key, typ := a.reservation(a1); key != keyA || typ != typeWE {
				t.Fatalf("A right after its RESERVE: %#x type %d", key, typ)
			}
			polltest.Wait(t, "B to see the reservation", func() bool { _, typ := b.reservation(b1); return typ == typeWE })
			if c := b.write(b1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from B's non-registrant: %#x", c.Status)
			}
			if c := b.write(ab, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from a1's initiator port through B (another I_T nexus): %#x", c.Status)
			}
			if c := a.write(a1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from the holder: %#x", c.Status)
			}
			// A registrant-only reservation lets B's registrant write.
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			a.mustPROut(a1, proRelease, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeWERO, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			polltest.Wait(t, "B to see the registrants-only reservation", func() bool { _, typ := b.reservation(b1); return typ == typeWERO })
			if c := b.write(b1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from B's registrant under WERO: %#x", c.Status)
			}
		}},
		{"PREEMPT AND ABORT from B aborts A's tasks and raises A's unit attention", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeEA, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			b.mustPROut(b1, proPreemptAbort, typeWE, scsitest.PROutParams(keyB, keyA, 0), scsi.StatusGood)
			// The command completed: A has aborted a1's tasks already.
			if got := a.abortedNexuses(); !slices.Equal(got, []uint64{a1.ID}) {
				t.Fatalf("nexuses aborted on A: %v, want [%d]", got, a1.ID)
			}
			if got := b.abortedNexuses(); len(got) != 0 {
				t.Fatalf("nexuses aborted on B: %v", got)
			}
			a.expectUA(a1, ascRegsPreempted)
			b.expectUA(ab, 0)
			b.expectUA(b1, 0)
			if key, typ := b.reservation(b1); key != keyB || typ != typeWE {
				t.Fatalf("reservation after the preemption: %#x type %d", key, typ)
			}
			if c := a.write(a1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from the preempted nexus: %#x", c.Status)
			}
		}},
		{"RELEASE of a registrants-only reservation on B tells A's registrants", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			b.mustPROut(b1, proReserve, typeEARO, scsitest.PROutParams(keyB, 0, 0), scsi.StatusGood)
			b.mustPROut(b1, proRelease, typeEARO, scsitest.PROutParams(keyB, 0, 0), scsi.StatusGood)
			a.pollUA(a1, ascResvReleased)
			b.expectUA(b1, 0)
			b.mustPROut(b1, proClear, 0, scsitest.PROutParams(keyB, 0, 0), scsi.StatusGood)
			a.pollUA(a1, ascResvPreempted)
			if _, ks := a.keys(a1); len(ks) != 0 {
				t.Fatalf("keys after CLEAR: %x", ks)
			}
		}},
		{"ALL_TG_PT registers the initiator port through B as well", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, flagAllTgPt), scsi.StatusGood)
			polltest.Wait(t, "B to see the registration", func() bool { _, ks := b.keys(ab); return len(ks) == 1 })
			b.mustPROut(ab, proReserve, typeWERO, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			polltest.Wait(t, "A to see the reservation", func() bool { _, typ := a.reservation(a1); return typ == typeWERO })
			if c := a.write(a1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write through A by the all-ports registrant: %#x", c.Status)
			}
			fs := a.fullStatus(a1)
			if len(fs) < 24 || binary.BigEndian.Uint64(fs[4:]) != keyA || fs[4+12] != 0x03 || binary.BigEndian.Uint16(fs[4+18:]) != 0 {
				t.Fatalf("READ FULL STATUS % x: want keyA, ALL_TG_PT and holder, relative port 0", fs)
			}
		}},
		{"without ALL_TG_PT the initiator port through B is another nexus", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			polltest.Wait(t, "B to see the registration", func() bool { _, ks := b.keys(ab); return len(ks) == 1 })
			b.mustPROut(ab, proRegister, 0, scsitest.PROutParams(keyA, keyB, 0), scsi.StatusReservationConflict)
			b.mustPROut(ab, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			polltest.Wait(t, "A to see both registrations", func() bool {
				_, ks := a.keys(a1)
				return slices.Equal(ks, []uint64{keyA, keyB})
			})
		}},
		{"SPEC_I_PT with ALL_TG_PT registers B's initiator from A", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, flagSpecIPT|flagAllTgPt, tid(b1.InitiatorPort, true)), scsi.StatusGood)
			polltest.Wait(t, "B to see the registrations", func() bool { _, ks := b.keys(b1); return len(ks) == 2 })
			b.mustPROut(b1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			if c := b.write(b1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from the holder registered by SPEC_I_PT: %#x", c.Status)
			}
			polltest.Wait(t, "A to see the reservation", func() bool { _, typ := a.reservation(a1); return typ == typeWE })
			if c := a.write(a1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from a1 under b1's WE: %#x", c.Status)
			}
		}},
		{"REGISTER AND MOVE to a port of the other node", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			a.mustPROut(a1, proRegisterMove, typeWE, moveList(keyA, keyB, true, b.port, b1.InitiatorPort), scsi.StatusGood)
			if key, typ := a.reservation(a1); key != keyB || typ != typeWE {
				t.Fatalf("after the move: %#x type %d", key, typ)
			}
			polltest.Wait(t, "B to see the move", func() bool { key, _ := b.reservation(b1); return key == keyB })
			if c := b.write(b1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from the new holder on B: %#x", c.Status)
			}
			if c := a.write(a1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from the former holder on A: %#x", c.Status)
			}
		}},
		{"a PR OUT that completed on B is what A reports and enforces", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			for i := range 50 {
				b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
				if _, ks := a.keys(a1); len(ks) != 2 {
					t.Fatalf("round %d: keys on A right after B registered: %x", i, ks)
				}
				b.mustPROut(b1, proReserve, typeWE, scsitest.PROutParams(keyB, 0, 0), scsi.StatusGood)
				if c := a.write(a1, 0); c.Status != scsi.StatusReservationConflict {
					t.Fatalf("round %d: write on A right after B reserved: %#x", i, c.Status)
				}
				b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(keyB, 0, 0), scsi.StatusGood)
				if _, ks := a.keys(a1); len(ks) != 1 {
					t.Fatalf("round %d: keys on A right after B unregistered: %x", i, ks)
				}
				a.drainUA(a1)
			}
		}},
		{"LOGICAL UNIT RESET on A resets B's nexuses and releases B's RESERVE", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			if c := b.exec(b1, reserve6, nil); c.Status != scsi.StatusGood {
				t.Fatalf("RESERVE(6) from b1: %#x", c.Status)
			}
			if c := b.write(ab, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from ab under b1's RESERVE: %#x", c.Status)
			}
			if err := a.tgt.LogicalUnitReset(a1, 0); err != nil {
				t.Fatalf("LOGICAL UNIT RESET: %v", err)
			}
			// It completed: B has aborted its nexuses' tasks already.
			if got := sorted(b.abortedNexuses()); !slices.Equal(got, []uint64{b1.ID, ab.ID}) {
				t.Fatalf("nexuses aborted on B: %v, want [%d %d]", got, b1.ID, ab.ID)
			}
			a.expectUA(a1, ascBusDeviceReset)
			b.expectUA(b1, ascBusDeviceReset)
			b.expectUA(ab, ascBusDeviceReset)
			a.expectUA(a1, 0)
			if c := b.write(ab, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from ab after the reset: %#x", c.Status)
			}
		}},
		{"TARGET COLD RESET on B reaches A's nexuses and keeps the persistent reservation", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			if err := b.tgt.TargetReset(b1, true); err != nil {
				t.Fatalf("TARGET COLD RESET: %v", err)
			}
			a.expectUA(a1, ascPowerOnOccurred)
			b.expectUA(b1, ascPowerOnOccurred)
			if got := a.abortedNexuses(); !slices.Equal(got, []uint64{a1.ID}) {
				t.Fatalf("nexuses aborted on A: %v, want [%d]", got, a1.ID)
			}
			if key, typ := b.reservation(b1); key != keyA || typ != typeWE {
				t.Fatalf("reservation after the reset: %#x type %d, want %#x type %d", key, typ, keyA, typeWE)
			}
			if c := b.write(b1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write from b1 under a1's reservation after the reset: %#x", c.Status)
			}
		}},
		{"a reset on a node that may not write resets its own nexuses only", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.allowed.Store(false)
			if err := a.tgt.LogicalUnitReset(a1, 0); err == nil {
				t.Fatal("LOGICAL UNIT RESET on a fenced node reported the other nodes reset")
			}
			a.expectUA(a1, ascBusDeviceReset)
			b.expectUA(b1, 0)
			if got := b.abortedNexuses(); len(got) != 0 {
				t.Fatalf("nexuses aborted on B: %v", got)
			}
		}},
		{"a node that may not write refuses PR OUT and PR IN", func(t *testing.T, a, b *node, a1, b1, ab *scsi.Nexus) {
			a.allowed.Store(false)
			c := a.prout(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0))
			if k, asc := sense(c); c.Status != scsi.StatusCheckCondition || k != keyNotReady || asc != ascUnavailable {
				t.Fatalf("PR OUT on a fenced node: %#x sense %x/%04x", c.Status, k, asc)
			}
			c = a.exec(a1, []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil)
			if k, asc := sense(c); c.Status != scsi.StatusCheckCondition || k != keyNotReady || asc != ascUnavailable {
				t.Fatalf("PR IN on a fenced node: %#x sense %x/%04x", c.Status, k, asc)
			}
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			a.allowed.Store(true)
			polltest.Wait(t, "A to see B's registration", func() bool { _, ks := a.keys(a1); return len(ks) == 1 })
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := fmt.Sprintf("two-%d", i)
			a := newNode(t, etcd, cluster, "a", 1)
			b := newNode(t, etcd, cluster, "b", 2)
			a1 := a.nexus(1, "iqn.a", 1)
			b1 := b.nexus(1, "iqn.b", 2) // nexus IDs are per node
			ab := b.nexus(2, "iqn.a", 1)
			tt.run(t, a, b, a1, b1, ab)
		})
	}
}

// TestConcurrentHistory runs PERSISTENT RESERVE OUT mixes from three
// nexuses on each of two nodes at once. Every committed revision of the
// record must belong to exactly one command that completed GOOD, the
// PRgeneration must never go back and must advance with every change of
// the registrations, and replaying the committed commands in revision
// order on one process's logical unit must give every intermediate
// generation and the final state both nodes report.
func TestConcurrentHistory(t *testing.T) {
	etcd := etcdtest.Start(t)
	nodes := []*node{newNode(t, etcd, "hist", "a", 1), newNode(t, etcd, "hist", "b", 2)}
	type entry struct {
		node   int
		nexus  int // index in nexuses
		sa     byte
		typ    byte
		params []byte
		status scsi.Status
		rev    int64 // the revision it committed, 0 if none
	}
	type client struct {
		node int
		x    *scsi.Nexus
	}
	var clients []client
	for ni, n := range nodes {
		for i := range 3 {
			clients = append(clients, client{ni, n.nexus(uint64(i+1), fmt.Sprintf("iqn.%s%d", n.name, i), uint64(10+i))})
		}
	}
	start, err := nodes[0].client.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	from := start.Header.Revision + 1

	var (
		logMu   sync.Mutex
		log     []entry
		nodeMu  = make([]sync.Mutex, len(nodes)) // one command per node at a time: the recorder attributes commits
		keysMu  sync.Mutex
		allKeys []uint64
	)
	const rounds = 40
	var wg sync.WaitGroup
	for ci, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ci), 7))
			n := nodes[cl.node]
			var mine uint64
			for r := range rounds {
				var sa, typ byte
				var params []byte
				switch p := rng.IntN(10); {
				case p < 3 || mine == 0:
					mine = uint64(ci+1)<<32 | uint64(r+1)
					sa, params = proRegisterIgnore, scsitest.PROutParams(0, mine, 0)
					keysMu.Lock()
					allKeys = append(allKeys, mine)
					keysMu.Unlock()
				case p < 5:
					sa, typ, params = proReserve, []byte{typeWE, typeWERO, typeWEAR}[rng.IntN(3)], scsitest.PROutParams(mine, 0, 0)
				case p < 6:
					sa, typ, params = proRelease, []byte{typeWE, typeWERO, typeWEAR}[rng.IntN(3)], scsitest.PROutParams(mine, 0, 0)
				case p < 8:
					keysMu.Lock()
					victim := allKeys[rng.IntN(len(allKeys))]
					keysMu.Unlock()
					sa, typ, params = []byte{proPreempt, proPreemptAbort}[rng.IntN(2)], typeWE, scsitest.PROutParams(mine, victim, 0)
				case p < 9:
					sa, params = proRegister, scsitest.PROutParams(mine, 0, 0)
				default:
					sa, params = proClear, scsitest.PROutParams(mine, 0, 0)
				}
				nodeMu[cl.node].Lock()
				n.rec.last.Store(0)
				c := n.prout(cl.x, sa, typ, params)
				for k, _ := sense(c); c.Status == scsi.StatusCheckCondition && k == keyUnitAttention; k, _ = sense(c) {
					c = n.prout(cl.x, sa, typ, params) // a change of another nexus told this one first
				}
				e := entry{node: cl.node, nexus: ci, sa: sa, typ: typ, params: params, status: c.Status, rev: n.rec.last.Load()}
				nodeMu[cl.node].Unlock()
				if k, a := sense(c); c.Status != scsi.StatusGood && c.Status != scsi.StatusReservationConflict &&
					!(sa == proRelease && k == keyIllegalRequest && a == ascInvalidRelease) {
					t.Errorf("%s: sa %d: status %#x sense %x/%04x", n.name, sa, c.Status, k, a)
				}
				if e.rev != 0 && c.Status != scsi.StatusGood {
					t.Errorf("sa %d committed revision %d and ended %#x", sa, e.rev, c.Status)
				}
				logMu.Lock()
				log = append(log, e)
				logMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	hist := history(t, nodes[0].client, nodes[0].store, from)
	byRev := make(map[int64]entry)
	for _, e := range log {
		if e.rev == 0 {
			continue
		}
		if _, dup := byRev[e.rev]; dup {
			t.Fatalf("two commands committed revision %d", e.rev)
		}
		byRev[e.rev] = e
	}
	if len(hist) != len(byRev) {
		t.Fatalf("%d revisions of the record, %d committed commands", len(hist), len(byRev))
	}

	// The replay: one target with every nexus, on the ports of its node.
	ref, err := scsi.NewDisk(bdev.NewMemory(diskBytes), scsi.DiskConfig{NAA: testNAA})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ref.Close() })
	rt := scsi.NewTarget("iqn.2026-12.test:tgt")
	if err := rt.AddLUN(0, ref); err != nil {
		t.Fatal(err)
	}
	replay := &node{t: t, name: "replay", tgt: rt, disk: ref}
	rx := make([]*scsi.Nexus, len(clients))
	for i, cl := range clients {
		x := *cl.x
		x.ID = uint64(100 + i)
		rx[i] = &x
		rt.AddNexus(rx[i])
		replay.drainUA(rx[i])
	}
	var prev scsi.PRSummary
	for i, h := range hist {
		e, ok := byRev[h.Rev]
		if !ok {
			t.Fatalf("revision %d: no command committed it", h.Rev)
		}
		sum, err := scsi.DescribePRRecord(h.Value)
		if err != nil {
			t.Fatalf("revision %d: %v", h.Rev, err)
		}
		if i > 0 && (sum.Generation < prev.Generation ||
			!slices.Equal(sum.Registrations, prev.Registrations) && sum.Generation == prev.Generation) {
			t.Fatalf("revision %d: generation %d after %d, registrations %v after %v",
				h.Rev, sum.Generation, prev.Generation, sum.Registrations, prev.Registrations)
		}
		prev = sum
		replay.drainUA(rx[e.nexus])
		c := replay.prout(rx[e.nexus], e.sa, e.typ, e.params)
		if c.Status != scsi.StatusGood {
			t.Fatalf("replay of revision %d (sa %d from nexus %d): status %#x", h.Rev, e.sa, e.nexus, c.Status)
		}
		replay.drainUA(rx[0])
		if gen, _ := replay.keys(rx[0]); gen != sum.Generation {
			t.Fatalf("replay of revision %d: generation %d, record %d", h.Rev, gen, sum.Generation)
		}
	}
	replay.drainUA(rx[0])
	want := replay.prin(rx[0], 3)
	for i, n := range nodes {
		x := clients[3*i].x
		n.drainUA(x)
		polltest.Wait(t, n.name+" to catch up", func() bool { return bytes.Equal(n.prin(x, 3), want) })
	}
	t.Logf("%d commands, %d committed revisions, final generation %d, %d registrations",
		len(log), len(hist), prev.Generation, len(prev.Registrations))
}

// TestAPTPLSurvivesRestarts: a state registered with APTPL survives a
// restart of etcd and of both nodes' logical units; without APTPL it is
// gone once no node served the unit in between (a power cycle).
func TestAPTPLSurvivesRestarts(t *testing.T) {
	etcd := etcdtest.Start(t)
	for _, aptpl := range []bool{true, false} {
		t.Run(fmt.Sprintf("APTPL=%v", aptpl), func(t *testing.T) {
			cluster := fmt.Sprintf("aptpl-%v", aptpl)
			a, b := newNode(t, etcd, cluster, "a", 1), newNode(t, etcd, cluster, "b", 2)
			a1, b1 := a.nexus(1, "iqn.a", 1), b.nexus(1, "iqn.b", 2)
			var flags byte
			if aptpl {
				flags = flagAPTPL
			}
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, flags), scsi.StatusGood)
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, flags), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeEARO, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			caps := a.prin(a1, 2)
			if caps[2]&0x01 == 0 || caps[3]&0x01 != flags {
				t.Fatalf("REPORT CAPABILITIES % x: want PTPL_C and PTPL_A=%v", caps, aptpl)
			}
			etcd.Restart()
			// A restart of one node keeps the state whatever APTPL says:
			// the other node still serves the unit.
			b.restart()
			b1 = b.nexus(1, "iqn.b", 2)
			if _, ks := b.keys(b1); len(ks) != 2 {
				t.Fatalf("after B restarted alone: keys %x", ks)
			}
			a.disk.Close()
			b.disk.Close()
			a.open()
			b.open()
			a1 = a.nexus(1, "iqn.a", 1)
			// The first node to open the unit clears a state without APTPL:
			// its copy at once, the record when it joins.
			gen, ks := a.keys(a1)
			key, typ := a.reservation(a1)
			if aptpl && (gen != 2 || !slices.Equal(ks, []uint64{keyA, keyB}) || key != keyA || typ != typeEARO) {
				t.Fatalf("after both restarted: generation %d keys %x reservation %#x type %d", gen, ks, key, typ)
			}
			if !aptpl && (gen != 0 || len(ks) != 0 || typ != 0) {
				t.Fatalf("without APTPL, after both restarted: generation %d keys %x type %d", gen, ks, typ)
			}
		})
	}
}

// TestPowerOnClearedWithJoin: the node that opens a unit no node serves
// clears a state without APTPL in the transaction that makes it a member,
// so a node that opens the unit after it (and is therefore no power on)
// never finds, and never changes, the state of before the power cycle.
func TestPowerOnClearedWithJoin(t *testing.T) {
	etcd := etcdtest.Start(t)
	a, b := newNode(t, etcd, "poweron", "a", 1), newNode(t, etcd, "poweron", "b", 2)
	a1, b1 := a.nexus(1, "iqn.a", 1), b.nexus(1, "iqn.b", 2)
	a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
	b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
	a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
	a.disk.Close()
	b.disk.Close()
	// A opens the unit alone, before it holds a lease: it joins, and
	// clears the state, once the lease is back.
	lease := a.lease.Swap(0)
	a.open()
	a.lease.Store(lease)
	member := memberKey(a, "a")
	var joined *clientv3.GetResponse
	polltest.Wait(t, "A to join", func() bool {
		r, err := a.client.Get(context.Background(), member)
		joined = r
		return err == nil && len(r.Kvs) == 1
	})
	r, err := a.client.Get(context.Background(), a.store.RecordKey(testNAA))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Kvs[0].ModRevision, joined.Kvs[0].CreateRevision; got != want {
		t.Fatalf("the record was last changed at revision %d, A joined at %d: not in one transaction", got, want)
	}
	b.open()
	b1 = b.nexus(1, "iqn.b", 2)
	if gen, ks := b.keys(b1); gen != 0 || len(ks) != 0 {
		t.Fatalf("B, opened after A joined: generation %d keys %x", gen, ks)
	}
	// B's registration went with the power cycle: a REGISTER with its old key conflicts.
	b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(keyB, keyB, 0), scsi.StatusReservationConflict)
}

// TestPreemptAbortBound: a node whose process died does not hold up
// PREEMPT AND ABORT longer than its lease; a node that is live but never
// acknowledges fails it after AbortWait with ABORTED COMMAND, COMMAND
// TIMEOUT DURING PROCESSING, the change standing.
func TestPreemptAbortBound(t *testing.T) {
	etcd := etcdtest.Start(t)
	tests := []struct {
		name    string
		silence func(t *testing.T, a *node)
		want    scsi.Status
	}{
		{"dead node", func(t *testing.T, a *node) {
			a.stopKA()
			a.client.Close() // nothing of A reaches etcd any more: no acknowledgement, no renewal
		}, scsi.StatusGood},
		{"live node that never acknowledges", func(t *testing.T, a *node) {
			// A ghost member of A's cluster on a lease that stays alive.
			ctx := context.Background()
			g, err := a.client.Grant(ctx, leaseTTL)
			if err != nil {
				t.Fatal(err)
			}
			ka, err := a.client.KeepAlive(ctx, g.ID)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for range ka {
				}
			}()
			key := memberKey(a, "ghost")
			if _, err := a.client.Put(ctx, key, "", clientv3.WithLease(g.ID)); err != nil {
				t.Fatal(err)
			}
		}, scsi.StatusCheckCondition},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := fmt.Sprintf("bound-%d", i)
			a, b := newNode(t, etcd, cluster, "a", 1), newNode(t, etcd, cluster, "b", 2)
			b.store.AbortWait = 2 * leaseTTL * time.Second
			a1, b1 := a.nexus(1, "iqn.a", 1), b.nexus(1, "iqn.b", 2)
			a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
			a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
			b.mustPROut(b1, proRegister, 0, scsitest.PROutParams(0, keyB, 0), scsi.StatusGood)
			tt.silence(t, a)
			began := time.Now()
			c := b.prout(b1, proPreemptAbort, typeWE, scsitest.PROutParams(keyB, keyA, 0))
			took := time.Since(began)
			if c.Status != tt.want {
				k, asc := sense(c)
				t.Fatalf("PREEMPT AND ABORT: status %#x sense %x/%04x after %v, want %#x", c.Status, k, asc, took, tt.want)
			}
			if k, asc := sense(c); c.Status == scsi.StatusCheckCondition && (k != keyAborted || asc != ascTimeoutDuringCmd) {
				t.Fatalf("PREEMPT AND ABORT: sense %x/%04x, want ABORTED COMMAND 2Eh/02h", k, asc)
			}
			if took > b.store.AbortWait+2*time.Second {
				t.Fatalf("PREEMPT AND ABORT took %v, beyond the bound %v", took, b.store.AbortWait)
			}
			if key, typ := b.reservation(b1); key != keyB || typ != typeWE {
				t.Fatalf("the preemption did not stand: %#x type %d", key, typ)
			}
			t.Logf("%s: PREEMPT AND ABORT ended in %v", tt.name, took.Round(10*time.Millisecond))
		})
	}
}

// TestEtcdUnreachable: with etcd stopped PR OUT fails with NOT READY,
// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE within the
// commit bound, PR IN answers from the local copy and I/O checks still
// apply it; once etcd is back PR OUT works again.
func TestEtcdUnreachable(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newNode(t, etcd, "down", "a", 1)
	a1, a2 := a.nexus(1, "iqn.a", 1), a.nexus(2, "iqn.b", 2)
	a.mustPROut(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0), scsi.StatusGood)
	a.mustPROut(a1, proReserve, typeWE, scsitest.PROutParams(keyA, 0, 0), scsi.StatusGood)
	etcd.Stop()
	began := time.Now()
	c := a.prout(a2, proRegister, 0, scsitest.PROutParams(0, keyB, 0))
	took := time.Since(began)
	if k, asc := sense(c); c.Status != scsi.StatusCheckCondition || k != keyNotReady || asc != ascUnavailable {
		t.Fatalf("PR OUT with etcd stopped: %#x sense %x/%04x after %v", c.Status, k, asc, took)
	}
	if took > 8*time.Second {
		t.Fatalf("PR OUT with etcd stopped took %v", took)
	}
	if key, typ := a.reservation(a1); key != keyA || typ != typeWE {
		t.Fatalf("PR IN with etcd stopped: %#x type %d", key, typ)
	}
	if c := a.write(a2, 0); c.Status != scsi.StatusReservationConflict {
		t.Fatalf("write from a non-registrant with etcd stopped: %#x", c.Status)
	}
	etcd.Restart()
	// The client's keep-alive gave the lease up while etcd was away (etcd
	// expires it a TTL after its start): the node takes a new one, as
	// cluster.Node does, and joins again on it.
	a.stopKA()
	a.grant()
	polltest.Wait(t, "PR OUT to work again", func() bool {
		return a.prout(a2, proRegister, 0, scsitest.PROutParams(0, keyB, 0)).Status == scsi.StatusGood
	})
	t.Logf("PR OUT with etcd stopped failed after %v", took.Round(10*time.Millisecond))
}

// TestOpenBeforeLease: a node opens its logical units before it holds a
// lease (the node starts them at once); until it joins, its PR OUT is
// refused with NOT READY 04h/0Ch, and it joins as soon as the lease comes.
func TestOpenBeforeLease(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newNode(t, etcd, "late", "a", 1)
	lease := a.lease.Swap(0)
	a.restart()
	a1 := a.nexus(1, "iqn.a", 1)
	c := a.prout(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0))
	if k, asc := sense(c); c.Status != scsi.StatusCheckCondition || k != keyNotReady || asc != ascUnavailable {
		t.Fatalf("PR OUT before the node joined: %#x sense %x/%04x", c.Status, k, asc)
	}
	a.lease.Store(lease)
	granted := time.Now()
	polltest.Wait(t, "the node to join", func() bool {
		return a.prout(a1, proRegister, 0, scsitest.PROutParams(0, keyA, 0)).Status == scsi.StatusGood
	})
	// It looks for the lease often: a reset or PR OUT right after the
	// grant must not find the unit not joined yet.
	if took := time.Since(granted); took > joinBound {
		t.Fatalf("the node joined %v after its grant, more than %v", took, joinBound)
	}
}

// joinBound is how soon after its grant a node must have joined the
// logical units it opened before it: leasePoll (20 ms) plus the join's etcd
// transactions, with room for a race-detector run on a loaded 2-core CI
// machine; a node that waited for its lease TTL would take seconds.
const joinBound = time.Second
