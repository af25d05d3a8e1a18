//go:build linux

package rdma

import (
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fakeQueueFD makes a memfd holding an rxe_queue_buf with (mask+1) slots of 1<<log2 bytes, as the
// kernel would lay it out, and returns the fd and its mminfo.
func fakeQueueFD(t *testing.T, log2, mask uint32, size int) (int, rxeMMInfo) {
	t.Helper()
	fd, err := unix.MemfdCreate("rxe-queue", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if size == 0 {
		size = int(unsafe.Sizeof(rxeQueueHdr{})) + int(mask+1)<<log2
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	var hdr [8]byte
	binary.NativeEndian.PutUint32(hdr[0:], log2)
	binary.NativeEndian.PutUint32(hdr[4:], mask)
	if _, err := unix.Pwrite(fd, hdr[:], 0); err != nil {
		t.Fatal(err)
	}
	return fd, rxeMMInfo{Size: uint32(size)}
}

func TestMapRxeQueueGeometry(t *testing.T) {
	tests := []struct {
		name       string
		log2, mask uint32
		size       int
		minElem    int
		ok         bool
	}{
		{"cq 128 slots of 128 bytes", 7, 127, 0, 48, true},
		{"sq 256 slots of 512 bytes", 9, 255, 0, 224, true},
		{"mask not a power of two minus one", 7, 100, 384 + 101*128, 48, false},
		{"slot smaller than an element", 5, 15, 0, 48, false},
		{"mapping shorter than the slots", 7, 127, 384 + 64*128, 48, false},
		{"mapping shorter than the header", 7, 0, 256, 48, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd, mi := fakeQueueFD(t, tt.log2, tt.mask, tt.size)
			q, err := mapRxeQueue(fd, mi, tt.minElem)
			if tt.ok != (err == nil) {
				t.Fatalf("mapRxeQueue: %v, want ok=%v", err, tt.ok)
			}
			if err == nil {
				if q.mask != tt.mask || q.elemSize() != 1<<tt.log2 {
					t.Errorf("mask %d elem %d", q.mask, q.elemSize())
				}
				if err := q.unmap(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// newFakeQP builds rxe rings over memfds with a pipe as the uverbs fd, so the doorbell lands in
// the pipe.
func newFakeQP(t *testing.T, slots uint32) (*rxeQP, int) {
	t.Helper()
	sfd, smi := fakeQueueFD(t, 9, slots-1, 0)
	rfd, rmi := fakeQueueFD(t, 7, slots-1, 0)
	sq, err := mapRxeQueue(sfd, smi, rxeWQEHdr+rxeSGESize)
	if err != nil {
		t.Fatal(err)
	}
	rq, err := mapRxeQueue(rfd, rmi, rxeRWQEHdr)
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	r := &rxeQP{sq: sq, rq: rq, fd: p[1], maxInline: 64, db: new(rxeDoorbell)}
	r.db.cmd = rxeDoorbellCmd{
		Hdr: uverbsCmdHdr{Command: cmdPostSend, InWords: uint16(unsafe.Sizeof(rxeDoorbellCmd{}) / 4), OutWords: 1},
		Req: uverbsPostSend{QPHandle: 77, WQESize: uverbsSendWRSize, Response: 0x1000},
	}
	t.Cleanup(func() { r.Close() })
	return r, p[0]
}

func TestRxePostSend(t *testing.T) {
	r, dbRead := newFakeQP(t, 8)
	wrs := []SendWR{
		{ID: 1, Opcode: OpRDMAWrite, SGL: []SGE{{Addr: 0x1000, Length: 100, LKey: 5}, {Addr: 0x2000, Length: 28, LKey: 6}},
			RemoteAddr: 0xabc000, RKey: 9},
		{ID: 2, Opcode: OpSendWithInv, Flags: SendSignaled, Inline: []byte("hello"), InvalidateRKey: 0x55},
	}
	if _, err := r.PostSend(wrs); err != nil {
		t.Fatal(err)
	}
	if p := r.sq.hdr.ProducerIndex; p != 2 {
		t.Fatalf("producer index %d after two WRs, want 2", p)
	}
	w0 := (*rxeSendWQE)(unsafe.Pointer(&r.sq.slot(0)[0]))
	if w0.WR.WRID != 1 || w0.WR.Opcode != uint32(OpRDMAWrite) || w0.WR.RemoteAddr != 0xabc000 || w0.WR.RKey != 9 ||
		w0.IOVA != 0xabc000 || w0.DMA.Length != 128 || w0.DMA.Resid != 128 || w0.DMA.NumSGE != 2 || w0.WR.SendFlags != 0 {
		t.Errorf("first WQE %+v", *w0)
	}
	sge1 := (*rxeSGE)(unsafe.Pointer(&r.sq.slot(0)[rxeWQEHdr+rxeSGESize]))
	if *sge1 != (rxeSGE{Addr: 0x2000, Length: 28, LKey: 6}) {
		t.Errorf("second SGE %+v", *sge1)
	}
	s1 := r.sq.slot(1)
	w1 := (*rxeSendWQE)(unsafe.Pointer(&s1[0]))
	if w1.WR.SendFlags != uint32(SendSignaled|SendInline) || w1.WR.Ex != 0x55 || w1.DMA.Length != 5 ||
		string(s1[rxeWQEHdr:rxeWQEHdr+5]) != "hello" {
		t.Errorf("inline WQE %+v data %q", *w1, s1[rxeWQEHdr:rxeWQEHdr+5])
	}
	// One doorbell for the batch: POST_SEND, 32 bytes, 1 response word, our QP handle, no WRs.
	var db [64]byte
	n, err := unix.Read(dbRead, db[:])
	if err != nil || n != 32 {
		t.Fatalf("doorbell read %d bytes, %v; want one 32-byte command", n, err)
	}
	if cmd := binary.NativeEndian.Uint32(db[0:]); cmd != cmdPostSend || binary.NativeEndian.Uint16(db[4:]) != 8 ||
		binary.NativeEndian.Uint16(db[6:]) != 1 || binary.NativeEndian.Uint32(db[16:]) != 77 ||
		binary.NativeEndian.Uint32(db[20:]) != 0 || binary.NativeEndian.Uint32(db[28:]) != uverbsSendWRSize {
		t.Errorf("doorbell bytes %x", db[:n])
	}
	// A bind: no data, the window in the wr union.
	bind := SendWR{ID: 3, Opcode: OpBindMW, Flags: SendSignaled,
		Bind: MWBind{MWRKey: 0x1200, RKey: 0x1201, MRLKey: 0x77, Addr: 0x5000, Length: 300, Access: AccessRemoteWrite}}
	if _, err := r.PostSend([]SendWR{bind}); err != nil {
		t.Fatal(err)
	}
	s2 := r.sq.slot(2)
	w2 := (*rxeSendWQE)(unsafe.Pointer(&s2[0]))
	b2 := (*rxeMWBind)(unsafe.Pointer(&s2[unsafe.Offsetof(rxeSendWR{}.RemoteAddr)]))
	if w2.WR.WRID != 3 || w2.WR.Opcode != uint32(OpBindMW) || w2.WR.SendFlags != uint32(SendSignaled) || w2.DMA.Length != 0 ||
		*b2 != (rxeMWBind{Addr: 0x5000, Length: 300, MRLKey: 0x77, MWRKey: 0x1200, RKey: 0x1201, Access: uint32(AccessRemoteWrite)}) {
		t.Errorf("bind WQE %+v, window %+v", *w2, *b2)
	}
}

func TestRxePostSendErrors(t *testing.T) {
	tests := []struct {
		name   string
		wr     SendWR
		queued int
	}{
		{"inline too long", SendWR{Opcode: OpSend, Inline: make([]byte, 65)}, 0},
		{"inline read", SendWR{Opcode: OpRDMARead, Inline: []byte("x")}, 0},
		{"bad opcode", SendWR{Opcode: 7}, 0},
		{"bind with data", SendWR{Opcode: OpBindMW, SGL: []SGE{{Length: 1}}, Bind: MWBind{Length: 1}}, 0},
		{"bind of nothing", SendWR{Opcode: OpBindMW}, 0},
		{"bind changing the window index", SendWR{Opcode: OpBindMW, Bind: MWBind{MWRKey: 0x100, RKey: 0x201, Length: 1}}, 0},
		{"too many SGEs", SendWR{Opcode: OpSend, SGL: make([]SGE, 64)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newFakeQP(t, 8)
			n, err := r.PostSend([]SendWR{tt.wr})
			if err == nil || n != tt.queued || r.sq.hdr.ProducerIndex != 0 {
				t.Errorf("PostSend = %d, %v; producer %d", n, err, r.sq.hdr.ProducerIndex)
			}
		})
	}
	t.Run("queue full", func(t *testing.T) {
		r, _ := newFakeQP(t, 4)
		wrs := make([]SendWR, 5)
		n, err := r.PostSend(wrs)
		if !errors.Is(err, ErrQueueFull) || n != 3 {
			t.Fatalf("PostSend of 5 on a 4-slot ring = %d, %v; want 3, ErrQueueFull", n, err)
		}
		r.sq.hdr.ConsumerIndex = 2 // the kernel consumed two
		if n, err := r.PostSend(wrs[:2]); err != nil || n != 2 || r.sq.hdr.ProducerIndex != 1 {
			t.Fatalf("PostSend after consumption = %d, %v; producer %d (want wrap to 1)", n, err, r.sq.hdr.ProducerIndex)
		}
	})
}

func TestRxePostRecv(t *testing.T) {
	r, _ := newFakeQP(t, 4)
	n, err := r.PostRecv([]RecvWR{
		{ID: 7, SGL: []SGE{{Addr: 0x1000, Length: 10, LKey: 1}, {Addr: 0x3000, Length: 20, LKey: 1}}},
		{ID: 8}, {ID: 9}, {ID: 10},
	})
	if !errors.Is(err, ErrQueueFull) || n != 3 {
		t.Fatalf("PostRecv of 4 on a 4-slot ring = %d, %v", n, err)
	}
	w := (*rxeRecvWQE)(unsafe.Pointer(&r.rq.slot(0)[0]))
	if w.WRID != 7 || w.DMA.Length != 30 || w.DMA.Resid != 30 || w.DMA.NumSGE != 2 {
		t.Errorf("receive WQE %+v", *w)
	}
	if s := (*rxeSGE)(unsafe.Pointer(&r.rq.slot(0)[rxeRWQEHdr+rxeSGESize])); s.Addr != 0x3000 || s.Length != 20 {
		t.Errorf("second SGE %+v", *s)
	}
	if _, err := (&rxeQP{}).PostRecv([]RecvWR{{}}); err == nil {
		t.Error("PostRecv without a receive queue succeeded")
	}
}

func TestRxeCQPoll(t *testing.T) {
	fd, mi := fakeQueueFD(t, 7, 3, 0)
	q, err := mapRxeQueue(fd, mi, int(unsafe.Sizeof(uverbsWC{})))
	if err != nil {
		t.Fatal(err)
	}
	cq := &rxeCQ{q: q}
	defer cq.Close()
	produce := func(ids ...uint64) {
		p := q.hdr.ProducerIndex
		for _, id := range ids {
			*(*uverbsWC)(unsafe.Pointer(&q.slot(p)[0])) = uverbsWC{WRID: id, Status: uint32(WCWRFlushErr) * uint32(id%2),
				Opcode: uint32(WCRecv), ByteLen: uint32(id * 10), QPNum: 17}
			p = (p + 1) & q.mask
		}
		q.hdr.ProducerIndex = p
	}
	wc := make([]WorkCompletion, 2)
	if n := cq.Poll(wc); n != 0 {
		t.Fatalf("empty CQ polled %d", n)
	}
	produce(2, 3, 4)
	var got []WorkCompletion
	for {
		n := cq.Poll(wc)
		if n == 0 {
			break
		}
		got = append(got, wc[:n]...)
	}
	produce(6) // wraps around the 4-slot ring
	n := cq.Poll(wc)
	got = append(got, wc[:n]...)
	if len(got) != 4 || q.hdr.ConsumerIndex != 0 {
		t.Fatalf("polled %d completions, consumer %d; want 4 and 0", len(got), q.hdr.ConsumerIndex)
	}
	for i, id := range []uint64{2, 3, 4, 6} {
		if got[i].ID != id || got[i].ByteLen != uint32(id*10) || got[i].QPNum != 17 || (got[i].Err() == nil) != (id%2 == 0) {
			t.Errorf("completion %d = %+v", i, got[i])
		}
	}
}

// TestPostPollAllocs checks the hot path: posting work requests built in place and
// polling completions allocate nothing (the doorbell goes to /dev/null here).
func TestPostPollAllocs(t *testing.T) {
	r, _ := newFakeQP(t, 64)
	null, err := unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	r.fd = null
	caps := QPCaps{MaxSendWR: 63, MaxRecvWR: 63, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInline: 64}
	qp := &QP{Caps: caps, rings: r, stage: newPostStage(caps)}
	fd, mi := fakeQueueFD(t, 7, 63, 0)
	q, err := mapRxeQueue(fd, mi, int(unsafe.Sizeof(uverbsWC{})))
	if err != nil {
		t.Fatal(err)
	}
	cq := &CQ{ring: &rxeCQ{q: q}}
	defer cq.ring.Close()
	msg := []byte("ping")
	wc := make([]WorkCompletion, 4)
	allocs := testing.AllocsPerRun(100, func() {
		if err := qp.PostSend(SendWR{ID: 1, Opcode: OpRDMAWrite, SGL: []SGE{{Addr: 1, Length: 2, LKey: 3}}, RemoteAddr: 4, RKey: 5},
			SendWR{ID: 2, Opcode: OpSend, Flags: SendSignaled, Inline: msg}); err != nil {
			t.Fatal(err)
		}
		if err := qp.PostRecv(RecvWR{ID: 3, SGL: []SGE{{Addr: 1, Length: 2, LKey: 3}}}); err != nil {
			t.Fatal(err)
		}
		// Play the kernel: consume what was posted and complete one request.
		r.sq.hdr.ConsumerIndex = r.sq.hdr.ProducerIndex
		r.rq.hdr.ConsumerIndex = r.rq.hdr.ProducerIndex
		q.hdr.ProducerIndex = (q.hdr.ProducerIndex + 1) & q.mask
		if n, err := cq.Poll(wc); n != 1 || err != nil {
			t.Fatalf("Poll = %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per post/poll round, want 0", allocs)
	}
	// Limits are checked against the QP's capacities before anything is queued.
	if err := qp.PostSend(SendWR{Opcode: OpSend, SGL: make([]SGE, 3)}); err == nil {
		t.Error("PostSend with more SGEs than MaxSendSGE succeeded")
	}
	if err := qp.PostRecv(RecvWR{SGL: make([]SGE, 3)}); err == nil {
		t.Error("PostRecv with more SGEs than MaxRecvSGE succeeded")
	}
}
