package scsi

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/scsitest"
)

// start runs cdb with data-out out from nexus n and returns at once; the
// command arrives on the channel once done.
func (h *harness) start(n *Nexus, cdb, out []byte) <-chan *Command {
	done := make(chan *Command, 1)
	c := &Command{Nexus: n, CDB: cdb, DataOut: out, DataIn: alignedBuf(65536)}
	c.Done = func(c *Command) { done <- c }
	h.tgt.Execute(c)
	return done
}

// await returns the command from done, failing after a while.
func await(t *testing.T, what string, done <-chan *Command) *Command {
	t.Helper()
	select {
	case c := <-done:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not completed", what)
		return nil
	}
}

// notWithin fails if a command arrives on done within d.
func notWithin(t *testing.T, what string, done <-chan *Command, d time.Duration) {
	t.Helper()
	select {
	case c := <-done:
		t.Fatalf("%s completed (status %#x sense %+v) while a write was still in the device", what, c.Status, senseOf(c))
	case <-time.After(d):
	}
}

// preemptAbortParams is b's reservation (Write Exclusive) preempted and
// aborted by a.
var preemptAbortParams = scsitest.PROutParams(keyA, keyB, 0)

// reserveB registers both nexuses and has b hold a Write Exclusive
// reservation, as a cluster node does before fence_scsi preempts it.
func (h *harness) reserveB() {
	h.t.Helper()
	h.registerBoth()
	h.mustPROut(h.b, proReserve, prWE, scsitest.PROutParams(keyB, 0, 0), StatusGood)
}

// remotePreemptAbort delivers, as if another node committed it, the record
// of a PREEMPT AND ABORT of b's reservation by a.
func (h *harness) remotePreemptAbort() {
	h.t.Helper()
	op := newPROp(h.a, h.disk.pr.Load(), proParams{rk: keyA, sark: keyB}, prWE)
	if r := op.run(proPreemptAbort); r.status != StatusGood {
		h.t.Fatalf("preempt and abort: status %#x", r.status)
	}
	h.deliver(&prRecord{State: *op.s, Issuer: h.a.ID, Notes: op.notes, Preempted: op.preempted})
}

// remoteReset delivers, as if another node committed it, the record of a
// LOGICAL UNIT RESET.
func (h *harness) remoteReset() {
	h.t.Helper()
	rec := &prRecord{Reset: ascBusDeviceReset}
	if p := h.disk.pr.Load(); p != nil {
		rec.State = *p
	}
	h.deliver(rec)
}

// deliver has the disk's memPRStore commit rec as another node and deliver
// it; it returns once the disk acknowledged it.
func (h *harness) deliver(rec *prRecord) {
	h.t.Helper()
	m := h.disk.cfg.PRStore.(*memPRStore)
	rec.Origin = h.disk.prs.instance + 1
	v, err := encodePRRecord(rec)
	if err != nil {
		h.t.Fatal(err)
	}
	m.mu.Lock()
	m.rec = PRRecord{Rev: m.rec.Rev + 1, Value: v}
	r, apply := m.rec, m.apply
	m.mu.Unlock()
	apply(r)
}

// TestQueuedWriteAfterReservationChange: a write that waits for the range
// lock while its nexus is fenced off (PREEMPT AND ABORT, with or without a
// PRStore, or another nexus's SCSI-2 RESERVE) is checked again when it is
// issued: it ends in RESERVATION CONFLICT and the medium keeps the data it
// had, although the write had passed the reservation check when it arrived.
func TestQueuedWriteAfterReservationChange(t *testing.T) {
	preempt := func(h *harness) { h.mustPROut(h.a, proPreemptAbort, prWE, preemptAbortParams, StatusGood) }
	reserve6 := func(h *harness) { h.mustGood(h.a, []byte{0x16, 0, 0, 0, 0, 0}) }
	tests := []struct {
		name   string
		store  bool
		setup  func(h *harness)
		change func(h *harness)
		want   Status
		xcopy  bool // b's write is an EXTENDED COPY of block 1 to block 0
	}{
		{"preempt and abort", false, (*harness).reserveB, preempt, StatusReservationConflict, false},
		{"preempt and abort through a store", true, (*harness).reserveB, preempt, StatusReservationConflict, false},
		{"preempt and abort by another node", true, (*harness).reserveB, (*harness).remotePreemptAbort, StatusReservationConflict, false},
		{"SCSI-2 reserve", false, func(*harness) {}, reserve6, StatusReservationConflict, false},
		{"reset by another node", true, func(*harness) {}, (*harness).remoteReset, StatusTaskAborted, false},
		{"EXTENDED COPY, preempt and abort", false, (*harness).reserveB, preempt, StatusReservationConflict, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DiskConfig{NAA: 0x100}
			if tt.store {
				cfg.PRStore = &memPRStore{}
			}
			h := newHarness(t, cfg)
			tt.setup(h)
			cdb, out := cdb10(0x2a, 0, 1), fill(512, 0xbb)
			if tt.xcopy {
				h.mustGood(h.b, cdb10(0x2a, 1, 1), out...)
				out = xcList(1, 0, [][]byte{xcCSCD(cfg.NAA)}, [][]byte{xcSeg(0, 0, 1, 1, 0)})
				cdb = cdbXCopy(len(out))
			}
			// A read-modify-write holds block 0: b's write queues behind it.
			held := &lockReq{lba: 0, n: 1, excl: true, grant: func() {}}
			if !h.disk.locks.acquire(held) {
				t.Fatal("range lock on block 0 not granted")
			}
			write := h.start(h.b, cdb, out)
			notWithin(t, "b's WRITE behind the range lock", write, 50*time.Millisecond)
			tt.change(h)
			h.disk.locks.release(held)
			if c := await(t, "b's WRITE", write); c.Status != tt.want {
				t.Fatalf("b's queued write: status %#x sense %+v, want %#x", c.Status, senseOf(c), tt.want)
			}
			h.run(h.a, cdbTUR()) // takes a reset's unit attention
			if got := data(h.mustGood(h.a, cdb10(0x28, 0, 1))); !bytes.Equal(got, make([]byte, 512)) {
				t.Fatalf("block 0 holds % x... after the reservation change, want zeros", got[:8])
			}
		})
	}
}

