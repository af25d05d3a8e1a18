package scsi

import (
	"sync/atomic"
	"testing"

	"github.com/iserd/iserd/bdev"
)

// FuzzCDB feeds arbitrary CDBs, data-out buffers and data-in sizes to a
// thin logical unit: Execute must never panic, must call Done exactly
// once, and must keep its outcome within the buffers it was given.
func FuzzCDB(f *testing.F) {
	f.Add([]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, []byte{}, uint16(512))
	f.Add([]byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, make([]byte, 512), uint16(0))
	f.Add([]byte{0x12, 1, 0x83, 0, 255, 0}, []byte{}, uint16(255))
	d, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{Thin: true})
	if err != nil {
		f.Fatal(err)
	}
	tgt := NewTarget("iqn.fuzz")
	if err := tgt.AddLUN(0, d); err != nil {
		f.Fatal(err)
	}
	nexus := &Nexus{ID: 1, TargetPort: "iqn.fuzz,t,0x1"}
	tgt.AddNexus(nexus)
	f.Fuzz(func(t *testing.T, cdb, out []byte, inLen uint16) {
		var calls atomic.Int32
		c := &Command{Nexus: nexus, CDB: cdb, DataOut: out, DataIn: make([]byte, inLen)}
		c.Done = func(*Command) { calls.Add(1) }
		tgt.Execute(c)
		// The memory backend completes inline, so Done has run by now.
		if n := calls.Load(); n != 1 {
			t.Fatalf("cdb % x: Done called %d times", cdb, n)
		}
		if c.InLen < 0 || c.InLen > len(c.DataIn) || c.SenseLen < 0 || c.SenseLen > SenseSize || c.Wanted < 0 {
			t.Fatalf("cdb % x: InLen %d SenseLen %d Wanted %d", cdb, c.InLen, c.SenseLen, c.Wanted)
		}
		if (c.Status == StatusCheckCondition) != (c.SenseLen > 0) {
			t.Fatalf("cdb % x: status %#x with %d bytes of sense", cdb, c.Status, c.SenseLen)
		}
	})
}
