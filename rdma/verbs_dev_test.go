//go:build linux

package rdma

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testProvider is the provider the device tests drive devices with: RDMA_TEST_PROVIDER (auto,
// native or libibverbs; auto when unset).
var testProvider = ProviderChoice(os.Getenv("RDMA_TEST_PROVIDER"))

// checkProvider fails the test when c is not driven by the provider RDMA_TEST_PROVIDER asked for.
func checkProvider(t testing.TB, c *Context) {
	t.Helper()
	want := map[ProviderChoice]string{ProviderNative: "rxe", ProviderLibibverbs: "libibverbs"}[testProvider]
	if want != "" && c.Provider() != want {
		t.Fatalf("device %s is driven by %s, RDMA_TEST_PROVIDER asked for %s", c.Device.Name, c.Provider(), testProvider)
	}
}

// testDevice returns the first RDMA device or skips the test on a host without one.
func testDevice(t testing.TB) Device {
	t.Helper()
	devs, err := Devices()
	if errors.Is(err, ErrNoDevice) {
		t.Skipf("this host has no RDMA device (%v); the device tests run in the VM: scripts/vm/scenarios/rdma-go.sh", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return devs[0]
}

// ipv4GIDIndex finds the GID table slot of port 1 that holds an IPv4-mapped address (RoCE v2).
func ipv4GIDIndex(t testing.TB, dev Device) (int, [16]byte) {
	t.Helper()
	for i := 0; i < 64; i++ {
		s, err := readTrim(filepath.Join(sysfsRoot, "class/infiniband", dev.Name, "ports/1/gids", strconv.Itoa(i)))
		if err != nil {
			break
		}
		ip, err := parseGID(s)
		if err == nil && ip.To4() != nil && !ip.IsUnspecified() && strings.HasPrefix(s, "0000:0000:0000:0000:0000:ffff") {
			var g [16]byte
			copy(g[:], ip.To16())
			return i, g
		}
	}
	t.Skip("no IPv4 GID on port 1")
	return 0, [16]byte{}
}

type loopEnd struct {
	ch *CompChannel
	cq *CQ
	qp *QP
}

func newLoopEnd(t *testing.T, c *Context, pd *PD) *loopEnd {
	ch, err := c.NewCompChannel()
	if err != nil {
		t.Fatal(err)
	}
	cq, err := c.CreateCQ(64, ch, 0)
	if err != nil {
		t.Fatal(err)
	}
	qp, err := pd.CreateQP(QPInitAttr{SendCQ: cq, RecvCQ: cq, MaxSendWR: 32, MaxRecvWR: 32, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInline: 64})
	if err != nil {
		t.Fatal(err)
	}
	return &loopEnd{ch: ch, cq: cq, qp: qp}
}

// connectLoop takes a and b through INIT, RTR and RTS by hand, addressed to each other.
func connectLoop(t *testing.T, c *Context, a, b *QP, gidIndex int, gid [16]byte) {
	pa, err := c.QueryPort(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]*QP{{a, b}, {b, a}} {
		q, peer := p[0], p[1]
		steps := []struct {
			attr QPAttr
			mask QPAttrMask
		}{
			{QPAttr{State: QPInit, PortNum: 1, AccessFlags: AccessLocalWrite | AccessRemoteRead | AccessRemoteWrite},
				QPAttrState | QPAttrPkeyIndex | QPAttrPort | QPAttrAccessFlags},
			{QPAttr{State: QPRTR, PathMTU: pa.ActiveMTU, DestQPNum: peer.Num, RQPSN: 0, MaxDestRdAtomic: 4, MinRNRTimer: 12,
				AH: AHAttr{DGID: gid, SGIDIndex: uint8(gidIndex), HopLimit: 1, IsGlobal: true, PortNum: 1}},
				QPAttrState | QPAttrAV | QPAttrPathMTU | QPAttrDestQPN | QPAttrRQPSN | QPAttrMaxDestRdAtomic | QPAttrMinRNRTimer},
			{QPAttr{State: QPRTS, Timeout: 14, RetryCnt: 7, RNRRetry: 7, SQPSN: 0, MaxRdAtomic: 4},
				QPAttrState | QPAttrTimeout | QPAttrRetryCnt | QPAttrRNRRetry | QPAttrSQPSN | QPAttrMaxQPRdAtomic},
		}
		for _, s := range steps {
			if err := q.Modify(&s.attr, s.mask); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func waitOne(t *testing.T, cq *CQ) WorkCompletion {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wc [1]WorkCompletion
	if _, err := cq.Wait(ctx, wc[:]); err != nil {
		t.Fatalf("wait for completion: %v", err)
	}
	if err := wc[0].Err(); err != nil {
		t.Fatal(err)
	}
	return wc[0]
}

// TestVerbsLoopback drives two QPs of one device against each other without rdma_cm: SEND,
// inline SEND, RDMA WRITE and RDMA READ, every byte checked.
func TestVerbsLoopback(t *testing.T) {
	dev := testDevice(t)
	gidIndex, gid := ipv4GIDIndex(t, dev)
	fdsBefore := countFDs(t)
	c, err := OpenWith(dev, testProvider)
	if err != nil {
		t.Fatal(err)
	}
	checkProvider(t, c)
	attr, err := c.QueryDevice()
	if err != nil {
		t.Fatal(err)
	}
	if attr.NodeGUID != dev.NodeGUID {
		t.Errorf("QUERY_DEVICE node GUID %016x, sysfs %016x", attr.NodeGUID, dev.NodeGUID)
	}
	if err := c.CheckPort(1); err != nil {
		t.Fatal(err)
	}
	pd, err := c.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	mrA, bufA, err := pd.AllocBuffer(size, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite)
	if err != nil {
		t.Fatal(err)
	}
	mrB, bufB, err := pd.AllocBuffer(size, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newLoopEnd(t, c, pd), newLoopEnd(t, c, pd)
	connectLoop(t, c, a.qp, b.qp, gidIndex, gid)

	fill := func(buf []byte, seed byte) {
		for i := range buf {
			buf[i] = byte(i*7) + seed
		}
	}
	// SEND a -> b.
	fill(bufA[:4096], 1)
	if err := b.qp.PostRecv(RecvWR{ID: 11, SGL: []SGE{mrB.SGE(0, 4096)}}); err != nil {
		t.Fatal(err)
	}
	if err := a.qp.PostSend(SendWR{ID: 1, Opcode: OpSend, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, 4096)}}); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, a.cq); wc.ID != 1 || wc.Opcode != WCSend {
		t.Errorf("send completion %+v", wc)
	}
	if wc := waitOne(t, b.cq); wc.ID != 11 || wc.Opcode != WCRecv || wc.ByteLen != 4096 {
		t.Errorf("receive completion %+v", wc)
	}
	if !bytes.Equal(bufA[:4096], bufB[:4096]) {
		t.Error("SEND payload differs")
	}
	// Inline SEND.
	msg := []byte("inline hello")
	if err := b.qp.PostRecv(RecvWR{ID: 12, SGL: []SGE{mrB.SGE(8192, 64)}}); err != nil {
		t.Fatal(err)
	}
	if err := a.qp.PostSend(SendWR{ID: 2, Opcode: OpSend, Flags: SendSignaled, Inline: msg}); err != nil {
		t.Fatal(err)
	}
	waitOne(t, a.cq)
	if wc := waitOne(t, b.cq); wc.ByteLen != uint32(len(msg)) || !bytes.Equal(bufB[8192:8192+len(msg)], msg) {
		t.Errorf("inline SEND: completion %+v, data %q", wc, bufB[8192:8192+len(msg)])
	}
	// RDMA WRITE a -> b, then RDMA READ back into a.
	fill(bufA, 3)
	if err := a.qp.PostSend(SendWR{ID: 3, Opcode: OpRDMAWrite, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, size)},
		RemoteAddr: mrB.Addr, RKey: mrB.RKey}); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, a.cq); wc.Opcode != WCRDMAWrite {
		t.Errorf("write completion %+v", wc)
	}
	if !bytes.Equal(bufA, bufB) {
		t.Error("RDMA WRITE payload differs")
	}
	clear(bufA)
	if err := a.qp.PostSend(SendWR{ID: 4, Opcode: OpRDMARead, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, size)},
		RemoteAddr: mrB.Addr, RKey: mrB.RKey}); err != nil {
		t.Fatal(err)
	}
	if wc := waitOne(t, a.cq); wc.Opcode != WCRDMARead {
		t.Errorf("read completion %+v", wc)
	}
	if !bytes.Equal(bufA, bufB) {
		t.Error("RDMA READ payload differs")
	}
	// A bad rkey fails the QP; later requests flush.
	if err := a.qp.PostSend(SendWR{ID: 5, Opcode: OpRDMAWrite, Flags: SendSignaled, SGL: []SGE{mrA.SGE(0, 16)},
		RemoteAddr: mrB.Addr, RKey: mrB.RKey + 0x100}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wc [1]WorkCompletion
	if _, err := a.cq.Wait(ctx, wc[:]); err != nil {
		t.Fatal(err)
	}
	if wc[0].Status == WCSuccess || wc[0].Err() == nil {
		t.Errorf("write with a bad rkey completed with %v", wc[0].Status)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countFDs(t); n != fdsBefore {
		t.Errorf("%d fds open after Close, %d before", n, fdsBefore)
	}
	if _, _, err := pd.AllocBuffer(4096, AccessLocalWrite); !errors.Is(err, ErrClosed) {
		t.Errorf("AllocBuffer after Close: %v, want ErrClosed", err)
	}
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// BenchmarkPollEmpty measures one poll of an empty CQ with the RDMA_TEST_PROVIDER provider: a
// memory read for the native one, a call into the provider's poll_cq for libibverbs.
func BenchmarkPollEmpty(b *testing.B) {
	c, err := OpenWith(testDevice(b), testProvider)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cq, err := c.CreateCQ(16, nil, 0)
	if err != nil {
		b.Fatal(err)
	}
	var wc [4]WorkCompletion
	for b.Loop() {
		if n, err := cq.Poll(wc[:]); n != 0 || err != nil {
			b.Fatalf("poll of an idle CQ: %d, %v", n, err)
		}
	}
}