// holdDev holds every write until release is closed; got receives each
// write as it arrives, landed counts those completed.
type holdDev struct {
	bdev.Device
	got     chan struct{}
	release chan struct{}
	landed  atomic.Int32
}

func newHoldDev() *holdDev {
	return &holdDev{Device: bdev.NewMemory(testBlocks * 512), got: make(chan struct{}, 16), release: make(chan struct{})}
}

func (d *holdDev) Submit(r *bdev.Request) {
	if r.Op != bdev.OpWrite {
		d.Device.Submit(r)
		return
	}
	d.got <- struct{}{}
	go func() {
		<-d.release
		done := r.Done
		r.Done = func(r *bdev.Request) {
			d.landed.Add(1)
			r.Done = done
			done(r)
		}
		d.Device.Submit(r)
	}()
}

// TestPreemptAbortWaitsForWritesInDevice: a write of the preempted nexus
// that the backend holds when PREEMPT AND ABORT arrives completes before
// the PR OUT ends in GOOD, on a single node and through a store, and
// before a node acknowledges another node's PREEMPT AND ABORT or reset
// (the delivery returns only after the acknowledgement).
func TestPreemptAbortWaitsForWritesInDevice(t *testing.T) {
	tests := []struct {
		name   string
		store  bool
		change func(h *harness) <-chan *Command
	}{
		{"single node", false, func(h *harness) <-chan *Command {
			return h.start(h.a, cdbPROut(proPreemptAbort, prWE, len(preemptAbortParams)), preemptAbortParams)
		}},
		{"through a store", true, func(h *harness) <-chan *Command {
			return h.start(h.a, cdbPROut(proPreemptAbort, prWE, len(preemptAbortParams)), preemptAbortParams)
		}},
		{"another node's preempt and abort", true, func(h *harness) <-chan *Command {
			return acked(h.remotePreemptAbort)
		}},
		{"another node's reset", true, func(h *harness) <-chan *Command {
			return acked(h.remoteReset)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg DiskConfig
			if tt.store {
				cfg.PRStore = &memPRStore{}
			}
			dev := newHoldDev()
			h := newHarnessOn(t, dev, cfg)
			h.reserveB()
			write := h.start(h.b, cdb10(0x2a, 0, 1), fill(512, 0xbb))
			<-dev.got
			change := tt.change(h)
			notWithin(t, tt.name, change, 200*time.Millisecond)
			close(dev.release)
			c := await(t, tt.name, change)
			if c.Status != StatusGood {
				t.Fatalf("%s: status %#x sense %+v", tt.name, c.Status, senseOf(c))
			}
			if n := dev.landed.Load(); n != 1 {
				t.Fatalf("%s completed with %d writes landed, want the one in the device", tt.name, n)
			}
			await(t, "b's WRITE", write)
		})
	}
}

// acked runs deliver, a record's delivery, on a goroutine and reports its
// return (which follows the acknowledgement) as a command with GOOD.
func acked(deliver func()) <-chan *Command {
	done := make(chan *Command, 1)
	go func() {
		deliver()
		done <- &Command{}
	}()
	return done
}

// TestWriteGate: a drain waits for the writes entered before it, not for
// those entered during it, and gives up at its bound.
func TestWriteGate(t *testing.T) {
	const bound = time.Second
	tests := []struct {
		name   string
		before int  // writes entered before the drain
		exit   bool // they exit while it waits
		during int  // writes entered while it waits, never exited
		want   bool
	}{
		{"no writes", 0, false, 0, true},
		{"writes in flight complete", 3, true, 0, true},
		{"later writes are not waited for", 1, true, 2, true},
		{"a write that never completes", 1, false, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g writeGate
			slots := make([]uint32, tt.before)
			for i := range slots {
				slots[i] = g.enter()
			}
			go func() {
				time.Sleep(20 * time.Millisecond)
				for range tt.during {
					g.enter()
				}
				if tt.exit {
					for _, s := range slots {
						g.exit(s)
					}
				}
			}()
			began := time.Now()
			ok := g.drain(bound)
			took := time.Since(began)
			if ok != tt.want {
				t.Fatalf("drain: %v after %v, want %v", ok, took, tt.want)
			}
			if !ok && took < bound {
				t.Fatalf("drain gave up after %v, before its bound %v", took, bound)
			}
		})
	}
}
