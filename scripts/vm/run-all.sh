#!/usr/bin/env bash
# Usage: scripts/vm/run-all.sh [SCENARIO...]
# Runs the named scenarios (default: every scripts/vm/scenarios/*.sh) one after the other in a
# single VM boot, reports PASS/FAIL for each, prints the output of the failed ones and exits
# nonzero when any failed or the VM did not finish.
# Environment: VM_VERBOSE=1 streams the whole console; VM_TIMEOUT overrides the VM's time limit
# (default: the sum of the scenarios' limits plus 120 s); VM_TESTBIN_DIR, VM_ACCEL as in run.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

files=()
if [ $# -gt 0 ]; then
  for s in "$@"; do files+=("$(resolve_scenario "$s")"); done
else
  for f in "$VM_DIR"/scenarios/*.sh; do [ -f "$f" ] && files+=("$f"); done
fi
[ ${#files[@]} -gt 0 ] || die "no scenarios to run"

timeout=$BOOT_ALLOWANCE
for f in "${files[@]}"; do timeout=$((timeout + $(scenario_timeout "$f"))); done
timeout=${VM_TIMEOUT:-$timeout}
log=$CACHE_DIR/logs/run-all.log
mode=brief
[ -n "${VM_VERBOSE:-}" ] && mode=full

VM_STARTED=$SECONDS
vm_st=0
vm_boot "$timeout" "$mode" "$log" "${files[@]}" || vm_st=$?
results=$(scenario_results "$log")

failed=()
echo "--- VM scenarios ($((SECONDS - VM_STARTED))s for build, boot and run; console log $log)"
for f in "${files[@]}"; do
  name=$(basename "$f" .sh)
  read -r _ status secs < <(awk -v n="$name" '$1 == n' <<<"$results") || status=
  case $status in
    0) echo "PASS  $name (${secs}s)" ;;
    77) echo "SKIP  $name ($(scenario_output "$log" "$name" | sed -n 's/^SKIP: //p' | tail -1))" ;;
    "") echo "NOT RUN  $name (the VM stopped first)"; failed+=("$name") ;;
    unfinished) echo "FAIL  $name (did not finish)"; failed+=("$name") ;;
    *) echo "FAIL  $name (status $status, ${secs}s)"; failed+=("$name") ;;
  esac
done
if [ ${#failed[@]} -eq 0 ] && [ "$vm_st" -eq 0 ]; then
  echo "all ${#files[@]} VM scenarios passed"
  exit 0
fi
if [ "$mode" = brief ]; then
  for name in "${failed[@]}"; do
    out=$(scenario_output "$log" "$name")
    [ -n "$out" ] || continue
    echo "--- output of $name"
    echo "$out"
  done
fi
echo "VM scenarios failed: ${failed[*]:-none (the VM itself failed)}"
exit 1
