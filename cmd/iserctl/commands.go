package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/admin"
)

// path builds an API path from escaped segments.
func path(segs ...string) string {
	for i := range segs {
		segs[i] = url.PathEscape(segs[i])
	}
	return "/v1/" + strings.Join(segs, "/")
}

// change sends a request that changes the configuration and reports it.
func (a *app) change(method, p string, body any) error {
	raw, err := a.client().Raw(a.ctx, method, p, body)
	if err != nil {
		return err
	}
	if a.json {
		_, err := a.out.Write(raw)
		return err
	}
	var r admin.Result
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	fmt.Fprintln(a.out, r.Message)
	if r.Saved != "" {
		fmt.Fprintf(a.out, "saved to %s\n", r.Saved)
	}
	return nil
}

// show fetches p and prints it as JSON, or decodes it and calls table.
func show[T any](a *app, p string, table func(T)) error {
	raw, err := a.client().Raw(a.ctx, "GET", p, nil)
	if err != nil {
		return err
	}
	if a.json {
		_, err := a.out.Write(raw)
		return err
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	table(v)
	return nil
}

// table writes rows aligned in columns.
func (a *app) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func (a *app) configCommand() *cobra.Command {
	c := group("config", "the running configuration")
	c.AddCommand(leaf("show", "print the running configuration as YAML (CHAP secrets hidden)", func([]string) error {
		return show(a, "/v1/config", func(c admin.Config) {
			b, err := yaml.Marshal(c)
			if err != nil {
				fmt.Fprintln(a.out, err)
				return
			}
			a.out.Write(b)
		})
	}))
	return c
}

func (a *app) reloadCommand() *cobra.Command {
	return leaf("reload", "read iserd's configuration file again and apply the difference (as SIGHUP)",
		func([]string) error { return a.change("POST", "/v1/reload", nil) })
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// limit formats a session limit.
func limit(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func chapUser(c *admin.CHAPConfig) string {
	switch {
	case c == nil:
		return "-"
	case c.MutualUser != "":
		return c.User + " (mutual: " + c.MutualUser + ")"
	default:
		return c.User
	}
}

func (a *app) targetCommand() *cobra.Command {
	c := group("target", "create, change, list and delete targets")
	list := leaf("list", "list the targets with their LUN, ACL and session counts", func([]string) error {
		return show(a, "/v1/targets", func(ts []admin.TargetInfo) {
			var rows [][]string
			for _, t := range ts {
				rows = append(rows, []string{t.Name, strconv.Itoa(len(t.LUNs)), strconv.Itoa(len(t.ACLs)), yesNo(t.Open),
					chapUser(t.CHAP), strconv.Itoa(t.Sessions), limit(t.MaxSessions), limit(t.MaxSessionsPerInitiator)})
			}
			a.table("TARGET\tLUNS\tACLS\tOPEN\tCHAP\tSESSIONS\tMAX-SESSIONS\tPER-INITIATOR", rows)
		})
	})
	showT := leaf("show", "print a target's settings, LUNs and ACLs", func(args []string) error {
		return show(a, path("targets", args[0]), func(t admin.TargetInfo) {
			fmt.Fprintf(a.out, "target:        %s\nalias:         %s\nopen:          %s\nchap:          %s\n"+
				"sessions:      %d\nmax sessions:  %s (per initiator: %s)\n\n", t.Name, t.Alias, yesNo(t.Open), chapUser(t.CHAP),
				t.Sessions, limit(t.MaxSessions), limit(t.MaxSessionsPerInitiator))
			a.lunTable(t.LUNs)
			fmt.Fprintln(a.out)
			a.aclTable(t.ACLs)
		})
	}, "TARGET")

	var t admin.TargetConfig
	create := leaf("create", "create a target (without --open, only initiators in its ACLs may log in)", func(args []string) error {
		t.Name = args[0]
		return a.change("POST", "/v1/targets", t)
	}, "TARGET")
	create.Flags().StringVar(&t.Alias, "alias", "", "target alias")
	create.Flags().BoolVar(&t.Open, "open", false, "let every initiator in (demo mode)")
	sessionLimitFlags(create.Flags(), &t.MaxSessions, &t.MaxSessionsPerInitiator)

	del := leaf("delete", "delete a target, closing its sessions", func(args []string) error {
		return a.change("DELETE", path("targets", args[0]), nil)
	}, "TARGET")

	var open bool
	var maxS, maxI int
	var set *cobra.Command
	set = leaf("set", "change a target's settings (0: no limit)", func(args []string) error {
		var s admin.TargetSettings
		if set.Flags().Changed("open") {
			s.Open = &open
		}
		if set.Flags().Changed("max-sessions") {
			s.MaxSessions = &maxS
		}
		if set.Flags().Changed("max-sessions-per-initiator") {
			s.MaxSessionsPerInitiator = &maxI
		}
		if s == (admin.TargetSettings{}) {
			return usageError("nothing to set: give --open, --max-sessions or --max-sessions-per-initiator")
		}
		return a.change("PATCH", path("targets", args[0]), s)
	}, "TARGET")
	set.Flags().BoolVar(&open, "open", false, "let every initiator in (--open=false: only those in ACLs)")
	sessionLimitFlags(set.Flags(), &maxS, &maxI)

	for _, cmd := range []*cobra.Command{showT, del, set} {
		cmd.ValidArgsFunction = a.completeArgs(a.targetNames)
	}
	c.AddCommand(list, showT, create, del, set)
	return c
}

// sessionLimitFlags declares --max-sessions and --max-sessions-per-initiator.
func sessionLimitFlags(fs *pflag.FlagSet, maxS, maxI *int) {
	fs.IntVar(maxS, "max-sessions", 0, "most sessions; logins beyond get status 0206 (0: no limit)")
	fs.IntVar(maxI, "max-sessions-per-initiator", 0, "most sessions of one initiator (0: no limit)")
}

func (a *app) lunTable(luns []admin.LUNConfig) {
	var rows [][]string
	for _, l := range luns {
		where := l.Path
		if l.Backend == "memory" {
			where = "(memory)"
		}
		thin := l.Thin != nil && *l.Thin
		block := strconv.Itoa(int(l.BlockSize))
		if l.PhysicalBlockSize != 0 && l.PhysicalBlockSize != l.BlockSize {
			block += "/" + strconv.Itoa(int(l.PhysicalBlockSize))
		}
		rows = append(rows, []string{strconv.FormatUint(l.LUN, 10), l.Backend, where, l.Size.String(),
			block, yesNo(thin), yesNo(l.ReadOnly)})
	}
	a.table("LUN\tBACKEND\tPATH\tSIZE\tBLOCK\tTHIN\tREAD-ONLY", rows)
}

func (a *app) aclTable(acls []admin.ACLConfig) {
	var rows [][]string
	for _, acl := range acls {
		rows = append(rows, []string{acl.Initiator, lunMap(acl.LUNs), yesNo(acl.ReadOnly), chapUser(acl.CHAP)})
	}
	a.table("INITIATOR\tLUNS (SEEN=TARGET)\tREAD-ONLY\tCHAP", rows)
}

// bytesOf formats a byte count with one decimal in the largest binary
// unit below it.
func bytesOf(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	v, i := float64(n), 0
	for v >= 1024 && i < len(units)-1 {
		v, i = v/1024, i+1
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// lunMap formats an ACL's LUN map.
func lunMap(m map[uint64]uint64) string {
	if len(m) == 0 {
		return "all"
	}
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d=%d", k, m[k]))
	}
	return strings.Join(parts, ",")
}

// lunNumber parses a LUN number argument.
func lunNumber(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, usageError(fmt.Sprintf("LUN %q is not a number", s))
	}
	return n, nil
}

// sizeFlag is a byte-count flag (--size, --sanitize-rate) taking 10GiB, 512M or bytes.
type sizeFlag struct{ v admin.Size }

func (s *sizeFlag) String() string { return s.v.String() }

func (s *sizeFlag) Set(v string) error {
	n, err := admin.ParseSize(v)
	s.v = admin.Size(n)
	return err
}

func (s *sizeFlag) Type() string { return "size" }

func (a *app) lunCommand() *cobra.Command {
	c := group("lun", "add, resize and remove LUNs")
	list := leaf("list", "list a target's LUNs", func(args []string) error {
		return show(a, path("targets", args[0]), func(t admin.TargetInfo) { a.lunTable(t.LUNs) })
	}, "TARGET")

	var l admin.LUNConfig
	var size, sanitizeRate sizeFlag
	var memory, thick bool
	add := leaf("add", "add a LUN; initiators see REPORTED LUNS DATA HAS CHANGED", func(args []string) error {
		n, err := lunNumber(args[1])
		if err != nil {
			return err
		}
		thin := !thick
		l.LUN, l.Size, l.Thin, l.SanitizeRate = n, size.v, &thin, sanitizeRate.v
		if memory {
			l.Backend = "memory"
		}
		return a.change("POST", path("targets", args[0], "luns"), l)
	}, "TARGET", "LUN")
	add.Long = "Add a LUN backed by a file or block device (--path) or by memory (--memory --size); " +
		"initiators see REPORTED LUNS DATA HAS CHANGED."
	f := add.Flags()
	f.Var(&size, "size", "capacity, e.g. 10GiB (creates or grows a file)")
	f.StringVar(&l.Path, "path", "", "backing file or block device (relative: in the data directory)")
	f.BoolVar(&memory, "memory", false, "RAM-backed LUN, lost when iserd stops")
	f.StringVar(&l.IO, "io", "", "uring (default) or threads")
	f.BoolVar(&l.Direct, "direct", false, "O_DIRECT")
	f.Uint32Var(&l.BlockSize, "block-size", 0, "512 (default) or 4096")
	f.Uint32Var(&l.PhysicalBlockSize, "physical-block-size", 0, "physical block size reported, a power of two up to 65536 (default: the block size)")
	f.Var(&sanitizeRate, "sanitize-rate", "bytes per second SANITIZE OVERWRITE writes, e.g. 100MiB (default: no limit)")
	f.BoolVar(&l.ReadOnly, "read-only", false, "write-protect the LUN")
	f.BoolVar(&thick, "thick", false, "no thin provisioning (UNMAP)")
	f.StringVar(&l.Serial, "serial", "", "unit serial number")
	add.MarkFlagFilename("path")
	fixedValues(add, "io", "uring", "threads")
	fixedValues(add, "block-size", "512", "4096")

	remove := leaf("remove", "remove a LUN", func(args []string) error {
		if _, err := lunNumber(args[1]); err != nil {
			return err
		}
		return a.change("DELETE", path("targets", args[0], "luns", args[1]), nil)
	}, "TARGET", "LUN")

	var force bool
	resize := leaf("resize", "resize a LUN (shrinking needs --force); initiators see CAPACITY DATA HAS CHANGED", func(args []string) error {
		if _, err := lunNumber(args[1]); err != nil {
			return err
		}
		n, err := admin.ParseSize(args[2])
		if err != nil {
			return usageError(err.Error())
		}
		return a.change("POST", path("targets", args[0], "luns", args[1], "resize"), admin.ResizeRequest{Size: admin.Size(n), Force: force})
	}, "TARGET", "LUN", "SIZE")
	resize.Flags().BoolVar(&force, "force", false, "allow shrinking (the data beyond the new size is lost)")

	list.ValidArgsFunction = a.completeArgs(a.targetNames)
	add.ValidArgsFunction = a.completeArgs(a.targetNames)
	remove.ValidArgsFunction = a.completeArgs(a.targetNames, a.lunNumbers)
	resize.ValidArgsFunction = a.completeArgs(a.targetNames, a.lunNumbers)
	c.AddCommand(list, add, remove, resize)
	return c
}

// parseMap parses SEEN=LUN,SEEN=LUN.
func parseMap(s string) (map[uint64]uint64, error) {
	if s == "" {
		return nil, nil
	}
	m := map[uint64]uint64{}
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(part, "=")
		seen, err1 := strconv.ParseUint(a, 10, 64)
		lun, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, usageError(fmt.Sprintf("--map %q: write SEEN=LUN pairs separated by commas, e.g. 0=2,1=3", s))
		}
		if _, dup := m[seen]; dup {
			return nil, usageError(fmt.Sprintf("--map %q: LUN %d is mapped twice", s, seen))
		}
		m[seen] = lun
	}
	return m, nil
}

// chapFlags are the CHAP flags of a command.
type chapFlags struct {
	user, mutualUser, secretFile, mutualFile string
}

func (c *chapFlags) declare(fs *pflag.FlagSet, prefix string) {
	fs.StringVar(&c.user, prefix+"user", "", "CHAP user name the initiator logs in with")
	fs.StringVar(&c.mutualUser, prefix+"mutual-user", "", "CHAP user name of the target (mutual CHAP)")
	fs.StringVar(&c.secretFile, prefix+"secret-file", "", "file holding the secret (- for standard input); default $ISERCTL_SECRET")
	fs.StringVar(&c.mutualFile, prefix+"mutual-secret-file", "", "file holding the mutual secret; default $ISERCTL_MUTUAL_SECRET")
}

// credentials reads the secrets, which never appear on the command line.
func (c *chapFlags) credentials(a *app) (*admin.CHAPConfig, error) {
	if c.user == "" {
		return nil, nil
	}
	out := &admin.CHAPConfig{User: c.user, MutualUser: c.mutualUser}
	var err error
	if out.Secret, err = a.secret(c.secretFile, "ISERCTL_SECRET"); err != nil {
		return nil, err
	}
	if out.MutualUser != "" {
		if out.MutualSecret, err = a.secret(c.mutualFile, "ISERCTL_MUTUAL_SECRET"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// secret reads a secret from a file, standard input or the environment.
func (a *app) secret(file, variable string) (string, error) {
	var raw []byte
	var err error
	switch file {
	case "":
		if v := a.getenv(variable); v != "" {
			return v, nil
		}
		return "", usageError(fmt.Sprintf("give the secret in $%s or in a file (--secret-file / --mutual-secret-file); "+
			"secrets are never taken from the command line", variable))
	case "-":
		raw, err = io.ReadAll(a.stdin)
	default:
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("reading the secret: %w", err)
	}
	return strings.TrimRight(string(raw), "\r\n"), nil
}

func (a *app) aclCommand() *cobra.Command {
	c := group("acl", "allow and revoke initiators")
	list := leaf("list", "list the initiators allowed on a target", func(args []string) error {
		return show(a, path("targets", args[0]), func(t admin.TargetInfo) { a.aclTable(t.ACLs) })
	}, "TARGET")

	var m string
	var ro, replace bool
	var chap chapFlags
	add := leaf("add", "allow an initiator, optionally with its own LUN numbering and CHAP credentials", func(args []string) error {
		luns, err := parseMap(m)
		if err != nil {
			return err
		}
		acl := admin.ACLConfig{Initiator: args[1], LUNs: luns, ReadOnly: ro}
		if acl.CHAP, err = chap.credentials(a); err != nil {
			return err
		}
		if replace {
			return a.change("PUT", path("targets", args[0], "acls", args[1]), acl)
		}
		return a.change("POST", path("targets", args[0], "acls"), acl)
	}, "TARGET", "INITIATOR")
	add.Flags().StringVar(&m, "map", "", "LUN numbering of this initiator: SEEN=LUN,... (default: every LUN under its own number)")
	add.Flags().BoolVar(&ro, "read-only", false, "refuse writes from this initiator")
	add.Flags().BoolVar(&replace, "replace", false, "replace an existing ACL of this initiator")
	chap.declare(add.Flags(), "chap-")

	remove := leaf("remove", "revoke an initiator (its sessions are asked to log out)", func(args []string) error {
		return a.change("DELETE", path("targets", args[0], "acls", args[1]), nil)
	}, "TARGET", "INITIATOR")

	list.ValidArgsFunction = a.completeArgs(a.targetNames)
	add.ValidArgsFunction = a.completeArgs(a.targetNames)
	remove.ValidArgsFunction = a.completeArgs(a.targetNames, a.initiatorNames)
	c.AddCommand(list, add, remove)
	return c
}

func (a *app) chapCommand() *cobra.Command {
	c := group("chap", "set and clear CHAP credentials of targets and discovery")
	var discovery bool
	// chapPath is the API path of the target (or --discovery) a command names.
	chapPath := func(args []string) (string, error) {
		switch {
		case discovery && len(args) == 0:
			return "/v1/discovery/chap", nil
		case !discovery && len(args) == 1:
			return path("targets", args[0], "chap"), nil
		default:
			return "", usageError("give either a TARGET or --discovery")
		}
	}
	var chap chapFlags
	set := &cobra.Command{Use: "set (TARGET | --discovery) --user U [--mutual-user U]",
		Short: "set CHAP credentials of a target or of discovery sessions",
		Long: "Set the CHAP credentials a target (or, with --discovery, a discovery session) requires. The secrets come from " +
			"$ISERCTL_SECRET and $ISERCTL_MUTUAL_SECRET, or from --secret-file and --mutual-secret-file.",
		Args: cobra.ArbitraryArgs, RunE: func(_ *cobra.Command, args []string) error {
			p, err := chapPath(args)
			if err != nil {
				return err
			}
			if chap.user == "" {
				return usageError("--user is required")
			}
			creds, err := chap.credentials(a)
			if err != nil {
				return err
			}
			return a.change("PUT", p, creds)
		}}
	chap.declare(set.Flags(), "")
	clear := &cobra.Command{Use: "clear (TARGET | --discovery)", Short: "stop requiring CHAP", Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			p, err := chapPath(args)
			if err != nil {
				return err
			}
			return a.change("DELETE", p, nil)
		}}
	for _, cmd := range []*cobra.Command{set, clear} {
		cmd.Flags().BoolVar(&discovery, "discovery", false, "discovery sessions instead of a target")
		cmd.ValidArgsFunction = a.completeArgs(a.targetNames)
	}
	c.AddCommand(set, clear)
	return c
}

func (a *app) portalCommand() *cobra.Command {
	c := group("portal", "add and remove the addresses iserd listens on")
	list := leaf("list", "list the addresses iserd listens on", func([]string) error {
		return show(a, "/v1/portals", func(ps []admin.PortalConfig) {
			var rows [][]string
			for _, p := range ps {
				t := p.Transport
				if t == "" {
					t = "tcp"
				}
				rows = append(rows, []string{p.Address, t, strconv.Itoa(int(max(p.TPGT, 1)))})
			}
			a.table("ADDRESS\tTRANSPORT\tTPGT", rows)
		})
	})
	var transport string
	var tpgt uint16
	add := leaf("add", "listen on another address (host:port)", func(args []string) error {
		return a.change("POST", "/v1/portals", admin.PortalConfig{Address: args[0], Transport: transport, TPGT: tpgt})
	}, "ADDRESS")
	add.Flags().StringVar(&transport, "transport", "", "tcp (default), iser or both")
	add.Flags().Uint16Var(&tpgt, "tpgt", 0, "target portal group tag: the relative target port ALUA port groups name (default 1)")
	fixedValues(add, "transport", "tcp", "iser", "both")
	remove := leaf("remove", "stop listening on an address (sessions stay)", func(args []string) error {
		return a.change("DELETE", path("portals", args[0]), nil)
	}, "ADDRESS")
	remove.ValidArgsFunction = a.completeArgs(a.portalAddresses)
	c.AddCommand(list, add, remove)
	return c
}

func (a *app) sessionCommand() *cobra.Command {
	c := group("session", "list sessions and log them out")
	var target string
	list := leaf("list", "list the sessions with their counters", func([]string) error {
		p := "/v1/sessions"
		if target != "" {
			p += "?target=" + url.QueryEscape(target)
		}
		return show(a, p, a.sessionTable)
	})
	list.Flags().StringVar(&target, "target", "", "only the sessions of this target")
	list.RegisterFlagCompletionFunc("target", a.completeArgs(a.targetNames))

	showS := leaf("show", "print a session's negotiated parameters, counters and latency histogram", func(args []string) error {
		return show(a, path("sessions", args[0]), a.sessionDetails)
	}, "TSIH")

	var wait time.Duration
	var now bool
	logout := leaf("logout", "ask the initiator to log out (or close the session --now)", func(args []string) error {
		q := url.Values{}
		if now {
			q.Set("close", "true")
		} else {
			q.Set("wait", wait.String())
		}
		return a.change("POST", path("sessions", args[0], "logout")+"?"+q.Encode(), nil)
	}, "TSIH")
	logout.Flags().DurationVar(&wait, "wait", admin.LogoutWait, "how long the initiator has to log out before the session is closed")
	logout.Flags().BoolVar(&now, "now", false, "close the session at once")

	showS.ValidArgsFunction = a.completeArgs(a.sessionIDs)
	logout.ValidArgsFunction = a.completeArgs(a.sessionIDs)
	c.AddCommand(list, showS, logout)
	return c
}

func (a *app) sessionTable(ss []admin.SessionInfo) {
	var rows [][]string
	for _, s := range ss {
		remote, transport := "", ""
		if len(s.Connections) > 0 {
			remote, transport = s.Connections[0].Remote, s.Connections[0].Transport
		}
		target := s.Target
		if s.Type == "Discovery" {
			target = "(discovery)"
		}
		st := s.Stats
		rows = append(rows, []string{strconv.Itoa(int(s.TSIH)), target, s.Initiator, s.ISID, remote, transport,
			strconv.FormatUint(st.Commands, 10), bytesOf(st.ReadBytes), bytesOf(st.WriteBytes),
			strconv.FormatUint(st.Errors, 10), strconv.FormatInt(st.InFlight, 10)})
	}
	a.table("TSIH\tTARGET\tINITIATOR\tISID\tREMOTE\tTRANSPORT\tCOMMANDS\tREAD\tWRITTEN\tERRORS\tIN-FLIGHT", rows)
}

func (a *app) sessionDetails(s admin.SessionInfo) {
	fmt.Fprintf(a.out, "tsih:        %d\ntype:        %s\ntarget:      %s\ninitiator:   %s\nisid:        %s\n"+
		"logged in:   %s\nluns:        %s\n", s.TSIH, s.Type, s.Target, s.Initiator, s.ISID,
		s.LoginTime.Format(time.RFC3339), lunMap(s.LUNs))
	for i, c := range s.Connections {
		fmt.Fprintf(a.out, "\nconnection %d: %s over %s\n", i, c.Remote, c.Transport)
		a.params(c.Params)
	}
	st := s.Stats
	fmt.Fprintf(a.out, "\ncommands %d, read %s, written %s, errors %d, in flight %d\n\n", st.Commands,
		bytesOf(st.ReadBytes), bytesOf(st.WriteBytes), st.Errors, st.InFlight)
	var rows [][]string
	for _, b := range st.Latency {
		rows = append(rows, []string{"< " + b.LE, strconv.FormatUint(b.Count, 10)})
	}
	a.table("LATENCY\tCOMMANDS", rows)
}

// params prints negotiated parameters as KEY=VALUE lines in key order.
func (a *app) params(p any) {
	raw, _ := json.Marshal(p)
	var m map[string]any
	json.Unmarshal(raw, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(a.out, "  %s=%v\n", k, m[k])
	}
}

func (a *app) metricsCommand() *cobra.Command {
	return leaf("metrics", "print the Prometheus metrics", func([]string) error {
		raw, err := a.client().Raw(a.ctx, "GET", "/metrics", nil)
		if err != nil {
			return err
		}
		_, err = a.out.Write(raw)
		return err
	})
}

func (a *app) rdmaCommand() *cobra.Command {
	return leaf("rdma", "list the RDMA devices: driver, netdevs, port states, GIDs, the provider iserd drives each with, and the QPs, CQs and MRs it holds (attach 'iserctl rdma --json' to bug reports)", func([]string) error {
		return show(a, "/v1/rdma", a.rdmaTable)
	})
}

// rdmaTable prints GET /v1/rdma.
func (a *app) rdmaTable(st admin.RDMAStatus) {
	fmt.Fprintf(a.out, "provider: %s\nlibibverbs: %s\n", st.Provider, st.Libibverbs)
	if st.Error != "" {
		fmt.Fprintf(a.out, "devices: %s\n", st.Error)
		return
	}
	var rows [][]string
	for _, d := range st.Devices {
		var ports, gids []string
		for _, p := range d.Ports {
			ports = append(ports, fmt.Sprintf("%d:%s/%s", p.Num, p.State, p.LinkLayer))
			gids = append(gids, p.GIDs...)
		}
		prov, held := d.Provider, "-"
		if d.ProviderError != "" {
			prov = "none: " + d.ProviderError
		}
		if d.Open {
			held = fmt.Sprintf("%d/%d/%d", d.QPs, d.CQs, d.MRs)
		}
		rows = append(rows, []string{d.Name, d.Driver, strings.Join(d.Netdevs, ","), strings.Join(ports, " "),
			strings.Join(gids, ","), held, prov})
	}
	a.table("DEVICE\tDRIVER\tNETDEV\tPORTS\tGIDS\tQPS/CQS/MRS\tPROVIDER", rows)
}
