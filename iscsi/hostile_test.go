package iscsi_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// The tests in this file play a hostile initiator: each checks that what
// it can make the target hold stays within the bound PeerLimits (or the
// command window, or the buffer pool) names for it.

// liveHeap is the Go heap in use after a collection: what the target
// holds, without garbage.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// checkHeapGrowth fails when the live heap grew more than bound since base.
func checkHeapGrowth(t *testing.T, what string, base, bound int64) {
	t.Helper()
	grown := liveHeap() - base
	t.Logf("%s: live heap grew %.1f MiB (bound %.1f MiB)", what, float64(grown)/(1<<20), float64(bound)/(1<<20))
	if grown > bound {
		t.Fatalf("%s: live heap grew %d bytes, more than the %d allowed", what, grown, bound)
	}
}

// lunInFlight is LUN 0's count of commands received and not answered.
func (e *env) lunInFlight() int64 { return e.srv.Target(testTarget).LUNStats(0).InFlight }

// TestResetWhileInitiatorOwesData: session B starts a 1 MiB WRITE and never
// sends its data; session A resets the LU. The reset is answered (after
// AbortDataTimeout B's connection is closed, or at once when B drops it),
// and nothing is left in flight.
func TestResetWhileInitiatorOwesData(t *testing.T) {
	for _, tc := range []struct {
		name  string
		keys  []iscsi.KV
		flags byte // SCSI Command byte 1
		drop  bool // B drops its connection after the reset is sent
	}{
		{"unsolicited Data-Out never sent", kv("ImmediateData", "No", "InitialR2T", "No"), 0x20 | 1, false},
		{"R2T never answered", kv("ImmediateData", "No", "InitialR2T", "Yes"), 0x80 | 0x20 | 1, false},
		{"owner drops its connection", kv("ImmediateData", "No", "InitialR2T", "Yes"), 0x80 | 0x20 | 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = time.Second
			e := newEnv(t, func(o *iscsi.Options) {
				o.AbortDataTimeout = timeout
				if tc.drop {
					o.AbortDataTimeout = time.Minute // only the drop can end the task in time
				}
			})
			a := e.login(t)
			b := e.login(t, tc.keys...)
			// The count of the logins' last TEST UNIT READY may still be 1.
			polltest.Until(t, time.Second, "commands of the logins still in flight", func() bool { return e.lunInFlight() == 0 })
			rawCommand(t, b, tc.flags, 1<<20, initiator.Write16(0, (1<<20)/blockSize), nil)
			if tc.flags&0x80 != 0 {
				expectPDU(t, b, iscsi.OpR2T)
			}
			polltest.Until(t, time.Second, "the WRITE is not in flight", func() bool { return e.lunInFlight() == 1 })
			start := time.Now()
			if tc.drop {
				time.AfterFunc(200*time.Millisecond, func() { b.Close() })
			}
			code, err := a.TaskManagement(ctxT(t), initiator.TMF{Function: initiator.TMFLUReset})
			if err != nil || code != 0 {
				t.Fatalf("LOGICAL UNIT RESET: response %d, %v", code, err)
			}
			took := time.Since(start)
			t.Logf("reset answered after %v", took)
			if took > timeout+2*time.Second {
				t.Fatalf("reset answered after %v, want within AbortDataTimeout (%v)", took, timeout)
			}
			if !tc.drop {
				expectClosed(t, b)
			}
			polltest.Until(t, 2*time.Second, "commands left in flight", func() bool { return e.lunInFlight() == 0 })
			clearUA(t, a)
			checkUsable(t, a)
		})
	}
}

// TestWindowEnforced sends 2,000 non-immediate 128 KiB READs back to back
// to a target whose answers the initiator does not read: no more than the
// window are ever in flight, and the rest are ignored, not queued.
func TestWindowEnforced(t *testing.T) {
	const window = 8
	e := newEnv(t, func(o *iscsi.Options) { o.CmdWindow = window })
	c, g := e.gatedLogin(t)
	sess := e.srv.Sessions()[0]
	base := liveHeap()
	g.Hold()
	peak := watchInFlight(sess)
	for i := range 2000 {
		rawCommand(t, c, 0x80|0x40|1, 128<<10, initiator.Read16(uint64(i%64)*256, 256), nil)
	}
	time.Sleep(200 * time.Millisecond)
	most := peak()
	t.Logf("most commands in flight: %d (window %d)", most, window)
	if most > window {
		t.Fatalf("%d commands in flight with a window of %d", most, window)
	}
	checkHeapGrowth(t, "2,000 READs sent past the window", base, 8<<20)
	if m := e.srv.Pool().Mapped(); m > 2*bdev.DefaultRegionSize {
		t.Fatalf("buffer pool mapped %d bytes for %d commands of 128 KiB", m, window)
	}
}

