//go:build !race

// The race detector allocates on its own; allocation counts are pinned without it.

package iser

import (
	"testing"

	"github.com/iserd/iserd/iscsi"
)

// TestSteadyStateAllocs pins that READ and WRITE over iSER allocate nothing
// per command in steady state: receive, framing, RDMA WRITE and READ, the
// iSCSI engine (the test's initiator and endpoint reuse their buffers).
func TestSteadyStateAllocs(t *testing.T) {
	in := newInit(t, 16, nil)
	const n = 4096
	out := pattern(n, 7)
	src, dst := in.f.expose(out), in.f.expose(make([]byte, n))
	read, write := rw(false, 8, n), rw(true, 8, n)
	var none iscsi.RemoteBuffer
	cases := []struct {
		name     string
		cdb      []byte
		imm      []byte
		from, to iscsi.RemoteBuffer
	}{
		{"read 4k by RDMA WRITE", read, nil, none, dst},
		{"write 4k by RDMA READ", write, nil, src, none},
		{"write 4k as immediate data", write, out, none, none},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func() {
				itt := in.command(t, tc.cdb, 0, n, tc.imm, tc.from, tc.to)
				if st := in.status(t, itt); st != statusGood {
					t.Fatalf("status %#x", st)
				}
			}
			for range 200 { // warm pools and maps
				run()
			}
			if a := testing.AllocsPerRun(500, run); a != 0 {
				t.Errorf("%.2f allocations per command, want 0", a)
			}
		})
	}
}
