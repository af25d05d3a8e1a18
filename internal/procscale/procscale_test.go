package procscale

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/iserd/iserd/internal/polltest"
)

func TestNext(t *testing.T) {
	tests := []struct {
		name          string
		n, max        int
		cpu           float64
		calm          int
		want, wantCal int
	}{
		{"idle stays at one", 1, 8, 0, 0, 1, 0},
		{"QD1 iSER in the VM (0.55 CPU) stays at one", 1, 2, 0.55, 0, 1, 0},
		{"one busy P doubles", 1, 8, 0.85, 0, 2, 0},
		{"doubling stops at the limit", 4, 6, 3.9, 0, 6, 0},
		{"at the limit it stays", 6, 6, 6, 0, 6, 0},
		{"a single CPU never grows", 1, 1, 1, 0, 1, 0},
		{"enough work for n-1 keeps n", 4, 8, 2.5, 3, 4, 0},
		{"quiet counts towards lowering", 4, 8, 1.0, 0, 4, 1},
		{"quiet long enough lowers by one", 4, 8, 1.0, lowerAfter - 1, 3, 0},
		{"a busy interval resets the count", 2, 8, 1.7, lowerAfter - 1, 4, 0},
		{"two Ps with 0.62 CPU (QD1 iSER, spinning) go to one", 2, 2, 0.62, lowerAfter - 1, 1, 0},
		{"two Ps with 0.75 CPU stay", 2, 2, 0.75, lowerAfter - 1, 2, 0},
		{"two Ps with 0.5 CPU go to one", 2, 2, 0.5, lowerAfter - 1, 1, 0},
	}
	for _, tc := range tests {
		got, calm := next(tc.n, tc.max, tc.cpu, tc.calm)
		if got != tc.want || calm != tc.wantCal {
			t.Errorf("%s: next(%d, %d, %.2f, %d) = %d, %d; want %d, %d", tc.name, tc.n, tc.max, tc.cpu, tc.calm, got, calm, tc.want, tc.wantCal)
		}
	}
}

// TestBusyWakesSleepingRun: Busy wakes Run once when it sleeps, and does
// nothing otherwise.
func TestBusyWakesSleepingRun(t *testing.T) {
	Busy()
	if len(wake) != 0 {
		t.Fatal("Busy woke a Run that was not asleep")
	}
	asleep.Store(true)
	Busy()
	Busy()
	if len(wake) != 1 || asleep.Load() {
		t.Fatalf("after Busy: %d wake-ups queued, asleep %v; want 1, false", len(wake), asleep.Load())
	}
	<-wake
}

// TestRunStartsAtOneAndRestores: Run takes the process to one P, a second
// Run alongside does nothing, and the limit is back once Run returns.
func TestRunStartsAtOneAndRestores(t *testing.T) {
	if fixed() || Limit() <= 1 {
		t.Skip("GOMAXPROCS is set, or the process may use one CPU only: Run does nothing")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx); close(done) }()
	polltest.Until(t, 5*time.Second, "GOMAXPROCS 1 after Run started", func() bool { return runtime.GOMAXPROCS(0) == 1 })
	second := make(chan struct{})
	go func() { Run(ctx); close(second) }()
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("a second Run did not return at once")
	}
	cancel()
	<-done
	if n := runtime.GOMAXPROCS(0); n != Limit() {
		t.Fatalf("GOMAXPROCS %d after Run returned, want %d", n, Limit())
	}
}