// TestPoolServesEverySizeAfterExhaustion has two sessions take the whole
// buffer pool with 1 MiB READs they do not read, then end; a new session's
// READs of every size are then served (not BUSY), and idle regions go back
// to the system.
func TestPoolServesEverySizeAfterExhaustion(t *testing.T) {
	pool, err := bdev.NewPool(bdev.PoolOptions{Max: 4 * bdev.DefaultRegionSize, TrimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *iscsi.Options) { o.Pool = pool })
	for range 2 {
		c, g := e.gatedLogin(t)
		g.Hold()
		for i := range 64 {
			if _, err := c.Start(ctxT(t), &initiator.Command{CDB: initiator.Read16(uint64(i)*2048, 2048), ReadLen: 1 << 20}); err != nil {
				t.Fatal(err)
			}
		}
	}
	polltest.Until(t, 5*time.Second, "the 1 MiB READs did not exhaust the pool", func() bool {
		b, err := pool.Get(1 << 20)
		if err == nil {
			pool.Put(b)
		}
		return errors.Is(err, bdev.ErrPoolExhausted)
	})
	for _, s := range e.srv.Sessions() {
		s.Close()
	}
	polltest.Until(t, 5*time.Second, "sessions still there", func() bool { return len(e.srv.Sessions()) == 0 })
	c := e.login(t)
	for n := 4 << 10; n <= 16<<20; n <<= 2 {
		readBlocks(t, c, 0, n)
	}
	pool.Trim()
	if n := pool.Trim(); n == 0 || pool.Mapped() != 0 {
		t.Fatalf("idle pool: Trim unmapped %d regions, %d bytes still mapped", n, pool.Mapped())
	}
	readBlocks(t, c, 0, 64<<10)
}

// TestLoginPhaseBounds: connections that announce huge Login Requests and
// stall, idle connections beyond the login limits, and a first PDU that is
// not a Login Request.
func TestLoginPhaseBounds(t *testing.T) {
	limited := func(t *testing.T) *env {
		return newEnv(t, func(o *iscsi.Options) { o.LoginConns, o.LoginConnsPerHost = 8, 4 })
	}
	loginHeader := func(dataLen int) []byte {
		var b iscsi.BHS
		b[0] = byte(iscsi.OpLoginReq) | 0x40
		b[1] = 0x87
		b.SetDataLen(dataLen)
		return b[:]
	}
	t.Run("huge login requests", func(t *testing.T) {
		e := limited(t)
		base := liveHeap()
		for range 40 {
			nc, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.Write(loginHeader(15 << 20))
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			var resp iscsi.BHS
			if _, err := io.ReadFull(nc, resp[:]); err != nil {
				continue // closed at once by the login limits
			}
			if st := iscsi.LoginStatus(resp.U16(36)); resp.Opcode() != iscsi.OpLoginResp || st != iscsi.LoginInitiatorError {
				t.Fatalf("got %v status 0x%04x, want a Login Response with 0x0200", resp.Opcode(), uint16(st))
			}
		}
		checkHeapGrowth(t, "40 Login Requests announcing 15 MiB", base, 4<<20)
	})
	t.Run("idle connections past the limit", func(t *testing.T) {
		e := limited(t)
		var open []net.Conn
		for i := range 6 {
			nc, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, err = nc.Read(make([]byte, 1))
			var ne net.Error
			stillOpen := errors.As(err, &ne) && ne.Timeout()
			if stillOpen != (i < 4) {
				t.Fatalf("connection %d: open %v (read: %v), want only the first 4 open", i, stillOpen, err)
			}
			if stillOpen {
				open = append(open, nc)
			}
		}
		for _, nc := range open {
			nc.Close()
		}
		polltest.Until(t, 2*time.Second, "logins refused after idle connections closed", func() bool {
			c, err := initiator.Dial(ctxT(t), e.addr)
			if err != nil {
				return false
			}
			defer c.Close()
			_, err = c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget})
			return err == nil
		})
	})
	t.Run("logged-in connections past the daemon-wide cap", func(t *testing.T) {
		e := newEnv(t, func(o *iscsi.Options) { o.Connections = 3 })
		for range 3 {
			e.login(t)
		}
		nc, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := nc.Read(make([]byte, 1)); err == nil || time.Since(start) > time.Second {
			t.Fatalf("fourth connection not closed at once: read %v after %v", err, time.Since(start))
		}
	})
	t.Run("first PDU not a login", func(t *testing.T) {
		e := limited(t)
		nc, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		var b iscsi.BHS
		b[0] = byte(iscsi.OpSCSICmd)
		b.SetDataLen(1 << 20)
		nc.Write(b[:])
		start := time.Now()
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := nc.Read(make([]byte, 1)); err == nil || time.Since(start) > time.Second {
			t.Fatalf("connection not closed at once: read %v after %v", err, time.Since(start))
		}
	})
}

