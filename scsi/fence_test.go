package scsi

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/iserd/iserd/internal/scsitest"
)

// testFence allows the first allow calls to Allowed and refuses the rest.
type testFence struct {
	allow atomic.Int64
	calls atomic.Int64
}

func (f *testFence) Allowed() bool { return f.calls.Add(1) <= f.allow.Load() }

// open lets every later call through.
func (f *testFence) open() { f.allow.Store(1 << 62) }

// closeAfter refuses from the n+1th call on.
func (f *testFence) closeAfter(n int64) { f.calls.Store(0); f.allow.Store(n) }

// TestFence: a fenced unit refuses every command that changes the medium
// or the persistent reservations with NOT READY, LOGICAL UNIT NOT
// ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE, and serves the others; an
// open fence changes nothing.
func TestFence(t *testing.T) {
	blk := fill(512, 'x')
	tests := []struct {
		name   string
		cdb    []byte
		out    []byte
		fenced bool
	}{
		{"WRITE (10)", cdb10(0x2a, 8, 1), blk, true},
		{"WRITE (16)", cdb16n(0x8a, 8, 1), blk, true},
		{"WRITE SAME (10)", cdb10(0x41, 8, 4), blk, true},
		{"UNMAP", cdbUnmap(24), unmapList([2]uint64{8, 1}), true},
		{"COMPARE AND WRITE", cdbCAW(8, 1), append(fill(512, 0), blk...), true},
		{"SYNCHRONIZE CACHE (10)", cdb10(0x35, 0, 0), nil, true},
		{"PERSISTENT RESERVE OUT REGISTER", cdbPROut(proRegister, 0, proBasicLen), scsitest.PROutParams(0, 7, 0), true},
		{"SET TARGET PORT GROUPS", cdbSTPG(8), []byte{0, 0, 0, 0, byte(ActiveOptimized), 0, 0, 1}, true},
		{"READ (10)", cdb10(0x28, 8, 1), nil, false},
		{"VERIFY (10)", cdb10(0x2f, 8, 1), nil, false},
		{"TEST UNIT READY", cdbTUR(), nil, false},
		{"PERSISTENT RESERVE IN READ KEYS", cdbPRIn(0), nil, false},
		{"INQUIRY", cdbInquiry(false, 0, 96), nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &testFence{}
			h := newHarness(t, DiskConfig{Thin: true, Fence: f})
			f.open()
			if err := h.tgt.SetPortGroups([]PortGroup{{ID: 1, State: ActiveOptimized, Ports: []uint16{1}}}); err != nil {
				t.Fatal(err)
			}
			f.closeAfter(0)
			c := h.exec(h.a, 0, tc.cdb, tc.out, 4096)
			s := senseOf(c)
			if got := c.Status == StatusCheckCondition && s.key == keyNotReady && s.code == ascNotReadyUnavailable; got != tc.fenced {
				t.Fatalf("fenced: status %#x sense %+v, want refused=%v", c.Status, s, tc.fenced)
			}
			f.open()
			if c := h.exec(h.a, 0, tc.cdb, tc.out, 4096); c.Status != StatusGood {
				t.Fatalf("fence open: status %#x sense %+v", c.Status, senseOf(c))
			}
		})
	}
}

// TestFenceAtSubmission: a fence that closes after a write passed the
// command checks still stops it right before it reaches the device, and
// the medium keeps its old data.
func TestFenceAtSubmission(t *testing.T) {
	f := &testFence{}
	f.open()
	h := newHarness(t, DiskConfig{Fence: f})
	h.mustGood(h.a, cdb10(0x2a, 8, 1), fill(512, 'a')...)
	tests := []struct {
		name string
		cdb  []byte
		out  []byte
	}{
		{"WRITE (10)", cdb10(0x2a, 8, 1), fill(512, 'b')},
		{"COMPARE AND WRITE: the read goes, the write does not", cdbCAW(8, 1), append(fill(512, 'a'), fill(512, 'b')...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.closeAfter(1) // the command check passes, the submission does not
			c := h.exec(h.a, 0, tc.cdb, tc.out, 0)
			if s := senseOf(c); c.Status != StatusCheckCondition || s.key != keyNotReady || s.code != ascNotReadyUnavailable {
				t.Fatalf("status %#x sense %+v, want NOT READY 04h/0Ch", c.Status, s)
			}
			f.open()
			if got := data(h.mustGood(h.a, cdb10(0x28, 8, 1))); !bytes.Equal(got, fill(512, 'a')) {
				t.Fatalf("the fenced write reached the medium: %q...", got[:8])
			}
		})
	}
}

// TestSetPortGroupsHook: with OnSetPortGroups, SET TARGET PORT GROUPS
// applies the states only once the hook stored them, and its failure
// becomes the command's sense.
func TestSetPortGroupsHook(t *testing.T) {
	tests := []struct {
		name string
		err  error
		key  byte
		code asc
	}{
		{"stored", nil, 0, 0},
		{"fenced", ErrFenced, keyNotReady, ascNotReadyUnavailable},
		{"store unreachable", errors.New("etcd: context deadline exceeded"), keyAbortedCommand, ascInternalTargetFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{})
			c := twoGroups(t, h, ActiveOptimized, ActiveOptimized)
			var got map[uint16]ALUAState
			h.tgt.OnSetPortGroups(func(states map[uint16]ALUAState) error {
				got = states
				return tc.err
			})
			r := h.exec(c, 0, cdbSTPG(8), []byte{0, 0, 0, 0, byte(Standby), 0, 0, 1}, 0)
			if got[1] != Standby || len(got) != 1 {
				t.Fatalf("hook got %v", got)
			}
			want := ActiveOptimized
			if tc.err == nil {
				want = Standby
				if r.Status != StatusGood {
					t.Fatalf("status %#x sense %+v", r.Status, senseOf(r))
				}
				h.expectUA(h.a, ascALUAChanged)
			} else if s := senseOf(r); r.Status != StatusCheckCondition || s.key != tc.key || s.code != tc.code {
				t.Fatalf("status %#x sense %+v, want %#x/%#x", r.Status, s, tc.key, tc.code)
			}
			if st := h.tgt.PortGroups()[0].State; st != want {
				t.Fatalf("group 1 is %v, want %v", st, want)
			}
		})
	}
}
