// Package load drives an iSCSI LUN with a fixed queue depth of reads or
// writes and reports throughput and latency. It is the write half of the
// host benchmark (libiscsi's iscsi-perf only reads) and runs over package
// iscsi/initiator, so every target is measured with the same client.
package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// Pattern is the access pattern of a run.
type Pattern int

// Access patterns.
const (
	RandRead Pattern = iota
	RandWrite
	SeqRead
	SeqWrite
)

var patternNames = []string{"randread", "randwrite", "read", "write"}

// ParsePattern reads a fio-style pattern name: randread, randwrite, read
// (sequential) or write (sequential).
func ParsePattern(s string) (Pattern, error) {
	for i, n := range patternNames {
		if n == s {
			return Pattern(i), nil
		}
	}
	return 0, fmt.Errorf("access pattern %q: want randread, randwrite, read or write", s)
}

// String returns the fio-style name.
func (p Pattern) String() string {
	if p < 0 || int(p) >= len(patternNames) {
		return fmt.Sprintf("Pattern(%d)", int(p))
	}
	return patternNames[p]
}

// Write reports whether the pattern writes.
func (p Pattern) Write() bool { return p == RandWrite || p == SeqWrite }

// Random reports whether offsets are random.
func (p Pattern) Random() bool { return p == RandRead || p == RandWrite }

// Doer runs one SCSI command to completion; *initiator.Conn is one.
type Doer interface {
	Do(ctx context.Context, cmd *initiator.Command) (*initiator.Response, error)
}

// Config describes a run.
type Config struct {
	Pattern    Pattern
	BlockSize  int // bytes per I/O, a multiple of the LUN's block size
	QueueDepth int
	// Duration ends the run after this long; IOs ends it after that many
	// I/Os have been issued. Whichever comes first ends it; 0 means no
	// such bound, and at least one must be given.
	Duration time.Duration
	IOs      uint64
	LUN      uint64
	// Span bounds the region used, in bytes from LBA 0; 0 means the whole
	// LUN. It is rounded down to a multiple of BlockSize.
	Span int64
	// Seed makes random offsets reproducible.
	Seed uint64
}

// Capacity is what READ CAPACITY(16) reports.
type Capacity struct {
	Blocks    uint64 // number of logical blocks
	BlockSize uint32 // bytes per logical block
}

// Bytes is the LUN size in bytes.
func (c Capacity) Bytes() int64 { return int64(c.Blocks) * int64(c.BlockSize) }

// Result is the outcome of a run.
type Result struct {
	IOs     uint64
	Bytes   uint64
	Elapsed time.Duration
	// LatencySum is the sum of per-command latencies.
	LatencySum time.Duration
	// Latency is the distribution of per-command latencies.
	Latency *Histogram
}

// IOPS is I/Os per second.
func (r Result) IOPS() float64 { return float64(r.IOs) / r.Elapsed.Seconds() }

// MBps is megabytes (10^6 bytes) per second.
func (r Result) MBps() float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / 1e6 }

// MeanLatency is the average command latency.
func (r Result) MeanLatency() time.Duration {
	if r.IOs == 0 {
		return 0
	}
	return r.LatencySum / time.Duration(r.IOs)
}

// StatusError is a command that completed with a status other than GOOD.
type StatusError struct {
	Op       byte
	Response byte
	Status   byte
	Sense    []byte
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("command 0x%02x: service response 0x%02x, status 0x%02x, sense % x", e.Op, e.Response, e.Status, e.Sense)
}

// check turns a response into an error unless it is GOOD.
func check(op byte, r *initiator.Response) error {
	if r.Response != 0 || r.Status != 0 {
		return &StatusError{Op: op, Response: r.Response, Status: r.Status, Sense: r.Sense}
	}
	return nil
}

