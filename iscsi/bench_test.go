package iscsi_test

import (
	"fmt"
	"testing"

	"github.com/iserd/iserd/iscsi/initiator"
)

// BenchmarkIO drives reads and writes through the Go initiator over TCP
// loopback to a memory LUN, at queue depth 1 and 16.
func BenchmarkIO(b *testing.B) {
	e := newEnv(b, nil)
	c := e.login(b, kv("MaxRecvDataSegmentLength", "262144", "MaxBurstLength", "1048576",
		"FirstBurstLength", "262144", "InitialR2T", "No", "ImmediateData", "Yes")...)
	for _, size := range []int{4096, 128 << 10} {
		for _, qd := range []int{1, 16} {
			for _, write := range []bool{false, true} {
				op := "read"
				if write {
					op = "write"
				}
				b.Run(fmt.Sprintf("%s/%dk/qd%d", op, size>>10, qd), func(b *testing.B) {
					benchIO(b, c, size, qd, write)
				})
			}
		}
	}
}

// benchIO keeps qd commands of size bytes in flight for b.N commands.
func benchIO(b *testing.B, c *initiator.Conn, size, qd int, write bool) {
	b.SetBytes(int64(size))
	data := pattern(size, 1)
	blocks := uint32(size / blockSize)
	span := uint64(diskSize / size)
	ring := make([]*initiator.Task, 0, qd)
	wait := func(task *initiator.Task) {
		r, err := task.Wait(ctxT(b))
		if err != nil || r.Status != 0 {
			b.Fatalf("command: %v %+v", err, r)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if len(ring) == qd {
			wait(ring[0])
			ring = ring[1:]
		}
		lba := uint64(i) % span * uint64(blocks)
		cmd := &initiator.Command{CDB: initiator.Read16(lba, blocks), ReadLen: uint32(size), Attr: 1}
		if write {
			cmd = &initiator.Command{CDB: initiator.Write16(lba, blocks), DataOut: data, Attr: 1}
		}
		task, err := c.Start(ctxT(b), cmd)
		if err != nil {
			b.Fatal(err)
		}
		ring = append(ring, task)
	}
	for _, task := range ring {
		wait(task)
	}
}
