package scsi

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/iserd/iserd/internal/scsitest"
)

// CDB and parameter list builders for persistent reservations.

func cdbPROut(sa, typ byte, plen int) []byte {
	b := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], uint32(plen))
	return b
}

func cdbPRIn(sa byte) []byte { return []byte{0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0} }

// tid builds an iSCSI TransportID for s (format 01b when s names a port).
func tid(s string) []byte {
	r := registration{Name: s}
	if _, _, ok := splitPort(s); ok {
		r.Port = s
	}
	return encodeTransportID(nil, &r)
}

// prout runs PERSISTENT RESERVE OUT from n and returns the command.
func (h *harness) prout(n *Nexus, sa, typ byte, params []byte) *Command {
	h.t.Helper()
	return h.exec(n, 0, cdbPROut(sa, typ, len(params)), params, 0)
}

// mustPROut runs PERSISTENT RESERVE OUT and fails unless it ends in want.
func (h *harness) mustPROut(n *Nexus, sa, typ byte, params []byte, want Status) {
	h.t.Helper()
	if c := h.prout(n, sa, typ, params); c.Status != want {
		h.t.Fatalf("PR OUT sa %d type %d from nexus %d: status %#x sense %+v, want %#x", sa, typ, n.ID, c.Status, senseOf(c), want)
	}
}

// keys returns the generation and keys READ KEYS reports.
func (h *harness) keys(n *Nexus) (uint32, []uint64) {
	h.t.Helper()
	b := data(h.mustGood(n, cdbPRIn(priReadKeys)))
	var ks []uint64
	for off := 8; off < 8+int(binary.BigEndian.Uint32(b[4:])); off += 8 {
		ks = append(ks, binary.BigEndian.Uint64(b[off:]))
	}
	return binary.BigEndian.Uint32(b), ks
}

// reservation returns the key and type READ RESERVATION reports (type 0:
// none).
func (h *harness) reservation(n *Nexus) (uint64, byte) {
	h.t.Helper()
	b := data(h.mustGood(n, cdbPRIn(priReadReservation)))
	if binary.BigEndian.Uint32(b[4:]) == 0 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(b[8:]), b[21] & 0x0f
}

const keyA, keyB = 0xaaaa, 0xbbbb

// registerBoth registers a with keyA and b with keyB.
func (h *harness) registerBoth() {
	h.t.Helper()
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
	h.mustPROut(h.b, proRegister, 0, scsitest.PROutParams(0, keyB, 0), StatusGood)
}

func TestPRRegister(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	steps := []struct {
		name   string
		n      *Nexus
		sa     byte
		rk     uint64
		sark   uint64
		want   Status
		gen    uint32
		keysAB []uint64
	}{
		{"unregistered with a key conflicts", h.a, proRegister, 1, 5, StatusReservationConflict, 0, nil},
		{"unregister while unregistered is a no-op", h.a, proRegister, 0, 0, StatusGood, 0, nil},
		{"register a", h.a, proRegister, 0, keyA, StatusGood, 1, []uint64{keyA}},
		{"register again without the key conflicts", h.a, proRegister, 0, keyA, StatusReservationConflict, 1, []uint64{keyA}},
		{"change key with the right key", h.a, proRegister, keyA, 7, StatusGood, 2, []uint64{7}},
		{"wrong key conflicts", h.a, proRegister, keyA, 9, StatusReservationConflict, 2, []uint64{7}},
		{"register and ignore replaces", h.a, proRegisterIgnore, 12345, keyA, StatusGood, 3, []uint64{keyA}},
		{"register b", h.b, proRegisterIgnore, 0, keyB, StatusGood, 4, []uint64{keyA, keyB}},
		{"unregister a", h.a, proRegister, keyA, 0, StatusGood, 5, []uint64{keyB}},
	}
	for _, s := range steps {
		h.mustPROut(s.n, s.sa, 0, scsitest.PROutParams(s.rk, s.sark, 0), s.want)
		gen, ks := h.keys(h.b)
		if gen != s.gen || !slices.Equal(ks, s.keysAB) {
			t.Fatalf("%s: generation %d keys %x, want %d %x", s.name, gen, ks, s.gen, s.keysAB)
		}
	}
}

