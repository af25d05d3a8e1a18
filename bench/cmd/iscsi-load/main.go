// Command iscsi-load logs in to an iSCSI target and keeps a fixed number of
// reads or writes in flight for a while, then prints one line:
//
//	iscsi-load: rw=randwrite bs=4096 qd=32 ios=N seconds=S iops=X mbps=Y lat_us=Z p50_us=A p99_us=B p999_us=C
//
// (lat_us is the mean command latency, p50/p99/p999 its percentiles, each
// within 1/16 above the truth.)
//
// It is the write-side client of bench/run.sh (libiscsi's iscsi-perf only
// reads). Example:
//
//	iscsi-load -portal 127.0.0.1:3260 -target iqn.2026-11.org.iserd:disk0 -rw randwrite -bs 4096 -qd 32 -time 5s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/iserd/iserd/bench/load"
	"github.com/iserd/iserd/iscsi/initiator"
)

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
	qd := fs.Int("qd", 32, "commands in flight")
	dur := fs.Duration("time", 5*time.Second, "run time (0: until -ios)")
	ios := fs.Uint64("ios", 0, "end the run after this many I/Os, if -time has not ended it (0: no count)")
	span := fs.Int64("span", 1<<30, "bytes from LBA 0 the I/Os fall in (0: whole LUN)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" || fs.NArg() > 0 {
		return fmt.Errorf("usage: iscsi-load -target IQN [flags] (see -h)")
	}
	pat, err := load.ParsePattern(*rw)
	if err != nil {
		return err
	}
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := load.Connect(dctx, *portal, *name, *target)
	if err != nil {
		return err
	}
	defer c.Close()
	capa, err := load.Prepare(dctx, c, *lun)
	if err != nil {
		return err
	}
	rctx, rcancel := context.WithTimeout(ctx, *dur+30*time.Second)
	defer rcancel()
	res, err := load.Run(rctx, c, capa, load.Config{Pattern: pat, BlockSize: *bs, QueueDepth: *qd,
		Duration: *dur, IOs: *ios, LUN: *lun, Span: *span, Seed: uint64(time.Now().UnixNano())})
	if err != nil {
		return err
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	if _, err := c.Logout(lctx, initiator.LogoutSession); err != nil {
		fmt.Fprintln(os.Stderr, "iscsi-load: warning:", err)
	}
	us := func(q float64) float64 { return float64(res.Latency.Quantile(q)) / 1e3 }
	fmt.Printf("iscsi-load: rw=%v bs=%d qd=%d ios=%d seconds=%.3f iops=%.0f mbps=%.1f lat_us=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f\n",
		pat, *bs, *qd, res.IOs, res.Elapsed.Seconds(), res.IOPS(), res.MBps(), float64(res.MeanLatency())/1e3, us(0.5), us(0.99), us(0.999))
	return nil
}
