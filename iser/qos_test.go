package iser

import (
	"bytes"
	"testing"

	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/targettest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/qos"
)

// TestQoS runs commands over iSER under a LUN limit set live: writes (part
// immediate data, the rest by RDMA READ) and reads (by RDMA WRITE) wait
// for the limiter, their data arrives intact, and the session's window
// shrinks towards what the limit admits in 500 ms: each answered command
// withholds its CmdSN, so MaxCmdSN stands still and the window loses one.
func TestQoS(t *testing.T) {
	in := newInit(t, 4, nil)
	it := in.srv.Target(testTarget)
	it.SetQoS(iscsi.QoS{LUNs: map[uint64]qos.Limits{0: {IOPS: 50, Burst: qos.MinBurst}}})
	var maxCmdSN uint32
	for i := range 20 {
		data := pattern(16<<10, byte(i+1))
		in.write(t, uint64(i)*64, data, 4096)
		if i == 0 {
			maxCmdSN = in.in.U32(32)
		} else if got := in.in.U32(32); got != maxCmdSN {
			t.Fatalf("command %d: MaxCmdSN %d, was %d: the window did not shrink", i, got, maxCmdSN)
		}
		if got := in.read(t, uint64(i)*64, len(data)); !bytes.Equal(got, data) {
			t.Fatalf("command %d: read back different data", i)
		}
	}
	st := it.QoSStats()
	if len(st) != 1 || st[0].Stats.Admitted != 40 || st[0].Stats.Throttled < 30 {
		t.Errorf("limiter %+v: want 40 admitted, most of them after waiting", st)
	}
	waitIdle(t, in.testConn)
	s := in.srv.Sessions()[0]
	polltest.Wait(t, "the last answered command's slot", func() bool { w, _ := s.Window(); return w == 128-40 })
	if _, limited := s.Window(); !limited {
		t.Error("the session's window is not limited")
	}
}

// TestFailedSwitchLeavesNoSession logs in over iSER without agreeing to
// RDMAExtensions: the session is made, then the switch to full feature
// phase fails; it must not stay registered (nor attached to the target's
// rate limiters, where it would dilute the other sessions' shares).
func TestFailedSwitchLeavesNoSession(t *testing.T) {
	opts := iscsi.DefaultOptions()
	opts.NopInterval = 0
	srv := targettest.NewServer(t, opts)
	targettest.AddTarget(t, srv, testTarget, testDiskSize)
	srv.Target(testTarget).SetQoS(iscsi.QoS{LUNs: map[uint64]qos.Limits{0: {IOPS: 100}}})
	tc := newConnOver(t, srv.Pool(), 4)
	if !srv.ServeTransport(tc.conn) {
		t.Fatal("the server did not take the connection")
	}
	var b iscsi.BHS
	b[0] = 0x40 | byte(iscsi.OpLoginReq)
	b[1] = 0x80 | 1<<2 | 3 // T, CSG operational, NSG full feature
	b[8] = 0x80
	b.SetU32(24, 1)
	text := iscsi.EncodeText([]iscsi.KV{{Key: "InitiatorName", Value: testInitiator}, {Key: "TargetName", Value: testTarget},
		{Key: "SessionType", Value: "Normal"}, {Key: "RDMAExtensions", Value: "No"}})
	if err := tc.f.deliver(appendMessage(nil, &b, text, iscsi.RemoteBuffer{}, iscsi.RemoteBuffer{})); err != nil {
		t.Fatal(err)
	}
	polltest.Wait(t, "the connection to end", func() bool {
		select {
		case <-tc.f.Done():
			return true
		default:
			return false
		}
	})
	polltest.Wait(t, "the session to go", func() bool { return len(srv.Sessions()) == 0 })
	if w := srv.Target(testTarget).QoSStats(); len(w) != 1 {
		t.Fatalf("limiters %+v", w)
	}
}
