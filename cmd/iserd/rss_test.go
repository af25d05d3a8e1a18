package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// Figures of the daemon TestHostilePeerRSS runs, and the bounds README's
// "What a peer can make iserd hold" states.
const (
	rssTarget       = "iqn.2026-12.org.iserd.test:rss"
	rssBufferMemory = 64 << 20        // limits.buffer_memory
	perSession      = 5.5 * (1 << 20) // held commands, queued answers, a segment, socket buffers
	perLogin        = 72 << 10        // one Login Request and its text
	runtimeSlack    = 24 << 20        // the Go runtime's own heap goal and stacks
	settleSlack     = 8 << 20         // what may stay mapped once the peer is gone
	segment         = 256 << 10       // the target's MaxRecvDataSegmentLength over TCP
)

// iserdProc is an iserd process under test.
type iserdProc struct {
	cmd    *exec.Cmd
	addr   string
	sock   string
	stderr bytes.Buffer
}

// startDaemon runs this test binary as iserd (see TestMain) with a 64 MiB
// memory LUN, 64 MiB of buffer memory and buffers given back after 1 s.
func startDaemon(t *testing.T) *iserdProc {
	dir := t.TempDir()
	d := &iserdProc{addr: freePort(t), sock: filepath.Join(dir, "admin.sock")}
	cfg := fmt.Sprintf(`data_dir: %s
portals: [{address: "%s"}]
targets:
  - name: %s
    open: true
    luns: [{lun: 0, backend: memory, size: 64MiB}]
limits: {buffer_memory: 64MiB, buffer_idle: 1s}
log: {level: error}
`, dir, d.addr, rssTarget)
	path := filepath.Join(dir, "iserd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(os.Args[0], "-config", path, "-admin-socket", d.sock)
	d.cmd.Env = append(os.Environ(), "ISERD_TEST_MAIN=1")
	d.cmd.Stderr = &d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if nc, err := net.Dial("tcp", d.addr); err == nil {
			nc.Close()
			return d
		}
		if time.Now().After(end) {
			t.Fatalf("iserd did not listen on %s:\n%s", d.addr, d.stderr.String())
		}
	}
}

// rss is the daemon's resident memory in bytes, from smaps_rollup: the
// kernel counts it by walking the page tables then, where VmRSS in
// /proc/PID/status is a per-CPU counter that can lag by tens of MiB.
func (d *iserdProc) rss(t *testing.T) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Rss:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("Rss %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no Rss in /proc/%d/smaps_rollup", d.cmd.Process.Pid)
	return 0
}

// fds is how many descriptors the daemon has open.
func (d *iserdProc) fds(t *testing.T) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// peer is one hostile connection; close ends it.
type peer interface{ Close() error }

// login logs in to the daemon's target over a connection whose reads the
// caller may hold.
func (d *iserdProc) login(t *testing.T, keys ...string) (*initiator.Conn, *initiator.Gate) {
	nc, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.(*net.TCPConn).SetReadBuffer(16 << 10)
	g := initiator.NewGate(nc)
	c := initiator.New(g)
	var kvs []iscsi.KV
	for i := 0; i+1 < len(keys); i += 2 {
		kvs = append(kvs, iscsi.KV{Key: keys[i], Value: keys[i+1]})
	}
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: "iqn.2026-12.org.iserd.test:hostile",
		TargetName: rssTarget, Keys: kvs}); err != nil {
		c.Close()
		t.Fatalf("login: %v", err)
	}
	return c, g
}

