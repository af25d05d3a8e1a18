package scsi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
)

func cdbSanitize(immed bool, sa byte, plen int) []byte {
	b := []byte{0x48, sa, 0, 0, 0, 0, 0, 0, 0, 0}
	if immed {
		b[1] |= 0x80
	}
	binary.BigEndian.PutUint16(b[7:], uint16(plen))
	return b
}

func TestSanitize(t *testing.T) {
	// A small unit: OVERWRITE touches every block of the (sparse) memory.
	h := newHarnessOn(t, bdev.NewMemory(8<<20), DiskConfig{Thin: true, BlockSize: 512})
	h.mustGood(h.a, cdb10(0x2a, 9, 1), bytes.Repeat([]byte{0xee}, 512)...)
	overwrite := append([]byte{0x01, 0, 0, 3}, "abc"...)
	h.mustGood(h.a, cdbSanitize(false, sanOverwrite, len(overwrite)), overwrite...)
	if got := data(h.mustGood(h.a, cdb10(0x28, 9, 1))); !bytes.Equal(got, bytes.Repeat([]byte("abc"), 171)[:512]) {
		t.Fatalf("after overwrite: % x", got[:16])
	}
	// BLOCK ERASE with IMMED: GOOD at once, then SANITIZE IN PROGRESS until done.
	h.mustGood(h.a, cdbSanitize(true, sanBlockErase, 0))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := h.run(h.a, cdbTUR())
		if c.Status == StatusGood {
			break
		}
		if s := senseOf(c); s.key != keyNotReady || s.code != ascSanitizeInProgress || time.Now().After(deadline) {
			t.Fatalf("TUR during sanitize: %#x %+v", c.Status, s)
		}
	}
	if got := data(h.mustGood(h.a, cdb10(0x28, 9, 1))); !bytes.Equal(got, make([]byte, 512)) {
		t.Fatal("block erase left data behind")
	}
	h.mustGood(h.a, cdbSanitize(false, sanExitFailure, 0))
	tests := []struct {
		name   string
		cdb    []byte
		params []byte
		code   asc
	}{
		{"crypto erase", cdbSanitize(false, sanCryptoErase, 0), nil, ascInvalidFieldInCDB},
		{"block erase with data", cdbSanitize(false, sanBlockErase, 4), make([]byte, 4), ascInvalidFieldInCDB},
		{"pattern too long", cdbSanitize(false, sanOverwrite, 4+513), make([]byte, 517), ascInvalidFieldInCDB},
		{"zero count", cdbSanitize(false, sanOverwrite, 5), []byte{0, 0, 0, 1, 7}, ascInvalidFieldInParam},
		{"length mismatch", cdbSanitize(false, sanOverwrite, 6), []byte{1, 0, 0, 1, 7, 7}, ascInvalidFieldInParam},
	}
	for _, tt := range tests {
		c := h.exec(h.a, 0, tt.cdb, tt.params, 0)
		if s := senseOf(c); s.code != tt.code {
			t.Errorf("%s: %#x %+v, want %04x", tt.name, c.Status, s, tt.code)
		}
	}
	// Block erase exists only on thin units.
	thick := newHarness(t, DiskConfig{})
	if c := thick.run(thick.a, cdbSanitize(false, sanBlockErase, 0)); senseOf(c).code != ascInvalidFieldInCDB {
		t.Fatalf("block erase on a thick unit: %#x %+v", c.Status, senseOf(c))
	}
}

// overwriteParams is an OVERWRITE parameter list.
func overwriteParams(passes byte, invert bool, pattern []byte) []byte {
	b := []byte{passes, 0, 0, 0}
	if invert {
		b[0] |= owInvert
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(pattern)))
	return append(b, pattern...)
}

// faultDev wraps a device: it records the first byte of every write at
// offset 0 and, while failing is set, fails writes with a medium error.
// Close leaves the wrapped device open, so a disk can be opened over it
// again.
type faultDev struct {
	bdev.Device
	mu      sync.Mutex
	first   []byte
	failing bool
}

func (f *faultDev) Submit(r *bdev.Request) {
	if r.Op == bdev.OpWrite {
		f.mu.Lock()
		if r.Offset == 0 {
			f.first = append(f.first, r.Buf[0])
		}
		fail := f.failing
		f.mu.Unlock()
		if fail {
			r.Err = fmt.Errorf("%w: injected", bdev.ErrMedium)
			r.Done(r)
			return
		}
	}
	f.Device.Submit(r)
}

func (f *faultDev) Close() error { return nil }

func (f *faultDev) setFailing(on bool) {
	f.mu.Lock()
	f.failing = on
	f.mu.Unlock()
}

