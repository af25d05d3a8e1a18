// Command iserd is a userspace iSCSI target. Without a configuration file it
// serves one thin 1 GiB LUN on 127.0.0.1:3260 from ./data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iser"
	"github.com/iserd/iserd/scsi"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "iserd:", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "", "YAML configuration file (default: the embedded single-LUN target)")
	dataDir := flag.String("data", "", "data directory for relative LUN paths (overrides data_dir)")
	listen := flag.String("listen", "", "portal address host:port (overrides the configured portals)")
	logLevel := flag.String("log-level", "", "debug, info, warn or error (overrides log.level)")
	flag.Parse()

	cfg := DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = LoadConfig(*configPath); err != nil {
			return err
		}
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *listen != "" {
		cfg.Portals = []PortalConfig{{Address: *listen}}
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	if err := cfg.Check(); err != nil {
		return err
	}
	if *configPath == "" {
		for _, p := range cfg.Portals {
			if host, _, _ := net.SplitHostPort(p.Address); !net.ParseIP(host).IsLoopback() {
				return fmt.Errorf("the embedded default target is open to every initiator, so it only listens on loopback; "+
					"to serve %s write a config file with ACLs (see README)", p.Address)
			}
		}
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer log.Sync()

	d, err := build(cfg, log)
	if err != nil {
		return err
	}
	defer d.closeDisks()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, len(cfg.Portals))
	for _, p := range cfg.Portals {
		if p.tcp() {
			l, err := net.Listen("tcp", p.Address)
			if err != nil {
				return fmt.Errorf("listen on %s: %w (is another target running on that port?)", p.Address, err)
			}
			d.srv.AddPortal(iscsi.Portal{Addr: l.Addr().String()})
			log.Info("listening", zap.String("portal", l.Addr().String()), zap.String("transport", "tcp"))
			go func() { errc <- d.srv.Serve(ctx, l) }()
		}
		if p.iser() {
			ip, err := netip.ParseAddrPort(p.Address)
			if err != nil {
				return fmt.Errorf("iSER portal %s: %w", p.Address, err)
			}
			ip = netip.AddrPortFrom(ip.Addr().Unmap(), ip.Port())
			ipl, err := iser.Listen(d.srv, ip, log)
			if err != nil {
				return fmt.Errorf("%w (is an RDMA device, e.g. rdma_rxe, bound to that address?)", err)
			}
			if !p.tcp() {
				d.srv.AddPortal(iscsi.Portal{Addr: p.Address})
			}
			log.Info("listening", zap.String("portal", p.Address), zap.String("transport", "iser"))
			go func() { errc <- ipl.Serve(ctx) }()
		}
	}
	for _, t := range cfg.Targets {
		log.Info("target ready", zap.String("target", t.Name), zap.Int("luns", len(t.LUNs)))
	}
	if *configPath == "" {
		fmt.Fprintf(os.Stderr, "\niserd is serving %s on %s (data in %s).\nLog in with:\n"+
			"  iscsiadm -m discovery -t sendtargets -p %s\n  iscsiadm -m node -T %s -p %s --login\n"+
			"or test with libiscsi:\n  iscsi-inq iscsi://%s/%s/0\n\n",
			cfg.Targets[0].Name, cfg.Portals[0].Address, cfg.DataDir, cfg.Portals[0].Address,
			cfg.Targets[0].Name, cfg.Portals[0].Address, cfg.Portals[0].Address, cfg.Targets[0].Name)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			log.Error("portal failed", zap.Error(err))
		}
	}
	log.Info("shutting down: finishing in-flight commands")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	return nil
}

// daemon is what build wires together from the configuration.
type daemon struct {
	srv   *iscsi.Server
	disks []*scsi.Disk
	log   *zap.Logger
}

