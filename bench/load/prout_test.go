package load

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi/initiator"
)

// PERSISTENT RESERVE IN (SPC-4 6.15), to read back what a run left.
const (
	opPersistentReserveIn     = 0x5e
	prInReadKeys              = 0x00
	prInReadReservation       = 0x01
	prInReportCapabilities    = 0x02
	prCapPTPLA                = 0x01 // byte 3 of the capabilities: APTPL in effect
	statusReservationConflict = 0x18
)

// prIn returns the parameter data of a PERSISTENT RESERVE IN of service
// action sa (at least 8 bytes).
func prIn(t *testing.T, ctx context.Context, d Doer, sa byte) []byte {
	t.Helper()
	cdb := make([]byte, 10)
	cdb[0], cdb[1] = opPersistentReserveIn, sa
	binary.BigEndian.PutUint16(cdb[7:], 256)
	r, err := d.Do(ctx, &initiator.Command{LUN: 0, CDB: cdb, ReadLen: 256})
	if err == nil {
		err = check(cdb[0], r)
	}
	if err != nil || len(r.Data) < 8 {
		t.Fatalf("persistent reserve in 0x%02x: %v (%d bytes)", sa, err, len(r.Data))
	}
	return r.Data
}

// prGenLen returns the PRgeneration and additional length of READ KEYS or
// READ RESERVATION parameter data.
func prGenLen(b []byte) (gen, length uint32) {
	return binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
}

// conflictDisk answers GOOD until its failAt-th command, which gets
// RESERVATION CONFLICT, and records the service actions and keys it saw.
type conflictDisk struct {
	failAt int
	sas    []byte
	keys   [][2]uint64
}

func (c *conflictDisk) Do(ctx context.Context, cmd *initiator.Command) (*initiator.Response, error) {
	c.sas = append(c.sas, cmd.CDB[1])
	c.keys = append(c.keys, [2]uint64{binary.BigEndian.Uint64(cmd.DataOut), binary.BigEndian.Uint64(cmd.DataOut[8:])})
	if len(c.sas) == c.failAt {
		return &initiator.Response{Status: statusReservationConflict}, nil
	}
	return &initiator.Response{}, nil
}

// TestRunPROutFake checks the commands a run sends and how it ends.
func TestRunPROutFake(t *testing.T) {
	tests := []struct {
		name    string
		cfg     PROutConfig
		failAt  int
		sent    int // commands the disk sees, the unregistration included
		wantErr string
	}{
		{name: "count", cfg: PROutConfig{Commands: 6, Seed: 7}, sent: 7},
		{name: "conflict", cfg: PROutConfig{Commands: 6}, failAt: 3, sent: 3, wantErr: "status 0x18"},
		{name: "unregistration refused", cfg: PROutConfig{Commands: 4}, failAt: 5, sent: 5, wantErr: "unregister"},
		{name: "no bound", cfg: PROutConfig{}, wantErr: "want a positive duration"},
		{name: "negative duration", cfg: PROutConfig{Duration: -time.Second}, wantErr: "want a positive duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &conflictDisk{failAt: tc.failAt}
			res, err := RunPROut(context.Background(), d, tc.cfg)
			if len(d.sas) != tc.sent {
				t.Fatalf("the disk saw %d commands, want %d", len(d.sas), tc.sent)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("RunPROut: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || res.IOs != tc.cfg.Commands || res.Latency.Count() != res.IOs || res.Bytes != 0 {
				t.Fatalf("RunPROut = %+v, %v; want %d commands timed", res, err, tc.cfg.Commands)
			}
			for i, sa := range d.sas[:res.IOs] {
				if want := prCycle[i%len(prCycle)]; sa != want {
					t.Fatalf("command %d: service action 0x%02x, want 0x%02x", i+1, sa, want)
				}
			}
			last := d.sas[len(d.sas)-1]
			if k := d.keys[len(d.keys)-1]; last != prRegisterAndIgnoreExisting || k[1] != 0 {
				t.Fatalf("last command: service action 0x%02x, keys %v; want an unregistration", last, k)
			}
		})
	}
}

// TestRunPROutAgainstIserd runs PR OUT cycles against iserd's engine, which
// refuses a wrong key with RESERVATION CONFLICT, and checks that the run
// leaves no registration and no reservation behind.
func TestRunPROutAgainstIserd(t *testing.T) {
	addr, name := startTarget(t, 1<<20, memoryLUN)
	for _, aptpl := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Connect(ctx, addr, "iqn.2026-11.org.iserd.test:pr", name)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := Prepare(ctx, c, 0); err != nil {
			t.Fatal(err)
		}
		gen0, _ := prGenLen(prIn(t, ctx, c, prInReadKeys))
		const n = 42 // ends inside a cycle, holding the reservation
		res, err := RunPROut(ctx, c, PROutConfig{Commands: n, APTPL: aptpl, Seed: 3})
		if err != nil || res.IOs != n {
			t.Fatalf("APTPL %v: RunPROut = %+v, %v; want %d commands", aptpl, res, err, n)
		}
		gen, keys := prGenLen(prIn(t, ctx, c, prInReadKeys))
		if _, held := prGenLen(prIn(t, ctx, c, prInReadReservation)); keys != 0 || held != 0 {
			t.Fatalf("APTPL %v: after the run %d bytes of keys and %d of reservation, want none", aptpl, keys, held)
		}
		// Every registration of the run (half its commands) advanced the
		// generation.
		if regs := uint32(n / 2); gen-gen0 < regs {
			t.Fatalf("APTPL %v: PRgeneration went from %d to %d, want at least %d registrations", aptpl, gen0, gen, regs)
		}
		if ptpl := prIn(t, ctx, c, prInReportCapabilities)[3]&prCapPTPLA != 0; ptpl != aptpl {
			t.Fatalf("APTPL %v: the target reports APTPL in effect: %v", aptpl, ptpl)
		}
	}
}