func TestPROutInvalid(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.registerBoth()
	tests := []struct {
		name   string
		cdb    []byte
		params []byte
		code   asc
	}{
		{"short list", cdbPROut(proRegister, 0, 20), make([]byte, 20), ascParamListLength},
		{"long list", cdbPROut(proRegister, 0, 28), make([]byte, 28), ascParamListLength},
		{"data shorter than the CDB says", cdbPROut(proRegister, 0, 24), make([]byte, 10), ascParamListLength},
		{"bad type", cdbPROut(proReserve, 2, 24), scsitest.PROutParams(keyA, 0, 0), ascInvalidFieldInCDB},
		{"bad scope", cdbPROut(proReserve, 0x11, 24), scsitest.PROutParams(keyA, 0, 0), ascInvalidFieldInCDB},
		{"SPEC_I_PT on reserve", cdbPROut(proReserve, prWE, 24), scsitest.PROutParams(keyA, 0, 0x08), ascInvalidFieldInParam},
		{"APTPL without a state directory", cdbPROut(proRegister, 0, 24), scsitest.PROutParams(keyA, keyA, 0x01), ascInvalidFieldInParam},
		{"unknown service action", cdbPROut(9, 0, 24), scsitest.PROutParams(keyA, 0, 0), ascInvalidFieldInCDB},
		{"bad TransportID", cdbPROut(proRegister, 0, 32), scsitest.PROutParams(0, 3, 0x08, []byte{0x45, 0, 0, 0}), ascInvalidFieldInParam},
		{"TransportID name beyond 223 bytes", cdbPROut(proRegister, 0, 28+232), scsitest.PROutParams(0, 3, 0x08, tid("iqn."+strings.Repeat("x", 220))), ascInvalidFieldInParam},
	}
	for _, tt := range tests {
		c := h.exec(h.a, 0, tt.cdb, tt.params, 0)
		if s := senseOf(c); c.Status != StatusCheckCondition || s.code != tt.code {
			t.Errorf("%s: status %#x sense %+v, want %04x", tt.name, c.Status, s, tt.code)
		}
	}
}

// TestPRAccess checks every reservation type against a registered and an
// unregistered second nexus, for reads and writes (SPC-4 table 63 and SBC-3
// table 13), and what READ RESERVATION reports.
func TestPRAccess(t *testing.T) {
	read, write := cdb10(0x28, 1, 1), cdb10(0x2a, 1, 1)
	tests := []struct {
		typ                   byte
		regRead, regWrite     bool // b registered
		unregRead, unregWrite bool // b not registered
		holderKeyShown        bool
	}{
		{prWE, true, false, true, false, true},
		{prEA, false, false, false, false, true},
		{prWERO, true, true, true, false, true},
		{prEARO, true, true, false, false, true},
		{prWEAR, true, true, true, false, false},
		{prEAAR, true, true, false, false, false},
	}
	for _, tt := range tests {
		for _, registered := range []bool{true, false} {
			h := newHarness(t, DiskConfig{})
			h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
			if registered {
				h.mustPROut(h.b, proRegister, 0, scsitest.PROutParams(0, keyB, 0), StatusGood)
			}
			h.mustPROut(h.a, proReserve, tt.typ, scsitest.PROutParams(keyA, 0, 0), StatusGood)
			key, typ := h.reservation(h.b)
			if wantKey := uint64(keyA); typ != tt.typ || (tt.holderKeyShown && key != wantKey) || (!tt.holderKeyShown && key != 0) {
				t.Fatalf("type %d: READ RESERVATION key %#x type %d", tt.typ, key, typ)
			}
			canRead, canWrite := tt.unregRead, tt.unregWrite
			if registered {
				canRead, canWrite = tt.regRead, tt.regWrite
			}
			for _, op := range []struct {
				cdb []byte
				ok  bool
			}{{read, canRead}, {write, canWrite}} {
				c := h.exec(h.b, 0, op.cdb, make([]byte, 512), 512)
				if got := c.Status == StatusGood; got != op.ok || !got && c.Status != StatusReservationConflict {
					t.Fatalf("type %d registered=%v cdb % x: status %#x, want allowed=%v", tt.typ, registered, op.cdb, c.Status, op.ok)
				}
			}
			// The holder always has access; INQUIRY and PR IN are never refused.
			h.mustGood(h.a, write, make([]byte, 512)...)
			h.mustGood(h.b, cdbInquiry(false, 0, 96))
			h.mustGood(h.b, cdbTUR())
		}
	}
}

