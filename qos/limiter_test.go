package qos

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// sim drives limiters on a fake clock: sources keep a number of commands
// outstanding each (a queue depth) and count what runs.
type sim struct {
	t       *testing.T
	now     int64
	lims    []*Limiter
	sources []*source
	rng     *rand.Rand
}

// source is one initiator's load through one chain.
type source struct {
	chain   *Chain
	depth   int
	cost    func(*rand.Rand) Cost
	ran     int   // commands run
	bytes   int64 // their bytes
	pending int   // admitted or waiting, not yet finished
	free    []*Entry
	maxWait int64 // longest a command waited before it ran
	stopped bool  // start no more commands
	started map[*Entry]int64
}

func newSim(t *testing.T) *sim {
	return &sim{t: t, rng: rand.New(rand.NewPCG(1, 2))}
}

// limiter adds a limiter on the fake clock.
func (s *sim) limiter(lim Limits) *Limiter {
	l := newLimiter(lim, func() int64 { return s.now })
	s.lims = append(s.lims, l)
	return l
}

// source adds a load of depth commands at a time through flows.
func (s *sim) source(depth int, cost func(*rand.Rand) Cost, flows ...*Flow) *source {
	src := &source{depth: depth, cost: cost, started: map[*Entry]int64{}}
	src.chain = NewChain(func(e *Entry) { s.ran(src, e) }, flows...)
	for range depth {
		src.free = append(src.free, &Entry{Owner: src})
	}
	s.sources = append(s.sources, src)
	return src
}

// ran counts a command that passed its chain; it completes at once.
func (s *sim) ran(src *source, e *Entry) {
	src.ran++
	src.bytes += e.cost.Bytes
	src.maxWait = max(src.maxWait, s.now-src.started[e])
	src.pending--
	if !src.stopped {
		src.free = append(src.free, e)
	}
}

// fill starts a command for each one every source has free: those that
// pass at once complete at once, and are started again at the next fill.
func (s *sim) fill() {
	for _, src := range s.sources {
		for range len(src.free) {
			e := src.free[len(src.free)-1]
			src.free = src.free[:len(src.free)-1]
			src.pending++
			src.started[e] = s.now
			if src.chain.Admit(e, src.cost(s.rng)) {
				s.ran(src, e)
			}
		}
	}
}

// run advances the clock to end in steps of step (with up to half a step
// of jitter either way, as a timer's), dispatching every limiter and
// keeping the sources busy.
func (s *sim) run(d, step time.Duration) {
	end := s.now + int64(d)
	for s.now < end {
		s.fill()
		jitter := int64(step)/2 - s.rng.Int64N(int64(step)+1)
		s.now = min(end, s.now+int64(step)+jitter)
		for _, l := range s.lims {
			batch, _ := l.dispatch(s.now)
			for _, e := range batch {
				e.chain.advance(e)
			}
		}
	}
	s.fill()
}

func fixed(bytes int64, write bool) func(*rand.Rand) Cost {
	return func(*rand.Rand) Cost { return Cost{Bytes: bytes, Write: write} }
}

// near fails unless got is within frac of want.
func near(t *testing.T, what string, got, want, frac float64) {
	t.Helper()
	if math.Abs(got-want) > frac*want {
		t.Errorf("%s: got %.4g, want %.4g +-%.1f%%", what, got, want, frac*100)
	}
}

