package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Lease timing.
const (
	// DefaultLeaseTTL is the lease TTL when none is configured.
	DefaultLeaseTTL = 5 * time.Second
	// MinLeaseTTL is the shortest lease TTL accepted: below it the renewal
	// margin leaves too little room for an etcd round trip.
	MinLeaseTTL = 2 * time.Second
	// MaxLeaseTTL is the longest lease TTL accepted (a dead node would stay
	// "live" that long).
	MaxLeaseTTL = 5 * time.Minute
	// minMargin is the smallest renewal margin (see Margin).
	minMargin = 500 * time.Millisecond
)

// Margin is how long before its lease could expire a node stops writing:
// max(TTL/5, 500ms). It covers the time between the fence check and the
// write reaching the storage, and a drift between this node's clock and
// etcd's (the lease runs on the etcd leader's clock).
func Margin(ttl time.Duration) time.Duration { return max(ttl/5, minMargin) }

// Portal is one of a node's portals as its node record shows it.
type Portal struct {
	Address string `json:"address"`
	TPGT    uint16 `json:"tpgt"`
}

// TLSFiles name the PEM files of an etcd client's TLS settings.
type TLSFiles struct {
	// CA verifies the etcd servers (empty: the system's roots).
	CA string
	// Cert and Key authenticate this node to etcd (both or neither).
	Cert, Key string
}

// Options configure a Node.
type Options struct {
	// Name is the cluster's name: its keys live under /iserd/<Name>/.
	Name string
	// Node is this node's name, unique in the cluster.
	Node string
	// Endpoints are the etcd client URLs (http://host:port,
	// https://host:port or host:port).
	Endpoints []string
	// TLS, when set, secures the etcd connections.
	TLS *TLSFiles
	// LeaseTTL is the liveness lease's time to live, whole seconds from
	// MinLeaseTTL to MaxLeaseTTL (zero: DefaultLeaseTTL).
	LeaseTTL time.Duration
	// Portals are this node's portals; each TPGT is one target port, and
	// the TPGTs must be unique in the cluster.
	Portals []Portal
	// Log receives the node's reports (nil: none).
	Log *zap.Logger
	// Clock, for tests, replaces the monotonic clock: the time elapsed
	// since some fixed point. A test pauses the node by moving it on.
	Clock func() time.Duration
}

// nameRE is the syntax of cluster and node names: they are etcd key
// segments and appear in logs and metrics.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CheckName reports whether s can name a cluster or a node.
func CheckName(what, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%s %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", what, s)
	}
	return nil
}

// Check validates the options and fills the default TTL.
func (o *Options) Check() error {
	if err := CheckName("cluster name", o.Name); err != nil {
		return err
	}
	if err := CheckName("node name", o.Node); err != nil {
		return err
	}
	if len(o.Endpoints) == 0 {
		return errors.New("no etcd endpoints: list at least one client URL such as http://192.0.2.10:2379")
	}
	for _, e := range o.Endpoints {
		if err := checkEndpoint(e, o.TLS != nil); err != nil {
			return err
		}
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.LeaseTTL < MinLeaseTTL || o.LeaseTTL > MaxLeaseTTL || o.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("lease_ttl %v: want whole seconds from %v to %v (etcd leases count seconds)", o.LeaseTTL, MinLeaseTTL, MaxLeaseTTL)
	}
	if t := o.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
		return errors.New("tls: give both cert and key, or neither")
	}
	return nil
}

// checkEndpoint validates one etcd client URL.
func checkEndpoint(e string, secure bool) error {
	hostport := e
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("etcd endpoint %q is not a client URL such as http://192.0.2.10:2379", e)
		}
		switch {
		case u.Scheme == "https" && !secure:
			return fmt.Errorf("etcd endpoint %q is https: add a tls section (ca, and cert and key when etcd asks for client certificates)", e)
		case u.Scheme == "http" && secure:
			return fmt.Errorf("etcd endpoint %q is plain http but a tls section is given: write https://", e)
		case u.Scheme != "http" && u.Scheme != "https":
			return fmt.Errorf("etcd endpoint %q: the scheme must be http or https", e)
		}
		hostport = u.Host
	}
	if _, port, err := net.SplitHostPort(hostport); err != nil || port == "" {
		return fmt.Errorf("etcd endpoint %q has no port (etcd's client port is usually 2379)", e)
	}
	return nil
}

// tlsConfig loads the TLS files. Errors name the files, never their
// contents.
func (t *TLSFiles) tlsConfig() (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate in it", t.CA)
		}
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls cert %s and key %s: %w", t.Cert, t.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
