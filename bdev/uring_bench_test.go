package bdev

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const benchFileSize = 256 << 20

// benchFile writes a fully allocated file of benchFileSize in dir, so reads
// touch real data rather than holes.
func benchFile(b *testing.B, dir string) string {
	b.Helper()
	path := filepath.Join(dir, "bench.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := pattern(1<<20, 3)
	for off := int64(0); off < benchFileSize; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkBackends compares NewUring (O_DIRECT where possible, and
// buffered) with the worker-pool NewFile on a file in /dev/shm and one on
// disk: 4 KiB random reads at queue depth 1 and 32 (from one submitter,
// and from two with 16 each), and 128 KiB sequential reads at depth 8, all
// into pool buffers. cpu-ns/op is the process's CPU time (all threads,
// io-wq workers included) per request.
func BenchmarkBackends(b *testing.B) {
	shm, err := os.MkdirTemp("/dev/shm", "bdevbench")
	if err != nil {
		b.Skip(err)
	}
	defer os.RemoveAll(shm)
	files := map[string]string{"shm": benchFile(b, shm), "disk": benchFile(b, b.TempDir())}
	pool, err := NewPool(PoolOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	type backend struct {
		name string
		open func(path string) (Device, func() submitter, error)
	}
	uringOpen := func(buffered bool) func(string) (Device, func() submitter, error) {
		return func(path string) (Device, func() submitter, error) {
			d, err := NewUring(path, UringOptions{Pool: pool, Buffered: buffered})
			if err != nil {
				return nil, nil, err
			}
			return d, func() submitter { return d.NewQueue() }, nil
		}
	}
	backends := []backend{
		{"file", func(path string) (Device, func() submitter, error) {
			d, err := NewFile(path, FileOptions{})
			return d, func() submitter { return d }, err
		}},
		{"uring", uringOpen(false)},
		{"uring-buffered", uringOpen(true)},
	}
	for _, w := range []struct {
		name string
		size int
		qd   int // per job
		jobs int // submitters, each with its own queue
		seq  bool
	}{
		{"randread4k-qd1", 4 << 10, 1, 1, false},
		{"randread4k-qd32", 4 << 10, 32, 1, false},
		{"randread4k-qd32x2", 4 << 10, 16, 2, false},
		{"seqread128k-qd8", 128 << 10, 8, 1, true},
	} {
		for _, medium := range []string{"shm", "disk"} {
			for _, be := range backends {
				b.Run(w.name+"/"+medium+"/"+be.name, func(b *testing.B) {
					d, queue, err := be.open(files[medium])
					if err != nil {
						b.Fatal(err)
					}
					defer d.Close()
					loops := make([]*loop, w.jobs)
					for j := range loops {
						loops[j] = newLoop(queue(), poolBufs(b, pool, w.qd, w.size), OpRead, w.seq, benchFileSize)
						loops[j].run(4 * w.qd) // warm up
					}
					b.SetBytes(int64(w.size))
					b.ReportAllocs()
					var before, after unix.Rusage
					unix.Getrusage(unix.RUSAGE_SELF, &before)
					b.ResetTimer()
					per := max(1, b.N/w.jobs)
					var wg sync.WaitGroup
					for _, l := range loops {
						wg.Add(1)
						go func() {
							defer wg.Done()
							l.run(per)
						}()
					}
					wg.Wait()
					b.StopTimer()
					unix.Getrusage(unix.RUSAGE_SELF, &after)
					cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
					n := float64(per * w.jobs)
					b.ReportMetric(n/b.Elapsed().Seconds(), "IOPS")
					b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/op")
				})
			}
		}
	}
}