func TestBucketAccuracy(t *testing.T) {
	mixed := func(r *rand.Rand) Cost { return Cost{Bytes: int64(4096 << r.IntN(9)), Write: r.IntN(2) == 0} }
	const secs = 20
	tests := []struct {
		name  string
		lim   Limits
		cost  func(*rand.Rand) Cost
		step  time.Duration
		count func(*source) float64
		want  float64 // per second
	}{
		{"iops", Limits{IOPS: 2000}, fixed(4096, false), time.Millisecond, ran, 2000},
		{"iops coarse timer", Limits{IOPS: 2000}, fixed(4096, false), 7 * time.Millisecond, ran, 2000},
		{"iops 100", Limits{IOPS: 100}, fixed(4096, true), time.Millisecond, ran, 100},
		{"bandwidth", Limits{Bandwidth: 40 << 20}, mixed, time.Millisecond, bytes, 40 << 20},
		{"bandwidth large commands", Limits{Bandwidth: 40 << 20}, fixed(4<<20, true), 3 * time.Millisecond, bytes, 40 << 20},
		{"write bandwidth", Limits{WriteBandwidth: 10 << 20, IOPS: 1e6}, fixed(65536, true), time.Millisecond, bytes, 10 << 20},
		{"tightest of two", Limits{IOPS: 1000, Bandwidth: 1 << 20}, fixed(4096, false), time.Millisecond, ran, 256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t)
			l := s.limiter(tt.lim)
			f := l.Attach(1)
			// The queue depth a session's window would allow.
			var avg float64
			for range 1000 {
				avg += float64(tt.cost(s.rng).Bytes) / 1000
			}
			depth := int(min(128, f.Window(avg, 500*time.Millisecond)))
			src := s.source(depth, tt.cost, f)
			s.run(time.Second, tt.step) // past the initial burst
			before := tt.count(src)
			s.run(secs*time.Second, tt.step)
			near(t, "rate", (tt.count(src)-before)/secs, tt.want, 0.005)
			if st := l.Stats(); st.Overdrawn > 0 || time.Duration(src.maxWait) >= MaxWait {
				t.Errorf("a command waited %s; %d were admitted past %s", time.Duration(src.maxWait), st.Overdrawn, MaxWait)
			}
		})
	}
}

// ran and bytes count what a source ran.
func ran(s *source) float64   { return float64(s.ran) }
func bytes(s *source) float64 { return float64(s.bytes) }

// TestPacerStalls keeps the rate when the pacer now and then wakes far
// later than the bucket's burst (a busy or emulated machine): the tokens
// that accrued meanwhile are owed to the commands that waited.
func TestPacerStalls(t *testing.T) {
	tests := []struct {
		name  string
		lim   Limits
		depth int
		stall time.Duration
	}{
		{"2000 IOPS, QD128, 150 ms stalls", Limits{IOPS: 2000}, 128, 150 * time.Millisecond},
		{"100 IOPS, QD32, 300 ms stalls", Limits{IOPS: 100}, 32, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t)
			l := s.limiter(tt.lim)
			src := s.source(tt.depth, fixed(4096, false), l.Attach(1))
			s.run(time.Second, time.Millisecond)
			n := src.ran
			for range 20 { // 20 times: half a second of 1 ms steps, then one stall
				s.run(500*time.Millisecond, time.Millisecond)
				s.run(tt.stall, tt.stall)
			}
			secs := 20 * (500*time.Millisecond + tt.stall).Seconds()
			near(t, "rate", float64(src.ran-n)/secs, tt.lim.IOPS, 0.01)
		})
	}
}

func TestReadLimitLeavesWritesFree(t *testing.T) {
	s := newSim(t)
	l := s.limiter(Limits{ReadIOPS: 100})
	r := s.source(8, fixed(4096, false), l.Attach(1))
	w := s.source(8, fixed(4096, true), l.Attach(1))
	s.run(10*time.Second, time.Millisecond)
	near(t, "reads per second", float64(r.ran)/10, 100, 0.01)
	if w.ran < 10000*8 {
		t.Errorf("writes ran %d times in 10 s of 1 ms steps at QD8: they were held back", w.ran)
	}
}

