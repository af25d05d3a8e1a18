package retry

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		d        time.Duration
		min, max time.Duration
	}{
		{"waits d", context.Background(), 50 * time.Millisecond, 50 * time.Millisecond, 5 * time.Second},
		{"returns when ctx ends", cancelled, time.Hour, 0, 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			Sleep(tc.ctx, tc.d)
			if took := time.Since(start); took < tc.min || took > tc.max {
				t.Errorf("Sleep took %v, want between %v and %v", took, tc.min, tc.max)
			}
		})
	}
}
