package polltest

import (
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	calls := 0
	took := Until(t, time.Second, "the third call", func() bool { calls++; return calls == 3 })
	if calls != 3 || took < 2*Every {
		t.Fatalf("Until returned after %d calls and %v, want 3 calls and at least %v", calls, took, 2*Every)
	}
}
