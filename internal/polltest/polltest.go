// Package polltest waits, in tests, for a condition that another goroutine,
// a timer or another node makes true.
package polltest

import (
	"testing"
	"time"
)

const (
	// Every is how often the condition is tested.
	Every = 5 * time.Millisecond
	// Limit is how long Wait waits.
	Limit = 10 * time.Second
)

// Until tests cond every Every until it holds and returns how long that
// took; it fails t, naming what it waited for, once d has passed.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(Every)
	}
	return time.Since(start)
}

// Wait is Until with Limit.
func Wait(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Until(t, Limit, what, cond)
}