func TestPRReserveRelease(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.registerBoth()
	h.mustPROut(h.a, proReserve, prWERO, scsitest.PROutParams(keyB, 0, 0), StatusReservationConflict) // wrong key
	h.mustPROut(h.a, proReserve, prWERO, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	h.mustPROut(h.a, proReserve, prWERO, scsitest.PROutParams(keyA, 0, 0), StatusGood)              // same type again
	h.mustPROut(h.a, proReserve, prEA, scsitest.PROutParams(keyA, 0, 0), StatusReservationConflict) // other type
	h.mustPROut(h.b, proReserve, prWERO, scsitest.PROutParams(keyB, 0, 0), StatusReservationConflict)
	h.mustPROut(h.b, proRelease, prWERO, scsitest.PROutParams(keyB, 0, 0), StatusGood) // not the holder: no effect
	if _, typ := h.reservation(h.a); typ != prWERO {
		t.Fatalf("a non-holder's RELEASE released the reservation")
	}
	c := h.prout(h.a, proRelease, prEA, scsitest.PROutParams(keyA, 0, 0))
	if s := senseOf(c); s.code != ascInvalidRelease {
		t.Fatalf("RELEASE with the wrong type: status %#x sense %+v", c.Status, s)
	}
	gen, _ := h.keys(h.a)
	h.mustPROut(h.a, proRelease, prWERO, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	if g, _ := h.keys(h.a); g != gen {
		t.Fatalf("RELEASE changed PRgeneration %d -> %d", gen, g)
	}
	h.expectUA(h.b, ascReservationsReleased) // registrants-only release
	h.expectUA(h.a, 0)

	// Unregistering the holder of a registrants-only reservation releases it.
	h.mustPROut(h.a, proReserve, prEARO, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	h.expectUA(h.b, ascReservationsReleased)
	if _, typ := h.reservation(h.b); typ != 0 {
		t.Fatal("reservation survived its holder's unregistration")
	}

	// An all-registrants reservation stays until the last registrant goes.
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
	h.mustPROut(h.a, proReserve, prWEAR, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	if _, typ := h.reservation(h.b); typ != prWEAR {
		t.Fatal("all-registrants reservation vanished while b is registered")
	}
	h.mustPROut(h.b, proRelease, prWEAR, scsitest.PROutParams(keyB, 0, 0), StatusGood)
	if _, typ := h.reservation(h.b); typ != 0 {
		t.Fatal("all-registrants RELEASE by a registrant did not release")
	}
}

func TestPRClearAndPreempt(t *testing.T) {
	tests := []struct {
		name    string
		sa      byte
		typ     byte
		sark    uint64
		resType byte // reservation after the command
		keys    []uint64
		uaB     asc
		aborted bool
	}{
		{"clear", proClear, 0, 0, 0, nil, ascReservationsPreempted, false},
		{"preempt registration", proPreempt, prWE, keyB, prWE, []uint64{keyA}, ascRegistrationsPreempted, false},
		{"preempt and abort", proPreemptAbort, prEA, keyB, prEA, []uint64{keyA}, ascRegistrationsPreempted, true},
		{"preempt unknown key", proPreempt, prWE, 0x777, prWE, []uint64{keyA, keyB}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, DiskConfig{})
			var mu sync.Mutex
			var aborted []uint64
			h.tgt.OnAbort(func(n *Nexus, lun uint64) {
				mu.Lock()
				aborted = append(aborted, n.ID)
				mu.Unlock()
			})
			h.registerBoth()
			h.mustPROut(h.b, proReserve, prWE, scsitest.PROutParams(keyB, 0, 0), StatusGood)
			want := StatusGood
			if tt.uaB == 0 {
				want = StatusReservationConflict
			}
			if tt.sa == proClear {
				h.mustPROut(h.a, tt.sa, 0, scsitest.PROutParams(keyA, 0, 0), want)
			} else {
				h.mustPROut(h.a, tt.sa, tt.typ, scsitest.PROutParams(keyA, tt.sark, 0), want)
			}
			if tt.uaB == 0 {
				return
			}
			_, ks := h.keys(h.a)
			key, typ := h.reservation(h.a)
			if typ != tt.resType || !slices.Equal(ks, tt.keys) || typ != 0 && key != keyA {
				t.Fatalf("after: keys %x reservation %#x type %d", ks, key, typ)
			}
			h.expectUA(h.b, tt.uaB)
			h.expectUA(h.a, 0)
			if got := len(aborted) == 1 && aborted[0] == h.b.ID; got != tt.aborted || !tt.aborted && len(aborted) != 0 {
				t.Fatalf("aborted nexuses %v", aborted)
			}
		})
	}
}

func TestPRPreemptAllRegistrants(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.registerBoth()
	h.mustPROut(h.b, proReserve, prEAAR, scsitest.PROutParams(keyB, 0, 0), StatusGood)
	c := h.prout(h.a, proPreempt, prWE, scsitest.PROutParams(keyA, 0, 0))
	if c.Status != StatusGood {
		t.Fatalf("PREEMPT with SARK 0 of an all-registrants reservation: %#x %+v", c.Status, senseOf(c))
	}
	if key, typ := h.reservation(h.a); typ != prWE || key != keyA {
		t.Fatalf("reservation %#x type %d, want a's WE", key, typ)
	}
	h.expectUA(h.b, ascRegistrationsPreempted)
	// SARK 0 is invalid when the reservation is not all-registrants.
	c = h.prout(h.a, proPreempt, prWE, scsitest.PROutParams(keyA, 0, 0))
	if s := senseOf(c); s.code != ascInvalidFieldInParam {
		t.Fatalf("PREEMPT SARK 0 under WE: %#x %+v", c.Status, s)
	}
}

func TestPRSpecIPTAndFullStatus(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	c := &Nexus{ID: 3, InitiatorPort: "iqn.c,i,0x23d000000001", InitiatorName: "iqn.c", RelativePort: 2}
	h.tgt.AddNexus(c)
	h.expectUA(c, ascPowerOnReset)
	// a registers itself, b's port and every port of iqn.c, on all target ports.
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0x08|0x04, tid("iqn.b,i,0x2"), tid("iqn.c")), StatusGood)
	if _, ks := h.keys(h.b); len(ks) != 3 {
		t.Fatalf("keys after SPEC_I_PT: %x", ks)
	}
	for _, n := range []*Nexus{h.a, h.b, c} {
		h.mustPROut(n, proRegister, 0, scsitest.PROutParams(keyA, keyA+n.ID, 0), StatusGood) // each is registered
	}
	// Registering an already registered port through SPEC_I_PT fails.
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(keyA+1, 0, 0), StatusGood)
	cc := h.prout(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0x08, tid("iqn.b,i,0x2")))
	if s := senseOf(cc); s.code != ascInvalidFieldInParam {
		t.Fatalf("SPEC_I_PT naming a registered port: %#x %+v", cc.Status, s)
	}
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
	h.mustPROut(h.a, proReserve, prWE, scsitest.PROutParams(keyA, 0, 0), StatusGood)

	b := data(h.mustGood(h.a, cdbPRIn(priReadFullStatus)))
	var ports []string
	holders := 0
	for off := 8; off < 8+int(binary.BigEndian.Uint32(b[4:])); {
		d := b[off:]
		tl := int(binary.BigEndian.Uint32(d[20:]))
		id, n, ok := parseTransportID(d[24 : 24+tl])
		if !ok || n != tl {
			t.Fatalf("descriptor at %d: bad TransportID % x", off, d[24:24+tl])
		}
		ports = append(ports, id.name+"|"+id.port)
		if d[12]&1 != 0 {
			holders++
			if binary.BigEndian.Uint64(d) != keyA || d[13] != prWE {
				t.Fatalf("holder descriptor % x", d[:24])
			}
		}
		off += 24 + tl
	}
	want := []string{"iqn.b|iqn.b,i,0x000000000002", "iqn.c|", "iqn.a|iqn.a,i,0x000000000001"}
	if !slices.Equal(ports, want) || holders != 1 {
		t.Fatalf("full status ports %q holders %d, want %q", ports, holders, want)
	}
}