func TestBurst(t *testing.T) {
	tests := []struct {
		name  string
		burst time.Duration
		idle  time.Duration
		want  int // commands that pass at once after the idle spell
	}{
		{"default", 0, time.Second, 1000*int(DefaultBurst/time.Millisecond)/1000 + 1},
		{"200ms", 200 * time.Millisecond, time.Second, 201},
		{"2s, half refilled", 2 * time.Second, time.Second, 1000},
		{"2s, full", 2 * time.Second, 5 * time.Second, 2001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t)
			l := s.limiter(Limits{IOPS: 1000, Burst: tt.burst})
			f := l.Attach(1)
			// Empty the bucket, then idle.
			src := s.source(1, fixed(512, false), f)
			for range 1 + int(1000*l.lim.burst().Seconds()) {
				s.fill()
			}
			src.depth, src.free = 0, nil
			s.now += int64(tt.idle)
			n := 0
			for {
				e := &Entry{}
				if !NewChain(func(*Entry) {}, f).Admit(e, Cost{Bytes: 512}) {
					break
				}
				n++
			}
			if n != tt.want {
				t.Errorf("after %s idle, %d commands passed at once, want %d", tt.idle, n, tt.want)
			}
		})
	}
}

func TestWeights(t *testing.T) {
	tests := []struct {
		name    string
		lim     Limits
		weights []float64
		costs   []func(*rand.Rand) Cost
		count   func(*source) float64
	}{
		{"1:3 iops", Limits{IOPS: 2000}, []float64{1, 3}, nil, ran},
		{"1:2:5 iops", Limits{IOPS: 1000}, []float64{1, 2, 5}, nil, ran},
		{"1:1 bandwidth, 4k against 64k", Limits{Bandwidth: 20 << 20}, []float64{1, 1},
			[]func(*rand.Rand) Cost{fixed(4096, false), fixed(65536, false)}, bytes},
		{"1:3 bandwidth, mixed sizes", Limits{Bandwidth: 20 << 20}, []float64{1, 3},
			[]func(*rand.Rand) Cost{fixed(65536, true), fixed(8192, false)}, bytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t)
			l := s.limiter(tt.lim)
			var srcs []*source
			var total float64
			for i, w := range tt.weights {
				cost := fixed(4096, false)
				if tt.costs != nil {
					cost = tt.costs[i]
				}
				srcs = append(srcs, s.source(32, cost, l.Attach(w)))
				total += w
			}
			s.run(time.Second, time.Millisecond) // past the burst, which the first comer takes
			before := make([]float64, len(srcs))
			for i, src := range srcs {
				before[i] = tt.count(src)
			}
			s.run(10*time.Second, time.Millisecond)
			var sum float64
			for i, src := range srcs {
				sum += tt.count(src) - before[i]
			}
			for i, src := range srcs {
				near(t, "share of flow "+string(rune('A'+i)), (tt.count(src)-before[i])/sum, tt.weights[i]/total, 0.01)
			}
		})
	}
}

func TestIdleFlowDoesNotBankService(t *testing.T) {
	// A flow idle while another used the whole limit must not then take
	// it all to catch up: from its return on they share by weight.
	s := newSim(t)
	l := s.limiter(Limits{IOPS: 1000})
	a := s.source(16, fixed(4096, false), l.Attach(1))
	s.run(5*time.Second, time.Millisecond)
	b := s.source(16, fixed(4096, false), l.Attach(1))
	a0 := a.ran
	s.run(5*time.Second, time.Millisecond)
	near(t, "share of the flow that was busy all along", float64(a.ran-a0)/float64(a.ran-a0+b.ran), 0.5, 0.02)
}

func TestLiveChange(t *testing.T) {
	s := newSim(t)
	l := s.limiter(Limits{IOPS: 2000})
	src := s.source(128, fixed(4096, false), l.Attach(1))
	s.run(5*time.Second, time.Millisecond)
	l.SetLimits(Limits{IOPS: 500})
	n0 := src.ran
	s.run(100*time.Millisecond, time.Millisecond) // the new rate holds from the change on
	near(t, "commands in the 100 ms after the change to 500 IOPS", float64(src.ran-n0), 50, 0.1)
	n1 := src.ran
	s.run(10*time.Second, time.Millisecond)
	near(t, "IOPS after the change", float64(src.ran-n1)/10, 500, 0.01)

	l.SetLimits(Limits{IOPS: 500, Bandwidth: 1 << 20}) // a new rate starts with a full bucket
	n2 := src.ran
	s.run(10*time.Second, time.Millisecond)
	near(t, "IOPS under a 1 MiB/s limit added", float64(src.ran-n2)/10, 256, 0.01)

	l.Close() // a removed limit lets everything pass at once
	if st := l.Stats(); st.Queued != 0 {
		t.Errorf("%d commands still wait in a closed limiter", st.Queued)
	}
	n3 := src.ran
	s.run(10*time.Millisecond, time.Millisecond)
	if src.ran-n3 < 1000 {
		t.Errorf("only %d commands ran in 10 ms after the limiter closed", src.ran-n3)
	}
}

