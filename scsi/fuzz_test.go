package scsi

import (
	"encoding/binary"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/scsitest"
)

// FuzzCDB feeds arbitrary CDBs, data-out buffers and data-in sizes to a
// thin logical unit: Execute must never panic, must call Done exactly
// once, and must keep its outcome within the buffers it was given.
func FuzzCDB(f *testing.F) {
	f.Add([]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, []byte{}, uint16(512))
	f.Add([]byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, make([]byte, 512), uint16(0))
	f.Add([]byte{0x12, 1, 0x83, 0, 255, 0}, []byte{}, uint16(255))
	// Persistent reservations, ALUA, copy offload, SANITIZE, WRITE ATOMIC,
	// READ DEFECT DATA.
	f.Add(cdbPROut(proRegister, 0, 24), scsitest.PROutParams(0, 1, 0), uint16(0))
	f.Add(cdbPROut(proRegister, 0, 52), scsitest.PROutParams(0, 1, 0x08, tid("iqn.x,i,0x1")), uint16(0))
	f.Add(cdbPROut(proRegisterMove, prWE, 48), append(scsitest.PROutParams(1, 2, 0), tid("iqn.x,i,0x1")...), uint16(0))
	f.Add(cdbPRIn(priReadFullStatus), []byte{}, uint16(4096))
	f.Add(cdbRTPG(1), []byte{}, uint16(1024))
	f.Add(cdbSTPG(8), []byte{0, 0, 0, 0, 2, 0, 0, 1}, uint16(0))
	f.Add(cdbXCopy(76), xcList(1, 0, [][]byte{xcCSCD(1)}, [][]byte{xcSeg(0, 0, 1, 0, 1)}), uint16(0))
	f.Add(cdbRCR(rcrOpParams, 0), []byte{}, uint16(1024))
	f.Add(cdbSanitize(false, sanOverwrite, 5), []byte{1, 0, 0, 1, 0xaa}, uint16(0))
	f.Add(cdbAtomic(0, 1, 0), make([]byte, 512), uint16(0))
	f.Add([]byte{0xb7, 0x18, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, []byte{}, uint16(32))
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
		done := make(chan struct{}, 1)
		c := &Command{Nexus: nexus, CDB: cdb, DataOut: out, DataIn: make([]byte, inLen)}
		c.Done = func(*Command) {
			calls.Add(1)
			done <- struct{}{}
		}
		tgt.Execute(c)
		// EXTENDED COPY and SANITIZE complete from their own goroutine.
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("cdb % x: Done not called", cdb)
		}
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

// FuzzPROut feeds arbitrary PERSISTENT RESERVE OUT commands from two
// nexuses: none may panic, and the published state must always satisfy
// the invariants a restored state file is checked against.
func FuzzPROut(f *testing.F) {
	f.Add(byte(proRegister), byte(0), scsitest.PROutParams(0, 1, 0), false)
	f.Add(byte(proRegister), byte(0), scsitest.PROutParams(0, 1, 0x0c, tid("iqn.b,i,0x2"), tid("iqn.c")), false)
	f.Add(byte(proReserve), byte(prEAAR), scsitest.PROutParams(1, 0, 0), true)
	f.Add(byte(proPreemptAbort), byte(prWE), scsitest.PROutParams(1, 2, 0), false)
	f.Add(byte(proRegisterMove), byte(prWE), append(scsitest.PROutParams(1, 2, 0), tid("iqn.b,i,0x2")...), true)
	d, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{})
	if err != nil {
		f.Fatal(err)
	}
	tgt := NewTarget("iqn.fuzz")
	if err := tgt.AddLUN(0, d); err != nil {
		f.Fatal(err)
	}
	a := &Nexus{ID: 1, InitiatorPort: "iqn.a,i,0x1", InitiatorName: "iqn.a", RelativePort: 1}
	b := &Nexus{ID: 2, InitiatorPort: "iqn.b,i,0x2", InitiatorName: "iqn.b", RelativePort: 2}
	tgt.AddNexus(a)
	tgt.AddNexus(b)
	tgt.OnAbort(func(*Nexus, uint64) {})
	f.Fuzz(func(t *testing.T, sa, typ byte, params []byte, fromB bool) {
		n := a
		if fromB {
			n = b
		}
		c := &Command{Nexus: n, CDB: cdbPROut(sa&0x1f, typ, len(params)), DataOut: params}
		c.Done = func(*Command) {}
		tgt.Execute(c)
		if p := d.pr.Load(); p != nil {
			if err := p.validate(); err != nil {
				t.Fatalf("sa %d type %d params % x: %v", sa, typ, params, err)
			}
		}
	})
}

