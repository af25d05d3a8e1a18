package iscsi

import (
	"math/rand/v2"
	"testing"

	"github.com/iserd/iserd/qos"
)

// TestWindowArithmetic drives a session's CmdSN window the way a strict
// initiator would: it sends the next CmdSN while it fits under MaxCmdSN,
// the target answers commands in any order, and the limits change on the
// way (also across the 2^32 wrap of CmdSN). MaxCmdSN must never go back or
// below ExpCmdSN-1, every CmdSN must be taken in turn (no gaps), the
// initiator must never be left without a slot, and once enough commands
// have been answered the outstanding ones must fit the window the limits
// ask for.
func TestWindowArithmetic(t *testing.T) {
	const cmdWindow = 128
	tests := []struct {
		name  string
		iops  []float64 // limits in turn; 0 removes the limit
		start uint32
	}{
		{"shrink and grow", []float64{100, 20, 0, 2, 1000, 100}, 1},
		{"across the wrap", []float64{60, 0, 10}, 0xffffff80},
		{"window of one", []float64{1, 0.5, 4}, 0xfffffff0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			s := &Session{srv: &Server{opts: Options{CmdWindow: cmdWindow}}}
			s.avgBytes.Store(4096)
			lim := qos.NewLimiter(qos.Limits{IOPS: 1})
			defer lim.Close()
			flow := lim.Attach(1)
			setLimit := func(iops float64) {
				if iops == 0 {
					s.qos.Store(nil)
					return
				}
				lim.SetLimits(qos.Limits{IOPS: iops})
				s.qos.Store(&sessionQoS{flows: []*qos.Flow{flow}})
			}
			// login
			s.expCmdSN.Store(tt.start)
			s.slots.Store(s.window())
			s.maxCmdSN.Store(tt.start + s.window() - 1)
			next := tt.start // the initiator's next CmdSN
			var outstanding []uint32
			lastMax := s.maxCmdSN.Load()
			for _, iops := range tt.iops {
				setLimit(iops)
				want := s.window()
				settled := false
				for step := range 4000 {
					exp, max := s.expCmdSN.Load(), s.maxCmdSN.Load()
					if snLess(max, lastMax) || snLess(max, exp-1) {
						t.Fatalf("MaxCmdSN %d after %d, ExpCmdSN %d", max, lastMax, exp)
					}
					lastMax = max
					free := max - exp + 1
					if free+uint32(len(outstanding)) != s.slots.Load() {
						t.Fatalf("%d free + %d outstanding, %d slots granted", free, len(outstanding), s.slots.Load())
					}
					if free == 0 && len(outstanding) == 0 {
						t.Fatal("the initiator has no slot and nothing outstanding: stalled")
					}
					if !settled && uint32(len(outstanding))+free <= want {
						settled = true
					}
					if settled && uint32(len(outstanding)) > want {
						t.Fatalf("limit %v IOPS: %d outstanding after settling, window %d", iops, len(outstanding), want)
					}
					if free > 0 && (len(outstanding) == 0 || rng.IntN(2) == 0) {
						// The target takes commands in order, one by one:
						// the next one it expects is the one sent.
						if next != exp {
							t.Fatalf("step %d: CmdSN %d sent, ExpCmdSN %d: a gap", step, next, exp)
						}
						s.expCmdSN.Store(exp + 1)
						outstanding = append(outstanding, next)
						next++
						continue
					}
					i := rng.IntN(len(outstanding))
					outstanding = append(outstanding[:i], outstanding[i+1:]...)
					s.openWindow()
				}
				if !settled {
					t.Errorf("limit %v IOPS: the window never came down to %d (slots %d)", iops, want, s.slots.Load())
				}
			}
		})
	}
}
