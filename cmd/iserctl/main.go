// Command iserctl administers a running iserd through its admin API:
// targets, LUNs, ACLs, CHAP credentials, portals, limits and sessions.
// Changes apply at once and are saved to iserd's configuration file.
// Output is a table for people, or the API's JSON with -json.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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

	"gopkg.in/yaml.v3"

	"github.com/iserd/iserd/admin"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// env is what a command runs with.
type env struct {
	client *admin.Client
	json   bool
	stdin  io.Reader
	out    io.Writer
	getenv func(string) string
	ctx    context.Context
}

// command is one iserctl command.
type command struct {
	name  string // "noun verb"
	usage string // arguments and flags
	help  string
	run   func(e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"config show", "", "the running configuration as YAML (CHAP secrets hidden)", configShow},
		{"reload", "", "read iserd's configuration file again and apply the difference (as SIGHUP)", reload},
		{"target list", "", "targets with their LUN, ACL and session counts", targetList},
		{"target show", "TARGET", "a target's settings, LUNs and ACLs", targetShow},
		{"target create", "TARGET [-alias A] [-open] [-max-sessions N] [-max-sessions-per-initiator N]",
			"create a target (without -open, only initiators in its ACLs may log in)", targetCreate},
		{"target delete", "TARGET", "delete a target, closing its sessions", targetDelete},
		{"target set", "TARGET [-open=true|false] [-max-sessions N] [-max-sessions-per-initiator N]",
			"change a target's settings (0: no limit)", targetSet},
		{"lun list", "TARGET", "a target's LUNs", lunList},
		{"lun add", "TARGET LUN (-path P [-size S] [-io uring|threads] [-direct] | -memory -size S) [-block-size 512|4096] [-read-only] [-thick] [-serial S]",
			"add a LUN; initiators see REPORTED LUNS DATA HAS CHANGED", lunAdd},
		{"lun remove", "TARGET LUN", "remove a LUN", lunRemove},
		{"lun resize", "TARGET LUN SIZE [-force]", "resize a LUN (shrinking needs -force); initiators see CAPACITY DATA HAS CHANGED", lunResize},
		{"acl list", "TARGET", "the initiators allowed on a target", aclList},
		{"acl add", "TARGET INITIATOR [-map SEEN=LUN,...] [-read-only] [-chap-user U [-mutual-user U]] [-replace]",
			"allow an initiator, optionally with its own LUN numbering and CHAP credentials", aclAdd},
		{"acl remove", "TARGET INITIATOR", "revoke an initiator (its sessions are asked to log out)", aclRemove},
		{"chap set", "(TARGET | -discovery) -user U [-mutual-user U]",
			"set CHAP credentials; secrets come from $ISERCTL_SECRET / $ISERCTL_MUTUAL_SECRET or -secret-file / -mutual-secret-file", chapSet},
		{"chap clear", "(TARGET | -discovery)", "stop requiring CHAP", chapClear},
		{"portal list", "", "the addresses iserd listens on", portalList},
		{"portal add", "ADDRESS [-transport tcp|iser|both]", "listen on another address", portalAdd},
		{"portal remove", "ADDRESS", "stop listening on an address (sessions stay)", portalRemove},
		{"session list", "[-target TARGET]", "sessions with their counters", sessionList},
		{"session show", "TSIH", "a session's negotiated parameters, counters and latency histogram", sessionShow},
		{"session logout", "TSIH [-wait 5s] [-now]", "ask the initiator to log out (or close the session -now)", sessionLogout},
		{"metrics", "", "the Prometheus metrics", metrics},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: iserctl [-socket PATH] [-json] COMMAND ...\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %s %s\n      %s\n", c.name, c.usage, c.help)
	}
}

// run executes one command line and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("iserctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", admin.DefaultSocket, "iserd's admin socket")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of tables")
	fs.Usage = func() { usage(stderr) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	args = fs.Args()
	var cmd *command
	for i := range commands {
		words := strings.Fields(commands[i].name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			cmd, args = &commands[i], args[len(words):]
			break
		}
	}
	if cmd == nil {
		if len(args) > 0 {
			fmt.Fprintf(stderr, "iserctl: unknown command %q\n", strings.Join(args, " "))
		}
		usage(stderr)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &env{client: admin.NewClient(*socket), json: *asJSON, stdin: stdin, out: stdout, getenv: getenv, ctx: ctx}
	if err := cmd.run(e, args); err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(stderr, "iserctl %s: %s\nusage: iserctl %s %s\n", cmd.name, err, cmd.name, cmd.usage)
			return 2
		}
		fmt.Fprintf(stderr, "iserctl %s: %s\n", cmd.name, err)
		return 1
	}
	return 0
}