func TestMaxWait(t *testing.T) {
	// 256 commands at once under 10 IOPS: the first pass on the burst, the
	// rest would wait 25 s; none waits more than MaxWait, and the debt
	// taken stops at MaxWait's worth.
	s := newSim(t)
	l := s.limiter(Limits{IOPS: 10})
	src := s.source(256, fixed(4096, false), l.Attach(1))
	s.fill()
	src.stopped = true
	s.run(3*time.Second, time.Millisecond)
	st := l.Stats()
	if src.pending != 0 {
		t.Fatalf("%d commands still wait after 3 s", src.pending)
	}
	if w := time.Duration(src.maxWait); w > MaxWait+2*time.Millisecond {
		t.Errorf("a command waited %s", w)
	}
	if st.Overdrawn == 0 || st.Wait[len(WaitBounds)] != 0 {
		t.Errorf("overdrawn %d, waits past %s %d", st.Overdrawn, WaitBounds[len(WaitBounds)-1], st.Wait[len(WaitBounds)])
	}
	if lv := l.b[bIOPS].level; lv < -10*MaxWait.Seconds()-1e-9 {
		t.Errorf("debt %.1f below MaxWait's worth", lv)
	}
}

func TestRemove(t *testing.T) {
	s := newSim(t)
	l := s.limiter(Limits{IOPS: 10})
	f := l.Attach(1)
	c := NewChain(func(*Entry) { t.Error("a removed entry ran") }, f)
	es := make([]Entry, 5)
	for i := range es {
		c.Admit(&es[i], Cost{Bytes: 512})
	}
	// The first passed on the burst (10 * 50 ms = 0.5 token, level >= 0).
	for _, i := range []int{2, 4, 1, 3} {
		if !Remove(&es[i]) {
			t.Fatalf("entry %d was not waiting", i)
		}
		if Remove(&es[i]) {
			t.Fatalf("entry %d removed twice", i)
		}
	}
	if Remove(&es[0]) {
		t.Error("removed an entry that had passed")
	}
	if st := l.Stats(); st.Queued != 0 || st.Admitted != 1 {
		t.Errorf("queued %d, admitted %d after removing all but the first", st.Queued, st.Admitted)
	}
	s.now += int64(10 * time.Second)
	if batch, next := l.dispatch(s.now); len(batch) != 0 || next != -1 {
		t.Errorf("dispatch after removal: %d entries, next %s", len(batch), next)
	}
}

func TestChain(t *testing.T) {
	// A command passes the initiator's, the LUN's and the target's
	// limiters; the tightest sets the pace, and one with no limit for the
	// command (the LUN's writes) passes it without queueing.
	s := newSim(t)
	ini := s.limiter(Limits{IOPS: 300})
	lun := s.limiter(Limits{WriteIOPS: 1})
	tgt := s.limiter(Limits{Bandwidth: 1 << 20})
	src := s.source(32, fixed(8192, false), ini.Attach(1), lun.Attach(1), tgt.Attach(1))
	s.run(time.Second, time.Millisecond)
	n := src.ran
	s.run(10*time.Second, time.Millisecond)
	near(t, "IOPS through the chain", float64(src.ran-n)/10, 128, 0.01)
	if st := lun.Stats(); st.Admitted != 0 {
		t.Errorf("the LUN's write limit counted %d reads", st.Admitted)
	}
	if w := time.Duration(src.maxWait); w > MaxWait {
		t.Errorf("a command waited %s in all", w)
	}
}

