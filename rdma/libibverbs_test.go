//go:build linux

package rdma

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// verbsHeader is where libibverbs-dev installs verbs.h; the C-side tests (named TestIbvC...) need
// it and a compiler, which the test VM does not have.
const verbsHeader = "/usr/include/infiniband/verbs.h"

// compileC builds testdata C source src with gcc (as a shared object when shared) or skips the
// test when gcc or verbs.h is missing.
func compileC(t *testing.T, src string, shared bool, extra ...string) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no gcc: the C-side check of the libibverbs structures needs one")
	}
	if _, err := os.Stat(verbsHeader); err != nil {
		t.Skipf("no %s (install libibverbs-dev)", verbsHeader)
	}
	out := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".c"))
	args := []string{"-Wall", "-Werror", "-o", out}
	if shared {
		args = append(args, "-shared", "-fPIC")
	}
	args = append(append(args, extra...), src)
	if b, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, b)
	}
	return out
}

// fakeIbv is testdata/fakeibv.c loaded as the provider of a made-up device: an ops table
// pointing at its functions, and the functions the test reads its log with.
type fakeIbv struct {
	mem                       *cmem
	ctx                       *Context
	ops                       *ibvContextOps
	log, reset, ready, armsFn uintptr
	acked, ackedCQ            uintptr
}

