// Command iserd is a userspace iSCSI target. Without a configuration file it
// serves one thin 1 GiB LUN on 127.0.0.1:3260 from ./data; changes made
// through the admin API (iserctl) are then saved to data/iserd.yaml, which
// later starts use instead of the embedded default.
package main

import (
	"context"
	_ "embed"
	"errors"
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

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/cluster"
	"github.com/iserd/iserd/internal/cli"
	"github.com/iserd/iserd/internal/procscale"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iser"
	"github.com/iserd/iserd/rdma"
)

func main() {
	root := newRoot()
	root.SetArgs(cli.LongFlags(os.Args[1:]))
	if err := root.Execute(); err != nil {
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

// newRoot is iserd's command line; --help and the manual page come from it.
func newRoot() *cobra.Command {
	var f flags
	root := &cobra.Command{
		Use:   "iserd",
		Short: "userspace iSCSI and iSER (RDMA) target",
		Long: "iserd serves block storage to iSCSI initiators over TCP and over RDMA (iSER, RFC 7145), from files, " +
			"block devices or memory. Its targets, LUNs, ACLs, CHAP credentials and portals come from a YAML file " +
			"(see iserd.yaml(5)) and can be changed while it runs with iserctl(8), which saves every change " +
			"back to that file.\n\n" +
			"Without --config, iserd uses DATA/iserd.yaml when the admin API saved one there, and otherwise an " +
			"embedded default: one thin 1 GiB LUN, open to every initiator, on 127.0.0.1:3260 only. Long flags may " +
			"be written with one dash (-config) as well as two (--config).\n\n" +
			"Signals. SIGHUP reads the configuration file again and applies the difference (as iserctl reload). " +
			"SIGINT and SIGTERM stop accepting logins, let in-flight commands finish, flush the backing files and exit.\n\n" +
			"systemd. Under a unit with Type=notify, iserd reports READY=1 once every portal listens, " +
			"RELOADING=1 while it applies a SIGHUP, STOPPING=1 when it shuts down, and a STATUS= line with its " +
			"targets, LUNs and sessions; with WatchdogSec= it sends WATCHDOG=1 at half the interval from its main " +
			"loop, after asking the engine for that status.\n\n" +
			"Files. /etc/iserd/iserd.yaml (the packaged configuration), /var/lib/iserd (relative LUN paths and " +
			"persistent reservation state), /run/iserd/admin.sock (the admin API, mode 0600).",
		Example: "  iserd                                   # the embedded default, data in ./data\n" +
			"  iserd --config /etc/iserd/iserd.yaml\n" +
			"  iserd --listen 127.0.0.1:3261 --data /tmp/iserd --admin-socket ''",
		Annotations:   map[string]string{cli.SeeAlso: "**iserctl**(8), iserd.yaml(5), **iscsiadm**(8), **systemd.service**(5)"},
		Version:       cli.Version(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.socketSet = cmd.Flags().Changed("admin-socket")
			return run(&f)
		},
	}
	root.SetVersionTemplate("iserd {{.Version}}")
	root.CompletionOptions.DisableDefaultCmd = true
	fl := root.Flags()
	fl.StringVar(&f.config, "config", "", "YAML configuration file (default: DATA/iserd.yaml when the admin API saved one, else the embedded single-LUN target)")
	fl.StringVar(&f.dataDir, "data", "", "data directory for relative LUN paths (overrides data_dir)")
	fl.StringVar(&f.listen, "listen", "", "portal address host:port (overrides the configured portals)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (overrides log.level)")
	fl.StringVar(&f.socket, "admin-socket", admin.DefaultSocket, "unix socket of the admin API and metrics (empty: none)")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file (for performance work)")
	root.AddCommand(docsCommand(root), defaultConfigCommand())
	return root
}

// example is the annotated configuration of iserd.yaml(5) and the README.
//
//go:embed iserd.example.yaml
var example string

// yamlPage is the text of iserd.yaml(5) around the annotated example.
const yamlPage = `# NAME

iserd.yaml - configuration of the iserd iSCSI target

# SYNOPSIS

/etc/iserd/iserd.yaml (packaged), DATA/iserd.yaml, or the file given to **iserd --config**

# DESCRIPTION

A YAML document describing iserd's portals, targets, LUNs, ACLs and CHAP credentials. Unknown fields are errors.
The admin API (**iserctl**(8)) edits the same model and saves it back atomically (temporary file, fsync, rename,
fsync of the directory); the file holds CHAP secrets, so keep it mode 0600 (iserd writes it so).

SIGHUP or **iserctl reload** reads the file again and applies the difference: targets, LUNs (added, removed,
replaced when their backing store or options change, resized when only the size grows), ACLs, CHAP, session
limits, portals. A file that does not load, or that would shrink a LUN, is refused as a whole and the running
configuration stays. data_dir, limits, metrics, log and target aliases take effect at the next start.

CHAP secrets are 12 to 255 characters. Target and initiator names are iSCSI names (iqn., eui. or naa.). Sizes take
K, M, G and T with or without iB, or a byte count.

# EXAMPLE

Every field, with its meaning and default:

` + "```" + `
%s` + "```" + `

# SEE ALSO

**iserd**(8), **iserctl**(8)
`

// docsCommand writes iserd.8 and iserd.yaml.5; the package build runs it.
func docsCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{Use: "gendocs DIR", Short: "write the manual pages iserd.8 and iserd.yaml.5 into DIR",
		Hidden: true, Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			if err := cli.WriteManPage(root, "8", args[0]); err != nil {
				return err
			}
			page := cli.TitleLine("iserd.yaml", "5") + fmt.Sprintf(yamlPage, example)
			return cli.WriteMarkdownPage(args[0], "iserd.yaml.5", []byte(page))
		}}
}

