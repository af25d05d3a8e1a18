// Package procscale sizes the Go scheduler to iserd's load: GOMAXPROCS
// follows the CPU time the process uses, between 1 and the number of CPUs
// it may run on.
//
// Why: at low queue depth every completion wakes one goroutine while the
// other Ps are idle, and the runtime then wakes a second thread to spin
// looking for work that never comes (a futex wake, a non-blocking netpoll,
// a futex sleep, per I/O). In the test VM that spinning cost iSER 4k QD1
// reads 31% of their IOPS (835 against 1,217 with one P, same run) and
// took 63% more CPU per I/O. Under load the Ps come back within a tenth of
// a second.
package procscale

import (
	"context"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// limit is GOMAXPROCS as the runtime chose it at start (the CPUs and the
// cgroup quota, or the GOMAXPROCS environment variable).
var limit = runtime.GOMAXPROCS(0)

// Limit is the most Ps iserd runs on: size per-CPU structures (rings,
// queues) by it, not by runtime.GOMAXPROCS(0), which Run changes.
func Limit() int { return limit }

const (
	// interval is how often Run looks at the load while the process uses
	// CPU. Once it is idle on one P, Run sleeps until Busy is called: an
	// idle iserd does not wake for it.
	interval = 100 * time.Millisecond
	// raiseAt: n Ps busy for this share of the interval add Ps (double).
	raiseAt = 0.8
	// lowerAt: when n-1 Ps would be busy for less than this share, for
	// lowerAfter intervals in a row, one P goes.
	lowerAt    = 0.7
	lowerAfter = 5
	// idleBelow is the CPU (in CPUs) under which the process counts as idle.
	idleBelow = 0.02
)

var (
	running, asleep atomic.Bool
	wake            = make(chan struct{}, 1)
)

// Busy tells Run that requests are arriving, which matters only while it
// sleeps because the process was idle; otherwise it costs one atomic load.
// Readers call it when they take in requests after waiting for them.
func Busy() {
	if asleep.Load() && asleep.CompareAndSwap(true, false) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// fixed reports whether the user chose GOMAXPROCS (the environment
// variable), which Run then leaves alone.
func fixed() bool { return os.Getenv("GOMAXPROCS") != "" }

// next is the number of Ps, at most max, for a process that used cpu CPUs
// on average with n Ps over the last interval, calm intervals in a row
// having been quiet enough to lower it before this one; it returns the new
// calm count too.
func next(n, max int, cpu float64, calm int) (int, int) {
	switch {
	case cpu >= raiseAt*float64(n) && n < max:
		return min(2*n, max), 0
	case n > 1 && cpu < lowerAt*float64(n-1):
		if calm+1 >= lowerAfter {
			return n - 1, 0
		}
		return n, calm + 1
	}
	return n, 0
}

// Run adjusts GOMAXPROCS until ctx ends, starting with one P, and puts the
// limit back when it returns. It does nothing when fixed, when the process
// may use one CPU only, or while another Run is at work (tests start
// several servers in one process).
func Run(ctx context.Context) {
	if fixed() || limit <= 1 || !running.CompareAndSwap(false, true) {
		return
	}
	defer running.Store(false)
	n, calm := 1, 0
	runtime.GOMAXPROCS(n)
	defer runtime.GOMAXPROCS(limit)
	last, lastCPU := time.Now(), cpuTime()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, used := time.Now(), cpuTime()
		cpu := float64(used-lastCPU) / float64(now.Sub(last))
		last, lastCPU = now, used
		was := n
		if n, calm = next(n, limit, cpu, calm); n != was {
			runtime.GOMAXPROCS(n)
		}
		if cpu < idleBelow && n == 1 {
			asleep.Store(true)
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			last, lastCPU = time.Now(), cpuTime()
		}
		t.Reset(interval)
	}
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