// FuzzSanitizeState feeds arbitrary sanitize state files to the decoder a
// logical unit runs at open: none may panic, and what it accepts must be a
// sanitize the unit can run, unchanged by another encoding.
func FuzzSanitizeState(f *testing.F) {
	for _, op := range []sanitizeOp{
		{SA: sanOverwrite, Pattern: []byte{0xaa, 0x55}, Passes: 3, Invert: true},
		{SA: sanBlockErase, AUSE: true, Failed: true},
	} {
		b, err := encodeState(sanitizeMagic, op)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := decodeSanitize(b, 512)
		if err != nil {
			return
		}
		if op.SA == sanOverwrite && (len(op.Pattern) == 0 || len(op.Pattern) > 512 || op.Passes < 1 || op.Passes > owCount) {
			t.Fatalf("accepted an overwrite it cannot run: %+v", op)
		}
		again, err := encodeState(sanitizeMagic, op)
		if err != nil {
			t.Fatal(err)
		}
		op2, err := decodeSanitize(again, 512)
		if err != nil || !reflect.DeepEqual(op, op2) {
			t.Fatalf("re-encoded %+v decodes as %+v, %v", op, op2, err)
		}
	})
}

// FuzzPRState feeds APTPL state files to the reader a logical unit starts
// from. None may panic; a state it accepts must satisfy the invariants PR
// OUT keeps, must be served by every PERSISTENT RESERVE IN form with each
// TransportID of READ FULL STATUS readable again, must take a new
// registration, and must come back unchanged from the file it is saved as.
// With framed set the input is the JSON payload, given a valid magic line,
// length and checksum so that the fuzzer gets past them; otherwise it is
// the whole file.
func FuzzPRState(f *testing.F) {
	f.Add([]byte(`{"Gen":3,"Regs":[{"ID":1,"Key":10,"Name":"iqn.a","Port":"iqn.a,i,0x23d000001","Rel":1}],"Type":1,"Holder":1,"APTPL":true,"NextID":1}`), true)
	f.Add([]byte(`{"Regs":[{"ID":2,"Key":1,"Name":"iqn.b"},{"ID":1,"Key":2,"Name":"iqn.c","Rel":2}],"Type":8,"APTPL":true,"NextID":2}`), true)
	f.Add(frameState(prMagic, []byte(`{"APTPL":true}`)), false)
	f.Add([]byte(prMagic+"\x00\x00\x00\x02{}\x00\x00\x00\x00"), false)
	d, err := NewDisk(bdev.NewMemory(1<<20), DiskConfig{})
	if err != nil {
		f.Fatal(err)
	}
	tgt := NewTarget("iqn.fuzz")
	if err := tgt.AddLUN(0, d); err != nil {
		f.Fatal(err)
	}
	n := &Nexus{ID: 1, InitiatorPort: "iqn.new,i,0x1", InitiatorName: "iqn.new", RelativePort: 1}
	tgt.AddNexus(n)
	tgt.OnAbort(func(*Nexus, uint64) {})
	exec := func(cdb, out []byte) *Command {
		c := &Command{Nexus: n, CDB: cdb, DataOut: out, DataIn: make([]byte, 1<<16)}
		c.Done = func(*Command) {}
		tgt.Execute(c)
		return c
	}
	exec(cdbTUR(), nil) // takes the power-on unit attention
	f.Fuzz(func(t *testing.T, b []byte, framed bool) {
		if framed {
			b = frameState(prMagic, b)
		}
		s, err := decodePR(b)
		if err != nil {
			return
		}
		if err := s.validate(); err != nil {
			t.Fatalf("accepted a state that fails validation: %v", err)
		}
		again, err := encodeState(prMagic, s)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if s2, err := decodePR(again); err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("state %+v saved and read back as %+v, %v", s, s2, err)
		}
		d.pr.Store(s)
		for sa := range byte(4) {
			if c := exec([]byte{0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, nil); c.Status != StatusGood {
				t.Fatalf("PR IN service action %d: status %#x sense %+v", sa, c.Status, senseOf(c))
			}
		}
		full := data(exec([]byte{0x5e, priReadFullStatus, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, nil))
		for i, desc := 0, full[8:]; len(desc) > 0; i++ {
			if len(desc) < 24 {
				t.Fatalf("READ FULL STATUS: %d bytes left, short of a descriptor", len(desc))
			}
			tidLen := int(binary.BigEndian.Uint32(desc[20:]))
			r := s.Regs[i]
			id, used, ok := parseTransportID(desc[24:])
			if !ok || used != tidLen || !strings.EqualFold(id.name, r.Name) || (id.port == "") != (r.Port == "") ||
				r.Port != "" && !samePort(id.port, r.Port) {
				t.Fatalf("READ FULL STATUS: registration %+v reported as TransportID %+v (ok %v, %d bytes of %d)", r, id, ok, used, tidLen)
			}
			desc = desc[24+tidLen:]
		}
		exec(cdbPROut(proRegisterIgnore, 0, proBasicLen), scsitest.PROutParams(0, 0xfeed, 0))
		if err := d.pr.Load().validate(); err != nil {
			t.Fatalf("after a registration: %v", err)
		}
		d.pr.Store(nil)
	})
}

// FuzzPRRecord feeds the records a PRStore keeps (cluster/prstore: an etcd
// value that any node wrote) to a logical unit that shares them. None may
// panic; a record it accepts must satisfy the invariants PR OUT keeps,
// come back unchanged from its encoding, be described, have its events
// handled on this process's nexuses, be served by every PERSISTENT RESERVE
// IN form and take a new registration committed as a record that decodes
// again (PR IN and PR OUT conflict when another nexus holds its SCSI-2
// reservation). With framed set the input is the JSON payload, given a valid
// magic line, length and checksum; otherwise it is the whole value.
func FuzzPRRecord(f *testing.F) {
	f.Add([]byte(`{"State":{"Gen":3,"Regs":[{"ID":1,"Key":10,"Name":"iqn.a","Port":"iqn.a,i,0x1","Rel":1}],"Type":1,"Holder":1,"NextID":1},`+
		`"Origin":7,"Issuer":1,"Notes":[{"Code":10757,"Regs":[{"ID":2,"Key":11,"Name":"iqn.new","Rel":0}]}],`+
		`"Preempted":[{"ID":2,"Key":11,"Name":"iqn.new","Port":"iqn.new,i,0x1","Rel":1}]}`), true)
	f.Add(frameState(prRecordMagic, []byte(`{"State":{"APTPL":true}}`)), false)
	f.Add([]byte(`{"State":{},"Origin":7,"Reserved":{"Node":"b","Instance":7,"Nexus":1}}`), true)
	n := &Nexus{ID: 1, InitiatorPort: "iqn.new,i,0x1", InitiatorName: "iqn.new", RelativePort: 1}
	f.Fuzz(func(t *testing.T, b []byte, framed bool) {
		if framed {
			b = frameState(prRecordMagic, b)
		}
		rec, err := decodePRRecord(b)
		if err != nil {
			if _, err := DescribePRRecord(b); err == nil {
				t.Fatal("DescribePRRecord accepted a record decodePRRecord refused")
			}
			return
		}
		if err := rec.validate(); err != nil {
			t.Fatalf("accepted a record that fails validation: %v", err)
		}
		again, err := encodePRRecord(rec)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if r2, err := decodePRRecord(again); err != nil || !reflect.DeepEqual(rec, r2) {
			t.Fatalf("record %+v encoded and read back as %+v, %v", rec, r2, err)
		}
		sum, err := DescribePRRecord(b)
		if err != nil || len(sum.Registrations) != len(rec.State.Regs) || sum.Holder >= len(sum.Registrations) {
			t.Fatalf("described as %+v, %v", sum, err)
		}
		st := &memPRStore{rec: PRRecord{Rev: 1, Value: b}, served: true}
		d, tgt := newStoreDisk(t, st, n)
		defer d.Close()
		exec := func(cdb, out []byte) *Command {
			done := make(chan struct{})
			c := &Command{Nexus: n, CDB: cdb, DataOut: out, DataIn: make([]byte, 1<<16)}
			c.Done = func(*Command) { close(done) }
			tgt.Execute(c)
			<-done
			return c
		}
		exec(cdbTUR(), nil)                  // takes the power-on unit attention
		st.apply(PRRecord{Rev: 2, Value: b}) // as if another node committed it
		for s := exec(cdbTUR(), nil).Status; s != StatusGood && s != StatusReservationConflict; s = exec(cdbTUR(), nil).Status {
		}
		for sa := range byte(4) {
			if c := exec([]byte{0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, nil); c.Status != StatusGood &&
				(rec.Reserved == nil || c.Status != StatusReservationConflict) {
				t.Fatalf("PR IN service action %d: status %#x sense %+v", sa, c.Status, senseOf(c))
			}
		}
		c := exec(cdbPROut(proRegisterIgnore, 0, proBasicLen), scsitest.PROutParams(0, 0xfeed, 0))
		if c.Status != StatusGood && senseOf(c).code != ascInsufficientRegRes &&
			(rec.Reserved == nil || c.Status != StatusReservationConflict) {
			t.Fatalf("REGISTER AND IGNORE EXISTING KEY: status %#x sense %+v", c.Status, senseOf(c))
		}
		if _, err := decodePRRecord(st.rec.Value); err != nil {
			t.Fatalf("committed record: %v", err)
		}
	})
}