// TestHostilePeerRSS runs iserd as a process of its own and plays, case by
// case, the hostile initiators of issue 15 against it, reading the
// daemon's resident memory and open descriptors from /proc: while the
// attack runs, RSS stays below its start + buffer_memory + the bound per
// connection README states; once the peer is gone, RSS and descriptors
// come back near their start.
func TestHostilePeerRSS(t *testing.T) {
	if testing.Short() || raceDetector {
		t.Skip("measures memory: runs without -race and -short (make unit runs it so)")
	}
	d := startDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	read := func(i int, n uint32) *initiator.Command {
		lba := uint64(i*int(n)/512) % (64<<20/512 - uint64(n/512))
		return &initiator.Command{CDB: initiator.Read16(lba, n/512), ReadLen: n}
	}
	warm, _ := d.login(t)
	for i := range 8 {
		warm.Do(ctx, read(i, 1<<20))
	}
	warm.Close()
	time.Sleep(3 * time.Second) // buffers idle for buffer_idle are given back
	baseRSS, baseFDs := d.rss(t), d.fds(t)
	t.Logf("start: RSS %.1f MiB, %d fds", float64(baseRSS)/(1<<20), baseFDs)

	cases := []struct {
		name  string
		bound int64 // beyond the start and runtime slack
		run   func(t *testing.T) []peer
	}{
		{"40 Login Requests announcing 15 MiB, then silence", 16 * perLogin, func(t *testing.T) []peer {
			var ps []peer
			for range 40 {
				nc, err := net.Dial("tcp", d.addr)
				if err != nil {
					t.Fatal(err)
				}
				var b iscsi.BHS
				b[0] = byte(iscsi.OpLoginReq) | 0x40
				b[1] = 0x87 // T, CSG operational, NSG full feature
				b.SetDataLen(15 << 20)
				nc.Write(b[:])
				ps = append(ps, nc)
			}
			return ps
		}},
		{"8 sessions sending 256 KiB NOP-Outs, reading nothing", 8 * perSession, func(t *testing.T) []peer {
			var ps []peer
			for range 8 {
				c, g := d.login(t, "MaxRecvDataSegmentLength", strconv.Itoa(segment))
				g.Hold()
				for range 100 {
					go c.Ping(ctx, make([]byte, segment))
				}
				ps = append(ps, c)
			}
			return ps
		}},
		{"8 sessions holding 60 WRITEs of 256 KiB behind a CmdSN gap", 8 * perSession, func(t *testing.T) []peer {
			var ps []peer
			for range 8 {
				c, _ := d.login(t, "ImmediateData", "Yes", "FirstBurstLength", strconv.Itoa(segment),
					"MaxBurstLength", strconv.Itoa(segment))
				c.ReserveCmdSN(1) // the gap: this CmdSN never comes
				for i := range 60 {
					cmd := &initiator.Command{CDB: initiator.Write16(uint64(i*512), segment/512), DataOut: make([]byte, segment)}
					if _, err := c.StartWithCmdSN(ctx, cmd, c.ReserveCmdSN(1)); err != nil {
						break // the target closed it
					}
				}
				ps = append(ps, c)
			}
			return ps
		}},
		{"4 sessions sending 2,000 READs of 128 KiB past the window, reading nothing", rssBufferMemory + 4*perSession,
			func(t *testing.T) []peer {
				var ps []peer
				for range 4 {
					c, g := d.login(t)
					g.Hold()
					for i := range 2000 {
						if _, err := c.StartWithCmdSN(ctx, read(i, 128<<10), c.ReserveCmdSN(1)); err != nil {
							break
						}
					}
					ps = append(ps, c)
				}
				return ps
			}},
		{"8 sessions with 128 READs of 1 MiB each, reading nothing", rssBufferMemory + 8*perSession, func(t *testing.T) []peer {
			var ps []peer
			for range 8 {
				c, g := d.login(t)
				g.Hold()
				for i := range 128 {
					if _, err := c.StartWithCmdSN(ctx, read(i, 1<<20), c.ReserveCmdSN(1)); err != nil {
						break
					}
				}
				ps = append(ps, c)
			}
			return ps
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var (
				mu   sync.Mutex
				peak int64
				stop = make(chan struct{})
				done = make(chan struct{})
			)
			go func() { // sample RSS while the attack runs
				defer close(done)
				for {
					r := d.rss(t)
					mu.Lock()
					peak = max(peak, r)
					mu.Unlock()
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			peers := c.run(t)
			time.Sleep(2 * time.Second) // the daemon takes what it will take
			close(stop)
			<-done
			during := d.fds(t)
			for _, p := range peers {
				p.Close()
			}
			limit := baseRSS + runtimeSlack + c.bound
			t.Logf("peak RSS %.1f MiB (bound %.1f MiB), %d fds during", float64(peak)/(1<<20), float64(limit)/(1<<20), during)
			if peak > limit {
				t.Errorf("peak RSS %d bytes, above the bound %d", peak, limit)
			}
			var rss int64
			var fds int
			left := time.Now()
			end := left.Add(30 * time.Second)
			for {
				rss, fds = d.rss(t), d.fds(t)
				if rss <= baseRSS+settleSlack && fds <= baseFDs || time.Now().After(end) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Logf("%.1f s after the peer left: RSS %.1f MiB, %d fds", time.Since(left).Seconds(), float64(rss)/(1<<20), fds)
			if rss > baseRSS+settleSlack || fds > baseFDs {
				t.Errorf("30 s after the peer left: RSS %d bytes (start %d), %d fds (start %d)", rss, baseRSS, fds, baseFDs)
			}
		})
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err == nil {
		d.cmd.Wait()
	}
}
