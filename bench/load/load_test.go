package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/scsi"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in      string
		want    Pattern
		write   bool
		random  bool
		wantErr bool
	}{
		{in: "randread", want: RandRead, random: true},
		{in: "randwrite", want: RandWrite, write: true, random: true},
		{in: "read", want: SeqRead},
		{in: "write", want: SeqWrite, write: true},
		{in: "randrw", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		p, err := ParsePattern(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParsePattern(%q) = %v, want an error", tc.in, p)
			}
			continue
		}
		if err != nil || p != tc.want || p.Write() != tc.write || p.Random() != tc.random || p.String() != tc.in {
			t.Errorf("ParsePattern(%q) = %v (write %v random %v), %v; want %v", tc.in, p, p.Write(), p.Random(), err, tc.want)
		}
	}
}

func TestOffsets(t *testing.T) {
	capa := Capacity{Blocks: 2048, BlockSize: 512} // 1 MiB
	tests := []struct {
		name    string
		cfg     Config
		slots   uint64
		wantErr string
	}{
		{name: "whole LUN", cfg: Config{BlockSize: 4096}, slots: 256},
		{name: "span", cfg: Config{BlockSize: 4096, Span: 64 << 10}, slots: 16},
		{name: "span beyond LUN", cfg: Config{BlockSize: 131072, Span: 1 << 30}, slots: 8},
		{name: "span rounds down", cfg: Config{BlockSize: 4096, Span: 10000}, slots: 2},
		{name: "not a block multiple", cfg: Config{BlockSize: 1000}, wantErr: "multiple"},
		{name: "zero size", cfg: Config{BlockSize: 0}, wantErr: "multiple"},
		{name: "negative span", cfg: Config{BlockSize: 4096, Span: -1}, wantErr: "negative"},
		{name: "span too small", cfg: Config{BlockSize: 4096, Span: 512}, wantErr: "holds no"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := newOffsets(tc.cfg, capa)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("newOffsets: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.slots != tc.slots {
				t.Fatalf("slots = %d, want %d", o.slots, tc.slots)
			}
			for i := range 2*tc.slots + 1 { // sequential: in order, wrapping
				if got, want := o.next(nil), int64(i%tc.slots)*int64(tc.cfg.BlockSize); got != want {
					t.Fatalf("sequential offset %d = %d, want %d", i, got, want)
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			seen := map[int64]bool{}
			for range 64 * tc.slots {
				off := o.next(rng)
				if off < 0 || off%int64(tc.cfg.BlockSize) != 0 || uint64(off)/uint64(tc.cfg.BlockSize) >= tc.slots {
					t.Fatalf("random offset %d outside %d slots of %d bytes", off, tc.slots, tc.cfg.BlockSize)
				}
				seen[off] = true
			}
			if uint64(len(seen)) != tc.slots {
				t.Errorf("random offsets hit %d of %d slots", len(seen), tc.slots)
			}
		})
	}
}

// fakeDisk answers READ(16)/WRITE(16) and records what it was asked.
type fakeDisk struct {
	capa Capacity
	mu   sync.Mutex
	lbas []uint64
	ops  map[byte]int
	// failAt makes the n-th command (1-based) end with CHECK CONDITION.
	failAt int
	calls  int
	err    error // a protocol-level failure to return instead
}

func (f *fakeDisk) Do(ctx context.Context, cmd *initiator.Command) (*initiator.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	if f.failAt > 0 && f.calls == f.failAt {
		return &initiator.Response{Status: 2, Sense: []byte{0x70, 0, 3}}, nil
	}
	lba := binary.BigEndian.Uint64(cmd.CDB[2:])
	n := binary.BigEndian.Uint32(cmd.CDB[10:])
	if lba+uint64(n) > f.capa.Blocks {
		return &initiator.Response{Status: 2, Sense: []byte{0x70, 0, 5}}, nil
	}
	want := n * f.capa.BlockSize
	if (cmd.CDB[0] == 0x8a && len(cmd.DataOut) != int(want)) || (cmd.CDB[0] == 0x88 && cmd.ReadLen != want) {
		return nil, errors.New("transfer length does not match the CDB")
	}
	if f.ops == nil {
		f.ops = map[byte]int{}
	}
	f.ops[cmd.CDB[0]]++
	f.lbas = append(f.lbas, lba)
	return &initiator.Response{}, nil
}

func TestRun(t *testing.T) {
	capa := Capacity{Blocks: 1 << 12, BlockSize: 512}
	tests := []struct {
		name    string
		cfg     Config
		failAt  int
		fail    error
		stopped bool // the caller's context is already over
		op      byte
		wantErr string
	}{
		{name: "random reads", cfg: Config{Pattern: RandRead, BlockSize: 4096, QueueDepth: 4}, op: 0x88},
		{name: "random writes", cfg: Config{Pattern: RandWrite, BlockSize: 4096, QueueDepth: 4}, op: 0x8a},
		{name: "sequential writes", cfg: Config{Pattern: SeqWrite, BlockSize: 65536, QueueDepth: 1}, op: 0x8a},
		{name: "sequential reads on a span", cfg: Config{Pattern: SeqRead, BlockSize: 4096, QueueDepth: 2, Span: 1 << 16}, op: 0x88},
		{name: "check condition", cfg: Config{Pattern: RandWrite, BlockSize: 4096, QueueDepth: 2}, failAt: 10, wantErr: "status 0x02"},
		{name: "connection error", cfg: Config{Pattern: RandRead, BlockSize: 4096, QueueDepth: 2}, fail: initiator.ErrClosed, wantErr: "closed"},
		{name: "caller gave up", cfg: Config{Pattern: RandRead, BlockSize: 4096, QueueDepth: 2}, stopped: true, wantErr: "interrupted"},
		{name: "queue depth 0", cfg: Config{Pattern: RandRead, BlockSize: 4096}, wantErr: "queue depth"},
		{name: "bad size", cfg: Config{Pattern: RandRead, BlockSize: 100, QueueDepth: 1}, wantErr: "multiple"},
		{name: "negative duration", cfg: Config{Pattern: RandRead, BlockSize: 4096, QueueDepth: 1, Duration: -time.Second}, wantErr: "want a positive duration"},
		// Over before a worker can issue anything: no figures to report.
		{name: "no I/O in time", cfg: Config{Pattern: RandRead, BlockSize: 4096, QueueDepth: 2, Duration: time.Nanosecond}, wantErr: ErrNoIO.Error()},
		{name: "count before duration", cfg: Config{Pattern: SeqRead, BlockSize: 4096, QueueDepth: 3, Duration: time.Hour, IOs: 50}, op: 0x88},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDisk{capa: capa, failAt: tc.failAt, err: tc.fail}
			if tc.cfg.Duration == 0 && tc.cfg.IOs == 0 {
				// A count, not a time, ends the run: the outcome must not
				// depend on how fast the machine is (-race, a loaded host).
				tc.cfg.IOs = 100
			}
			ctx, cancel := context.WithCancel(context.Background())
			if tc.stopped {
				cancel()
			}
			defer cancel()
			res, err := Run(ctx, d, capa, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Run: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.IOs == 0 || res.IOs != uint64(len(d.lbas)) || d.ops[tc.op] != len(d.lbas) {
				t.Fatalf("result counts %d I/Os, the disk saw %d (%v)", res.IOs, len(d.lbas), d.ops)
			}
			if res.Latency.Count() != res.IOs || res.Latency.Quantile(0.5) <= 0 || res.Latency.Quantile(0.999) < res.Latency.Quantile(0.5) {
				t.Fatalf("latency distribution of %d I/Os: count %d, p50 %v, p99.9 %v", res.IOs,
					res.Latency.Count(), res.Latency.Quantile(0.5), res.Latency.Quantile(0.999))
			}
			if tc.cfg.IOs != 0 && res.IOs != tc.cfg.IOs {
				t.Fatalf("run of %d I/Os completed %d", tc.cfg.IOs, res.IOs)
			}
			if res.Bytes != res.IOs*uint64(tc.cfg.BlockSize) || res.IOPS() <= 0 || res.MBps() <= 0 || res.MeanLatency() <= 0 {
				t.Fatalf("inconsistent result %+v", res)
			}
			limit := capa.Blocks
			if tc.cfg.Span > 0 {
				limit = uint64(tc.cfg.Span) / uint64(capa.BlockSize)
			}
			per := uint64(tc.cfg.BlockSize) / uint64(capa.BlockSize)
			for i, lba := range d.lbas {
				if lba%per != 0 || lba+per > limit {
					t.Fatalf("I/O at LBA %d not aligned to %d blocks or beyond block %d", lba, per, limit)
				}
				if tc.cfg.QueueDepth == 1 && !tc.cfg.Pattern.Random() && lba != uint64(i)*per%limit {
					t.Fatalf("sequential I/O %d at LBA %d, want %d", i, lba, uint64(i)*per%limit)
				}
			}
		})
	}
}

