#!/usr/bin/env bash
# Runs libiscsi's conformance suite (iscsi-test-cu) against iserd on
# 127.0.0.1 and scores it with scripts/libiscsi-score.sh (CUnit's verdict per
# test; skips are not passes). One iserd serves a target per pass:
#   default    a thin 64 MiB LUN of 512-byte blocks                 FAMILY
#   physical   the same with 4096-byte physical blocks (LBPPB 8)    FAMILY
#   read-only  a read-only LUN                                      ALL.ReadOnly
# Each pass is scored, then the total over distinct tests: a test failed
# when it failed in any pass, passed when it passed in one and failed in
# none. The script fails on any failure, or when FAMILY is ALL and fewer
# than MIN_PASSED tests passed in total (a feature silently turning into
# skips). The target listens on two portals: the second URL is libiscsi's
# multipath path, and the reservation tests log in with two initiator
# names. SANITIZE tests are allowed (the LUNs are scratch); sanitize_rate
# makes an OVERWRITE of the 64 MiB LUN last about 8 s, as on a disk, which
# Sanitize.Reset needs (it resets the target while the overwrite runs).
#   scripts/conformance.sh [FAMILY]     default ALL
# ISERD_TEST_PORT is the first port tried (default 3270); the next free
# pair of ports is used.
set -euo pipefail
cd "$(dirname "$0")/.."
family=${1:-ALL}
work=$(mktemp -d /tmp/iserd-conformance.XXXXXX)
iqn=iqn.2026-11.org.iserd:conformance
init1=iqn.2026-11.org.iserd:initiator-1
init2=iqn.2026-11.org.iserd:initiator-2
min_passed=${MIN_PASSED:-217}
passes=(default physical read-only)
declare -A pass_target=([default]=$iqn [physical]=$iqn-physical [read-only]=$iqn-read-only)
declare -A pass_family=([default]=$family [physical]=$family [read-only]=ALL.ReadOnly)

command -v iscsi-test-cu >/dev/null || { echo "conformance: iscsi-test-cu missing (apt-get install libiscsi-bin)" >&2; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The read-only LUN cannot create its backing file.
truncate -s 64M "$work/ro.img"
pid=
trap '[ -n "$pid" ] && { kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; }' EXIT
# Start iserd on the first pair of free ports from ISERD_TEST_PORT on; a
# port taken between the check and the bind shows as iserd exiting.
port=${ISERD_TEST_PORT:-3270}
for _ in $(seq 20); do
  while listening $port || listening $((port + 1)); do port=$((port + 2)); done
  port2=$((port + 1))
  cat > "$work/iserd.yaml" <<EOC
data_dir: $work
portals: [{address: "127.0.0.1:$port"}, {address: "127.0.0.1:$port2"}]
targets:
  - name: ${pass_target[default]}
    open: true
    luns:
      - {lun: 0, path: lun0.img, size: 64MiB, block_size: 512, thin: true, sanitize_rate: 8MiB}
  - name: ${pass_target[physical]}
    open: true
    luns:
      - {lun: 0, path: lun-physical.img, size: 64MiB, block_size: 512, physical_block_size: 4096, thin: true, sanitize_rate: 8MiB}
  - name: ${pass_target[read-only]}
    open: true
    luns:
      - {lun: 0, path: ro.img, block_size: 512, read_only: true}
log: {level: warn}
EOC
  bin/iserd -config "$work/iserd.yaml" > "$work/iserd.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do
    listening $port && listening $port2 && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill -0 $pid 2>/dev/null && break
  wait $pid 2>/dev/null || true
  pid=
  grep -q "address already in use" "$work/iserd.log" || { cat "$work/iserd.log"; exit 1; }
  port=$((port + 2))
done
[ -n "$pid" ] || { echo "conformance: found no free pair of ports" >&2; exit 1; }
echo "conformance: iserd on 127.0.0.1:$port and :$port2 (work directory $work)"

summaries=()
for p in "${passes[@]}"; do
  [ "$p" = read-only ] && [ "$family" != ALL ] && continue
  t=${pass_target[$p]}
  echo "== pass $p: ${pass_family[$p]} on $t"
  scripts/libiscsi-score.sh -t "${pass_family[$p]}" -o "$work/$p" -- \
    --allow-sanitize --initiator-name="$init1" --initiator-name-2="$init2" \
    "iscsi://127.0.0.1:$port/$t/0" "iscsi://127.0.0.1:$port2/$t/0" | tee "$work/$p.txt"
  kill -0 $pid 2>/dev/null || { echo "conformance: iserd died during pass $p" >&2; tail -20 "$work/iserd.log"; exit 1; }
  summaries+=("$p: $(tail -1 "$work/$p.txt" | sed 's/^libiscsi: //')")
done

# Total over distinct tests: failed anywhere, else passed anywhere, else skipped.
results=()
for p in "${passes[@]}"; do [ -f "$work/$p/results.tsv" ] && results+=("$work/$p/results.tsv"); done
awk -F'\t' '
  { seen[$1] = 1; if ($2 == "failed") f[$1] = 1; else if ($2 == "passed") p[$1] = 1 }
  END {
    for (t in seen) { if (t in f) nf++; else if (t in p) np++; else ns++ }
    for (t in f) print t > "/dev/stderr"
    printf "%d %d %d\n", np, nf, ns
  }' "${results[@]}" > "$work/total.txt" 2> "$work/failed.txt"
read -r passed failed skipped < "$work/total.txt"
echo "== conformance:"
printf '  %s\n' "${summaries[@]}"
echo "  total (distinct tests): $passed passed, $failed failed, $skipped skipped"
if [ "$failed" -gt 0 ]; then
  echo "conformance: failures:" >&2
  sort "$work/failed.txt" >&2
  echo "(iserd log: $work/iserd.log)" >&2
  exit 1
fi
if [ "$family" = ALL ] && [ "$passed" -lt "$min_passed" ]; then
  echo "conformance: only $passed tests passed, fewer than $min_passed: something now skips (see $work)" >&2
  exit 1
fi
echo "conformance: no failures (details in $work)"
