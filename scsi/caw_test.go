package scsi

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"sync"
	"testing"

	"github.com/iserd/iserd/bdev"
)

func cdbCAW(lba uint64, nb byte) []byte {
	b := cdb16n(0x89, lba, 0)
	b[10], b[13] = 0, nb
	return b
}

func TestCompareAndWrite(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.mustGood(h.a, cdb10(0x2a, 100, 2), fill(1024, 'A')...)
	c := h.exec(h.a, 0, cdbCAW(100, 2), append(fill(1024, 'A'), fill(1024, 'B')...), 0)
	if c.Status != StatusGood || c.Wanted != 2048 {
		t.Fatalf("matching CAW: status %#x wanted %d sense %+v", c.Status, c.Wanted, senseOf(c))
	}
	if r := data(h.mustGood(h.a, cdb10(0x28, 100, 2))); !bytes.Equal(r, fill(1024, 'B')) {
		t.Fatal("CAW did not write")
	}
	verify := fill(1024, 'B')
	verify[1024-27] = 'C'
	c = h.exec(h.a, 0, cdbCAW(100, 2), append(verify, fill(1024, 'D')...), 0)
	if s := senseOf(c); c.Status != StatusCheckCondition || s.key != keyMiscompare || s.info != 1024-27 {
		t.Fatalf("miscompare: status %#x sense %+v", c.Status, s)
	}
	if r := data(h.mustGood(h.a, cdb10(0x28, 100, 2))); !bytes.Equal(r, fill(1024, 'B')) {
		t.Fatal("CAW wrote despite the miscompare")
	}
	h.mustGood(h.a, cdbCAW(100, 0))
	// 256 blocks do not fit the one-byte field: the data-out size gives it away.
	if c := h.exec(h.a, 0, cdbCAW(100, 0), make([]byte, 2*256*512), 0); senseOf(c).code != ascInvalidFieldInCDB {
		t.Fatalf("CAW with NB 0 and data: status %#x sense %+v", c.Status, senseOf(c))
	}
}

func TestOrWrite(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.mustGood(h.a, cdb16n(0x8b, 9, 2), fill(1024, 0xa5)...)
	h.mustGood(h.a, cdb16n(0x8b, 9, 2), fill(1024, 0x5a)...)
	if r := data(h.mustGood(h.a, cdb10(0x28, 9, 2))); !bytes.Equal(r, fill(1024, 0xff)) {
		t.Fatal("ORWRITE result is not all 0xff")
	}
}

// TestCompareAndWriteAtomic increments a counter with COMPARE AND WRITE
// from many goroutines while plain writes hit the same and other blocks:
// no increment may be lost. It runs on the inline memory backend and on
// the file backend, which completes on worker goroutines.
func TestCompareAndWriteAtomic(t *testing.T) {
	file, err := bdev.NewFile(filepath.Join(t.TempDir(), "lu"), bdev.FileOptions{Size: 64 << 20, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	devs := map[string]bdev.Device{"memory": bdev.NewMemory(testBlocks * 512), "file": file}
	for name, dev := range devs {
		t.Run(name, func(t *testing.T) {
			h := newHarnessOn(t, dev, DiskConfig{})
			const workers, incs = 8, 50
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(2)
				go func() { // counter in block 10, bytes 0-7 of a 2-block range
					defer wg.Done()
					for range incs {
						for {
							cur := data(h.run(h.a, cdb10(0x28, 10, 2)))
							next := bytes.Clone(cur)
							binary.BigEndian.PutUint64(next, binary.BigEndian.Uint64(cur)+1)
							c := h.exec(h.a, 0, cdbCAW(10, 2), append(bytes.Clone(cur), next...), 0)
							if c.Status == StatusGood {
								break
							}
							if senseOf(c).key != keyMiscompare {
								t.Errorf("CAW: status %#x sense %+v", c.Status, senseOf(c))
								return
							}
						}
					}
				}()
				go func() { // plain writes to block 11 (same CAW range) and elsewhere
					defer wg.Done()
					for i := range incs {
						blk := fill(512, byte(w))
						lba := uint32(11)
						if i%2 == 1 {
							lba = uint32(1000 + w)
						}
						if c := h.exec(h.a, 0, cdb10(0x2a, lba, 1), blk, 0); c.Status != StatusGood {
							t.Errorf("write: status %#x", c.Status)
							return
						}
					}
				}()
			}
			wg.Wait()
			got := binary.BigEndian.Uint64(data(h.run(h.a, cdb10(0x28, 10, 1))))
			if got != workers*incs {
				t.Fatalf("counter %d, want %d", got, workers*incs)
			}
		})
	}
}
