package load

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/iserd/iserd/iscsi/initiator"
)

// PERSISTENT RESERVE OUT (SPC-4 6.16): operation code, service actions,
// the reservation type used, and the parameter list's layout.
const (
	opPersistentReserveOut = 0x5f

	prRegister                  = 0x00
	prReserve                   = 0x01
	prRelease                   = 0x02
	prRegisterAndIgnoreExisting = 0x06

	prTypeWriteExclusive = 0x01

	prParamLen   = 24   // basic parameter list
	prParamFlags = 20   // byte with SPEC_I_PT, ALL_TG_PT and APTPL
	prAPTPL      = 0x01 // activate persist through power loss
)

// prCycle is the order of the service actions a PR OUT run repeats: a new
// key registered over whatever the nexus had, a reservation taken and
// released with it, then the key replaced by the next one.
var prCycle = [...]byte{prRegisterAndIgnoreExisting, prReserve, prRelease, prRegister}

// PROutConfig describes a run of PERSISTENT RESERVE OUT commands, one at a
// time from one I_T nexus.
type PROutConfig struct {
	LUN uint64
	// Duration ends the run after this long; Commands after that many
	// commands. Whichever comes first ends it; 0 means no such bound, and
	// at least one must be given.
	Duration time.Duration
	Commands uint64
	// APTPL sets APTPL in every registration, so that the target keeps the
	// reservations through a power loss (writes them to stable storage).
	APTPL bool
	// Seed makes the keys of a run differ from another's.
	Seed uint64
}

// prCommand fills cmd with the PERSISTENT RESERVE OUT of service action sa
// carrying the reservation key key and the service action key saKey.
func prCommand(cmd *initiator.Command, sa byte, key, saKey uint64, aptpl bool) {
	cdb := cmd.CDB[:10]
	clear(cdb)
	cdb[0] = opPersistentReserveOut
	cdb[1] = sa
	if sa == prReserve || sa == prRelease {
		cdb[2] = prTypeWriteExclusive // scope 0: the logical unit
	}
	binary.BigEndian.PutUint32(cdb[5:], prParamLen)
	p := cmd.DataOut[:prParamLen]
	clear(p)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	if aptpl && (sa == prRegister || sa == prRegisterAndIgnoreExisting) {
		p[prParamFlags] = prAPTPL
	}
}

// RunPROut times PERSISTENT RESERVE OUT commands sent one after another
// (REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, REGISTER with a new
// key, over and over; every command changes the reservation state) and
// returns their count and latencies; Bytes stays 0. At the end it removes
// the registration (not timed), so that the run leaves no state behind. A
// command that fails ends the run with its error.
func RunPROut(ctx context.Context, d Doer, cfg PROutConfig) (Result, error) {
	if cfg.Duration < 0 || (cfg.Duration == 0 && cfg.Commands == 0) {
		return Result{}, fmt.Errorf("duration %v, command count %d: want a positive duration, a count or both", cfg.Duration, cfg.Commands)
	}
	cmd := initiator.Command{LUN: cfg.LUN, Attr: 1, CDB: make([]byte, 10), DataOut: make([]byte, prParamLen)}
	res := Result{Latency: new(Histogram)}
	key := cfg.Seed<<8 | 1 // nonzero; the low byte counts up between runs' seeds
	var cur uint64         // the key registered now, 0 for none
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for i := 0; (cfg.Duration == 0 || time.Now().Before(deadline)) && (cfg.Commands == 0 || res.IOs < cfg.Commands); i++ {
		sa := prCycle[i%len(prCycle)]
		next := cur
		switch sa {
		case prRegisterAndIgnoreExisting, prRegister:
			key++
			if key == 0 {
				key = 1
			}
			next = key
		}
		prCommand(&cmd, sa, cur, next, cfg.APTPL)
		t0 := time.Now()
		if err := doChecked(ctx, d, &cmd); err != nil {
			res.Elapsed = time.Since(start)
			return res, fmt.Errorf("persistent reserve out 0x%02x (command %d): %w", sa, res.IOs+1, err)
		}
		lat := time.Since(t0)
		res.LatencySum += lat
		res.Latency.Record(lat)
		res.IOs++
		cur = next
	}
	res.Elapsed = time.Since(start)
	if cur != 0 {
		prCommand(&cmd, prRegisterAndIgnoreExisting, 0, 0, cfg.APTPL)
		if err := doChecked(ctx, d, &cmd); err != nil {
			return res, fmt.Errorf("persistent reserve out: unregister: %w", err)
		}
	}
	if res.IOs == 0 {
		return res, fmt.Errorf("persistent reserve out run of %v: %w", res.Elapsed.Round(time.Millisecond), ErrNoIO)
	}
	return res, nil
}

// doChecked runs cmd and turns a status other than GOOD into an error.
func doChecked(ctx context.Context, d Doer, cmd *initiator.Command) error {
	r, err := d.Do(ctx, cmd)
	if err != nil {
		return err
	}
	return check(cmd.CDB[0], r)
}
