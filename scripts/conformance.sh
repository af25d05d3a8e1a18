#!/usr/bin/env bash
# Runs libiscsi's conformance suite (iscsi-test-cu) against iserd on
# 127.0.0.1 with a thin file-backed LUN, scores it (skips are not passes) and
# fails on any failure but the known scorer artefacts below, or when fewer
# than MIN_PASSED tests pass (a feature silently turning into skips). The target
# listens on two portals: the second URL is libiscsi's multipath path, and
# the reservation tests log in with two initiator names. SANITIZE tests are
# allowed (the LUN is scratch).
#   scripts/conformance.sh [FAMILY]     default ALL
set -euo pipefail
cd "$(dirname "$0")/.."
family=${1:-ALL}
port=${ISERD_TEST_PORT:-3270}
port2=$((port + 1))
work=$(mktemp -d /tmp/iserd-conformance.XXXXXX)
iqn=iqn.2026-11.org.iserd:conformance
init1=iqn.2026-11.org.iserd:initiator-1
init2=iqn.2026-11.org.iserd:initiator-2
min_passed=${MIN_PASSED:-200}
# Tests the scorer counts as failed although iscsi-test-cu passes them,
# because their text holds "[FAILED]" for a reason that is not a target bug:
# - iSCSIDataSnInvalid expects each corrupted write to fail, and its write
#   helper logs "[FAILED]" when it does.
# - ModeSense6.Residuals and Reserve6.LUNReset: libiscsi's end-of-suite
#   cleanup sends PERSISTENT RESERVE IN on the second path, which has the unit
#   attention SPC-4 requires pending (MODE PARAMETERS CHANGED after the
#   suite's MODE SELECT, BUS DEVICE RESET after its LU reset).
# - Sanitize.Reset expects an overwrite to run for several seconds; a 64 MiB
#   scratch LUN is overwritten in milliseconds.
artefacts='^(iSCSIdatasn\.iSCSIDataSnInvalid|ModeSense6\.Residuals|Reserve6\.LUNReset|Sanitize\.Reset)$'

command -v iscsi-test-cu >/dev/null || { echo "conformance: iscsi-test-cu missing (apt-get install libiscsi-bin)" >&2; exit 1; }
cat > "$work/iserd.yaml" <<EOC
data_dir: $work
portals: [{address: "127.0.0.1:$port"}, {address: "127.0.0.1:$port2"}]
targets:
  - name: $iqn
    open: true
    luns:
      - {lun: 0, path: lun0.img, size: 64MiB, block_size: 512, thin: true}
log: {level: warn}
EOC
for p in $port $port2; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "conformance: 127.0.0.1:$p is already in use (another run?); set ISERD_TEST_PORT" >&2
    exit 1
  fi
done
bin/iserd -config "$work/iserd.yaml" > "$work/iserd.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$work/iserd.log"; exit 1; }
  sleep 0.1
done
kill -0 $pid 2>/dev/null || { cat "$work/iserd.log"; exit 1; }
scripts/libiscsi-score.sh -t "$family" -o "$work/score" -- \
  --allow-sanitize --initiator-name="$init1" --initiator-name-2="$init2" \
  "iscsi://127.0.0.1:$port/$iqn/0" "iscsi://127.0.0.1:$port2/$iqn/0" | tee "$work/score.txt"
kill -0 $pid 2>/dev/null || { echo "conformance: iserd died during the suite" >&2; tail -20 "$work/iserd.log"; exit 1; }
fails=$(awk -F'\t' '$2=="failed" {print $1}' "$work/score/results.tsv" | grep -Ev "$artefacts" || true)
passed=$(awk -F'\t' '$2=="passed"' "$work/score/results.tsv" | wc -l)
if [ -n "$fails" ]; then
  echo "conformance: failures:" >&2
  echo "$fails" >&2
  echo "(iserd log: $work/iserd.log)" >&2
  exit 1
fi
if [ "$family" = ALL ] && [ "$passed" -lt "$min_passed" ]; then
  echo "conformance: only $passed tests passed, fewer than $min_passed: something now skips (see $work)" >&2
  exit 1
fi
echo "conformance: no failures but the known scorer artefacts (details in $work)"