// usageError is a mistake on the command line.
type usageError string

func (u usageError) Error() string { return string(u) }

// positional parses flags anywhere among the arguments and returns the
// other arguments.
func positional(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError(err.Error())
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parse parses flags anywhere among the arguments and checks that exactly
// the named positional arguments are present.
func parse(fs *flag.FlagSet, args []string, names ...string) ([]string, error) {
	pos, err := positional(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != len(names) {
		if len(names) == 0 {
			return nil, usageError("no arguments expected")
		}
		return nil, usageError(fmt.Sprintf("expected %s", strings.Join(names, " ")))
	}
	return pos, nil
}

// noFlags parses a command that takes only positional arguments.
func noFlags(args []string, names ...string) ([]string, error) {
	return parse(flag.NewFlagSet("", flag.ContinueOnError), args, names...)
}

// path builds an API path from escaped segments.
func path(segs ...string) string {
	for i := range segs {
		segs[i] = url.PathEscape(segs[i])
	}
	return "/v1/" + strings.Join(segs, "/")
}

// change sends a request that changes the configuration and reports it.
func (e *env) change(method, p string, body any) error {
	raw, err := e.client.Raw(e.ctx, method, p, body)
	if err != nil {
		return err
	}
	if e.json {
		_, err := e.out.Write(raw)
		return err
	}
	var r admin.Result
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	fmt.Fprintln(e.out, r.Message)
	if r.Saved != "" {
		fmt.Fprintf(e.out, "saved to %s\n", r.Saved)
	}
	return nil
}

// show fetches p and prints it as JSON, or decodes it into v and calls
// table.
func show[T any](e *env, p string, table func(T)) error {
	raw, err := e.client.Raw(e.ctx, "GET", p, nil)
	if err != nil {
		return err
	}
	if e.json {
		_, err := e.out.Write(raw)
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
func (e *env) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func configShow(e *env, args []string) error {
	if _, err := noFlags(args); err != nil {
		return err
	}
	return show(e, "/v1/config", func(c admin.Config) {
		b, err := yaml.Marshal(c)
		if err != nil {
			fmt.Fprintln(e.out, err)
			return
		}
		e.out.Write(b)
	})
}

func reload(e *env, args []string) error {
	if _, err := noFlags(args); err != nil {
		return err
	}
	return e.change("POST", "/v1/reload", nil)
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

func targetList(e *env, args []string) error {
	if _, err := noFlags(args); err != nil {
		return err
	}
	return show(e, "/v1/targets", func(ts []admin.TargetInfo) {
		var rows [][]string
		for _, t := range ts {
			rows = append(rows, []string{t.Name, strconv.Itoa(len(t.LUNs)), strconv.Itoa(len(t.ACLs)), yesNo(t.Open),
				chapUser(t.CHAP), strconv.Itoa(t.Sessions), limit(t.MaxSessions), limit(t.MaxSessionsPerInitiator)})
		}
		e.table("TARGET\tLUNS\tACLS\tOPEN\tCHAP\tSESSIONS\tMAX-SESSIONS\tPER-INITIATOR", rows)
	})
}

func targetShow(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET")
	if err != nil {
		return err
	}
	return show(e, path("targets", pos[0]), func(t admin.TargetInfo) {
		fmt.Fprintf(e.out, "target:        %s\nalias:         %s\nopen:          %s\nchap:          %s\n"+
			"sessions:      %d\nmax sessions:  %s (per initiator: %s)\n\n", t.Name, t.Alias, yesNo(t.Open), chapUser(t.CHAP),
			t.Sessions, limit(t.MaxSessions), limit(t.MaxSessionsPerInitiator))
		e.lunTable(t.LUNs)
		fmt.Fprintln(e.out)
		e.aclTable(t.ACLs)
	})
}

func targetCreate(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	alias := fs.String("alias", "", "target alias")
	open := fs.Bool("open", false, "let every initiator in (demo mode)")
	maxS := fs.Int("max-sessions", 0, "most sessions (0: no limit)")
	maxI := fs.Int("max-sessions-per-initiator", 0, "most sessions per initiator (0: no limit)")
	pos, err := parse(fs, args, "TARGET")
	if err != nil {
		return err
	}
	t := admin.TargetConfig{Name: pos[0], Alias: *alias, Open: *open, MaxSessions: *maxS, MaxSessionsPerInitiator: *maxI}
	return e.change("POST", "/v1/targets", t)
}

func targetDelete(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET")
	if err != nil {
		return err
	}
	return e.change("DELETE", path("targets", pos[0]), nil)
}

func targetSet(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	open := fs.Bool("open", false, "let every initiator in")
	maxS := fs.Int("max-sessions", 0, "most sessions (0: no limit)")
	maxI := fs.Int("max-sessions-per-initiator", 0, "most sessions per initiator (0: no limit)")
	pos, err := parse(fs, args, "TARGET")
	if err != nil {
		return err
	}
	var s admin.TargetSettings
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "open":
			s.Open = open
		case "max-sessions":
			s.MaxSessions = maxS
		case "max-sessions-per-initiator":
			s.MaxSessionsPerInitiator = maxI
		}
	})
	if s == (admin.TargetSettings{}) {
		return usageError("nothing to set: give -open, -max-sessions or -max-sessions-per-initiator")
	}
	return e.change("PATCH", path("targets", pos[0]), s)
}

func (e *env) lunTable(luns []admin.LUNConfig) {
	var rows [][]string
	for _, l := range luns {
		where := l.Path
		if l.Backend == "memory" {
			where = "(memory)"
		}
		thin := l.Thin != nil && *l.Thin
		rows = append(rows, []string{strconv.FormatUint(l.LUN, 10), l.Backend, where, l.Size.String(),
			strconv.Itoa(int(l.BlockSize)), yesNo(thin), yesNo(l.ReadOnly)})
	}
	e.table("LUN\tBACKEND\tPATH\tSIZE\tBLOCK\tTHIN\tREAD-ONLY", rows)
}

func (e *env) aclTable(acls []admin.ACLConfig) {
	var rows [][]string
	for _, a := range acls {
		rows = append(rows, []string{a.Initiator, lunMap(a.LUNs), yesNo(a.ReadOnly), chapUser(a.CHAP)})
	}
	e.table("INITIATOR\tLUNS (SEEN=TARGET)\tREAD-ONLY\tCHAP", rows)
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

func lunList(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET")
	if err != nil {
		return err
	}
	return show(e, path("targets", pos[0]), func(t admin.TargetInfo) { e.lunTable(t.LUNs) })
}

// lunNumber parses a LUN number argument.
func lunNumber(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, usageError(fmt.Sprintf("LUN %q is not a number", s))
	}
	return n, nil
}

// sizeFlag is a -size flag taking 10GiB, 512M or bytes.
type sizeFlag struct{ v admin.Size }

func (s *sizeFlag) String() string { return s.v.String() }

func (s *sizeFlag) Set(v string) error {
	n, err := admin.ParseSize(v)
	s.v = admin.Size(n)
	return err
}

func lunAdd(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	var size sizeFlag
	fs.Var(&size, "size", "capacity, e.g. 10GiB (creates or grows a file)")
	p := fs.String("path", "", "backing file or block device (relative: in the data directory)")
	memory := fs.Bool("memory", false, "RAM-backed LUN, lost when iserd stops")
	ioMode := fs.String("io", "", "uring (default) or threads")
	direct := fs.Bool("direct", false, "O_DIRECT")
	bs := fs.Uint("block-size", 0, "512 (default) or 4096")
	ro := fs.Bool("read-only", false, "write-protect the LUN")
	thick := fs.Bool("thick", false, "no thin provisioning (UNMAP)")
	serial := fs.String("serial", "", "unit serial number")
	pos, err := parse(fs, args, "TARGET", "LUN")
	if err != nil {
		return err
	}
	n, err := lunNumber(pos[1])
	if err != nil {
		return err
	}
	thin := !*thick
	l := admin.LUNConfig{LUN: n, Path: *p, Size: size.v, IO: *ioMode, Direct: *direct, BlockSize: uint32(*bs),
		ReadOnly: *ro, Thin: &thin, Serial: *serial}
	if *memory {
		l.Backend = "memory"
	}
	return e.change("POST", path("targets", pos[0], "luns"), l)
}

func lunRemove(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET", "LUN")
	if err != nil {
		return err
	}
	if _, err := lunNumber(pos[1]); err != nil {
		return err
	}
	return e.change("DELETE", path("targets", pos[0], "luns", pos[1]), nil)
}

func lunResize(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	force := fs.Bool("force", false, "allow shrinking (the data beyond the new size is lost)")
	pos, err := parse(fs, args, "TARGET", "LUN", "SIZE")
	if err != nil {
		return err
	}
	if _, err := lunNumber(pos[1]); err != nil {
		return err
	}
	n, err := admin.ParseSize(pos[2])
	if err != nil {
		return usageError(err.Error())
	}
	return e.change("POST", path("targets", pos[0], "luns", pos[1], "resize"), admin.ResizeRequest{Size: admin.Size(n), Force: *force})
}

func aclList(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET")
	if err != nil {
		return err
	}
	return show(e, path("targets", pos[0]), func(t admin.TargetInfo) { e.aclTable(t.ACLs) })
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
			return nil, usageError(fmt.Sprintf("-map %q: write SEEN=LUN pairs separated by commas, e.g. 0=2,1=3", s))
		}
		if _, dup := m[seen]; dup {
			return nil, usageError(fmt.Sprintf("-map %q: LUN %d is mapped twice", s, seen))
		}
		m[seen] = lun
	}
	return m, nil
}

