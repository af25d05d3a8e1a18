// Command iscsi-load logs in to an iSCSI target and keeps a fixed number of
// reads or writes in flight for a while, then prints one line:
//
//	iscsi-load: rw=randwrite bs=4096 qd=32 sessions=1 ios=N seconds=S iops=X mbps=Y lat_us=Z p50_us=A p99_us=B p999_us=C
//
// (lat_us is the mean command latency, p50/p99/p999 its percentiles, each
// within 1/16 above the truth.) With -sessions it logs in that many
// sessions, each keeping -qd commands in flight, and reports their sum.
// With -hold it does no I/O: it logs the sessions in, prints
//
//	iscsi-load: sessions=N logged in
//
// keeps them idle for that long and logs them out (for the target's memory
// per idle session). With -prout it sends PERSISTENT RESERVE OUT commands
// one at a time instead of I/O (REGISTER AND IGNORE EXISTING KEY, RESERVE,
// RELEASE, REGISTER with a new key, repeated; -aptpl makes the target keep
// them through a power loss) and prints the same line with rw=prout, ios
// the commands and iops their rate. It is the write-side client of
// bench/run.sh (libiscsi's iscsi-perf only reads). Examples:
//
//	iscsi-load -portal 127.0.0.1:3260 -target iqn.2026-11.org.iserd:disk0 -rw randwrite -bs 4096 -qd 32 -time 5s
//	iscsi-load -portal 127.0.0.1:3260 -target iqn.2026-11.org.iserd:disk0 -prout -aptpl -time 5s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/iserd/iserd/bench/load"
	"github.com/iserd/iserd/iscsi/initiator"
)

// parallelLogins bounds the logins in progress at once, below a target's
// limit per initiator address (iserd's LoginConnsPerHost is 16).
const parallelLogins = 8

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "iscsi-load:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("iscsi-load", flag.ContinueOnError)
	portal := fs.String("portal", "127.0.0.1:3260", "target portal host:port")
	target := fs.String("target", "", "target IQN (required)")
	name := fs.String("initiator", "iqn.2026-11.org.iserd:iscsi-load", "initiator name")
	lun := fs.Uint64("lun", 0, "LUN number")
	rw := fs.String("rw", "randwrite", "access pattern: randread, randwrite, read, write")
	bs := fs.Int("bs", 4096, "bytes per I/O")
	qd := fs.Int("qd", 32, "commands in flight per session")
	sessions := fs.Int("sessions", 1, "sessions to log in, one connection each")
	hold := fs.Duration("hold", 0, "no I/O: keep the sessions logged in and idle this long, then log out")
	dur := fs.Duration("time", 5*time.Second, "run time (0: until -ios)")
	ios := fs.Uint64("ios", 0, "end the run after this many I/Os per session, if -time has not ended it (0: no count)")
	span := fs.Int64("span", 1<<30, "bytes from LBA 0 the I/Os fall in (0: whole LUN)")
	prout := fs.Bool("prout", false, "time PERSISTENT RESERVE OUT commands, one at a time, instead of I/O (one session)")
	aptpl := fs.Bool("aptpl", false, "with -prout: register with APTPL (the target persists the reservations)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" || fs.NArg() > 0 || *sessions < 1 || (*prout && *sessions != 1) {
		return fmt.Errorf("usage: iscsi-load -target IQN [flags] (see -h; -prout takes one session)")
	}
	pat, err := load.ParsePattern(*rw)
	if err != nil {
		return err
	}
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second+time.Duration(*sessions)*50*time.Millisecond)
	defer cancel()
	conns, err := connect(dctx, *sessions, *portal, *name, *target)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	if *hold > 0 {
		fmt.Printf("iscsi-load: sessions=%d logged in\n", len(conns))
		time.Sleep(*hold)
		return logout(conns)
	}
	var res load.Result
	what := fmt.Sprintf("rw=%v bs=%d qd=%d", pat, *bs, *qd)
	if *prout {
		what = fmt.Sprintf("rw=prout aptpl=%v qd=1", *aptpl)
		res, err = runPROut(ctx, conns[0], load.PROutConfig{LUN: *lun, Duration: *dur, Commands: *ios, APTPL: *aptpl,
			Seed: uint64(time.Now().UnixNano())})
	} else {
		res, err = runAll(ctx, conns, load.Config{Pattern: pat, BlockSize: *bs, QueueDepth: *qd, Duration: *dur, IOs: *ios, LUN: *lun, Span: *span})
	}
	if err != nil {
		return err
	}
	if err := logout(conns); err != nil {
		fmt.Fprintln(os.Stderr, "iscsi-load: warning:", err)
	}
	us := func(q float64) float64 { return float64(res.Latency.Quantile(q)) / 1e3 }
	fmt.Printf("iscsi-load: %s sessions=%d ios=%d seconds=%.3f iops=%.0f mbps=%.1f lat_us=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f\n",
		what, len(conns), res.IOs, res.Elapsed.Seconds(), res.IOPS(), res.MBps(), float64(res.MeanLatency())/1e3,
		us(0.5), us(0.99), us(0.999))
	return nil
}

// runPROut clears the session's unit attentions and times PERSISTENT
// RESERVE OUT commands on it.
func runPROut(ctx context.Context, c *initiator.Conn, cfg load.PROutConfig) (load.Result, error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := load.Prepare(pctx, c, cfg.LUN); err != nil {
		return load.Result{}, err
	}
	rctx, rcancel := context.WithTimeout(ctx, cfg.Duration+30*time.Second)
	defer rcancel()
	return load.RunPROut(rctx, c, cfg)
}

// connect logs in n sessions, parallelLogins at a time; on error it
// returns the ones it made, for the caller to close.
func connect(ctx context.Context, n int, portal, name, target string) ([]*initiator.Conn, error) {
	conns := make([]*initiator.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, parallelLogins)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = load.Connect(ctx, portal, name, target)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("session %d: %w", i+1, errs[i])
			}
		}()
	}
	wg.Wait()
	made := conns[:0]
	for _, c := range conns {
		if c != nil {
			made = append(made, c)
		}
	}
	return made, errors.Join(errs...)
}

// runAll runs cfg on every session at once and adds up the results; the
// run's length is the longest session's.
func runAll(ctx context.Context, conns []*initiator.Conn, cfg load.Config) (load.Result, error) {
	results := make([]load.Result, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			capa, err := load.Prepare(pctx, c, cfg.LUN)
			if err != nil {
				errs[i] = fmt.Errorf("session %d: %w", i+1, err)
				return
			}
			rctx, rcancel := context.WithTimeout(ctx, cfg.Duration+30*time.Second)
			defer rcancel()
			scfg := cfg
			scfg.Seed = uint64(time.Now().UnixNano()) + uint64(i)
			results[i], errs[i] = load.Run(rctx, c, capa, scfg)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("session %d: %w", i+1, errs[i])
			}
		}()
	}
	wg.Wait()
	sum := load.Result{Latency: new(load.Histogram)}
	for _, r := range results {
		sum.IOs += r.IOs
		sum.Bytes += r.Bytes
		sum.LatencySum += r.LatencySum
		sum.Elapsed = max(sum.Elapsed, r.Elapsed)
		if r.Latency != nil {
			sum.Latency.Merge(r.Latency)
		}
	}
	return sum, errors.Join(errs...)
}

// logout ends every session.
func logout(conns []*initiator.Conn) error {
	var errs []error
	for _, c := range conns {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Logout(lctx, initiator.LogoutSession)
		cancel()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
