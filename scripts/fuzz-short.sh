#!/usr/bin/env bash
# Runs every fuzz target briefly (FUZZTIME, default 50000 inputs each) on top
# of the checked-in seed corpora, which `go test` already replays. The budget is
# a count, not a duration: with a duration, Go 1.26's fuzz coordinator can report
# "context deadline exceeded" as a failure when the time runs out while a worker
# is mid-input (go.dev/issue/75804, fixed in Go 1.27); it did so once in CI-like
# runs on FuzzFFPDU, whose inputs take milliseconds each.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-50000x}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "fuzz: $pkg $f ($t)"
    go test -run='^$' -fuzz="^$f\$" -fuzztime="$t" "$pkg"
  done
done