func TestPRRegisterAndMove(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusGood)
	move := func(rk, sark uint64, unreg bool, port string) []byte {
		b := make([]byte, proBasicLen)
		binary.BigEndian.PutUint64(b, rk)
		binary.BigEndian.PutUint64(b[8:], sark)
		b[17] = flag(unreg, 0x02)
		binary.BigEndian.PutUint16(b[18:], 1)
		t := tid(port)
		binary.BigEndian.PutUint32(b[20:], uint32(len(t)))
		return append(b, t...)
	}
	h.mustPROut(h.a, proRegisterMove, prWE, move(keyA, keyB, true, "iqn.b,i,0x2"), StatusReservationConflict) // no reservation
	h.mustPROut(h.a, proReserve, prWE, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	c := h.prout(h.a, proRegisterMove, prWE, move(keyA, keyB, true, "iqn.a,i,0x1"))
	if s := senseOf(c); s.code != ascInvalidFieldInParam {
		t.Fatalf("move to itself: %#x %+v", c.Status, s)
	}
	h.mustPROut(h.a, proRegisterMove, prWE, move(keyA, keyB, true, "iqn.b,i,0x2"), StatusGood)
	if key, typ := h.reservation(h.a); key != keyB || typ != prWE {
		t.Fatalf("after move: %#x type %d", key, typ)
	}
	if _, ks := h.keys(h.a); !slices.Equal(ks, []uint64{keyB}) {
		t.Fatalf("after move with UNREG: keys %x", ks)
	}
	h.mustGood(h.b, cdb10(0x2a, 0, 1), make([]byte, 512)...)
	if c := h.exec(h.a, 0, cdb10(0x2a, 0, 1), make([]byte, 512), 0); c.Status != StatusReservationConflict {
		t.Fatalf("write by the former holder: %#x", c.Status)
	}
}

