// Command iserd is a userspace iSCSI target. Without a configuration file it
// serves one thin 1 GiB LUN on 127.0.0.1:3260 from ./data; changes made
// through the admin API (iserctl) are then saved to data/iserd.yaml, which
// later starts use instead of the embedded default.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iser"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "iserd:", err)
		os.Exit(1)
	}
}

// flags are the command line settings.
type flags struct {
	config, dataDir, listen, logLevel, socket string
	cpuProfile                                string
	socketSet                                 bool
}

// override applies the command line to a configuration read from a file.
func (f *flags) override(c *admin.Config) {
	if f.dataDir != "" {
		c.DataDir = f.dataDir
	}
	if f.listen != "" {
		c.Portals = []admin.PortalConfig{{Address: f.listen}}
	}
	if f.logLevel != "" {
		c.Log.Level = f.logLevel
	}
}

func run() error {
	var f flags
	flag.StringVar(&f.config, "config", "", "YAML configuration file (default: DATA/iserd.yaml when the admin API saved one, else the embedded single-LUN target)")
	flag.StringVar(&f.dataDir, "data", "", "data directory for relative LUN paths (overrides data_dir)")
	flag.StringVar(&f.listen, "listen", "", "portal address host:port (overrides the configured portals)")
	flag.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (overrides log.level)")
	flag.StringVar(&f.socket, "admin-socket", admin.DefaultSocket, "unix socket of the admin API and metrics (empty: none)")
	flag.StringVar(&f.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file (for performance work)")
	flag.Parse()
	flag.Visit(func(fl *flag.Flag) { f.socketSet = f.socketSet || fl.Name == "admin-socket" })

	cfg, path, embedded, err := loadConfig(&f)
	if err != nil {
		return err
	}
	if embedded {
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
	if f.cpuProfile != "" {
		stopProfile, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	m, err := admin.New(cfg, admin.Options{Log: log, Path: path, Override: f.override,
		Listen: func(srv *iscsi.Server, p admin.PortalConfig) (io.Closer, error) {
			return startPortal(ctx, srv, p, log, errc)
		}})
	if err != nil {
		return err
	}
	defer m.Close()
	if embedded {
		log.Info("serving the embedded default; admin API changes will be saved to "+path, zap.String("config", path))
	} else {
		log.Info("configuration loaded; admin API changes are saved to it", zap.String("config", path))
	}
	if err := serveAdmin(ctx, m, &f, log, errc); err != nil {
		return err
	}
	if a := cfg.Metrics.Address; a != "" {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("metrics.address: %w", err)
		}
		log.Info("serving metrics", zap.String("address", "http://"+l.Addr().String()+"/metrics"))
		go report(ctx, errc, func() error { return m.ServeMetrics(ctx, l) })
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go reloadOnHUP(ctx, m, log, hup)
	if embedded {
		t, p := cfg.Targets[0].Name, cfg.Portals[0].Address
		fmt.Fprintf(os.Stderr, "\niserd is serving %s on %s (data in %s).\nLog in with:\n"+
			"  iscsiadm -m discovery -t sendtargets -p %s\n  iscsiadm -m node -T %s -p %s --login\n"+
			"or test with libiscsi:\n  iscsi-inq iscsi://%s/%s/0\n\n", t, p, cfg.DataDir, p, t, p, p, t)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		log.Error("stopping", zap.Error(err))
	}
	log.Info("shutting down: finishing in-flight commands")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Server().Shutdown(sctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	return nil
}

// startCPUProfile profiles the process into path until the returned function runs.
func startCPUProfile(path string) (func(), error) {
	out, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		out.Close()
	}, nil
}

// loadConfig finds the configuration: the -config file; without one, the
// file the admin API saved in the data directory; without that, the
// embedded default, which then saves to that file. It returns the path
// changes are saved to and whether the embedded default is in use.
func loadConfig(f *flags) (cfg *admin.Config, path string, embedded bool, err error) {
	path = f.config
	if path != "" {
		if path, err = filepath.Abs(path); err != nil {
			return nil, "", false, fmt.Errorf("config path: %w", err)
		}
	} else {
		dir := f.dataDir
		if dir == "" {
			dir = admin.DefaultConfig().DataDir
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return nil, "", false, fmt.Errorf("data directory: %w", err)
		}
		path = filepath.Join(dir, "iserd.yaml")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			cfg = admin.DefaultConfig()
			cfg.DataDir = dir
			embedded = true
		}
	}
	if cfg == nil {
		if cfg, err = admin.LoadConfig(path); err != nil {
			return nil, "", false, err
		}
	}
	f.override(cfg)
	if err := cfg.Check(); err != nil {
		return nil, "", false, err
	}
	return cfg, path, embedded, nil
}

// serveAdmin starts the admin API on its unix socket. When the default
// socket is held by another iserd, or cannot be created (not root), this
// one runs without it; a socket given with -admin-socket must work.
func serveAdmin(ctx context.Context, m *admin.Manager, f *flags, log *zap.Logger, errc chan<- error) error {
	if f.socket == "" {
		log.Info("admin API disabled (-admin-socket \"\")")
		return nil
	}
	l, err := admin.ListenSocket(f.socket)
	if err != nil {
		if f.socketSet {
			return err
		}
		log.Warn("running without the admin API: pass -admin-socket PATH to choose another socket", zap.Error(err))
		return nil
	}
	log.Info("admin API listening", zap.String("socket", f.socket))
	go func() {
		<-ctx.Done()
		os.Remove(f.socket)
	}()
	go report(ctx, errc, func() error { return m.ServeAPI(ctx, l) })
	return nil
}

// reloadOnHUP applies the configuration file again on each SIGHUP
// delivered on hup.
func reloadOnHUP(ctx context.Context, m *admin.Manager, log *zap.Logger, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := m.Reload(); err != nil {
				log.Error("SIGHUP: configuration not reloaded, the running one is unchanged", zap.Error(err))
				continue
			}
			log.Info("SIGHUP: configuration reloaded", zap.String("config", m.Path()))
		}
	}
}

