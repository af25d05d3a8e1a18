package load

import (
	"math"
	"math/bits"
	"time"
)

// histSubBits sets the histogram's resolution: 2^histSubBits buckets per
// power of two, so a quantile read from it is within 1/16 of the truth.
const histSubBits = 4

const (
	histSub     = 1 << histSubBits
	histBuckets = (64-histSubBits)*histSub + histSub
)

// Histogram counts durations in log-linear buckets (exact below 16 ns,
// then 16 buckets per power of two). Recording allocates nothing; one
// goroutine records into it, and Merge combines histograms afterwards.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
}

// bucket is the index of v's bucket.
func bucket(v uint64) int {
	if v < histSub {
		return int(v)
	}
	exp := bits.Len64(v) - 1 // >= histSubBits
	sub := (v >> (exp - histSubBits)) & (histSub - 1)
	return (exp-histSubBits+1)*histSub + int(sub)
}

// bucketTop is the largest value that falls in bucket b.
func bucketTop(b int) uint64 {
	if b < histSub {
		return uint64(b)
	}
	exp := b/histSub + histSubBits - 1
	low := uint64(histSub+b%histSub) << (exp - histSubBits)
	return low + 1<<(exp-histSubBits) - 1
}

// Record counts one duration (negative ones as 0).
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucket(uint64(max(d, 0)))]++
	h.n++
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// Count is the number of durations recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the duration below or at which a fraction q (0 < q <=
// 1) of the recorded ones fall, rounded up to its bucket's top; 0 when
// nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketTop(b), math.MaxInt64))
		}
	}
	return time.Duration(math.MaxInt64) // not reached: the counts add up to n
}
