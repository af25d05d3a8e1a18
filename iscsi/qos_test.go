package iscsi_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/qos"
)

// load keeps depth reads of 4 KiB outstanding on c until stop is closed,
// and reports how many completed.
func load(t *testing.T, c *initiator.Conn, depth int, stop <-chan struct{}) (done *atomic.Int64, wait func()) {
	done = new(atomic.Int64)
	var wg sync.WaitGroup
	for i := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				task, err := c.Start(ctxT(t), &initiator.Command{CDB: initiator.Read16(uint64(i)*8, 8), ReadLen: 4096})
				if err != nil {
					t.Error(err)
					return
				}
				r, err := task.Wait(ctxT(t))
				if err != nil || r.Status != 0 {
					t.Errorf("read: %v %+v", err, r)
					return
				}
				done.Add(1)
			}
		}()
	}
	return done, wg.Wait
}

// sessionOf returns the server's session of c.
func sessionOf(t *testing.T, srv *iscsi.Server, c *initiator.Conn) *iscsi.Session {
	t.Helper()
	s := srv.Session(c.TSIH())
	if s == nil {
		t.Fatalf("no session %d", c.TSIH())
	}
	return s
}

// TestQoSWindow runs QD128 under a 200 IOPS limit on the LUN: the session
// starts with a window of 100 (what 200 IOPS admit in 500 ms), the
// initiator never has more in flight, no command waits in iserd for as
// long as qos.MaxWait, and once the limit is lifted live the window grows
// back to the server's.
func TestQoSWindow(t *testing.T) {
	e := newEnv(t, nil)
	tgt := e.srv.Target(testTarget)
	tgt.SetQoS(iscsi.QoS{LUNs: map[uint64]qos.Limits{0: {IOPS: 200}}})
	c := e.login(t)
	s := sessionOf(t, e.srv, c)
	if w, limited := s.Window(); w != 100 || !limited {
		t.Fatalf("window at login %d (limited %v), want 100", w, limited)
	}
	exp, max := c.Window() // as of the last TEST UNIT READY's response, sent before its slot came back
	if n := max - exp + 1; n != 99 {
		t.Fatalf("the initiator may send %d commands, want 99", n)
	}
	stop := make(chan struct{})
	peak := watchInFlight(s)
	done, wait := load(t, c, 128, stop)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wait()
	most := peak()
	if most > 100 {
		t.Errorf("%d commands in flight under a window of 100", most)
	}
	st := tgt.QoSStats()
	if len(st) != 1 || st[0].Scope != "lun" {
		t.Fatalf("limiters %+v, want the LUN's", st)
	}
	ls := st[0].Stats
	// Waits of 1 s or more (the last two buckets) would mean the window
	// did not hold the queue to what 200 IOPS drain in 500 ms; a machine
	// busy enough to stall the pacer may make a few.
	if slow := ls.Wait[len(qos.WaitBounds)-1] + ls.Wait[len(qos.WaitBounds)]; slow*50 > ls.Admitted || ls.Overdrawn*50 > ls.Admitted {
		t.Errorf("%d commands waited %s or more, %d overdrew: %+v", slow, qos.WaitBounds[len(qos.WaitBounds)-2], ls.Overdrawn, ls)
	}
	if ls.Throttled == 0 || done.Load() == 0 {
		t.Errorf("nothing was throttled (%d done): %+v", done.Load(), ls)
	}
	t.Logf("%d reads in 1.5 s at QD128 under 200 IOPS; peak in flight %d; limiter %+v", done.Load(), most, ls)

	tgt.SetQoS(iscsi.QoS{})
	for range 200 {
		readBlocks(t, c, 0, 4096)
	}
	if w, limited := s.Window(); w != iscsi.DefaultOptions().CmdWindow || limited {
		t.Errorf("window after the limit was lifted: %d (limited %v)", w, limited)
	}
	if st := tgt.QoSStats(); len(st) != 0 {
		t.Errorf("limiters left: %+v", st)
	}
}