func TestWindow(t *testing.T) {
	tests := []struct {
		name    string
		lim     Limits
		weights []float64
		avg     float64
		want    float64 // the first flow's window over 500 ms
	}{
		{"iops", Limits{IOPS: 100}, []float64{1}, 4096, 50},
		{"iops shared 1:3", Limits{IOPS: 100}, []float64{1, 3}, 4096, 12.5},
		{"lowest iops", Limits{IOPS: 1000, ReadIOPS: 200, WriteIOPS: 400}, []float64{1}, 4096, 100},
		{"bandwidth", Limits{Bandwidth: 40 << 20}, []float64{1}, 1 << 20, 20},
		{"bandwidth tighter than iops", Limits{IOPS: 5000, Bandwidth: 40 << 20}, []float64{1, 1}, 65536, 160},
		{"none", Limits{Burst: time.Second}, []float64{1}, 4096, math.Inf(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(tt.lim, func() int64 { return 0 })
			var fs []*Flow
			for _, w := range tt.weights {
				fs = append(fs, l.Attach(w))
			}
			if got := fs[0].Window(tt.avg, 500*time.Millisecond); got != tt.want {
				t.Errorf("window %v, want %v", got, tt.want)
			}
		})
	}
	l := newLimiter(Limits{IOPS: 100}, func() int64 { return 0 })
	a, b := l.Attach(1), l.Attach(1)
	b.Detach()
	if got := a.Window(4096, time.Second); got != 100 {
		t.Errorf("window after the other flow left: %v, want 100", got)
	}
	a.SetWeight(4)
	l.Attach(4)
	if got := a.Window(4096, time.Second); got != 50 {
		t.Errorf("window beside an equal flow: %v, want 50", got)
	}
	l.Close()
	if got := a.Window(4096, time.Second); !math.IsInf(got, 1) {
		t.Errorf("window of a closed limiter: %v, want +Inf", got)
	}
}

func TestLimitsCheck(t *testing.T) {
	tests := []struct {
		lim Limits
		ok  bool
	}{
		{Limits{}, true},
		{Limits{IOPS: 100, Burst: time.Second}, true},
		{Limits{IOPS: -1}, false},
		{Limits{Bandwidth: math.Inf(1)}, false},
		{Limits{ReadIOPS: math.NaN()}, false},
		{Limits{IOPS: 1, Burst: time.Millisecond}, false},
		{Limits{IOPS: 1, Burst: 2 * time.Hour}, false},
	}
	for _, tt := range tests {
		if err := tt.lim.Check(); (err == nil) != tt.ok {
			t.Errorf("%+v: Check() = %v", tt.lim, err)
		}
	}
}

// TestPacer runs the real pacer goroutine: commands queued beyond the
// burst are released by it, and Close lets what still waits go on.
func TestPacer(t *testing.T) {
	l := NewLimiter(Limits{IOPS: 2000, Burst: MinBurst})
	released := make(chan *Entry, 100)
	c := NewChain(func(e *Entry) { released <- e }, l.Attach(1))
	es := make([]Entry, 100)
	inline := 0
	for i := range 60 {
		if c.Admit(&es[i], Cost{Bytes: 4096}) {
			inline++
		}
	}
	if inline == 0 || inline > 30 {
		t.Fatalf("%d of 60 passed at once under a 20-command bucket", inline)
	}
	for range 60 - inline {
		select {
		case <-released:
		case <-time.After(10 * time.Second):
			t.Fatal("the pacer did not release the queued commands")
		}
	}
	l.SetLimits(Limits{IOPS: 0.001, Burst: MinBurst}) // one command per 1000 s
	for i := 60; i < 100; i++ {
		c.Admit(&es[i], Cost{Bytes: 4096})
	}
	l.Close()
	n := 0
	for len(released) > 0 {
		<-released
		n++
	}
	if st := l.Stats(); n == 0 || st.Queued != 0 {
		t.Errorf("Close released %d, %d still queued", n, st.Queued)
	}
}