// TestPRSCSI2Interplay: RESERVE/RELEASE conflict while registrations exist
// except from the holder (CRH); PR OUT conflicts under another nexus's
// SCSI-2 reservation.
func TestPRSCSI2Interplay(t *testing.T) {
	reserve6, release6 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	h := newHarness(t, DiskConfig{})
	h.mustGood(h.b, reserve6)
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusReservationConflict)
	h.mustGood(h.b, release6)
	h.registerBoth()
	h.mustPROut(h.a, proReserve, prWE, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	h.mustGood(h.a, reserve6) // holder: GOOD without effect
	h.mustGood(h.a, release6)
	for _, cdb := range [][]byte{reserve6, release6} {
		if c := h.run(h.b, cdb); c.Status != StatusReservationConflict {
			t.Fatalf("cdb % x from a non-holder under PR: %#x", cdb, c.Status)
		}
	}
	if h.disk.res.Load() != nil {
		t.Fatal("a SCSI-2 reservation was taken under a persistent reservation")
	}
}

func TestPRReportCapabilities(t *testing.T) {
	for _, dir := range []string{"", t.TempDir()} {
		h := newHarness(t, DiskConfig{StateDir: dir})
		b := data(h.mustGood(h.a, cdbPRIn(priReportCapabilities)))
		if len(b) != 8 || binary.BigEndian.Uint16(b) != 8 || b[4] != 0xea || b[5] != 0x01 {
			t.Fatalf("capabilities % x", b)
		}
		if ptplC := b[2]&1 != 0; ptplC != (dir != "") {
			t.Fatalf("PTPL_C %v with state dir %q", ptplC, dir)
		}
	}
}

func TestAPTPLPersistence(t *testing.T) {
	dir := t.TempDir()
	cfg := DiskConfig{StateDir: dir, NAA: 0x1234}
	h := newHarness(t, cfg)
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0x01), StatusGood)
	h.mustPROut(h.b, proRegister, 0, scsitest.PROutParams(0, keyB, 0x01), StatusGood)
	h.mustPROut(h.a, proReserve, prEARO, scsitest.PROutParams(keyA, 0, 0), StatusGood)
	path := filepath.Join(dir, "pr-000000000001234.state")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("state file: %v", err)
	}
	// A restarted disk restores the registrations and the reservation.
	h2 := newHarnessOn(t, h.dev, cfg)
	if key, typ := h2.reservation(h2.b); key != keyA || typ != prEARO {
		t.Fatalf("restored reservation %#x type %d", key, typ)
	}
	if gen, ks := h2.keys(h2.b); gen != 2 || !slices.Equal(ks, []uint64{keyA, keyB}) {
		t.Fatalf("restored generation %d keys %x", gen, ks)
	}
	h2.mustGood(h2.a, cdb10(0x2a, 0, 1), make([]byte, 512)...)

	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{
		"torn":    good[:len(good)-3],
		"flipped": append(append([]byte{}, good[:len(good)-10]...), append([]byte{good[len(good)-10] ^ 1}, good[len(good)-9:]...)...),
		"foreign": []byte("hello"),
	} {
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if d, err := NewDisk(h.dev, cfg); err == nil {
			d.Close()
			t.Fatalf("%s state file accepted", name)
		}
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	// Clearing APTPL removes the file: the state no longer survives.
	h3 := newHarnessOn(t, h.dev, cfg)
	h3.mustPROut(h3.a, proRegister, 0, scsitest.PROutParams(keyA, keyA, 0), StatusGood)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("state file after APTPL cleared: %v", err)
	}
}