// Prepare clears the unit attentions a new I_T nexus starts with (TEST UNIT
// READY until GOOD) and returns the LUN's capacity.
func Prepare(ctx context.Context, d Doer, lun uint64) (Capacity, error) {
	var err error
	for range 8 {
		var r *initiator.Response
		r, err = d.Do(ctx, &initiator.Command{LUN: lun, CDB: make([]byte, 6)})
		if err != nil {
			return Capacity{}, fmt.Errorf("test unit ready: %w", err)
		}
		if err = check(0, r); err == nil {
			break
		}
	}
	if err != nil {
		return Capacity{}, fmt.Errorf("LUN %d not ready: %w", lun, err)
	}
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10 // SERVICE ACTION IN(16) / READ CAPACITY(16)
	binary.BigEndian.PutUint32(cdb[10:], 32)
	r, err := d.Do(ctx, &initiator.Command{LUN: lun, CDB: cdb, ReadLen: 32})
	if err != nil {
		return Capacity{}, fmt.Errorf("read capacity: %w", err)
	}
	if err := check(cdb[0], r); err != nil {
		return Capacity{}, fmt.Errorf("read capacity: %w", err)
	}
	if len(r.Data) < 12 {
		return Capacity{}, fmt.Errorf("read capacity: %d bytes of parameter data, want 12", len(r.Data))
	}
	c := Capacity{Blocks: binary.BigEndian.Uint64(r.Data) + 1, BlockSize: binary.BigEndian.Uint32(r.Data[8:])}
	if c.BlockSize == 0 {
		return Capacity{}, errors.New("read capacity: block size 0")
	}
	return c, nil
}

// offsets hands out I/O offsets: random ones from a per-worker generator
// or the next sequential one from a shared cursor that wraps at the span.
type offsets struct {
	slots  uint64 // span / block size
	bs     int64
	cursor atomic.Uint64
}

// newOffsets checks the run's geometry against the LUN.
func newOffsets(cfg Config, capa Capacity) (*offsets, error) {
	switch {
	case cfg.BlockSize <= 0 || cfg.BlockSize%int(capa.BlockSize) != 0:
		return nil, fmt.Errorf("I/O size %d is not a positive multiple of the LUN's %d-byte blocks", cfg.BlockSize, capa.BlockSize)
	case cfg.Span < 0:
		return nil, fmt.Errorf("span %d is negative", cfg.Span)
	}
	span := capa.Bytes()
	if cfg.Span > 0 {
		span = min(span, cfg.Span)
	}
	slots := span / int64(cfg.BlockSize)
	if slots == 0 {
		return nil, fmt.Errorf("span of %d bytes holds no %d-byte I/O", span, cfg.BlockSize)
	}
	return &offsets{slots: uint64(slots), bs: int64(cfg.BlockSize)}, nil
}

// next returns the byte offset of the next I/O.
func (o *offsets) next(rng *rand.Rand) int64 {
	var slot uint64
	if rng != nil {
		slot = rng.Uint64N(o.slots)
	} else {
		slot = (o.cursor.Add(1) - 1) % o.slots
	}
	return int64(slot) * o.bs
}

// ErrNoIO means a run ended without completing a single I/O: its figures
// would measure nothing.
var ErrNoIO = errors.New("no I/O completed")

