// Package qos paces commands against rate limits: a deficit token bucket
// for each of IOPS and bytes per second (total, reads, writes), and a
// weighted fair queue between the flows (sessions) that share one limiter.
//
// A command asks its Chain (the limiters that apply to it, in order) for
// admission. While every bucket of a limiter holds tokens and nothing waits
// there, it passes at once, on the caller's goroutine; otherwise it waits
// in its flow's queue and the limiter's pacer goroutine releases it when
// the buckets allow, the flow with the least weighted service first. No
// command waits longer than MaxWait in all: one that has is admitted at
// once, its cost taken as debt. The callers keep that from happening in
// steady state by letting each flow have no more commands queued than
// Flow.Window allows.
package qos

import (
	"fmt"
	"math"
	"time"
)

// Limits are the rates one limiter enforces; a zero rate is no limit.
type Limits struct {
	// IOPS, ReadIOPS and WriteIOPS are commands per second: all commands,
	// reads only, writes only.
	IOPS, ReadIOPS, WriteIOPS float64
	// Bandwidth, ReadBandwidth and WriteBandwidth are bytes per second.
	Bandwidth, ReadBandwidth, WriteBandwidth float64
	// Burst is how much unused rate each bucket keeps: it holds at most
	// Burst times its rate (DefaultBurst when zero). After an idle spell
	// that much passes at full speed.
	Burst time.Duration
}

const (
	// DefaultBurst is the bucket depth of limits that give none. It also
	// absorbs the pacer's timer slack: a shallower bucket would lose the
	// tokens that accrue while the pacer oversleeps.
	DefaultBurst = 50 * time.Millisecond
	// MinBurst is the shallowest bucket a limit may ask for.
	MinBurst = 10 * time.Millisecond
	// MaxBurst is the deepest.
	MaxBurst = time.Hour
	// MaxWait bounds how long a command waits in all the limiters of its
	// chain: past it, it is admitted and its cost is taken as debt.
	MaxWait = time.Second
)

// bucket indexes the rates of Limits.
const (
	bIOPS = iota
	bReadIOPS
	bWriteIOPS
	bBandwidth
	bReadBandwidth
	bWriteBandwidth
	nBuckets
)

// rates lists the rates in bucket order.
func (l Limits) rates() [nBuckets]float64 {
	return [nBuckets]float64{l.IOPS, l.ReadIOPS, l.WriteIOPS, l.Bandwidth, l.ReadBandwidth, l.WriteBandwidth}
}

// Zero reports whether no rate is limited.
func (l Limits) Zero() bool { return l.rates() == [nBuckets]float64{} }

// Check rejects negative or non-finite rates and a burst out of range.
func (l Limits) Check() error {
	names := [nBuckets]string{"iops", "read_iops", "write_iops", "bandwidth", "read_bandwidth", "write_bandwidth"}
	for i, r := range l.rates() {
		if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return fmt.Errorf("%s %v: give a positive rate (or leave it out for none)", names[i], r)
		}
	}
	if l.Burst != 0 && (l.Burst < MinBurst || l.Burst > MaxBurst) {
		return fmt.Errorf("burst %s is outside %s..%s", l.Burst, MinBurst, MaxBurst)
	}
	return nil
}

// burst is the bucket depth in time.
func (l Limits) burst() time.Duration {
	if l.Burst == 0 {
		return DefaultBurst
	}
	return l.Burst
}

// cmdRate is the lowest command rate that may apply to a command, +Inf
// when none does.
func (l Limits) cmdRate() float64 { return lowest(l.IOPS, l.ReadIOPS, l.WriteIOPS) }

// byteRate is the lowest byte rate that may apply, +Inf when none does.
func (l Limits) byteRate() float64 {
	return lowest(l.Bandwidth, l.ReadBandwidth, l.WriteBandwidth)
}

// lowest returns the smallest non-zero rate, +Inf when all are zero.
func lowest(rs ...float64) float64 {
	m := math.Inf(1)
	for _, r := range rs {
		if r > 0 && r < m {
			m = r
		}
	}
	return m
}

// Cost is what a command takes from the buckets: one command, its bytes,
// from the read or the write buckets.
type Cost struct {
	Bytes int64
	Write bool
}

// tokens is what c takes from bucket i, 0 when that bucket does not apply.
func (c Cost) tokens(i int) float64 {
	switch i {
	case bIOPS:
		return 1
	case bReadIOPS:
		if !c.Write {
			return 1
		}
	case bWriteIOPS:
		if c.Write {
			return 1
		}
	case bBandwidth:
		return float64(c.Bytes)
	case bReadBandwidth:
		if !c.Write {
			return float64(c.Bytes)
		}
	case bWriteBandwidth:
		if c.Write {
			return float64(c.Bytes)
		}
	}
	return 0
}