// report runs serve and passes a failure to errc, unless iserd is stopping.
func report(ctx context.Context, errc chan<- error, serve func() error) {
	if err := serve(); err != nil {
		select {
		case errc <- err:
		case <-ctx.Done():
		}
	}
}

// portal stops one portal's listeners.
type portal struct {
	cancel context.CancelFunc
	srv    *iscsi.Server
	addrs  []string // as given to AddPortal
}

// Close stops accepting connections on the portal and drops it from
// discovery answers; sessions stay.
func (p portal) Close() error {
	p.cancel()
	for _, a := range p.addrs {
		p.srv.RemovePortal(a)
	}
	return nil
}

// startPortal listens on a portal over TCP, iSER or both.
func startPortal(ctx context.Context, srv *iscsi.Server, p admin.PortalConfig, log *zap.Logger, errc chan<- error) (io.Closer, error) {
	pctx, cancel := context.WithCancel(ctx)
	var l net.Listener
	var added []string
	if p.TCP() {
		var err error
		if l, err = net.Listen("tcp", p.Address); err != nil {
			cancel()
			return nil, fmt.Errorf("listen on %s: %w (is another target running on that port?)", p.Address, err)
		}
	}
	if p.ISER() {
		ip, err := netip.ParseAddrPort(p.Address)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("iSER portal %s: %w", p.Address, err)
		}
		ip = netip.AddrPortFrom(ip.Addr().Unmap(), ip.Port())
		ipl, err := iser.Listen(srv, ip, log)
		if err != nil {
			cancel()
			if l != nil {
				l.Close()
			}
			return nil, fmt.Errorf("%w (is an RDMA device, e.g. rdma_rxe, bound to that address?)", err)
		}
		log.Info("listening", zap.String("portal", p.Address), zap.String("transport", "iser"))
		go report(pctx, errc, func() error { return ipl.Serve(pctx) })
		if l == nil {
			srv.AddPortal(iscsi.Portal{Addr: p.Address, TPGT: p.TPGT})
			added = append(added, p.Address)
		}
	}
	if l != nil {
		srv.AddPortal(iscsi.Portal{Addr: l.Addr().String(), TPGT: p.TPGT})
		added = append(added, l.Addr().String())
		log.Info("listening", zap.String("portal", l.Addr().String()), zap.String("transport", "tcp"))
		go report(pctx, errc, func() error { return srv.Serve(pctx, l) })
	}
	return portal{cancel: cancel, srv: srv, addrs: added}, nil
}

func newLogger(c admin.LogConfig) (*zap.Logger, error) {
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