// TestPRContention runs two nexuses registering, reserving and writing at
// once: every command completes, and the state stays consistent.
func TestPRContention(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	var wg sync.WaitGroup
	for _, n := range []*Nexus{h.a, h.b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := uint64(0x100 + n.ID)
			for i := 0; i < 200; i++ {
				h.exec(n, 0, cdbPROut(proRegisterIgnore, 0, 24), scsitest.PROutParams(0, key, 0), 0)
				h.exec(n, 0, cdbPROut(proReserve, prWE, 24), scsitest.PROutParams(key, 0, 0), 0)
				h.exec(n, 0, cdb10(0x2a, uint32(i), 1), make([]byte, 512), 0)
				h.exec(n, 0, cdbPROut(proRelease, prWE, 24), scsitest.PROutParams(key, 0, 0), 0)
				h.exec(n, 0, cdbPROut(proRegister, 0, 24), scsitest.PROutParams(key, 0, 0), 0)
			}
		}()
	}
	wg.Wait()
	if _, ks := h.keys(h.a); len(ks) != 0 {
		t.Fatalf("keys left: %x", ks)
	}
	if _, typ := h.reservation(h.a); typ != 0 {
		t.Fatalf("reservation left: type %d", typ)
	}
	if err := h.disk.pr.Load().validate(); err != nil {
		t.Fatal(err)
	}
}

// TestPRTargetPorts: a registration holds for the target port it came
// through, or for every port with ALL_TG_PT; the same initiator port
// through another target port is another I_T nexus.
func TestPRTargetPorts(t *testing.T) {
	for _, allTgPt := range []bool{false, true} {
		h := newHarness(t, DiskConfig{})
		other := &Nexus{ID: 4, InitiatorPort: h.a.InitiatorPort, RelativePort: 2}
		h.tgt.AddNexus(other)
		h.expectUA(other, ascPowerOnReset)
		h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, flag(allTgPt, 0x04)), StatusGood)
		h.mustPROut(h.a, proReserve, prWERO, scsitest.PROutParams(keyA, 0, 0), StatusGood)
		c := h.exec(other, 0, cdb10(0x2a, 0, 1), make([]byte, 512), 0)
		if allowed := c.Status == StatusGood; allowed != allTgPt {
			t.Fatalf("ALL_TG_PT=%v: write through port 2: status %#x", allTgPt, c.Status)
		}
		want := StatusGood
		if !allTgPt {
			want = StatusReservationConflict // not registered through port 2
		}
		h.mustPROut(other, proRegister, 0, scsitest.PROutParams(keyA, keyA, 0), want)
	}
}

// TestPRRegistrationCap plays an initiator that registers from ever new I_T
// nexuses: the unit keeps maxPRRegs registrations, refuses the next with
// INSUFFICIENT REGISTRATION RESOURCES, and serves the registered ones as before.
func TestPRRegistrationCap(t *testing.T) {
	h := newHarness(t, DiskConfig{})
	nexus := func(i int) *Nexus {
		n := &Nexus{ID: uint64(100 + i), InitiatorPort: fmt.Sprintf("iqn.hostile-%d,i,0x1", i),
			TargetPort: "iqn.2026-11.test:tgt,t,0x1", RelativePort: 1}
		h.tgt.AddNexus(n)
		h.run(n, cdbTUR()) // takes the power-on unit attention
		return n
	}
	first := nexus(0)
	h.mustPROut(first, proRegister, 0, scsitest.PROutParams(0, 1, 0), StatusGood)
	for i := 1; i < maxPRRegs; i++ {
		h.mustPROut(nexus(i), proRegister, 0, scsitest.PROutParams(0, uint64(i+1), 0), StatusGood)
	}
	c := h.prout(nexus(maxPRRegs), proRegister, 0, scsitest.PROutParams(0, 0xffff, 0))
	if c.Status != StatusCheckCondition || senseOf(c).code != ascInsufficientRegRes {
		t.Fatalf("registration %d: status %#x sense %+v, want INSUFFICIENT REGISTRATION RESOURCES", maxPRRegs+1, c.Status, senseOf(c))
	}
	b := data(h.mustGood(h.a, cdbPRIn(priReadKeys)))
	if n := binary.BigEndian.Uint32(b[4:]) / 8; n != maxPRRegs {
		t.Errorf("READ KEYS lists %d keys, want %d", n, maxPRRegs)
	}
	h.mustPROut(h.a, proRegister, 0, scsitest.PROutParams(0, keyA, 0), StatusCheckCondition)
	h.mustPROut(first, proReserve, prWE, scsitest.PROutParams(1, 0, 0), StatusGood)
}
