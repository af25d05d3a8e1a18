package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/iserd/iserd/bdev"
)

// SANITIZE service actions (SBC-4 5.30).
const (
	sanOverwrite   = 0x01
	sanBlockErase  = 0x02
	sanCryptoErase = 0x03 // not supported: no encryption, so INVALID FIELD IN CDB
	sanExitFailure = 0x1f
)

// SANITIZE CDB byte 1 and OVERWRITE parameter list (SBC-4 5.30.2) fields.
const (
	opSanitize     = 0x48
	sanImmed       = 0x80 // CDB byte 1: return status once the operation started
	sanAUSE        = 0x20 // CDB byte 1: EXIT FAILURE MODE may end a failure of this operation
	owInvert       = 0x80 // parameter byte 0: invert the pattern between passes
	owTest         = 0x60 // parameter byte 0: TEST, vendor specific, refused
	owCount        = 0x1f // parameter byte 0: OVERWRITE COUNT
	owHeaderLen    = 4    // parameter bytes before the INITIALIZATION PATTERN
	sanPaceDivisor = 8    // a rate-limited overwrite writes rate/8 bytes per step
)

// sanitizeOp is a sanitize operation as the state file keeps it, so that
// one interrupted by a restart resumes when the logical unit opens again
// (a disk resumes its sanitize after a power cycle), and a failed one
// keeps the unit in sanitize failure mode.
type sanitizeOp struct {
	SA      byte   `json:"sa"`                // sanOverwrite or sanBlockErase
	Pattern []byte `json:"pattern,omitempty"` // OVERWRITE: the initialization pattern
	Passes  int    `json:"passes,omitempty"`  // OVERWRITE: OVERWRITE COUNT
	Invert  bool   `json:"invert,omitempty"`  // OVERWRITE: INVERT
	AUSE    bool   `json:"ause,omitempty"`
	Failed  bool   `json:"failed,omitempty"` // it ended with an error
}

// sanitizeState is the sanitize condition of a logical unit: an operation
// running, or one that failed (the unit is in sanitize failure mode).
type sanitizeState struct {
	op    sanitizeOp
	total uint64        // blocks to process: capacity × passes
	done  atomic.Uint64 // blocks processed
	// waiter is the SANITIZE without IMMED that ends with the operation;
	// nil once it was completed or aborted.
	waiter atomic.Pointer[Command]
}

var errSanitizeStopped = errors.New("sanitize stopped: the logical unit is closing")

