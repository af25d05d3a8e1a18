package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/admin"
)

// migration is a configuration read from another target's files, with
// what it could not carry over.
type migration struct {
	cfg  admin.Config
	left []string // what iserd does not get, and why
}

// leave records something not carried over.
func (m *migration) leave(format string, args ...any) {
	m.left = append(m.left, fmt.Sprintf(format, args...))
}

// addPortal adds a portal once; the same address over TCP and iSER
// becomes transport both.
func (m *migration) addPortal(address string, iser bool, tpgt uint16) {
	for i, p := range m.cfg.Portals {
		if p.Address != address {
			continue
		}
		if p.ISER() != iser || p.TCP() == iser {
			m.cfg.Portals[i].Transport = "both"
		}
		return
	}
	p := admin.PortalConfig{Address: address, TPGT: tpgt}
	if iser {
		p.Transport = "iser"
	}
	m.cfg.Portals = append(m.cfg.Portals, p)
}

func (a *app) importCommand() *cobra.Command {
	c := group("import", "carry targets over from LIO (targetcli) or tgt")
	var dryRun bool
	var portal string // where tgtd listened
	sources := []struct {
		name, short, long string
		read              func(path string) (*migration, error)
	}{
		{"lio", "import targetcli's saveconfig.json (LIO)",
			"Read the configuration targetcli saves (targetcli saveconfig; /etc/rtslib-fb-target/saveconfig.json or " +
				"/etc/target/saveconfig.json): iSCSI targets, their first TPG's LUNs (fileio, block and ramdisk " +
				"backstores), ACLs with their mapped LUNs and write protection, CHAP (one-way and mutual, per ACL or " +
				"per TPG), discovery CHAP and portals. Stop LIO before iserd takes over its portals.", readLIO},
		{"tgt", "import tgt's targets.conf",
			"Read tgt's configuration file (/etc/tgt/targets.conf and the files it includes): targets, backing-store " +
				"and direct-store LUNs numbered as tgt-admin numbers them, initiator-name ACLs, incominguser (CHAP) " +
				"and outgoinguser (mutual CHAP). tgtd's portal is on its command line, not in the file: iserd is " +
				"given --portal (default 0.0.0.0:3260).", func(path string) (*migration, error) { return readTGT(path, portal) }},
	}
	for _, s := range sources {
		cmd := leaf(s.name, s.short, func(args []string) error {
			m, err := s.read(args[0])
			if err != nil {
				return err
			}
			return a.migrate(m, dryRun)
		}, "FILE")
		cmd.Long = s.short + ". " + s.long + " Everything that is not carried over is listed. With --dry-run " +
			"nothing changes: the YAML printed is a complete iserd.yaml."
		cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the configuration as YAML instead of applying it")
		if s.name == "tgt" {
			cmd.Flags().StringVar(&portal, "portal", tgtPortal, "the address tgtd listened on (its --iscsi portal=...)")
		}
		c.AddCommand(cmd)
	}
	return c
}

// migrate prints a migration as YAML (dryRun) or applies it to the
// running iserd through the API; either way it lists what was left out
// on standard error.
func (a *app) migrate(m *migration, dryRun bool) error {
	check := m.cfg.Clone()
	check.DataDir = "/" // LUN paths from other targets are absolute
	checkErr := check.Check()
	if dryRun {
		raw, err := yaml.Marshal(&m.cfg)
		if err != nil {
			return fmt.Errorf("encoding the configuration: %w", err)
		}
		if _, err := a.out.Write(raw); err != nil {
			return err
		}
	}
	a.listLeft(m)
	if checkErr != nil {
		return fmt.Errorf("iserd would refuse this configuration: %w (fix it in the source or in the YAML)", checkErr)
	}
	if dryRun {
		return nil
	}
	return a.apply(m)
}

// listLeft writes what was not carried over to standard error.
func (a *app) listLeft(m *migration) {
	if len(m.left) == 0 {
		fmt.Fprintln(a.errOut, "everything was carried over")
		return
	}
	fmt.Fprintf(a.errOut, "not carried over (%d):\n", len(m.left))
	for _, l := range m.left {
		fmt.Fprintf(a.errOut, "  - %s\n", l)
	}
}

// apply creates the migration's portals, targets and discovery CHAP in
// the running iserd; portals and targets it already has are reported and
// kept as they are.
func (a *app) apply(m *migration) error {
	var have []admin.PortalConfig
	if err := a.client().Do(a.ctx, "GET", "/v1/portals", nil, &have); err != nil {
		return err
	}
	var errs []error
	for _, p := range m.cfg.Portals {
		if hasPortal(have, p.Address) {
			fmt.Fprintf(a.out, "portal %s: already served\n", p.Address)
			continue
		}
		errs = append(errs, a.applyOne("POST", "/v1/portals", p, "portal "+p.Address))
	}
	for _, t := range m.cfg.Targets {
		errs = append(errs, a.applyOne("POST", "/v1/targets", t, "target "+t.Name))
	}
	if m.cfg.DiscoveryCHAP != nil {
		errs = append(errs, a.applyOne("PUT", "/v1/discovery/chap", m.cfg.DiscoveryCHAP, "discovery CHAP"))
	}
	return errors.Join(errs...)
}

func hasPortal(ps []admin.PortalConfig, address string) bool {
	for _, p := range ps {
		if p.Address == address {
			return true
		}
	}
	return false
}

// applyOne sends one change and reports it.
func (a *app) applyOne(method, p string, body any, what string) error {
	if err := a.change(method, p, body); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// readFile reads an import source.
func readFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return raw, nil
}
