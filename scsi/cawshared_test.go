package scsi

import (
	"bytes"
	"sync"
	"testing"
)

// fakeCAWLock is a CAWLock that grants what a test says.
type fakeCAWLock struct {
	later bool  // grant from another goroutine rather than at once
	err   error // grant with this error
	lost  bool  // Valid says the lock was lost

	mu       sync.Mutex
	released []uint64
}

const fakeToken = 7

func (f *fakeCAWLock) Acquire(granted func(uint64, error)) uint64 {
	switch {
	case f.err != nil:
		go granted(0, f.err)
	case f.later:
		go granted(fakeToken, nil)
	default:
		return fakeToken
	}
	return 0
}

func (f *fakeCAWLock) Valid(tok uint64) bool { return tok == fakeToken && !f.lost }

func (f *fakeCAWLock) Release(tok uint64) {
	f.mu.Lock()
	f.released = append(f.released, tok)
	f.mu.Unlock()
}

func (f *fakeCAWLock) Close() error { return nil }

// TestCompareAndWriteClusterLock runs COMPARE AND WRITE through a CAWLock:
// it writes only once granted and while the lock is valid, answers BUSY or
// NOT READY 04h/0Ch when the lock refuses, and releases every token it got
// once.
func TestCompareAndWriteClusterLock(t *testing.T) {
	busy := result{status: StatusBusy}
	tests := []struct {
		name     string
		lock     *fakeCAWLock
		verify   byte // the verify half's bytes; the block holds 'A'
		want     result
		written  bool
		released int
	}{
		{"granted at once", &fakeCAWLock{}, 'A', good, true, 1},
		{"granted later", &fakeCAWLock{later: true}, 'A', good, true, 1},
		{"miscompare", &fakeCAWLock{}, 'X', fail(senseData{key: keyMiscompare, code: ascMiscompareVerify}), false, 1},
		{"not granted in time", &fakeCAWLock{err: ErrCAWBusy}, 'A', busy, false, 0},
		{"fenced while waiting", &fakeCAWLock{err: ErrFenced}, 'A', fail(fencedSense), false, 0},
		{"lost before the write", &fakeCAWLock{lost: true}, 'A', fail(fencedSense), false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{CAWLock: tc.lock})
			h.mustGood(h.a, cdb10(0x2a, 5, 1), fill(512, 'A')...)
			c := h.exec(h.a, 0, cdbCAW(5, 1), append(fill(512, tc.verify), fill(512, 'B')...), 0)
			if s := senseOf(c); c.Status != tc.want.status || s.key != tc.want.sense.key || s.code != tc.want.sense.code {
				t.Fatalf("status %#x sense %+v, want %#x %+v", c.Status, s, tc.want.status, tc.want.sense)
			}
			want := fill(512, 'A')
			if tc.written {
				want = fill(512, 'B')
			}
			if r := data(h.mustGood(h.a, cdb10(0x28, 5, 1))); !bytes.Equal(r, want) {
				t.Errorf("block holds %q..., want %q...", r[:4], want[:4])
			}
			tc.lock.mu.Lock()
			defer tc.lock.mu.Unlock()
			if len(tc.lock.released) != tc.released || tc.released > 0 && tc.lock.released[0] != fakeToken {
				t.Errorf("released %v, want %d release(s) of token %d", tc.lock.released, tc.released, fakeToken)
			}
		})
	}
}
