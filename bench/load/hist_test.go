package load

import (
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1, 1<<64 - 1} {
		b := bucket(v)
		if b < prev || b >= histBuckets {
			t.Fatalf("bucket(%d) = %d: out of order or range", v, b)
		}
		prev = b
		if top := bucketTop(b); top < v || (b > 0 && bucketTop(b-1) >= v) {
			t.Errorf("%d in bucket %d, whose range ends at %d (previous at %d)", v, b, top, bucketTop(b-1))
		}
		if v >= 16 && float64(bucketTop(b)-v) > float64(v)/16 {
			t.Errorf("%d: bucket top %d is more than 1/16 away", v, bucketTop(b))
		}
	}
}

func TestHistogramQuantile(t *testing.T) {
	var a, b Histogram
	for i := 1; i <= 900; i++ {
		a.Record(100 * time.Microsecond)
	}
	for i := 1; i <= 99; i++ {
		b.Record(time.Millisecond)
	}
	b.Record(50 * time.Millisecond)
	a.Merge(&b)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 100 * time.Microsecond},
		{0.9, 100 * time.Microsecond},
		{0.95, time.Millisecond},
		{0.999, time.Millisecond},
		{1, 50 * time.Millisecond},
	} {
		got := a.Quantile(c.q)
		if got < c.want || float64(got-c.want) > float64(c.want)/16 {
			t.Errorf("quantile %v = %v, want %v (within 1/16 above)", c.q, got, c.want)
		}
	}
	if a.Count() != 1000 {
		t.Errorf("count %d, want 1000", a.Count())
	}
	var empty Histogram
	if q := empty.Quantile(0.99); q != 0 {
		t.Errorf("empty histogram: quantile %v, want 0", q)
	}
}