// uaDisk reports a unit attention on its first commands, then a capacity.
type uaDisk struct {
	attentions int
	short      bool
}

func (u *uaDisk) Do(ctx context.Context, cmd *initiator.Command) (*initiator.Response, error) {
	if cmd.CDB[0] == 0 {
		if u.attentions > 0 {
			u.attentions--
			return &initiator.Response{Status: 2, Sense: []byte{0x70, 0, 6}}, nil
		}
		return &initiator.Response{}, nil
	}
	data := make([]byte, 32)
	binary.BigEndian.PutUint64(data, 99)
	binary.BigEndian.PutUint32(data[8:], 4096)
	if u.short {
		data = data[:8]
	}
	return &initiator.Response{Data: data}, nil
}

func TestPrepare(t *testing.T) {
	tests := []struct {
		name    string
		disk    uaDisk
		wantErr string
	}{
		{name: "ready", disk: uaDisk{}},
		{name: "two unit attentions", disk: uaDisk{attentions: 2}},
		{name: "never ready", disk: uaDisk{attentions: 100}, wantErr: "not ready"},
		{name: "short capacity data", disk: uaDisk{short: true}, wantErr: "8 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Prepare(context.Background(), &tc.disk, 0)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Prepare: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || c != (Capacity{Blocks: 100, BlockSize: 4096}) || c.Bytes() != 409600 {
				t.Fatalf("Prepare = %+v, %v; want 100 blocks of 4096", c, err)
			}
		})
	}
}

