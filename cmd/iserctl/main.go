// Command iserctl administers a running iserd through its admin API:
// targets, LUNs, ACLs, CHAP credentials, portals, limits, rate limits
// (QoS) and sessions.
// Changes apply at once and are saved to iserd's configuration file.
// Output is a table for people, or the API's JSON with --json.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// app is what the commands run with.
type app struct {
	socket string
	json   bool
	stdin  io.Reader
	out    io.Writer
	errOut io.Writer // notes beside the output, such as what an import left out
	getenv func(string) string
	ctx    context.Context
}

// client returns a client of the admin socket given on the command line.
func (a *app) client() *admin.Client { return admin.NewClient(a.socket) }

// usageError is a mistake on the command line (exit status 2).
type usageError string

func (u usageError) Error() string { return string(u) }

// run executes one command line and returns the exit status: 0, 1 when
// iserd refused or could not be reached, 2 for a usage mistake.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := &app{stdin: stdin, out: stdout, errOut: stderr, getenv: getenv, ctx: ctx}
	root := newRoot(a)
	root.SetArgs(cli.LongFlags(args))
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	if u := usageError(""); errors.As(err, &u) {
		fmt.Fprintf(stderr, "%s: %s\nusage: %s\n", cmd.CommandPath(), err, cmd.UseLine())
		return 2
	}
	fmt.Fprintf(stderr, "%s: %s\n", cmd.CommandPath(), err)
	return 1
}

// newRoot builds the command tree; --help, the manual page and the shell
// completion all come from it.
func newRoot(a *app) *cobra.Command {
	root := group("iserctl", "administer a running iserd")
	root.Long = "iserctl changes and inspects a running iserd through its admin API (a unix socket, root only). " +
		"Every change applies at once, without touching the sessions it does not concern, and is saved atomically " +
		"to iserd's configuration file. Tables by default, the API's JSON with --json. Flags may come before or " +
		"after the arguments, and long flags may be written with one dash (-json) as well as two (--json).\n\n" +
		"CHAP secrets never come from the command line: they are read from $ISERCTL_SECRET and " +
		"$ISERCTL_MUTUAL_SECRET, or from the files given with --secret-file and --mutual-secret-file " +
		"(- for standard input).\n\n" +
		"Exit status: 0 on success, 1 when iserd refused the request or could not be reached, 2 for a mistake " +
		"on the command line."
	root.Example = "  iserctl target create iqn.2026-11.com.example:web --max-sessions 4\n" +
		"  iserctl lun add iqn.2026-11.com.example:web 0 --path web0.img --size 20GiB\n" +
		"  ISERCTL_SECRET=secret-of-12-chars iserctl acl add iqn.2026-11.com.example:web \\\n" +
		"      iqn.1993-08.org.debian:01:host1 --map 0=0 --chap-user host1\n" +
		"  iserctl session list\n" +
		"  iserctl qos set iqn.2026-11.com.example:web --lun 0 --iops 2000 --bandwidth 40MiB\n" +
		"  iserctl import lio /etc/rtslib-fb-target/saveconfig.json --dry-run\n" +
		"  source <(iserctl completion bash)"
	root.Annotations = map[string]string{cli.SeeAlso: "**iserd**(8), **iserd.yaml**(5), **iscsiadm**(8)"}
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.CompletionOptions.HiddenDefaultCmd = false
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err.Error()) })
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", admin.DefaultSocket, "iserd's admin socket")
	pf.BoolVar(&a.json, "json", false, "print the API's JSON instead of tables")

	root.AddCommand(
		a.configCommand(), a.reloadCommand(), a.targetCommand(), a.lunCommand(), a.aclCommand(), a.chapCommand(),
		a.portalCommand(), a.sessionCommand(), a.qosCommand(), a.rdmaCommand(), a.clusterCommand(), a.metricsCommand(), a.importCommand(), a.versionCommand(),
		docsCommand(root),
	)
	return root
}

// group is a command that only holds others: without arguments it prints
// its help, with an unknown one it is a usage error.
func group(name, short string) *cobra.Command {
	return &cobra.Command{Use: name, Short: short, Args: cobra.ArbitraryArgs, SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q", args[0])
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
			}
			return usageError(msg)
		}}
}

// leaf is a command taking exactly the named positional arguments.
func leaf(use, short string, run func(args []string) error, names ...string) *cobra.Command {
	return &cobra.Command{Use: strings.TrimSpace(use + " " + strings.Join(names, " ")), Short: short,
		Args: exactly(names...), RunE: func(_ *cobra.Command, args []string) error { return run(args) }}
}

// exactly checks that exactly the named positional arguments are present.
func exactly(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) == len(names):
			return nil
		case len(names) == 0:
			return usageError("no arguments expected")
		default:
			return usageError(fmt.Sprintf("expected %s", strings.Join(names, " ")))
		}
	}
}

func (a *app) versionCommand() *cobra.Command {
	return leaf("version", "print iserctl's version and build information", func([]string) error {
		_, err := fmt.Fprint(a.out, "iserctl "+cli.Version())
		return err
	})
}

// docsCommand writes the manual page; the package build runs it.
func docsCommand(root *cobra.Command) *cobra.Command {
	c := leaf("gendocs", "write the manual page iserctl.8 into DIR", func(args []string) error {
		return cli.WriteManPage(root, "8", args[0])
	}, "DIR")
	c.Hidden = true
	return c
}