// Run keeps QueueDepth commands in flight for Duration (or until IOs have
// been issued), then lets the ones in flight complete (so that none is left
// behind on the connection), and returns what completed. A failed command
// ends the run with its error; so does the end of ctx; a run in which no
// I/O completed fails with ErrNoIO.
func Run(parent context.Context, d Doer, capa Capacity, cfg Config) (Result, error) {
	if cfg.QueueDepth <= 0 {
		return Result{}, fmt.Errorf("queue depth %d: want at least 1", cfg.QueueDepth)
	}
	if cfg.Duration < 0 || (cfg.Duration == 0 && cfg.IOs == 0) {
		return Result{}, fmt.Errorf("duration %v, I/O count %d: want a positive duration, a count or both", cfg.Duration, cfg.IOs)
	}
	offs, err := newOffsets(cfg, capa)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithCancel(parent) // cancelled by the first failure
	defer cancel()
	var (
		ios, latency atomic.Uint64
		issued       atomic.Uint64
		wg           sync.WaitGroup
		errOnce      sync.Once
		firstErr     error
		histMu       sync.Mutex
		hist         = new(Histogram)
	)
	blocks := uint32(cfg.BlockSize / int(capa.BlockSize))
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	more := func() bool {
		return ctx.Err() == nil && (cfg.Duration == 0 || time.Now().Before(deadline)) &&
			(cfg.IOs == 0 || issued.Add(1) <= cfg.IOs)
	}
	for w := range cfg.QueueDepth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rng *rand.Rand
			if cfg.Pattern.Random() {
				rng = rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			}
			h := new(Histogram) // this worker's, merged at its end
			defer func() {
				histMu.Lock()
				hist.Merge(h)
				histMu.Unlock()
			}()
			cmd := initiator.Command{LUN: cfg.LUN, Attr: 1}
			if cfg.Pattern.Write() {
				cmd.DataOut = make([]byte, cfg.BlockSize)
				for i := range cmd.DataOut {
					cmd.DataOut[i] = byte(i*7 + w)
				}
			} else {
				cmd.ReadLen = uint32(cfg.BlockSize)
			}
			for more() {
				lba := uint64(offs.next(rng) / int64(capa.BlockSize))
				if cfg.Pattern.Write() {
					cmd.CDB = initiator.Write16(lba, blocks)
				} else {
					cmd.CDB = initiator.Read16(lba, blocks)
				}
				t0 := time.Now()
				r, err := d.Do(ctx, &cmd)
				if err == nil {
					err = check(cmd.CDB[0], r)
				}
				if err != nil {
					if ctx.Err() != nil {
						return // another worker failed, or the caller gave up
					}
					errOnce.Do(func() {
						firstErr = fmt.Errorf("%v at LBA %d: %w", cfg.Pattern, lba, err)
						cancel()
					})
					return
				}
				lat := time.Since(t0)
				latency.Add(uint64(lat))
				h.Record(lat)
				ios.Add(1)
			}
		}()
	}
	wg.Wait()
	res := Result{IOs: ios.Load(), Elapsed: time.Since(start), LatencySum: time.Duration(latency.Load()), Latency: hist}
	res.Bytes = res.IOs * uint64(cfg.BlockSize)
	if firstErr == nil && parent.Err() != nil {
		firstErr = fmt.Errorf("%v run interrupted: %w", cfg.Pattern, parent.Err())
	}
	if firstErr == nil && res.IOs == 0 {
		firstErr = fmt.Errorf("%v run of %v: %w", cfg.Pattern, res.Elapsed.Round(time.Millisecond), ErrNoIO)
	}
	return res, firstErr
}

// Keys are the operational keys the load generator offers: no digests,
// immediate and unsolicited data, large bursts (each target lowers them to
// what it supports).
var Keys = []iscsi.KV{
	{Key: "HeaderDigest", Value: "None"},
	{Key: "DataDigest", Value: "None"},
	{Key: "InitialR2T", Value: "No"},
	{Key: "ImmediateData", Value: "Yes"},
	{Key: "MaxRecvDataSegmentLength", Value: "262144"},
	{Key: "MaxBurstLength", Value: "1048576"},
	{Key: "FirstBurstLength", Value: "262144"},
	{Key: "MaxOutstandingR2T", Value: "1"},
	{Key: "ErrorRecoveryLevel", Value: "0"},
}

// Connect dials portal and logs in to target as initiatorName with Keys.
func Connect(ctx context.Context, portal, initiatorName, target string) (*initiator.Conn, error) {
	c, err := initiator.Dial(ctx, portal)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", target, err)
	}
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: initiatorName, TargetName: target, Keys: Keys}); err != nil {
		c.Close()
		return nil, fmt.Errorf("log in to %s at %s: %w", target, portal, err)
	}
	return c, nil
}