// sanitize implements SANITIZE. OVERWRITE writes the initialization
// pattern over every block OVERWRITE COUNT times, inverted between passes
// with INVERT (the last pass writes it as given), at most
// DiskConfig.SanitizeRate bytes per second; BLOCK ERASE (thin units only)
// deallocates every block, which then reads as zeroes. The operation runs
// on its own goroutine with the whole medium locked against writes; until
// it ends, commands other than INQUIRY, REPORT LUNS and REQUEST SENSE fail
// with SANITIZE IN PROGRESS and its progress. Task management and resets
// do not stop it (an aborted SANITIZE command ends, its operation goes on);
// closing the unit does, and it resumes at the next open. An operation that
// fails leaves the unit in sanitize failure mode: until a later sanitize
// succeeds, or EXIT FAILURE MODE when AUSE was set, commands fail with
// SANITIZE COMMAND FAILED. With IMMED the command completes once the
// operation started.
func (d *Disk) sanitize(c *Command) result {
	cdb := c.CDB
	plen := int(binary.BigEndian.Uint16(cdb[7:]))
	c.Wanted = plen
	sa := cdb[1] & 0x1f
	if sa != sanOverwrite && plen != 0 {
		return fail(invalidCDB(7, 7))
	}
	if sa == sanOverwrite && (plen < owHeaderLen+1 || plen > owHeaderLen+d.blockSize()) {
		return fail(invalidCDB(7, 7))
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	op := sanitizeOp{SA: sa, AUSE: cdb[1]&sanAUSE != 0}
	prev := d.san.Load()
	if prev != nil && !prev.op.Failed {
		return fail(d.sanitizeSense(prev))
	}
	if sa == sanExitFailure {
		return d.exitSanitizeFailure(prev)
	}
	if prev != nil && !prev.op.AUSE && op.AUSE {
		// A failure in restricted completion mode is only left by a
		// sanitize that is restricted too.
		return fail(invalidCDB(1, 5))
	}
	if sa == sanOverwrite {
		if len(c.DataOut) < plen {
			return fail(illegal(ascParamListLength))
		}
		p := c.DataOut[:plen]
		switch {
		case p[0]&owCount == 0:
			return fail(invalidParam(0, 4))
		case p[0]&owTest != 0:
			return fail(invalidParam(0, 6))
		case int(binary.BigEndian.Uint16(p[2:]))+owHeaderLen != plen:
			return fail(invalidParam(2, 7))
		}
		op.Pattern = append([]byte(nil), p[owHeaderLen:]...)
		op.Passes = int(p[0] & owCount)
		op.Invert = p[0]&owInvert != 0
	}
	st := d.newSanitizeState(op)
	if cdb[1]&sanImmed == 0 {
		st.waiter.Store(c)
	}
	if !d.san.CompareAndSwap(prev, st) {
		return fail(senseData{key: keyNotReady, code: ascSanitizeInProgress})
	}
	if err := d.saveSanitize(&op); err != nil {
		d.san.CompareAndSwap(st, prev)
		return fail(senseData{key: keyAbortedCommand, code: ascInternalTargetFailure})
	}
	d.startSanitize(st)
	if cdb[1]&sanImmed != 0 {
		return good
	}
	return pending
}

// exitSanitizeFailure implements EXIT FAILURE MODE: it ends the failure
// mode of an operation that had AUSE set, is refused after one that had
// not, and does nothing when no sanitize failed.
func (d *Disk) exitSanitizeFailure(failed *sanitizeState) result {
	if failed == nil {
		return good
	}
	if !failed.op.AUSE {
		return fail(invalidCDB(1, 4))
	}
	if err := d.removeSanitizeState(); err != nil {
		return fail(senseData{key: keyAbortedCommand, code: ascInternalTargetFailure})
	}
	d.san.CompareAndSwap(failed, nil)
	return good
}

// newSanitizeState prepares op to run over the current capacity.
func (d *Disk) newSanitizeState(op sanitizeOp) *sanitizeState {
	st := &sanitizeState{op: op, total: d.blocks()}
	if op.SA == sanOverwrite {
		st.total *= uint64(op.Passes)
	}
	return st
}

// startSanitize runs st on its own goroutine; Close waits for it.
func (d *Disk) startSanitize(st *sanitizeState) {
	d.sanWG.Add(1)
	go func() {
		defer d.sanWG.Done()
		d.finishSanitize(st, d.runSanitize(st))
	}()
}

// finishSanitize records how st ended and completes its waiting command.
func (d *Disk) finishSanitize(st *sanitizeState, err error) {
	r := good
	switch {
	case errors.Is(err, errSanitizeStopped):
		// The state file stays: the operation resumes at the next open.
		r = fail(illegal(ascLUNotSupported))
	case err != nil:
		op := st.op
		op.Failed = true
		failed := &sanitizeState{op: op}
		d.san.Store(failed)
		r = fail(senseData{key: keyMediumError, code: ascSanitizeFailed})
		if serr := d.saveSanitize(&op); serr != nil {
			r = fail(senseData{key: keyAbortedCommand, code: ascInternalTargetFailure})
		}
	default:
		if rerr := d.removeSanitizeState(); rerr != nil {
			r = fail(senseData{key: keyAbortedCommand, code: ascInternalTargetFailure})
		}
		d.san.Store(nil)
	}
	if c := st.waiter.Swap(nil); c != nil {
		d.complete(c, r)
	}
}

// runSanitize performs st's operation under an exclusive lock of the
// whole medium.
func (d *Disk) runSanitize(st *sanitizeState) error {
	blocks := d.blocks()
	lock := lockReq{lba: 0, n: blocks, excl: true}
	granted := make(chan struct{})
	lock.grant = func() { close(granted) }
	if !d.locks.acquire(&lock) {
		<-granted
	}
	defer d.locks.release(&lock)
	if st.op.SA == sanBlockErase {
		if err := d.syncIO(nil, &bdev.Request{Op: bdev.OpUnmap, Length: int64(blocks) << d.shift}); err != nil {
			return fmt.Errorf("sanitize block erase: %w", err)
		}
		st.done.Store(st.total)
		return d.flushSanitize()
	}
	bs := d.blockSize()
	chunk := wsChunk
	if rate := d.cfg.SanitizeRate; rate > 0 {
		chunk = int(min(max(rate/sanPaceDivisor, int64(bs)), wsChunk)) &^ (bs - 1)
	}
	chunk = int(min(uint64(chunk), blocks<<d.shift))
	bufs := [2][]byte{patternBuf(st.op.Pattern, bs, chunk, false)}
	if st.op.Invert && st.op.Passes > 1 {
		bufs[1] = patternBuf(st.op.Pattern, bs, chunk, true)
	}
	start, written := time.Now(), int64(0)
	for pass := range st.op.Passes {
		buf := bufs[0]
		if st.op.Invert && (st.op.Passes-1-pass)%2 == 1 {
			buf = bufs[1]
		}
		for lba := uint64(0); lba < blocks; {
			n := min(blocks-lba, uint64(len(buf))>>d.shift)
			req := &bdev.Request{Op: bdev.OpWrite, Offset: int64(lba) << d.shift, Buf: buf[:n<<d.shift]}
			if err := d.syncIO(nil, req); err != nil {
				return fmt.Errorf("sanitize overwrite pass %d at LBA %d: %w", pass+1, lba, err)
			}
			lba += n
			st.done.Add(n)
			written += int64(n) << d.shift
			if !d.paceSanitize(start, written) {
				return errSanitizeStopped
			}
		}
	}
	return d.flushSanitize()
}

// flushSanitize makes the sanitized medium stable.
func (d *Disk) flushSanitize() error {
	if err := d.syncIO(nil, &bdev.Request{Op: bdev.OpFlush}); err != nil {
		return fmt.Errorf("sanitize flush: %w", err)
	}
	return nil
}

// paceSanitize waits until written bytes since start keep to the
// configured sanitize rate. It returns false when the unit is closing.
func (d *Disk) paceSanitize(start time.Time, written int64) bool {
	if rate := d.cfg.SanitizeRate; rate > 0 {
		due := start.Add(time.Duration(float64(written) / float64(rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-d.sanStop:
				return false
			case <-t.C:
				return true
			}
		}
	}
	select {
	case <-d.sanStop:
		return false
	default:
		return true
	}
}

// patternBuf returns n bytes of logical blocks of size bs, each filled
// with pattern from its first byte, every bit flipped when invert is set.
func patternBuf(pattern []byte, bs, n int, invert bool) []byte {
	buf := alignedBuf(n)
	for off := 0; off < n; off += bs {
		for i := off; i < off+bs; i += len(pattern) {
			copy(buf[i:off+bs], pattern)
		}
	}
	if invert {
		for i := range buf {
			buf[i] = ^buf[i]
		}
	}
	return buf
}

// sanitizeSense is what commands refused because of st get: SANITIZE IN
// PROGRESS with the progress indication (SPC-4 4.5.2.4.4) in the
// sense-key specific bytes, or SANITIZE COMMAND FAILED.
func (d *Disk) sanitizeSense(st *sanitizeState) senseData {
	if st.op.Failed {
		return senseData{key: keyMediumError, code: ascSanitizeFailed}
	}
	s := senseData{key: keyNotReady, code: ascSanitizeInProgress, hasSKS: true}
	if st.total > 0 {
		p := min(st.done.Load(), st.total) * 65536 / st.total
		p = min(p, 0xffff)
		s.sks = [3]byte{0x80, byte(p >> 8), byte(p)}
	}
	return s
}

// sanitizePath is where the logical unit keeps its sanitize state.
func (d *Disk) sanitizePath() string {
	return filepath.Join(d.cfg.StateDir, fmt.Sprintf("sanitize-%015x.state", d.cfg.NAA))
}

// saveSanitize records op (running or failed) in the state file; without
// a state directory nothing survives a restart.
func (d *Disk) saveSanitize(op *sanitizeOp) error {
	if d.cfg.StateDir == "" {
		return nil
	}
	b, err := encodeState(sanitizeMagic, op)
	if err != nil {
		return fmt.Errorf("encode sanitize state: %w", err)
	}
	return writeFileAtomic(d.sanitizePath(), b)
}

// removeSanitizeState forgets the sanitize state once the unit is ready.
func (d *Disk) removeSanitizeState() error {
	if d.cfg.StateDir == "" {
		return nil
	}
	path := d.sanitizePath()
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove sanitize state: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// loadSanitize restores the sanitize state at open: a failed operation
// puts the unit in sanitize failure mode, an interrupted one starts over.
func (d *Disk) loadSanitize() error {
	if d.cfg.StateDir == "" {
		return nil
	}
	path := d.sanitizePath()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read sanitize state: %w", err)
	}
	op, err := decodeSanitize(b, d.blockSize())
	if err != nil {
		return fmt.Errorf("sanitize state %s: %w", path, err)
	}
	st := d.newSanitizeState(*op)
	d.san.Store(st)
	if !op.Failed {
		d.startSanitize(st)
	}
	return nil
}

// decodeSanitize checks and decodes a sanitize state file for a unit with
// bs-byte blocks.
func decodeSanitize(b []byte, bs int) (*sanitizeOp, error) {
	var op sanitizeOp
	if err := decodeState(b, sanitizeMagic, &op); err != nil {
		return nil, err
	}
	switch op.SA {
	case sanBlockErase:
		if len(op.Pattern) != 0 || op.Passes != 0 || op.Invert {
			return nil, errors.New("block erase with overwrite parameters")
		}
	case sanOverwrite:
		if len(op.Pattern) == 0 || len(op.Pattern) > bs || op.Passes < 1 || op.Passes > owCount {
			return nil, fmt.Errorf("overwrite with a %d-byte pattern and %d passes", len(op.Pattern), op.Passes)
		}
	default:
		return nil, fmt.Errorf("service action %#x", op.SA)
	}
	return &op, nil
}

// abortSanitize ends c now when it is the SANITIZE waiting for the
// running operation, which goes on. The completion runs on another
// goroutine: the caller may hold transport locks.
func (d *Disk) abortSanitize(c *Command) {
	if st := d.san.Load(); st != nil && st.waiter.CompareAndSwap(c, nil) {
		go d.complete(c, abortedResult)
	}
}