// TestEchoAndHeldBounds: NOP-Outs whose echoes the initiator does not read,
// a NOP-Out beyond MaxRecvDataSegmentLength, and commands held behind a
// CmdSN gap.
func TestEchoAndHeldBounds(t *testing.T) {
	e := newEnv(t, nil)
	const segment = 256 << 10 // the target's MaxRecvDataSegmentLength
	nop := func(c *initiator.Conn, n int) *initiator.PDU {
		p := &initiator.PDU{Data: pattern(n, 7)}
		p.BHS[0] = byte(iscsi.OpNOPOut) | 0x40
		p.BHS[1] = 0x80
		p.BHS.SetU32(16, c.NewITT())
		p.BHS.SetU32(20, iscsi.NoTag)
		p.BHS.SetU32(24, c.CmdSN())
		p.BHS.SetU32(28, c.ExpStatSN())
		return p
	}
	t.Run("echoes not read", func(t *testing.T) {
		c, g := e.gatedLogin(t, kv("MaxRecvDataSegmentLength", fmt.Sprint(segment))...)
		base := liveHeap()
		g.Hold()
		sent := make(chan int)
		go func() {
			n := 0
			for ; n < 200; n++ { // 50 MiB of echo
				if c.WritePDU(nop(c, segment)) != nil {
					break
				}
			}
			sent <- n
		}()
		time.Sleep(500 * time.Millisecond)
		checkHeapGrowth(t, "NOP-Outs of 256 KiB not read", base, 4<<20)
		g.Release()
		if n := <-sent; n != 200 {
			t.Fatalf("sent %d NOP-Outs", n)
		}
		checkUsable(t, c)
	})
	t.Run("NOP-Out beyond MaxRecvDataSegmentLength", func(t *testing.T) {
		c := e.login(t)
		p := nop(c, segment+4)
		if err := c.WritePDU(p); err != nil {
			t.Fatal(err)
		}
		rej := expectPDU(t, c, iscsi.OpReject)
		if rej.BHS[2] != 0x04 {
			t.Fatalf("Reject reason 0x%02x, want protocol error", rej.BHS[2])
		}
		expectClosed(t, c)
	})
	t.Run("commands held behind a gap", func(t *testing.T) {
		c := e.login(t, kv("FirstBurstLength", fmt.Sprint(segment), "MaxBurstLength", fmt.Sprint(segment))...)
		base := liveHeap()
		c.ReserveCmdSN(1) // the gap: this CmdSN never comes
		for i := range 60 {
			p := &initiator.PDU{Data: pattern(segment, byte(i))}
			p.BHS[0] = byte(iscsi.OpSCSICmd)
			p.BHS[1] = 0x80 | 0x20 | 1
			p.BHS.SetU32(16, c.NewITT())
			p.BHS.SetU32(20, segment)
			p.BHS.SetU32(24, c.ReserveCmdSN(1))
			p.BHS.SetU32(28, c.ExpStatSN())
			copy(p.BHS[32:], initiator.Write16(uint64(i)*512, segment/blockSize))
			if err := c.WritePDU(p); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Ping(ctxT(t), nil); err != nil { // every command above has been read
			t.Fatal(err)
		}
		checkHeapGrowth(t, "60 commands of 256 KiB behind a CmdSN gap", base, int64(iscsi.DefaultPeerLimits().HeldBytes+(2<<20)))
	})
}

// TestLoginAnswerBounds: a login whose answer would not fit one Login
// Response (thousands of unknown keys) is refused, and iSCSI names that
// break the syntax are refused with a login status.
func TestLoginAnswerBounds(t *testing.T) {
	e := newEnv(t, nil)
	t.Run("thousands of unknown keys", func(t *testing.T) {
		keys := ident()
		for i := range 5000 {
			keys = append(keys, iscsi.KV{Key: fmt.Sprintf("X%04d", i), Value: "1"})
		}
		c := e.dial(t)
		r, err := c.LoginStep(initiator.LoginStep{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, KVs: keys, Split: 8192})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != iscsi.LoginInitiatorError {
			t.Fatalf("status 0x%04x, want 0x0200", uint16(r.Status))
		}
	})
	for _, name := range []string{
		"iqn.2026-01.test.iserd:\xff\xfe",
		"iqn.2026-01.test.iserd:with space",
		"iqn.2026-01.test.iserd:under_score",
		"iqn.2026-01.test.iserd:tab\t",
		"iqn.26-01.test.iserd:short-date",
		"eui.02004567A425678G",
		"naa.52004567BA64678",
		"iscsi:no-prefix",
	} {
		t.Run(fmt.Sprintf("name %q", name), func(t *testing.T) {
			c := e.dial(t)
			_, err := c.Login(initiator.LoginOptions{InitiatorName: name, TargetName: testTarget})
			if st := loginStatus(t, err); st != iscsi.LoginInitiatorError {
				t.Fatalf("status 0x%04x, want 0x0200", uint16(st))
			}
		})
	}
}

// watchInFlight samples the session's commands in flight (received and not
// yet answered, as the target counts them) every 200 us until the returned
// function is called, which reports the most it saw.
func watchInFlight(sess *iscsi.Session) (peak func() int64) {
	stop, most := make(chan struct{}), make(chan int64)
	go func() {
		var n int64
		for {
			select {
			case <-stop:
				most <- n
				return
			default:
			}
			n = max(n, sess.Stats().InFlight)
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() int64 { close(stop); return <-most }
}