// defaultConfigCommand prints the embedded default with its data directory
// set: the packaged /etc/iserd/iserd.yaml.
func defaultConfigCommand() *cobra.Command {
	return &cobra.Command{Use: "default-config DATA_DIR", Short: "print the embedded default configuration as YAML",
		Hidden: true, Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			cfg := admin.DefaultConfig()
			cfg.DataDir = args[0]
			if err := cfg.Check(); err != nil {
				return err
			}
			raw, err := yaml.Marshal(cfg)
			if err != nil {
				return fmt.Errorf("default configuration: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		}}
}

func run(f *flags) error {
	cfg, path, embedded, err := loadConfig(f)
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
	provider, err := rdma.ParseProviderChoice(cfg.RDMA.Provider)
	if err != nil {
		return err
	}
	checkRDMA(provider, log)
	node, err := joinCluster(cfg, log)
	if err != nil {
		return err
	}
	defer leaveCluster(node, log) // after the shutdown below has let in-flight commands finish
	m, err := admin.New(cfg, admin.Options{Log: log, Path: path, Override: f.override,
		Listen: func(srv *iscsi.Server, p admin.PortalConfig) (io.Closer, error) {
			return startPortal(ctx, srv, p, provider, log, errc)
		},
		RDMA:    func() admin.RDMAStatus { return rdmaStatus(provider) },
		Cluster: node})
	if err != nil {
		return err
	}
	defer m.Close()
	if embedded {
		log.Info("serving the embedded default; admin API changes will be saved to "+path, zap.String("config", path))
	} else {
		log.Info("configuration loaded; admin API changes are saved to it", zap.String("config", path))
	}
	if err := serveAdmin(ctx, m, f, log, errc); err != nil {
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
	idle := time.Duration(cfg.Limits.BufferIdle)
	if idle <= 0 {
		idle = bdev.DefaultTrimInterval
	}
	go returnIdleHeap(ctx, idle)
	go procscale.Run(ctx)
	sd := newNotifier(log)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go reloadOnHUP(ctx, m, log, hup, sd)
	if embedded {
		t, p := cfg.Targets[0].Name, cfg.Portals[0].Address
		fmt.Fprintf(os.Stderr, "\niserd is serving %s on %s (data in %s).\nLog in with:\n"+
			"  iscsiadm -m discovery -t sendtargets -p %s\n  iscsiadm -m node -T %s -p %s --login\n"+
			"or test with libiscsi:\n  iscsi-inq iscsi://%s/%s/0\n\n", t, p, cfg.DataDir, p, t, p, p, t)
	}
	sd.ready(status(m))
	tick := time.NewTicker(sd.period())
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			log.Error("stopping", zap.Error(err))
			break loop
		case <-tick.C:
			sd.alive(status(m))
		}
	}
	sd.stopping()
	log.Info("shutting down: finishing in-flight commands")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Server().Shutdown(sctx); err != nil {
		log.Warn("shutdown", zap.Error(err))
	}
	return nil
}

// joinCluster starts this gateway's cluster node when the configuration
// has a cluster section (nil otherwise: nothing dials etcd). It returns at
// once: the node grants its lease when etcd answers, and until then every
// LUN is fenced, so the portals that open next refuse writes.
func joinCluster(cfg *admin.Config, log *zap.Logger) (*cluster.Node, error) {
	if cfg.Cluster == nil {
		return nil, nil
	}
	node, err := cluster.New(cfg.ClusterOptions(log))
	if err != nil {
		return nil, err
	}
	log.Info("joining the cluster: writes are refused until the lease is granted",
		zap.String("cluster", cfg.Cluster.Name), zap.String("node", cfg.Cluster.Node),
		zap.Strings("etcd", cfg.Cluster.Endpoints), zap.Duration("lease_ttl", time.Duration(cfg.Cluster.LeaseTTL)))
	return node, nil
}

// leaveCluster revokes the node's lease, once the in-flight commands are
// done, so the other gateways report this one unavailable at once.
func leaveCluster(node *cluster.Node, log *zap.Logger) {
	if node == nil {
		return
	}
	if err := node.Close(); err != nil {
		log.Warn("leaving the cluster", zap.Error(err))
	}
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
// delivered on hup, telling systemd while it does.
func reloadOnHUP(ctx context.Context, m *admin.Manager, log *zap.Logger, hup <-chan os.Signal, sd *notifier) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			sd.reloading()
			err := m.Reload()
			sd.ready(status(m))
			if err != nil {
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
func startPortal(ctx context.Context, srv *iscsi.Server, p admin.PortalConfig, provider rdma.ProviderChoice, log *zap.Logger, errc chan<- error) (io.Closer, error) {
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
		ipl, err := iser.Listen(srv, ip, provider, log)
		if err != nil {
			cancel()
			if l != nil {
				l.Close()
			}
			return nil, err
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
