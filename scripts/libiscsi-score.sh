#!/usr/bin/env bash
# Runs libiscsi's iscsi-test-cu and counts each test as passed, skipped or
# failed. iscsi-test-cu itself counts a skipped test as passed; this does not.
#   libiscsi-score.sh [-t FAMILY] [-o DIR] URL [URL2]   run and score
#   libiscsi-score.sh -r RAW [-o DIR]                    score saved -v output
# Writes DIR/raw.txt and DIR/results.tsv (test, verdict, reason) and ends with
#   libiscsi: P passed, F failed, S skipped
set -uo pipefail
family=ALL out= raw=
while getopts "t:o:r:" o; do
  case $o in t) family=$OPTARG ;; o) out=$OPTARG ;; r) raw=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
out=${out:-$(mktemp -d)}
mkdir -p "$out"
if [ -n "$raw" ]; then
  cp "$raw" "$out/raw.txt"
else
  [ $# -ge 1 ] || { echo "usage: $0 [-t FAMILY] [-o DIR] iscsi://HOST:PORT/IQN/LUN [URL2]" >&2; exit 2; }
  (cd "$out" && timeout "${LIBISCSI_TIMEOUT:-1800}" iscsi-test-cu -d -v -t "$family" "$@") >"$out/raw.txt" 2>&1
fi
# A test's block runs from its "Test:" line to the next Test/Suite line or the
# summary. CUnit's own verdict counts: it ends each block with "passed", or
# with "FAILED" and the failed assertions; a block with neither (crash, hang,
# timeout) failed. "[FAILED]" lines alone are the logging of libiscsi's
# helpers, which some tests provoke on purpose (iSCSIDataSnInvalid expects its
# writes to fail) and which the suite cleanup prints after a test passed (its
# PERSISTENT RESERVE IN meets a unit attention the test left pending). A
# passed block with [SKIPPED] is a skip. This is the verdict of
# /work/shared/conformance/libiscsi-score.
awk '
  function verdict(   v, why) {
    if (test == "") return
    v = "passed"; why = ""
    if (text ~ /(^|\.\.\.|\n)FAILED/ || text !~ /(^|\.\.\.|\n)passed/) { v = "failed"; why = firstline(text, "FAIL") }
    else if (text ~ /\[SKIPPED\]/) { v = "skipped"; why = firstline(text, "\\[SKIPPED\\]") }
    printf "%s.%s\t%s\t%s\n", suite, test, v, why
    test = ""; text = ""
  }
  function firstline(s, pat,   n, i, parts) {
    n = split(s, parts, "\n")
    for (i = 1; i <= n; i++) if (parts[i] ~ pat) { gsub(/\t/, " ", parts[i]); sub(/^ +/, "", parts[i]); return parts[i] }
    return ""
  }
  /^Run Summary/ { verdict(); done = 1 }
  done { next }
  /^Suite: / { verdict(); suite = $2; next }
  /^  Test: / {
    verdict(); line = substr($0, 9)
    test = line; sub(/ \.\.\..*/, "", test)
    text = line "\n"; next
  }
  test != "" { text = text $0 "\n" }
  END { verdict() }
' "$out/raw.txt" >"$out/results.tsv"
count() { awk -F'\t' -v v="$1" '$2 == v' "$out/results.tsv" | wc -l; }
p=$(count passed) f=$(count failed) s=$(count skipped)
if [ $((p + f + s)) -eq 0 ]; then
  tail -5 "$out/raw.txt" >&2
  echo "libiscsi: the suite did not run; see $out/raw.txt" >&2
  exit 2
fi
awk -F'\t' '$2 != "passed" {printf "%-8s %-55s %s\n", $2, $1, $3}' "$out/results.tsv" | sort
echo "results: $out/results.tsv"
echo "libiscsi: $p passed, $f failed, $s skipped"
