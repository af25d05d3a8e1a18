// Package clitest holds what the tests of iserd's and iserctl's command
// lines share.
package clitest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RenderManPage formats the manual page at path with man -l, as a user's
// man(1) would, and fails the test when man reports a problem in the page
// or the text lacks want. Without man(1) the test is skipped.
func RenderManPage(t *testing.T, path, want string) {
	t.Helper()
	man, err := exec.LookPath("man")
	if err != nil {
		t.Skip("man(1) is not installed")
	}
	cmd := exec.Command(man, "--warnings", "-l", path)
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=100", "LC_ALL=C.UTF-8")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("man -l %s: %v\n%s", path, err, stderr.String())
	}
	if !strings.Contains(string(out), want) {
		t.Errorf("man -l %s lacks %q:\n%s", path, want, out)
	}
}
