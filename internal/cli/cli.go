// Package cli holds what iserd's and iserctl's command lines share: the
// single-dash spelling of long flags, build information for -version and
// manual pages generated from the same cobra commands as --help.
package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/spf13/cobra"
)

// LongFlags rewrites long flags written with one dash (-config, -max-sessions=4),
// the spelling of Go's flag package that iserd and iserctl accepted first,
// into the two-dash spelling cobra parses. One-letter flags (-h), lone
// dashes (standard input), negative numbers and everything after "--"
// stay as they are.
func LongFlags(args []string) []string {
	out := make([]string, len(args))
	rest := false
	for i, a := range args {
		out[i] = a
		if rest {
			continue
		}
		if a == "--" {
			rest = true
			continue
		}
		name, _, _ := strings.Cut(a, "=")
		if len(name) > 2 && name[0] == '-' && isLetter(name[1]) {
			out[i] = "-" + a
		}
	}
	return out
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// Release is the version of a packaged build, set by the package build
// with -ldflags "-X github.com/iserd/iserd/internal/cli.Release=...".
var Release string

// Version describes the running binary: Release when set, then the build
// information the Go toolchain embeds: module version, VCS revision and
// time (when built from a git clone with -buildvcs), Go version and
// platform.
func Version() string {
	version, revision, when, dirty := "(devel)", "unknown", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if Release != "" {
		version = Release + " " + version
	}
	if dirty {
		revision += " (modified)"
	}
	if when != "" {
		revision += " " + when
	}
	return fmt.Sprintf("%s\n  revision %s\n  built with %s for %s/%s\n", version, revision, runtime.Version(),
		runtime.GOOS, runtime.GOARCH)
}

// TitleLine is the first line of a manual page written in markdown: name,
// section, source and manual, and no date, so that a page changes only
// when its text does (reproducible packages).
func TitleLine(name, section string) string {
	return fmt.Sprintf("%% %q %q \"\" \"iserd\" \"iserd manual\"\n\n", strings.ToUpper(name), section)
}

// WriteManPage writes cmd and every visible command below it as one manual
// page, DIR/NAME.SECTION, from the descriptions and flags that --help
// prints.
func WriteManPage(cmd *cobra.Command, section, dir string) error {
	cmd.InitDefaultHelpFlag()
	cmd.InitDefaultVersionFlag()
	var md bytes.Buffer
	name := cmd.Name()
	md.WriteString(TitleLine(name, section))
	fmt.Fprintf(&md, "# NAME\n\n%s - %s\n\n# SYNOPSIS\n\n**%s**\n\n# DESCRIPTION\n\n%s\n\n",
		name, cmd.Short, escape(cmd.UseLine()), cmd.Long)
	if flags := cmd.NonInheritedFlags(); flags.HasAvailableFlags() {
		fmt.Fprintf(&md, "# OPTIONS\n\n```\n%s```\n\n", flags.FlagUsages())
	}
	if cmd.HasAvailableSubCommands() {
		md.WriteString("# COMMANDS\n\n")
		writeCommands(&md, cmd)
	}
	if ex := cmd.Example; ex != "" {
		fmt.Fprintf(&md, "# EXAMPLES\n\n```\n%s\n```\n\n", ex)
	}
	if see := cmd.Annotations[SeeAlso]; see != "" {
		fmt.Fprintf(&md, "# SEE ALSO\n\n%s\n", see)
	}
	return writeRoff(filepath.Join(dir, name+"."+section), md.Bytes())
}

// SeeAlso is the annotation of a root command holding its SEE ALSO line.
const SeeAlso = "man-see-also"

// writeCommands describes every runnable command below cmd, depth first.
func writeCommands(md *bytes.Buffer, cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		if !c.IsAvailableCommand() || c.Name() == "help" {
			continue
		}
		if c.Runnable() && !c.HasAvailableSubCommands() {
			fmt.Fprintf(md, "## %s\n\n%s\n\n", escape(c.UseLine()), firstNonEmpty(c.Long, c.Short))
			if flags := c.NonInheritedFlags(); flags.HasAvailableFlags() {
				fmt.Fprintf(md, "```\n%s```\n\n", flags.FlagUsages())
			}
		}
		writeCommands(md, c)
	}
}

// WriteMarkdownPage writes a page written in markdown (starting with
// TitleLine) as roff to DIR/NAME.
func WriteMarkdownPage(dir, name string, md []byte) error {
	return writeRoff(filepath.Join(dir, name), md)
}

func writeRoff(path string, md []byte) error {
	if err := os.WriteFile(path, md2man.Render(md), 0o644); err != nil {
		return fmt.Errorf("manual page: %w", err)
	}
	return nil
}

// escape keeps markdown from reading the brackets and stars of a usage
// line as markup.
func escape(s string) string {
	return strings.NewReplacer("[", `\[`, "]", `\]`, "*", `\*`, "_", `\_`, "|", `\|`).Replace(s)
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
