//go:build !race

// The race detector allocates on its own (sync.Pool drops items at random
// under it); allocation counts are pinned without it (make unit).

package scsi

import "testing"

// TestReadWriteAllocs: the READ (10) and WRITE (10) paths allocate nothing
// per command on the memory backend.
func TestReadWriteAllocs(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	buf := make([]byte, 4096)
	c := &Command{Nexus: h.a, DataIn: buf, DataOut: buf}
	c.Done = func(*Command) {}
	for _, cdb := range [][]byte{cdb10(0x2a, 64, 8), cdb10(0x28, 64, 8)} {
		c.CDB = cdb
		allocs := testing.AllocsPerRun(1000, func() {
			h.tgt.Execute(c)
			if c.Status != StatusGood {
				t.Fatalf("status %#x", c.Status)
			}
		})
		if allocs != 0 {
			t.Errorf("cdb % x: %.1f allocations per command", cdb, allocs)
		}
	}
}

// TestFenceAllocs: an open fence costs the READ and WRITE paths no
// allocation.
func TestFenceAllocs(t *testing.T) {
	f := &testFence{}
	f.open()
	h := newHarness(t, DiskConfig{Fence: f})
	buf := make([]byte, 4096)
	c := &Command{Nexus: h.a, DataIn: buf, DataOut: buf, Done: func(*Command) {}}
	for _, cdb := range [][]byte{cdb10(0x2a, 64, 8), cdb10(0x28, 64, 8)} {
		c.CDB = cdb
		if allocs := testing.AllocsPerRun(1000, func() { h.tgt.Execute(c) }); allocs != 0 || c.Status != StatusGood {
			t.Errorf("cdb % x: %.1f allocations per command, status %#x", cdb, allocs, c.Status)
		}
	}
}
