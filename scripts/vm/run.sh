#!/usr/bin/env bash
# Usage: scripts/vm/run.sh SCENARIO [TIMEOUT]
# Boots the test VM, runs one scenario (a file, or a name in scripts/vm/scenarios), streams the
# console and exits with the scenario's status. The VM is killed after TIMEOUT seconds (default:
# the scenario's "# vm-timeout:" header, or 300, plus 120 for the boot).
# Environment: VM_TESTBIN_DIR (extra programs for /usr/local/bin in the VM), VM_ACCEL (tcg).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 SCENARIO [TIMEOUT]"
file=$(resolve_scenario "$1")
name=$(basename "$file" .sh)
timeout=${2:-$(($(scenario_timeout "$file") + BOOT_ALLOWANCE))}
log=$CACHE_DIR/logs/$name.log

st=0
vm_boot "$timeout" full "$log" "$file" || st=$?
[ "$st" -eq 0 ] || exit "$st"
read -r _ status _ < <(scenario_results "$log")
case $status in
  0) exit 0 ;;
  77) note "scenario $name skipped itself"; exit 77 ;;
  [0-9]*) note "scenario $name failed with status $status"; exit "$status" ;;
  *) note "scenario $name did not finish"; exit 1 ;;
esac