func (f *faultDev) firstBytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.first...)
}

// requestSense returns the sense data REQUEST SENSE from n reports.
func (h *harness) requestSense(n *Nexus) senseData {
	h.t.Helper()
	var r Command
	r.SenseLen = copy(r.Sense[:], data(h.mustGood(n, []byte{0x03, 0, 0, 0, 252, 0})))
	return senseOf(&r)
}

// waitSanitized polls TEST UNIT READY from n until the sanitize is over
// (unit attentions are consumed on the way).
func (h *harness) waitSanitized(n *Nexus) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := h.run(n, cdbTUR())
		s := senseOf(c)
		switch {
		case c.Status == StatusGood:
			return
		case s.key == keyUnitAttention:
		case s.key != keyNotReady || s.code != ascSanitizeInProgress:
			h.t.Fatalf("TUR while waiting for the sanitize: %#x %+v", c.Status, s)
		}
		if time.Now().After(deadline) {
			h.t.Fatal("sanitize still running after 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inProgress fails unless a TUR from n reports SANITIZE IN PROGRESS.
func (h *harness) inProgress(n *Nexus, when string) {
	h.t.Helper()
	c := h.run(n, cdbTUR())
	if s := senseOf(c); s.key != keyNotReady || s.code != ascSanitizeInProgress || !s.hasSKS || s.sks[0] != 0x80 {
		h.t.Fatalf("TUR %s: %#x %+v, want SANITIZE IN PROGRESS with progress", when, c.Status, s)
	}
}

// TestSanitizeOverwritePasses: OVERWRITE COUNT passes are written, every
// other one inverted with INVERT so that the last is the pattern as given.
func TestSanitizeOverwritePasses(t *testing.T) {
	pattern := []byte{0x5a, 0x01}
	p, q := pattern[0], ^pattern[0]
	tests := []struct {
		passes byte
		invert bool
		want   []byte
	}{
		{1, false, []byte{p}},
		{1, true, []byte{p}},
		{2, false, []byte{p, p}},
		{2, true, []byte{q, p}},
		{3, true, []byte{p, q, p}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d passes invert %v", tt.passes, tt.invert), func(t *testing.T) {
			dev := &faultDev{Device: bdev.NewMemory(1 << 20)}
			h := newHarnessOn(t, dev, DiskConfig{BlockSize: 512})
			params := overwriteParams(tt.passes, tt.invert, pattern)
			h.mustGood(h.a, cdbSanitize(false, sanOverwrite, len(params)), params...)
			if got := dev.firstBytes(); !bytes.Equal(got, tt.want) {
				t.Fatalf("first byte of each pass: % x, want % x", got, tt.want)
			}
			if got := data(h.mustGood(h.a, cdb10(0x28, 2047, 1))); !bytes.Equal(got, bytes.Repeat(pattern, 256)) {
				t.Fatalf("last block after the overwrite: % x", got[:8])
			}
		})
	}
}

// TestSanitizeRateAndProgress: a rate-limited OVERWRITE takes at least
// size/rate, and REQUEST SENSE and TEST UNIT READY report its progress
// meanwhile, never going back.
func TestSanitizeRateAndProgress(t *testing.T) {
	const size, rate = 1 << 20, 1 << 20
	h := newHarnessOn(t, bdev.NewMemory(size), DiskConfig{BlockSize: 512, SanitizeRate: rate})
	params := overwriteParams(1, false, []byte{0xa5})
	start := time.Now()
	h.mustGood(h.a, cdbSanitize(true, sanOverwrite, len(params)), params...)
	var seen []uint16
	for {
		s := h.requestSense(h.a)
		if s.code == ascNoAdditional {
			break
		}
		if s.key != keyNotReady || s.code != ascSanitizeInProgress || !s.hasSKS {
			t.Fatalf("REQUEST SENSE during the sanitize: %+v", s)
		}
		seen = append(seen, binary.BigEndian.Uint16(s.sks[1:]))
		if c := h.run(h.b, cdbTUR()); c.Status != StatusGood { // GOOD: it ended since REQUEST SENSE
			if s := senseOf(c); s.key != keyNotReady || s.code != ascSanitizeInProgress || !s.hasSKS || s.sks[0] != 0x80 {
				t.Fatalf("TUR during the sanitize: %#x %+v, want SANITIZE IN PROGRESS with progress", c.Status, s)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(start); took < time.Second*size/rate*9/10 {
		t.Fatalf("1 MiB at 1 MiB/s took %v", took)
	}
	var between bool
	for i, p := range seen {
		if i > 0 && p < seen[i-1] {
			t.Fatalf("progress went back: %v", seen)
		}
		between = between || p > 0 && p < 0xffff
	}
	if !between {
		t.Fatalf("no progress between start and end reported: %v", seen)
	}
}

// TestSanitizeSurvivesTaskManagement: aborting a SANITIZE ends the command
// at once but not its operation; resets do not stop it either.
func TestSanitizeSurvivesTaskManagement(t *testing.T) {
	h := newHarnessOn(t, bdev.NewMemory(1<<20), DiskConfig{BlockSize: 512, SanitizeRate: 512 << 10})
	params := overwriteParams(1, false, []byte{0x3c})
	done := make(chan *Command, 1)
	c := &Command{Nexus: h.a, CDB: cdbSanitize(false, sanOverwrite, len(params)), DataOut: params}
	c.Done = func(c *Command) { done <- c }
	h.tgt.Execute(c)
	h.inProgress(h.b, "after SANITIZE")
	h.tgt.Abort(c)
	select {
	case got := <-done:
		if got.Status != StatusTaskAborted {
			t.Fatalf("aborted SANITIZE: status %#x", got.Status)
		}
	case <-time.After(time.Second):
		t.Fatal("aborted SANITIZE not completed within 1 s")
	}
	h.inProgress(h.b, "after ABORT TASK")
	h.tgt.Abort(c) // completed already: nothing happens
	if err := h.tgt.LogicalUnitReset(h.a, 0); err != nil {
		t.Fatal(err)
	}
	h.tgt.TargetReset(h.a, true)
	for range 2 { // the resets' unit attentions
		if s := senseOf(h.run(h.b, cdbTUR())); s.key != keyUnitAttention {
			t.Fatalf("TUR after the resets: %+v, want their unit attention", s)
		}
	}
	h.inProgress(h.b, "after the resets")
	h.waitSanitized(h.b)
	if got := data(h.mustGood(h.b, cdb10(0x28, 0, 1))); !bytes.Equal(got, fill(512, 0x3c)) {
		t.Fatalf("after the sanitize: % x", got[:8])
	}
	select {
	case <-done:
		t.Fatal("the aborted SANITIZE completed again")
	default:
	}
}

// TestSanitizeResumesAfterRestart: closing the unit stops a running
// sanitize, which starts over when the unit opens again with its state.
func TestSanitizeResumesAfterRestart(t *testing.T) {
	dev := &faultDev{Device: bdev.NewMemory(1 << 20)}
	cfg := DiskConfig{BlockSize: 512, SanitizeRate: 256 << 10, NAA: 0x123, StateDir: t.TempDir()}
	h := newHarnessOn(t, dev, cfg)
	params := overwriteParams(1, false, []byte{0x77})
	done := make(chan *Command, 1)
	c := &Command{Nexus: h.a, CDB: cdbSanitize(false, sanOverwrite, len(params)), DataOut: params}
	c.Done = func(c *Command) { done <- c }
	h.tgt.Execute(c)
	h.inProgress(h.b, "after SANITIZE")
	if _, err := h.tgt.RemoveLUN(0); err != nil {
		t.Fatal(err)
	}
	if err := h.disk.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if s := senseOf(got); s.code != ascLUNotSupported {
			t.Fatalf("SANITIZE waiting when the unit closed: %#x %+v", got.Status, s)
		}
	default:
		t.Fatal("Close returned with the SANITIZE still waiting")
	}
	state := filepath.Join(cfg.StateDir, "sanitize-000000000000123.state")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no sanitize state after an interrupted sanitize: %v", err)
	}
	again := newHarnessOn(t, dev, cfg)
	again.inProgress(again.a, "after reopening")
	again.waitSanitized(again.a)
	if got := data(again.mustGood(again.a, cdb10(0x28, 2047, 1))); !bytes.Equal(got, fill(512, 0x77)) {
		t.Fatalf("after the resumed sanitize: % x", got[:8])
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("sanitize state left after the sanitize ended: %v", err)
	}
}

// TestSanitizeFailureMode: a sanitize that fails leaves the unit in
// sanitize failure mode, across a restart, until a sanitize succeeds or
// EXIT FAILURE MODE ends a failure that had AUSE set.
func TestSanitizeFailureMode(t *testing.T) {
	dev := &faultDev{Device: bdev.NewMemory(1 << 20)}
	cfg := DiskConfig{BlockSize: 512, NAA: 0x456, StateDir: t.TempDir()}
	h := newHarnessOn(t, dev, cfg)
	params := overwriteParams(1, false, []byte{0x11})
	overwrite := func(h *harness, ause bool) *Command {
		cdb := cdbSanitize(false, sanOverwrite, len(params))
		if ause {
			cdb[1] |= sanAUSE
		}
		return h.exec(h.a, 0, cdb, params, 0)
	}
	exitFailure := func(h *harness) *Command { return h.run(h.a, cdbSanitize(false, sanExitFailure, 0)) }
	failed := func(h *harness, what string, c *Command) {
		t.Helper()
		if s := senseOf(c); s.key != keyMediumError || s.code != ascSanitizeFailed {
			t.Fatalf("%s: %#x %+v, want SANITIZE COMMAND FAILED", what, c.Status, s)
		}
	}
	invalidCDB := func(what string, c *Command) {
		t.Helper()
		if s := senseOf(c); s.code != ascInvalidFieldInCDB {
			t.Fatalf("%s: %#x %+v, want INVALID FIELD IN CDB", what, c.Status, s)
		}
	}

	dev.setFailing(true)
	failed(h, "SANITIZE on a failing medium", overwrite(h, false))
	failed(h, "READ after it", h.run(h.a, cdb10(0x28, 0, 1)))
	if s := h.requestSense(h.a); s.key != keyMediumError || s.code != ascSanitizeFailed {
		t.Fatalf("REQUEST SENSE after it: %+v, want SANITIZE COMMAND FAILED", s)
	}
	h.mustGood(h.a, cdbInquiry(false, 0, 96))
	invalidCDB("EXIT FAILURE MODE after a restricted failure", exitFailure(h))
	invalidCDB("unrestricted SANITIZE after a restricted failure", overwrite(h, true))

	// The failure survives a restart.
	if _, err := h.tgt.RemoveLUN(0); err != nil {
		t.Fatal(err)
	}
	if err := h.disk.Close(); err != nil {
		t.Fatal(err)
	}
	h = newHarnessOn(t, dev, cfg)
	failed(h, "READ after a restart", h.run(h.a, cdb10(0x28, 0, 1)))

	dev.setFailing(false)
	h.mustGood(h.a, cdbSanitize(false, sanOverwrite, len(params)), params...)
	h.mustGood(h.a, cdb10(0x28, 0, 1))

	dev.setFailing(true)
	failed(h, "unrestricted SANITIZE on a failing medium", overwrite(h, true))
	dev.setFailing(false)
	h.mustGood(h.a, cdbSanitize(false, sanExitFailure, 0))
	h.mustGood(h.a, cdb10(0x28, 0, 1))
	if entries, err := os.ReadDir(cfg.StateDir); err != nil || len(entries) != 0 {
		t.Fatalf("state directory after the failure mode ended: %v %v", entries, err)
	}
}

// TestDecodeSanitizeState refuses state files that do not describe a
// sanitize the unit can run.
func TestDecodeSanitizeState(t *testing.T) {
	encode := func(op sanitizeOp) []byte {
		b, err := encodeState(sanitizeMagic, op)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := encode(sanitizeOp{SA: sanOverwrite, Pattern: []byte{1, 2}, Passes: 3, Invert: true, AUSE: true})
	if op, err := decodeSanitize(good, 512); err != nil || op.Passes != 3 || !op.Invert || !bytes.Equal(op.Pattern, []byte{1, 2}) {
		t.Fatalf("good state: %+v %v", op, err)
	}
	pr, err := encodeState(prMagic, sanitizeOp{SA: sanBlockErase})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"empty":                nil,
		"reservation state":    pr,
		"torn":                 good[:len(good)-2],
		"crypto erase":         encode(sanitizeOp{SA: sanCryptoErase}),
		"no pattern":           encode(sanitizeOp{SA: sanOverwrite, Passes: 1}),
		"pattern over a block": encode(sanitizeOp{SA: sanOverwrite, Passes: 1, Pattern: make([]byte, 513)}),
		"zero passes":          encode(sanitizeOp{SA: sanOverwrite, Pattern: []byte{1}}),
		"too many passes":      encode(sanitizeOp{SA: sanOverwrite, Passes: 32, Pattern: []byte{1}}),
		"erase with a pattern": encode(sanitizeOp{SA: sanBlockErase, Pattern: []byte{1}}),
		"erase with passes":    encode(sanitizeOp{SA: sanBlockErase, Passes: 2}),
	}
	for name, b := range bad {
		if op, err := decodeSanitize(b, 512); err == nil {
			t.Errorf("%s: decoded %+v", name, op)
		}
	}
	// A state file that does not check out stops the unit from opening.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sanitize-000000000000789.state"), bad["torn"], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{NAA: 0x789, StateDir: dir}); err == nil {
		t.Fatal("a torn sanitize state was accepted")
	}
}