// chapFlags declares the CHAP flags of a command.
type chapFlags struct {
	user, mutualUser, secretFile, mutualFile *string
}

func newCHAPFlags(fs *flag.FlagSet, prefix string) chapFlags {
	return chapFlags{
		user:       fs.String(prefix+"user", "", "CHAP user name the initiator logs in with"),
		mutualUser: fs.String(prefix+"mutual-user", "", "CHAP user name of the target (mutual CHAP)"),
		secretFile: fs.String(prefix+"secret-file", "", "file holding the secret (- for standard input); default $ISERCTL_SECRET"),
		mutualFile: fs.String(prefix+"mutual-secret-file", "", "file holding the mutual secret; default $ISERCTL_MUTUAL_SECRET"),
	}
}

// credentials reads the secrets, which never appear on the command line.
func (c chapFlags) credentials(e *env) (*admin.CHAPConfig, error) {
	if *c.user == "" {
		return nil, nil
	}
	out := &admin.CHAPConfig{User: *c.user, MutualUser: *c.mutualUser}
	var err error
	if out.Secret, err = e.secret(*c.secretFile, "ISERCTL_SECRET"); err != nil {
		return nil, err
	}
	if out.MutualUser != "" {
		if out.MutualSecret, err = e.secret(*c.mutualFile, "ISERCTL_MUTUAL_SECRET"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// secret reads a secret from a file, standard input or the environment.
func (e *env) secret(file, variable string) (string, error) {
	var raw []byte
	var err error
	switch file {
	case "":
		if v := e.getenv(variable); v != "" {
			return v, nil
		}
		return "", usageError(fmt.Sprintf("give the secret in $%s or in a file (-secret-file / -mutual-secret-file); "+
			"secrets are never taken from the command line", variable))
	case "-":
		raw, err = io.ReadAll(e.stdin)
	default:
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("reading the secret: %w", err)
	}
	return strings.TrimRight(string(raw), "\r\n"), nil
}

func aclAdd(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	m := fs.String("map", "", "LUN numbering of this initiator: SEEN=LUN,... (default: every LUN under its own number)")
	ro := fs.Bool("read-only", false, "refuse writes from this initiator")
	replace := fs.Bool("replace", false, "replace an existing ACL of this initiator")
	chap := newCHAPFlags(fs, "chap-")
	pos, err := parse(fs, args, "TARGET", "INITIATOR")
	if err != nil {
		return err
	}
	luns, err := parseMap(*m)
	if err != nil {
		return err
	}
	a := admin.ACLConfig{Initiator: pos[1], LUNs: luns, ReadOnly: *ro}
	if a.CHAP, err = chap.credentials(e); err != nil {
		return err
	}
	if *replace {
		return e.change("PUT", path("targets", pos[0], "acls", pos[1]), a)
	}
	return e.change("POST", path("targets", pos[0], "acls"), a)
}

func aclRemove(e *env, args []string) error {
	pos, err := noFlags(args, "TARGET", "INITIATOR")
	if err != nil {
		return err
	}
	return e.change("DELETE", path("targets", pos[0], "acls", pos[1]), nil)
}

// chapPath parses the target (or -discovery) of a chap command.
func chapPath(fs *flag.FlagSet, args []string) (string, error) {
	discovery := fs.Bool("discovery", false, "discovery sessions instead of a target")
	pos, err := positional(fs, args)
	if err != nil {
		return "", err
	}
	switch {
	case *discovery && len(pos) == 0:
		return "/v1/discovery/chap", nil
	case !*discovery && len(pos) == 1:
		return path("targets", pos[0], "chap"), nil
	default:
		return "", usageError("give either a TARGET or -discovery")
	}
}

func chapSet(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	chap := newCHAPFlags(fs, "")
	p, err := chapPath(fs, args)
	if err != nil {
		return err
	}
	if *chap.user == "" {
		return usageError("-user is required")
	}
	c, err := chap.credentials(e)
	if err != nil {
		return err
	}
	return e.change("PUT", p, c)
}

func chapClear(e *env, args []string) error {
	p, err := chapPath(flag.NewFlagSet("", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	return e.change("DELETE", p, nil)
}

func portalList(e *env, args []string) error {
	if _, err := noFlags(args); err != nil {
		return err
	}
	return show(e, "/v1/portals", func(ps []admin.PortalConfig) {
		var rows [][]string
		for _, p := range ps {
			t := p.Transport
			if t == "" {
				t = "tcp"
			}
			rows = append(rows, []string{p.Address, t})
		}
		e.table("ADDRESS\tTRANSPORT", rows)
	})
}

func portalAdd(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	transport := fs.String("transport", "", "tcp (default), iser or both")
	pos, err := parse(fs, args, "ADDRESS")
	if err != nil {
		return err
	}
	return e.change("POST", "/v1/portals", admin.PortalConfig{Address: pos[0], Transport: *transport})
}

func portalRemove(e *env, args []string) error {
	pos, err := noFlags(args, "ADDRESS")
	if err != nil {
		return err
	}
	return e.change("DELETE", path("portals", pos[0]), nil)
}

func sessionList(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	target := fs.String("target", "", "only the sessions of this target")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	p := "/v1/sessions"
	if *target != "" {
		p += "?target=" + url.QueryEscape(*target)
	}
	return show(e, p, func(ss []admin.SessionInfo) {
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
		e.table("TSIH\tTARGET\tINITIATOR\tISID\tREMOTE\tTRANSPORT\tCOMMANDS\tREAD\tWRITTEN\tERRORS\tIN-FLIGHT", rows)
	})
}

func sessionShow(e *env, args []string) error {
	pos, err := noFlags(args, "TSIH")
	if err != nil {
		return err
	}
	return show(e, path("sessions", pos[0]), func(s admin.SessionInfo) {
		fmt.Fprintf(e.out, "tsih:        %d\ntype:        %s\ntarget:      %s\ninitiator:   %s\nisid:        %s\n"+
			"logged in:   %s\nluns:        %s\n", s.TSIH, s.Type, s.Target, s.Initiator, s.ISID,
			s.LoginTime.Format(time.RFC3339), lunMap(s.LUNs))
		for i, c := range s.Connections {
			fmt.Fprintf(e.out, "\nconnection %d: %s over %s\n", i, c.Remote, c.Transport)
			e.params(c.Params)
		}
		st := s.Stats
		fmt.Fprintf(e.out, "\ncommands %d, read %s, written %s, errors %d, in flight %d\n\n", st.Commands,
			bytesOf(st.ReadBytes), bytesOf(st.WriteBytes), st.Errors, st.InFlight)
		var rows [][]string
		for _, b := range st.Latency {
			rows = append(rows, []string{"< " + b.LE, strconv.FormatUint(b.Count, 10)})
		}
		e.table("LATENCY\tCOMMANDS", rows)
	})
}

// params prints negotiated parameters as KEY=VALUE lines in key order.
func (e *env) params(p any) {
	raw, _ := json.Marshal(p)
	var m map[string]any
	json.Unmarshal(raw, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(e.out, "  %s=%v\n", k, m[k])
	}
}

func sessionLogout(e *env, args []string) error {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	wait := fs.Duration("wait", admin.LogoutWait, "how long the initiator has to log out before the session is closed")
	now := fs.Bool("now", false, "close the session at once")
	pos, err := parse(fs, args, "TSIH")
	if err != nil {
		return err
	}
	q := url.Values{}
	if *now {
		q.Set("close", "true")
	} else {
		q.Set("wait", wait.String())
	}
	return e.change("POST", path("sessions", pos[0], "logout")+"?"+q.Encode(), nil)
}

func metrics(e *env, args []string) error {
	if _, err := noFlags(args); err != nil {
		return err
	}
	raw, err := e.client.Raw(e.ctx, "GET", "/metrics", nil)
	if err != nil {
		return err
	}
	_, err = e.out.Write(raw)
	return err
}