// build opens every LUN's backing store and registers the targets.
func build(cfg *Config, log *zap.Logger) (*daemon, error) {
	srv, err := iscsi.NewServer(log, iscsi.DefaultOptions())
	if err != nil {
		return nil, err
	}
	d := &daemon{srv: srv, log: log}
	d.srv.SetDiscoveryCHAP(cfg.DiscoveryCHAP.secret())
	for _, tc := range cfg.Targets {
		st := scsi.NewTarget(tc.Name)
		for _, lc := range tc.LUNs {
			disk, err := d.openLUN(cfg.DataDir, tc.Name, lc)
			if err != nil {
				d.closeDisks()
				return nil, fmt.Errorf("target %s lun %d: %w", tc.Name, lc.LUN, err)
			}
			d.disks = append(d.disks, disk)
			if err := st.AddLUN(lc.LUN, disk); err != nil {
				d.closeDisks()
				return nil, fmt.Errorf("target %s lun %d: %w", tc.Name, lc.LUN, err)
			}
		}
		it := &iscsi.Target{Name: tc.Name, Alias: tc.Alias, SCSI: st}
		it.SetAccess(tc.access())
		if err := d.srv.AddTarget(it); err != nil {
			d.closeDisks()
			return nil, err
		}
	}
	return d, nil
}

// openLUN opens the backing store of one LUN and wraps it in a SCSI disk.
func (d *daemon) openLUN(dataDir, target string, lc LUNConfig) (*scsi.Disk, error) {
	var dev bdev.Device
	switch lc.Backend {
	case "memory":
		dev = bdev.NewMemory(int64(lc.Size))
	default:
		path := lc.Path
		if !filepath.IsAbs(path) {
			path = filepath.Join(dataDir, path)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, fmt.Errorf("create data directory: %w", err)
			}
		}
		fo := bdev.FileOptions{Size: int64(lc.Size), ReadOnly: lc.ReadOnly, Create: lc.Size > 0}
		f, err := d.openFile(path, fo, lc)
		if err != nil {
			return nil, err
		}
		if f.Size() == 0 {
			f.Close()
			return nil, fmt.Errorf("backing store %s is empty: give the LUN a size", path)
		}
		dev = f
	}
	disk, err := scsi.NewDisk(dev, scsi.DiskConfig{BlockSize: lc.BlockSize, ReadOnly: lc.ReadOnly,
		Thin: *lc.Thin, Serial: lc.Serial, NAA: naaFor(target, lc.LUN)})
	if err != nil {
		dev.Close()
		return nil, err
	}
	return disk, nil
}

// openFile opens a file or block device with io_uring, or with the thread
// pool when io_uring is not wanted or the kernel refuses it.
func (d *daemon) openFile(path string, fo bdev.FileOptions, lc LUNConfig) (bdev.Device, error) {
	if lc.IO != "threads" {
		u, err := bdev.NewUring(path, bdev.UringOptions{FileOptions: fo, Pool: d.srv.Pool(), Buffered: !lc.Direct})
		if err == nil {
			return u, nil
		}
		if !errors.Is(err, bdev.ErrNoUring) {
			return nil, err
		}
		d.log.Warn("io_uring unavailable: using the thread pool backend", zap.String("path", path), zap.Error(err))
	}
	return bdev.NewFile(path, fo)
}

// naaFor derives a stable identifier from the target name and LUN, so a
// LUN keeps its WWN across restarts.
func naaFor(target string, lun uint64) uint64 {
	h := uint64(14695981039346656037)
	for _, b := range []byte(target) {
		h = (h ^ uint64(b)) * 1099511628211
	}
	return h ^ lun*0x9e3779b97f4a7c15
}

func (d *daemon) closeDisks() {
	for _, disk := range d.disks {
		if err := disk.Close(); err != nil {
			d.log.Error("closing LUN", zap.Error(err))
		}
	}
	d.disks = nil
}

func newLogger(c LogConfig) (*zap.Logger, error) {
	lvl := zapcore.InfoLevel
	if c.Level != "" {
		if err := lvl.UnmarshalText([]byte(c.Level)); err != nil {
			return nil, fmt.Errorf("log.level %q is not debug, info, warn or error", c.Level)
		}
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.DisableStacktrace = true
	switch c.Format {
	case "", "console":
		zc.Encoding = "console"
		zc.EncoderConfig = zap.NewDevelopmentEncoderConfig()
	case "json":
	default:
		return nil, errors.New("log.format must be console or json")
	}
	return zc.Build()
}