func newFakeIbv(t *testing.T) *fakeIbv {
	so := compileC(t, "testdata/fakeibv.c", true)
	h, err := purego.Dlopen(so, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { purego.Dlclose(h) })
	sym := func(name string) uintptr {
		p, err := purego.Dlsym(h, name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	mem, err := newCmem(cmemSize[ibvContext](1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.free() })
	c := &takeN[ibvContext](mem, 1)[0]
	c.Ops.PostSend, c.Ops.PostRecv = sym("fake_post_send"), sym("fake_post_recv")
	c.Ops.PollCQ, c.Ops.ReqNotifyCQ = sym("fake_poll_cq"), sym("fake_req_notify_cq")
	lib := &ibvLib{ackCQEvents: sym("fake_ack_cq_events")}
	f := &fakeIbv{mem: mem, ctx: &Context{lib: &ibvCtx{lib: lib, ctx: addrOf(c), c: c}}, ops: &c.Ops,
		log: sym("fake_log"), reset: sym("fake_reset"), ready: sym("fake_ready"), armsFn: sym("fake_arms"),
		acked: sym("fake_acked"), ackedCQ: sym("fake_acked_cq")}
	f.resetLog(-1)
	return f
}

// resetLog clears the log; failAt >= 0 makes posting fail at that work request of a call.
func (f *fakeIbv) resetLog(failAt int) { call(f.reset, uintptr(failAt)) }

// lines returns the log, one line per work request posted.
func (f *fakeIbv) lines() []string {
	p := cptr(call(f.log))
	var b []byte
	for i := 0; ; i++ {
		c := *(*byte)(unsafe.Add(p, i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func (f *fakeIbv) qp(t *testing.T, caps QPCaps) *QP {
	r, err := newIbvQPRings(0x1234, f.ops, caps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &QP{ctx: f.ctx, lib: 0x1234, Caps: caps, rings: r, stage: newPostStage(caps)}
}

func (f *fakeIbv) cq(t *testing.T) *CQ {
	cq := &CQ{ctx: f.ctx, lib: 0x5678}
	r, err := newIbvCQRing(cq.lib, f.ops, len(cq.stage))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	cq.ring = r
	return cq
}

var fakeCaps = QPCaps{MaxSendWR: 64, MaxRecvWR: 64, MaxSendSGE: 2, MaxRecvSGE: 2, MaxInline: 16}

// TestIbvCPostSend checks every kind of send work request as the provider's post_send reads it
// through verbs.h.
func TestIbvCPostSend(t *testing.T) {
	f := newFakeIbv(t)
	qp := f.qp(t, fakeCaps)
	sgl := []SGE{{Addr: 0x1000, Length: 10, LKey: 0x11}, {Addr: 0x2000, Length: 20, LKey: 0x22}}
	tests := []struct {
		name string
		wr   SendWR
		want string
	}{
		{"send", SendWR{ID: 1, Opcode: OpSend, Flags: SendSignaled, SGL: sgl},
			"send id=1 op=2 flags=2 sge=1000/10/11 sge=2000/20/22"},
		{"inline send", SendWR{ID: 2, Opcode: OpSend, Flags: SendSolicited, Inline: []byte("hello")},
			"send id=2 op=2 flags=12 inline=hello"},
		{"rdma write", SendWR{ID: 3, Opcode: OpRDMAWrite, SGL: sgl[:1], RemoteAddr: 0xabc000, RKey: 0x77},
			"send id=3 op=0 flags=0 remote=abc000/77 sge=1000/10/11"},
		{"rdma read", SendWR{ID: 4, Opcode: OpRDMARead, Flags: SendSignaled | SendFence, SGL: sgl[1:], RemoteAddr: 0xdef000, RKey: 0x78},
			"send id=4 op=4 flags=3 remote=def000/78 sge=2000/20/22"},
		{"send with invalidate", SendWR{ID: 5, Opcode: OpSendWithInv, InvalidateRKey: 0x99, SGL: sgl[:1]},
			"send id=5 op=9 flags=0 inv=99 sge=1000/10/11"},
		{"bind", SendWR{ID: 6, Opcode: OpBindMW, Flags: SendSignaled, Bind: MWBind{RKey: 0x101, Addr: 0x3000,
			Length: 4096, Access: AccessRemoteRead, mwLib: 0xaaa0, mrLib: 0xbbb0}},
			"send id=6 op=8 flags=2 bind=aaa0/101 mr=bbb0 at=3000/4096 access=4"},
		{"empty send", SendWR{ID: 7, Opcode: OpSend}, "send id=7 op=2 flags=0"},
	}
	var all []SendWR
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.resetLog(-1)
			if err := qp.PostSend(tc.wr); err != nil {
				t.Fatal(err)
			}
			if got := f.lines(); len(got) != 1 || got[0] != tc.want {
				t.Errorf("provider saw %q, want %q", got, tc.want)
			}
		})
		all = append(all, tc.wr)
	}
	// More than one staging batch in one call: every request, in order, as one chain per batch.
	f.resetLog(-1)
	var batch []SendWR
	for len(batch) < 3*stageWRs {
		batch = append(batch, all...)
	}
	if err := qp.PostSend(batch...); err != nil {
		t.Fatal(err)
	}
	got := f.lines()
	if len(got) != len(batch) {
		t.Fatalf("provider saw %d work requests, want %d", len(got), len(batch))
	}
	for i, l := range got {
		if want := tests[i%len(tests)].want; l != want {
			t.Errorf("work request %d: provider saw %q, want %q", i, l, want)
		}
	}
}

// TestIbvCPostErrors checks that a failed post reports how many requests were queued.
func TestIbvCPostErrors(t *testing.T) {
	f := newFakeIbv(t)
	qp := f.qp(t, fakeCaps)
	sge := []SGE{{Addr: 0x1000, Length: 1, LKey: 1}}
	f.resetLog(2)
	err := qp.PostSend(SendWR{ID: 1, Opcode: OpSend, SGL: sge}, SendWR{ID: 2, Opcode: OpSend, SGL: sge}, SendWR{ID: 3, Opcode: OpSend, SGL: sge})
	if !errors.Is(err, ErrQueueFull) || !strings.Contains(err.Error(), "2 of 3 queued") {
		t.Errorf("PostSend failing at the third request = %v, want ErrQueueFull, 2 of 3 queued", err)
	}
	f.resetLog(0)
	err = qp.PostRecv(RecvWR{ID: 1, SGL: sge}, RecvWR{ID: 2, SGL: sge})
	if !errors.Is(err, ErrQueueFull) || !strings.Contains(err.Error(), "0 of 2 queued") {
		t.Errorf("PostRecv failing at the first request = %v, want ErrQueueFull, 0 of 2 queued", err)
	}
	f.resetLog(-1)
	if err := qp.PostRecv(RecvWR{ID: 8, SGL: []SGE{{Addr: 0x10, Length: 2, LKey: 3}, {Addr: 0x20, Length: 4, LKey: 5}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.lines(), "recv id=8 sge=10/2/3 sge=20/4/5"; len(got) != 1 || got[0] != want {
		t.Errorf("provider saw %q, want %q", got, want)
	}
	if err := qp.PostSend(SendWR{Opcode: OpRDMARead, Inline: []byte("x")}); err == nil {
		t.Error("an inline RDMA READ was posted")
	}
	if err := qp.PostSend(SendWR{Opcode: OpBindMW}); err == nil {
		t.Error("a bind without window and region was posted")
	}
}

// TestIbvCPollAndArm checks the completions as poll_cq fills them in (libibverbs numbers the
// invalidate flag differently from the kernel) and arming through req_notify_cq.
func TestIbvCPollAndArm(t *testing.T) {
	f := newFakeIbv(t)
	cq := f.cq(t)
	call(f.ready, 3)
	var wc [2]WorkCompletion
	n, err := cq.Poll(wc[:])
	if err != nil || n != 2 {
		t.Fatalf("Poll = %d, %v, want 2", n, err)
	}
	want := WorkCompletion{ID: 1, Status: WCSuccess, Opcode: WCRecv, ByteLen: 101, Ex: 0xabc, QPNum: 7,
		Flags: WCWithInvalidate | 1, VendorErr: 0x12}
	if wc[0] != want {
		t.Errorf("completion %+v, want %+v", wc[0], want)
	}
	if wc[1].ID != 2 || wc[1].Status != WCWRFlushErr || wc[1].Flags != WCWithInvalidate {
		t.Errorf("second completion %+v, want ID 2 flushed, invalidate flag from librxe's numbering", wc[1])
	}
	if n, _ := cq.Poll(wc[:]); n != 1 || wc[0].Flags != 0 {
		t.Errorf("second Poll = %d, %+v; want 1 without flags", n, wc[0])
	}
	if n, _ := cq.Poll(wc[:]); n != 0 {
		t.Errorf("Poll of an empty CQ = %d", n)
	}
	for _, solicited := range []bool{false, true, true} {
		if err := cq.Arm(solicited); err != nil {
			t.Fatal(err)
		}
	}
	if all, sol := call(f.armsFn, 0), call(f.armsFn, 1); all != 1 || sol != 2 {
		t.Errorf("req_notify_cq calls: %d for all, %d solicited; want 1 and 2", all, sol)
	}
}

// TestIbvCPostPollAllocs checks the libibverbs data path: posting and polling through the
// provider's functions allocate nothing.
func TestIbvCPostPollAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("under the race detector sync.Pool drops items, and purego pools its call blocks (make unit runs this without it)")
	}
	f := newFakeIbv(t)
	qp := f.qp(t, fakeCaps)
	cq := f.cq(t)
	msg := []byte("ping")
	wc := make([]WorkCompletion, 4)
	// A completion channel of the made-up device with the CQ on it, and one event for that CQ.
	ch := &CompChannel{ctx: f.ctx, lib: 1, cqs: map[uint64]*CQ{uint64(cq.lib): cq}}
	var ev [8]byte
	binary.NativeEndian.PutUint64(ev[:], uint64(cq.lib))
	resetArgs, readyArgs := []uintptr{^uintptr(0)}, []uintptr{1} // call's arguments, allocated once
	allocs := testing.AllocsPerRun(200, func() {
		call(f.reset, resetArgs...)
		if err := qp.PostSend(SendWR{ID: 1, Opcode: OpRDMAWrite, SGL: []SGE{{Addr: 1, Length: 2, LKey: 3}}, RemoteAddr: 4, RKey: 5},
			SendWR{ID: 2, Opcode: OpSend, Flags: SendSignaled, Inline: msg}); err != nil {
			t.Fatal(err)
		}
		if err := qp.PostRecv(RecvWR{ID: 3, SGL: []SGE{{Addr: 1, Length: 2, LKey: 3}}}); err != nil {
			t.Fatal(err)
		}
		call(f.ready, readyArgs...)
		if n, err := cq.Poll(wc); n != 1 || err != nil {
			t.Fatalf("Poll = %d, %v", n, err)
		}
		if err := cq.Arm(false); err != nil {
			t.Fatal(err)
		}
		if got, err := ch.event(ev[:], len(ev), 0); got != cq || err != nil {
			t.Fatalf("completion event for %p: %v", got, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per post/poll/arm/event round, want 0", allocs)
	}
	// The events are acknowledged in one call before the CQ is destroyed, later ones at once.
	if n := call(f.acked); n != 0 {
		t.Errorf("%d completion events acknowledged already, want them held back", n)
	}
	ch.ackPending(cq)
	if n, c := call(f.acked), call(f.ackedCQ); n != 201 || c != cq.lib {
		t.Errorf("%d completion events acknowledged to libibverbs (last for CQ %#x), want 201 for %#x", n, c, cq.lib)
	}
	if got, err := ch.event(ev[:], len(ev), 0); got != cq || err != nil || call(f.acked) != 202 {
		t.Errorf("event for a CQ being destroyed: %p, %v, %d acknowledged in all; want it acknowledged at once", got, err, call(f.acked))
	}
}