// memoryLUN is a LUN of size bytes in RAM.
func memoryLUN(tb testing.TB, size int64, _ *bdev.Pool) bdev.Device { return bdev.NewMemory(size) }

// shmLUN is a file of size bytes in /dev/shm driven by io_uring with the
// server's pool registered, as the daemon sets up a file LUN.
func shmLUN(tb testing.TB, size int64, pool *bdev.Pool) bdev.Device {
	tb.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "iserd-load-test")
	if err != nil {
		tb.Fatalf("temporary directory: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	u, err := bdev.NewUring(filepath.Join(dir, "lun.img"), bdev.UringOptions{
		FileOptions: bdev.FileOptions{Size: size, Create: true}, Pool: pool, Buffered: true})
	if err != nil {
		tb.Fatalf("io_uring LUN: %v", err)
	}
	tb.Cleanup(func() { u.Close() })
	return u
}

// startTarget serves one LUN of size bytes, made by newDev, with iserd's own
// engine on 127.0.0.1 (persistent reservations with APTPL kept in a
// temporary directory) and returns its address and target name.
func startTarget(tb testing.TB, size int64, newDev func(testing.TB, int64, *bdev.Pool) bdev.Device) (addr, name string) {
	tb.Helper()
	name = "iqn.2026-11.org.iserd.test:load"
	srv, err := iscsi.NewServer(zap.NewNop(), iscsi.DefaultOptions())
	if err != nil {
		tb.Fatalf("new server: %v", err)
	}
	st := scsi.NewTarget(name)
	disk, err := scsi.NewDisk(newDev(tb, size, srv.Pool()), scsi.DiskConfig{BlockSize: 512, StateDir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("new disk: %v", err)
	}
	if err := st.AddLUN(0, disk); err != nil {
		tb.Fatalf("add LUN: %v", err)
	}
	if err := srv.AddTarget(&iscsi.Target{Name: name, SCSI: st}); err != nil {
		tb.Fatalf("add target: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	srv.AddPortal(iscsi.Portal{Addr: l.Addr().String()})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			tb.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String(), name
}

// TestAgainstIserd runs every pattern against iserd's engine in process:
// login with Keys, unit attentions cleared, capacity read, I/O completes.
func TestAgainstIserd(t *testing.T) {
	addr, name := startTarget(t, 16<<20, memoryLUN)
	for _, p := range []Pattern{RandRead, RandWrite, SeqRead, SeqWrite} {
		for _, bs := range []int{4096, 131072} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := Connect(ctx, addr, "iqn.2026-11.org.iserd.test:client", name)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			capa, err := Prepare(ctx, c, 0)
			if err != nil || capa != (Capacity{Blocks: 16 << 11, BlockSize: 512}) {
				t.Fatalf("Prepare = %+v, %v; want 32768 blocks of 512", capa, err)
			}
			res, err := Run(ctx, c, capa, Config{Pattern: p, BlockSize: bs, QueueDepth: 8, IOs: 200})
			if err != nil || res.IOs != 200 {
				t.Fatalf("%v bs %d: %+v, %v; want 200 I/Os", p, bs, res, err)
			}
			if _, err := c.Logout(ctx, initiator.LogoutSession); err != nil {
				t.Errorf("logout: %v", err)
			}
			c.Close()
			cancel()
		}
	}
}

// BenchmarkIserd measures iserd's engine (a memory LUN and an io_uring file
// LUN in /dev/shm) and this client in one process; run it with -cpuprofile
// to see where the target spends its time:
//
//	go test ./bench/load -run '^$' -bench Iserd -cpuprofile /tmp/cpu.out
func BenchmarkIserd(b *testing.B) {
	for _, backing := range []struct {
		name string
		dev  func(testing.TB, int64, *bdev.Pool) bdev.Device
	}{{"mem", memoryLUN}, {"shm", shmLUN}} {
		b.Run(backing.name, func(b *testing.B) { benchTarget(b, backing.dev) })
	}
}

// benchTarget runs the benchmark's patterns against one kind of LUN.
func benchTarget(b *testing.B, dev func(testing.TB, int64, *bdev.Pool) bdev.Device) {
	addr, name := startTarget(b, 256<<20, dev)
	for _, tc := range []struct {
		p      Pattern
		bs, qd int
	}{{RandRead, 4096, 32}, {RandWrite, 4096, 32}, {SeqRead, 131072, 8}, {SeqWrite, 131072, 8}} {
		b.Run(fmt.Sprintf("%v-%dk-qd%d", tc.p, tc.bs/1024, tc.qd), func(b *testing.B) {
			ctx := context.Background()
			c, err := Connect(ctx, addr, "iqn.2026-11.org.iserd.test:bench", name)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			capa, err := Prepare(ctx, c, 0)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			var ios uint64
			for b.Loop() {
				res, err := Run(ctx, c, capa, Config{Pattern: tc.p, BlockSize: tc.bs, QueueDepth: tc.qd, Duration: 200 * time.Millisecond})
				if err != nil {
					b.Fatal(err)
				}
				ios += res.IOs
			}
			b.ReportMetric(float64(ios)/b.Elapsed().Seconds(), "IOPS")
		})
	}
}
