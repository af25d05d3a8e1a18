//go:build linux

package rdma

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestMemoryWindowSendWithInvalidate binds a type 2 window onto half of b's region with a
// BIND_MW work request on b's QP, lets a RDMA WRITE through it, then has a SEND with invalidate
// naming its key: b's receive completion reports the invalidated key, and a WRITE through the
// window afterwards fails with a remote access error. The region itself grants no remote
// access, so everything a reaches goes through the window.
func TestMemoryWindowSendWithInvalidate(t *testing.T) {
	dev := testDevice(t)
	gidIndex, gid := ipv4GIDIndex(t, dev)
	c, err := OpenWith(dev, testProvider)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pd, err := c.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	mrA, bufA, err := pd.AllocBuffer(4096, AccessLocalWrite)
	if err != nil {
		t.Fatal(err)
	}
	mrB, bufB, err := pd.AllocBuffer(8192, AccessLocalWrite|AccessMWBind)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newLoopEnd(t, c, pd), newLoopEnd(t, c, pd)
	connectLoop(t, c, a.qp, b.qp, gidIndex, gid)

	mw, err := pd.AllocMW()
	if err != nil {
		t.Fatal(err)
	}
	unbound := mw.RKey
	bind, err := mw.BindWR(21, mrB, mrB.Addr+4096, 4096, AccessRemoteWrite)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.qp.PostSend(bind); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, b.cq); wc.ID != 21 || wc.Opcode != WCBindMW {
		t.Fatalf("bind completion %+v", wc)
	}
	if mw.RKey == unbound {
		t.Fatalf("the bind kept the window's key %#x", mw.RKey)
	}

	// A WRITE through the window lands in the window's half of the region.
	for i := range bufA {
		bufA[i] = byte(i*13 + 5)
	}
	if err := a.qp.PostSend(SendWR{ID: 1, Opcode: OpRDMAWrite, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, 4096)},
		RemoteAddr: mrB.Addr + 4096, RKey: mw.RKey}); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, a.cq); wc.Opcode != WCRDMAWrite {
		t.Errorf("write completion %+v", wc)
	}
	if !bytes.Equal(bufB[4096:], bufA) || bytes.ContainsFunc(bufB[:4096], func(r rune) bool { return r != 0 }) {
		t.Error("the WRITE through the window did not land (only) in the window")
	}

	// SEND with invalidate: the receiver learns which key is gone.
	if err := b.qp.PostRecv(RecvWR{ID: 31, SGL: []SGE{mrB.SGE(0, 64)}}); err != nil {
		t.Fatal(err)
	}
	if err := a.qp.PostSend(SendWR{ID: 2, Opcode: OpSendWithInv, Flags: SendSignaled, Inline: []byte("done"),
		InvalidateRKey: mw.RKey}); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, a.cq); wc.ID != 2 || wc.Opcode != WCSend {
		t.Errorf("send with invalidate completion %+v", wc)
	}
	wc := waitOne(t, b.cq)
	if wc.ID != 31 || wc.Opcode != WCRecv || wc.ByteLen != 4 || wc.Flags&WCWithInvalidate == 0 || wc.Ex != mw.RKey {
		t.Errorf("receive completion %+v, want the invalidate flag and key %#x", wc, mw.RKey)
	}

	// The key no longer opens the window.
	if err := a.qp.PostSend(SendWR{ID: 3, Opcode: OpRDMAWrite, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, 16)},
		RemoteAddr: mrB.Addr + 4096, RKey: mw.RKey}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got [1]WorkCompletion
	if _, err := a.cq.Wait(ctx, got[:]); err != nil {
		t.Fatal(err)
	}
	if got[0].ID != 3 || got[0].Status != WCRemAccessErr {
		t.Errorf("write through the invalidated window: %+v, want %v", got[0], WCRemAccessErr)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