// TestQoSScopes checks which limiters a session's commands pass: the
// initiator's (its ACL entry's or the target's default), the LUN's and
// the target's; commands without data pass none.
func TestQoSScopes(t *testing.T) {
	e := newEnv(t, nil)
	tgt := e.srv.Target(testTarget)
	own := qos.Limits{IOPS: 1e6}
	tgt.SetQoS(iscsi.QoS{
		Target:     qos.Limits{Bandwidth: 1 << 40},
		LUNs:       map[uint64]qos.Limits{0: {WriteIOPS: 1e6}},
		Initiator:  qos.Limits{ReadIOPS: 1e6},
		Initiators: map[string]iscsi.InitiatorQoS{"iqn.2026-01.test.iserd:own": {Limits: &own, Weight: 3}},
	})
	a := e.login(t)
	b := e.dial(t)
	if _, err := b.Login(initiator.LoginOptions{InitiatorName: "iqn.2026-01.test.iserd:own", TargetName: testTarget}); err != nil {
		t.Fatal(err)
	}
	clearUA(t, b)
	for range 10 {
		readBlocks(t, a, 0, 4096)
		writeBlocks(t, a, 0, make([]byte, 4096))
		readBlocks(t, b, 0, 8192)
	}
	got := map[string]qos.Stats{}
	for _, st := range tgt.QoSStats() {
		got[st.Scope+" "+st.Initiator] = st.Stats
	}
	want := map[string]uint64{ // commands admitted
		"target ":                              30,
		"lun ":                                 10, // writes only
		"initiator " + testInitiator:           10, // reads only
		"initiator iqn.2026-01.test.iserd:own": 10,
	}
	for k, n := range want {
		if got[k].Admitted != n {
			t.Errorf("%s: admitted %d, want %d", k, got[k].Admitted, n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("limiters %v", got)
	}
	if got["target "].Bytes != 10*4096*2+10*8192 {
		t.Errorf("the target's limiter counted %d bytes", got["target "].Bytes)
	}
	// The initiator's limiter goes when its last session does.
	if _, err := b.Logout(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 5*time.Second, "3 limiters after the session of iqn.2026-01.test.iserd:own ended",
		func() bool { return len(tgt.QoSStats()) == 3 })
}

// TestQoSWeights shares a contended LUN limit between two initiators of
// weights 1 and 3.
func TestQoSWeights(t *testing.T) {
	e := newEnv(t, nil)
	tgt := e.srv.Target(testTarget)
	tgt.SetQoS(iscsi.QoS{LUNs: map[uint64]qos.Limits{0: {IOPS: 400}},
		Initiators: map[string]iscsi.InitiatorQoS{"iqn.2026-01.test.iserd:heavy": {Weight: 3}}})
	light := e.login(t)
	heavy := e.dial(t)
	if _, err := heavy.Login(initiator.LoginOptions{InitiatorName: "iqn.2026-01.test.iserd:heavy", TargetName: testTarget}); err != nil {
		t.Fatal(err)
	}
	clearUA(t, heavy)
	stop := make(chan struct{})
	nl, waitL := load(t, light, 32, stop)
	nh, waitH := load(t, heavy, 32, stop)
	time.Sleep(300 * time.Millisecond) // past the bucket's burst
	l0, h0 := nl.Load(), nh.Load()
	time.Sleep(2 * time.Second)
	l1, h1 := nl.Load(), nh.Load()
	close(stop)
	waitL()
	waitH()
	// Shares of 100 and 300 IOPS: windows of 50 and 150, capped at 128.
	if wl, wh := windowOf(t, e.srv, light), windowOf(t, e.srv, heavy); wl != 50 || wh != 128 {
		t.Errorf("windows %d and %d, want 50 and 128", wl, wh)
	}
	ratio := float64(h1-h0) / float64(l1-l0)
	t.Logf("light %d, heavy %d reads in 2 s: ratio %.2f", l1-l0, h1-h0, ratio)
	if ratio < 2.5 || ratio > 3.5 {
		t.Errorf("heavy/light = %.2f, want 3", ratio)
	}
}

func windowOf(t *testing.T, srv *iscsi.Server, c *initiator.Conn) uint32 {
	w, _ := sessionOf(t, srv, c).Window()
	return w
}
