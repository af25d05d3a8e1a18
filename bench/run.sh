#!/usr/bin/env bash
# Usage: bench/run.sh [all|host|vm|sessions|cluster]      (make bench: make build, then all)
# Side-by-side benchmark of iserd against its peers, every figure repeated:
#   host: iserd and tgtd (started here on free ports of 127.0.0.1, stopped at the end) on the
#         same backing: a file in /dev/shm ("shm"), a RAM device ("mem": iserd's memory
#         backend, tgt's null backing store) and a file on a disk filesystem opened O_DIRECT ("disk"). Reads with libiscsi's iscsi-perf, writes with
#         bench/cmd/iscsi-load; CPU time per I/O of the target process from /proc/PID/stat.
#   sessions: (not part of all) iserd and tgtd as for host, 4k random reads from 1, 4, 16 and 64
#         sessions at QD8 each (aggregate IOPS, CPU per I/O), then the targets' CPU ticks over 10 s
#         idle, and their memory (VmRSS) per idle session with BENCH_IDLE_SESSIONS (1000) logged in.
#   cluster: (not part of all) an etcd (/usr/bin/etcd, free ports, data on BENCH_DISK_DIR) and two
#         iserds, each with one "disk" LUN (O_DIRECT file on BENCH_DISK_DIR): "iserd" without and
#         "iserd-cluster" with a cluster: section (one gateway). 4k random reads and writes at QD16
#         and PERSISTENT RESERVE OUT latency (without and with APTPL), interleaved.
#   vm:   scripts/vm/scenarios/bench-targets.sh in one VM boot: Linux initiator + fio against
#         iserd, LIO and tgt over iSCSI/TCP and iserd and LIO over iSER.
# Results: bench/results/samples.tsv (every run), latest.tsv (summary), latest.svg (chart).
# Environment: BENCH_RUNS (3) and BENCH_SECONDS (4) per host figure, BENCH_VM_RUNS and
# BENCH_VM_SECONDS (default: the same) in the VM. BENCH_CASES (case names, default all) narrows
# the run, and on the host so does BENCH_BACKINGS (default "shm mem disk"); BENCH_BASELINE=path/to/iserd
# runs that binary beside bin/iserd as target "iserd-base" (before/after in one run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
what=${1:-all}
case $what in all | host | vm | sessions | cluster) ;; *) echo "usage: $0 [all|host|vm|sessions|cluster]" >&2; exit 2 ;; esac
RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-4}
VM_RUNS=${BENCH_VM_RUNS:-$RUNS}
VM_SECS=${BENCH_VM_SECONDS:-$SECS}
RESULTS=$ROOT/bench/results
SAMPLES=$RESULTS/samples.tsv
HZ=$(getconf CLK_TCK)
INITIATOR=iqn.2026-11.org.iserd:bench-client
IQN_ISERD=iqn.2026-11.org.iserd:bench
IQN_TGT=iqn.2001-04.com.example:bench
LUN_SIZE_MB=256
START=$SECONDS

note() { echo "bench: $*" >&2; }
die() { note "$*"; exit 1; }

WORK=$(mktemp -d /dev/shm/iserd-bench.XXXXXX)
# The "disk" backing: a file on a disk filesystem (BENCH_DISK_DIR, default /var/tmp), opened O_DIRECT
# by both targets, the case of a real disk (page cache out of the way).
DISK=$(mktemp -d "${BENCH_DISK_DIR:-/var/tmp}/iserd-bench.XXXXXX")
[ "$(stat -f -c %T "$DISK")" != tmpfs ] || die "$DISK is on tmpfs: set BENCH_DISK_DIR to a disk filesystem"
ISERD_PID='' TGTD_PID='' TGT_CP='' BASE_PID='' BASE_PORT='' CLUSTER_PID='' ETCD_PID=''
BACKINGS=${BENCH_BACKINGS:-shm mem disk}
BASELINE=${BENCH_BASELINE:-}
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "BENCH_BASELINE=$BASELINE is not an executable"

# stop_pid PID: SIGTERM, then SIGKILL after 15 s.
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop_iserd() {
  stop_pid "$ISERD_PID"
  stop_pid "$BASE_PID"
  stop_pid "$CLUSTER_PID"
  ISERD_PID='' BASE_PID='' CLUSTER_PID=''
}

# stop_tgtd: tgtd only exits on request once it has no targets; SIGKILL after 10 s.
stop_tgtd() {
  [ -n "$TGTD_PID" ] || return 0
  local tid
  for tid in $(tgtadm -C "$TGT_CP" --lld iscsi --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    tgtadm -C "$TGT_CP" --lld iscsi --op delete --mode target --tid "$tid" --force || true
  done
  tgtadm -C "$TGT_CP" --op delete --mode system 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$TGTD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$TGTD_PID" 2>/dev/null || true
  wait "$TGTD_PID" 2>/dev/null || true
  rm -f "/var/run/tgtd/socket.$TGT_CP" "/var/run/tgtd/socket.$TGT_CP.lock" # tgtd leaves them behind
  TGTD_PID=''
}

cleanup() {
  stop_iserd
  stop_tgtd
  stop_pid "$ETCD_PID"
  rm -rf "$WORK" "$DISK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# listening PORT: true when something listens on 127.0.0.1:PORT (or any address).
listening() { [ -n "$(ss -Htln "sport = :$1")" ]; }

# free_port FROM: the first port from FROM up that nothing listens on.
free_port() {
  local p=$1
  while listening "$p"; do p=$((p + 1)); done
  echo "$p"
}

# cpu_ticks PID: utime + stime of the process (all threads), in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# wait_port PID PORT LOG WHAT: waits until PORT listens while PID lives.
wait_port() {
  for _ in $(seq 100); do
    listening "$2" && return 0
    kill -0 "$1" 2>/dev/null || { cat "$3" >&2; die "$4 exited before listening on port $2"; }
    sleep 0.1
  done
  cat "$3" >&2
  die "$4 does not listen on port $2 after 10 s"
}

# disk_file PATH: a LUN file on DISK, written through (O_DIRECT) with data: reads of a fallocated
# file never reach the device (ext4 answers unwritten extents with zeros) and its first writes
# convert extents.
disk_file() { dd if=/dev/urandom of="$1" bs=1M count="$LUN_SIZE_MB" oflag=direct status=none; }

# lun_files SHM-FILE DISK-FILE: the LUN files of one target.
lun_files() {
  fallocate -l "${LUN_SIZE_MB}M" "$1"
  disk_file "$2"
}

# host_config NAME PORT: the host configuration, a target per backing, each with its own LUN files.
host_config() {
  lun_files "$WORK/$1.img" "$DISK/$1.img"
  cat <<EOF
portals: [{address: "127.0.0.1:$2"}]
log: {level: warn}
targets:
  - name: $IQN_ISERD-shm
    open: true
    luns: [{lun: 0, path: $WORK/$1.img, size: ${LUN_SIZE_MB}MiB}]
  - name: $IQN_ISERD-mem
    open: true
    luns: [{lun: 0, backend: memory, size: ${LUN_SIZE_MB}MiB}]
  - name: $IQN_ISERD-disk
    open: true
    luns: [{lun: 0, path: $DISK/$1.img, size: ${LUN_SIZE_MB}MiB, direct: true}]
EOF
}

# iserd_instance NAME BINARY FROM-PORT CONFIG [ARGS]: starts an iserd with the configuration the
# function CONFIG prints (called as CONFIG NAME PORT ARGS) and its admin socket in WORK; sets PID and PORT.
iserd_instance() {
  local name=$1 bin=$2 config=$4
  PORT=$(free_port "$3")
  "$config" "$name" "$PORT" "${@:5}" >"$WORK/$name.yaml"
  "$bin" -config "$WORK/$name.yaml" -admin-socket "$WORK/$name.sock" >"$WORK/$name.log" 2>&1 &
  PID=$!
  wait_port "$PID" "$PORT" "$WORK/$name.log" "$name"
}

start_iserd() {
  iserd_instance iserd bin/iserd 13260 host_config
  ISERD_PID=$PID ISERD_PORT=$PORT
  [ -n "$BASELINE" ] || return 0
  iserd_instance iserd-base "$BASELINE" $((ISERD_PORT + 1)) host_config
  BASE_PID=$PID BASE_PORT=$PORT
}

start_tgtd() {
  TGT_PORT=$(free_port $((${BASE_PORT:-$ISERD_PORT} + 1)))
  TGT_CP=4260
  while [ -e "/var/run/tgtd/socket.$TGT_CP" ]; do TGT_CP=$((TGT_CP + 1)); done
  lun_files "$WORK/tgt.img" "$DISK/tgt.img"
  tgtd -f -C "$TGT_CP" --iscsi portal="127.0.0.1:$TGT_PORT" >"$WORK/tgtd.log" 2>&1 &
  TGTD_PID=$!
  wait_port "$TGTD_PID" "$TGT_PORT" "$WORK/tgtd.log" tgtd
  local t="tgtadm -C $TGT_CP --lld iscsi"
  { $t --op new --mode target --tid 1 -T "$IQN_TGT-shm" &&
    $t --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgt.img" &&
    $t --op bind --mode target --tid 1 -I ALL &&
    $t --op new --mode target --tid 2 -T "$IQN_TGT-mem" &&
    $t --op new --mode logicalunit --tid 2 --lun 1 --bstype null -b /dev/null &&
    $t --op bind --mode target --tid 2 -I ALL &&
    $t --op new --mode target --tid 3 -T "$IQN_TGT-disk" &&
    $t --op new --mode logicalunit --tid 3 --lun 1 -b "$DISK/tgt.img" --bsoflags direct &&
    $t --op bind --mode target --tid 3 -I ALL; } >"$WORK/tgtadm.log" 2>&1 ||
    { cat "$WORK/tgtadm.log" >&2; die "tgtadm could not configure tgtd"; }
}

# endpoint TARGET BACKING: prints "pid portal iqn lun [companion]" of that LUN; the companion is a
# process the target depends on (iserd-cluster's etcd), whose CPU time goes to COMPANION_CPU.
endpoint() {
  case $1 in
    iserd) echo "$ISERD_PID 127.0.0.1:$ISERD_PORT $IQN_ISERD-$2 0" ;;
    iserd-base) echo "$BASE_PID 127.0.0.1:$BASE_PORT $IQN_ISERD-$2 0" ;;
    iserd-cluster) echo "$CLUSTER_PID 127.0.0.1:$CLUSTER_PORT $IQN_ISERD-$2 0 $ETCD_PID" ;;
    tgt) echo "$TGTD_PID 127.0.0.1:$TGT_PORT $IQN_TGT-$2 1" ;;
  esac
}

# client TOOL RW BS QD SESSIONS PORTAL IQN LUN: one run; prints "ios value unit p50 p99 p99.9"
# (latencies in µs from iscsi-load; "-" from iscsi-perf, which does not measure them; sessions: iscsi-load only).
# TOOL prout: iscsi-load -prout, PERSISTENT RESERVE OUT commands one at a time (RW "aptpl": with APTPL),
# "commands PROUT/s p50 p99 p99.9".
client() {
  local tool=$1 rw=$2 bs=$3 qd=$4 sessions=$5 portal=$6 iqn=$7 lun=$8 out iops
  if [ "$tool" = prout ]; then
    local aptpl=''
    [ "$rw" = aptpl ] && aptpl=-aptpl
    out=$("$WORK/bin/iscsi-load" -portal "$portal" -target "$iqn" -lun "$lun" -initiator "$INITIATOR" \
      -prout $aptpl -time "${SECS}s" 2>&1) || { echo "$out" >&2; return 1; }
    awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
      END { printf "%d %s PROUT/s %s %s %s\n", v["ios"], v["iops"], v["p50_us"], v["p99_us"], v["p999_us"] }' <<<"$out"
  elif [ "$tool" = perf ]; then
    local rnd=''
    [ "$rw" = randread ] && rnd=-r
    out=$(timeout $((SECS + 30)) iscsi-perf -i "$INITIATOR" -m "$qd" -b $((bs / 512)) $rnd -t "$SECS" \
      "iscsi://$portal/$iqn/$lun" 2>&1 | tr '\r' '\n') || { echo "$out" | tail -5 >&2; return 1; }
    iops=$(grep -o 'iops average [0-9]*' <<<"$out" | tail -1 | awk '{ print $3 }')
    [ -n "$iops" ] || { echo "$out" | tail -5 >&2; return 1; }
    awk -v i="$iops" -v s="$SECS" -v bs="$bs" 'BEGIN { printf "%d %s - - -\n", i * s, (bs >= 65536 ? sprintf("%.1f MB/s", i * bs / 1e6) : i " IOPS") }'
  else
    out=$("$WORK/bin/iscsi-load" -portal "$portal" -target "$iqn" -lun "$lun" -initiator "$INITIATOR" \
      -rw "$rw" -bs "$bs" -qd "$qd" -sessions "$sessions" -time "${SECS}s" 2>&1) || { echo "$out" >&2; return 1; }
    awk -v bs="$bs" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
      END { printf "%d %s %s %s %s\n", v["ios"], (bs >= 65536 ? v["mbps"] " MB/s" : v["iops"] " IOPS"), v["p50_us"], v["p99_us"], v["p999_us"] }' <<<"$out"
  fi
}

# Host cases: name tool pattern bytes queue-depth [sessions] (block counts assume 512-byte blocks).
# The lat- cases repeat QD1 with iscsi-load for the latency distribution iscsi-perf does not report.
HOST_CASES=(
  "randread-4k-qd1 perf randread 4096 1"
  "read-4k-qd1 perf read 4096 1"
  "randread-4k-qd32 perf randread 4096 32"
  "read-4k-qd32 perf read 4096 32"
  "read-128k-qd8 perf read 131072 8"
  "lat-randread-4k-qd1 load randread 4096 1"
  "lat-randwrite-4k-qd1 load randwrite 4096 1"
  "randwrite-4k-qd32 load randwrite 4096 32"
  "write-128k-qd8 load write 131072 8"
)

# Cluster cases (bench/run.sh cluster), in the same format; prout cases: RW plain or aptpl.
CLUSTER_CASES=(
  "randread-4k-qd16 perf randread 4096 16"
  "randwrite-4k-qd16 load randwrite 4096 16"
  "prout-qd1 prout plain 0 1"
  "prout-aptpl-qd1 prout aptpl 0 1"
)

# Session scaling cases (bench/run.sh sessions), in the same format.
SESSION_CASES=(
  "sessions1-randread-4k-qd8 load randread 4096 8 1"
  "sessions4-randread-4k-qd8 load randread 4096 8 4"
  "sessions16-randread-4k-qd8 load randread 4096 8 16"
  "sessions64-randread-4k-qd8 load randread 4096 8 64"
)
IDLE_SESSIONS=${BENCH_IDLE_SESSIONS:-1000}

# rss_kib PID: resident memory of the process in KiB.
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

# run_idle: per target, CPU ticks over 10 s with no session, then IDLE_SESSIONS sessions logged in
# and idle: the growth of VmRSS per session and the CPU ticks over 10 s.
run_idle() {
  local target pid portal iqn lun t0 rss0 rss1 idle0 idle1 out=$WORK/idle.out
  printf "idle\ttarget\tsessions\tticks_10s_none\tticks_10s_all\trss_kib_none\trss_kib_all\tkib_per_session\n" | tee "$RESULTS/idle.tsv"
  for target in $targets; do
    read -r pid portal iqn lun _ <<<"$(endpoint "$target" "${BACKINGS%% *}")"
    t0=$(cpu_ticks "$pid")
    sleep 10
    idle0=$(($(cpu_ticks "$pid") - t0))
    rss0=$(rss_kib "$pid")
    "$WORK/bin/iscsi-load" -portal "$portal" -target "$iqn" -lun "$lun" -initiator "$INITIATOR" \
      -sessions "$IDLE_SESSIONS" -hold 40s >"$out" 2>&1 &
    local load=$!
    for _ in $(seq 1200); do grep -q 'logged in' "$out" && break; kill -0 $load 2>/dev/null || break; sleep 0.1; done
    grep -q 'logged in' "$out" || { cat "$out" >&2; wait $load; die "$target: $IDLE_SESSIONS idle sessions did not log in"; }
    sleep 2
    rss1=$(rss_kib "$pid")
    t0=$(cpu_ticks "$pid")
    sleep 10
    idle1=$(($(cpu_ticks "$pid") - t0))
    wait $load || { cat "$out" >&2; die "$target: the idle sessions failed"; }
    awk -v t="$target" -v n="$IDLE_SESSIONS" -v i0="$idle0" -v i1="$idle1" -v r0="$rss0" -v r1="$rss1" \
      'BEGIN { printf "idle\t%s\t%d\t%d\t%d\t%d\t%d\t%.1f\n", t, n, i0, i1, r0, r1, (r1 - r0) / n }' | tee -a "$RESULTS/idle.tsv"
  done
}

# run_host CASES [AFTER]: runs the cases of the array named CASES on every target, then the
# function AFTER, if given, while the targets still run.
run_host() {
  start_iserd
  start_tgtd
  note "host: iserd (pid $ISERD_PID) on 127.0.0.1:$ISERD_PORT, tgtd (pid $TGTD_PID) on 127.0.0.1:$TGT_PORT; $RUNS runs of ${SECS}s per figure"
  [ -z "$BASELINE" ] || note "host: baseline $BASELINE as iserd-base (pid $BASE_PID) on 127.0.0.1:$BASE_PORT"
  local targets="iserd${BASELINE:+ iserd-base} tgt"
  measure host "$1"
  [ -z "${2:-}" ] || "$2"
  stop_iserd
  stop_tgtd
}

# measure SECTION CASES: writes every LUN of $targets on $BACKINGS once, then runs the cases of the
# array named CASES (BENCH_CASES narrows them) RUNS times on each, interleaved, into SAMPLES.
measure() {
  local section=$1
  local -n cases=$2
  local backing target c name tool rw bs qd sessions pid portal iqn lun side t0 t1 s0 s1 ios value unit p50 p99 p999 r
  for backing in $BACKINGS; do # warm up: every block written once (iserd's memory LUN allocates on write)
    for target in $targets; do
      read -r pid portal iqn lun _ <<<"$(endpoint "$target" "$backing")"
      "$WORK/bin/iscsi-load" -portal "$portal" -target "$iqn" -lun "$lun" -initiator "$INITIATOR" \
        -rw write -bs 131072 -qd 8 -time 2s -span $((LUN_SIZE_MB << 20)) >/dev/null ||
        die "warm-up write to $target $backing failed"
    done
  done
  for c in "${cases[@]}"; do
    read -r name tool rw bs qd sessions <<<"$c"
    [ -z "${BENCH_CASES:-}" ] || [[ " $BENCH_CASES " == *" $name "* ]] || continue
    for r in $(seq "$RUNS"); do
      for backing in $BACKINGS; do
        for target in $targets; do
          read -r pid portal iqn lun side <<<"$(endpoint "$target" "$backing")"
          [ -z "$side" ] || s0=$(cpu_ticks "$side")
          t0=$(cpu_ticks "$pid")
          read -r ios value unit p50 p99 p999 <<<"$(client "$tool" "$rw" "$bs" "$qd" "${sessions:-1}" "$portal" "$iqn" "$lun")" ||
            die "$name on $target ($backing) failed"
          [ "${ios:-0}" -gt 0 ] || die "$name on $target ($backing): no I/O completed"
          t1=$(cpu_ticks "$pid")
          [ -z "$side" ] || { s1=$(cpu_ticks "$side")
            awk -v c="$backing/$name" -v t="$target" -v d=$((s1 - s0)) -v hz="$HZ" -v n="$ios" \
              'BEGIN { printf "%s\t%s\t%.1f\n", c, t, d * 1e6 / hz / n }' >>"$COMPANION_CPU"; }
          awk -v s="$section" -v c="$backing/$name" -v t="$target" -v v="$value" -v u="$unit" -v d=$((t1 - t0)) -v hz="$HZ" \
            -v n="$ios" -v l="$p50\t$p99\t$p999" 'BEGIN { printf "%s\t%s\t%s\t%s\t%s\t%.1f\t%s\n", s, c, t, v, u, d * 1e6 / hz / n, l }' |
            tee -a "$SAMPLES"
        done
      done
    done
  done
}

# cluster_config NAME PORT [ETCD-URL]: one target with the "disk" LUN (its own O_DIRECT file) and the
# data directory (APTPL state) on DISK; with ETCD-URL a cluster: section, a single gateway.
cluster_config() {
  disk_file "$DISK/$1.img"
  mkdir -p "$DISK/$1.data"
  cat <<EOF
data_dir: $DISK/$1.data
portals: [{address: "127.0.0.1:$2", tpgt: 1}]
log: {level: warn}
targets:
  - name: $IQN_ISERD-disk
    open: true
    luns: [{lun: 0, path: $DISK/$1.img, size: ${LUN_SIZE_MB}MiB, direct: true}]
EOF
  [ -z "${3:-}" ] || echo "cluster: {name: bench, node: gw-1, endpoints: [$3]}"
}

# start_etcd: one etcd member on free loopback ports, its data on DISK (fsyncs as on a real disk).
start_etcd() {
  local client peer
  client=$(free_port 12379)
  peer=$(free_port $((client + 1)))
  ETCD_URL=http://127.0.0.1:$client
  /usr/bin/etcd --name bench --data-dir "$DISK/etcd" --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" --log-level warn >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  wait_port "$ETCD_PID" "$client" "$WORK/etcd.log" etcd
}

# run_cluster: iserd without and with a cluster: section on the same kind of LUN, measured in turn.
run_cluster() {
  [ -x /usr/bin/etcd ] || die "/usr/bin/etcd is missing (Debian package etcd-server; scripts/install-deps.sh installs it)"
  start_etcd
  iserd_instance iserd bin/iserd 13260 cluster_config
  ISERD_PID=$PID ISERD_PORT=$PORT
  iserd_instance iserd-cluster bin/iserd $((ISERD_PORT + 1)) cluster_config "$ETCD_URL"
  CLUSTER_PID=$PID CLUSTER_PORT=$PORT
  for _ in $(seq 100); do # writes and PR OUT are fenced until the gateway holds its lease
    bin/iserctl --socket "$WORK/iserd-cluster.sock" cluster status 2>/dev/null | grep -q '^state: *allowed' && break
    sleep 0.1
  done
  bin/iserctl --socket "$WORK/iserd-cluster.sock" cluster status | grep -q '^state: *allowed' ||
    { cat "$WORK/iserd-cluster.log" >&2; die "iserd-cluster holds no lease after 10 s"; }
  note "cluster: etcd (pid $ETCD_PID) on $ETCD_URL, iserd (pid $ISERD_PID) on 127.0.0.1:$ISERD_PORT," \
    "iserd-cluster (pid $CLUSTER_PID) on 127.0.0.1:$CLUSTER_PORT; $RUNS runs of ${SECS}s per figure"
  local targets="iserd iserd-cluster" BACKINGS=disk
  measure cluster CLUSTER_CASES
  stop_iserd
  stop_pid "$ETCD_PID"
  ETCD_PID=''
}

run_vm() {
  if ! scripts/vm/can-run.sh; then
    note "vm: skipped, the VM cannot run here (scripts/vm/can-run.sh)"
    return 0
  fi
  local scen=$WORK/vm/bench-targets.sh log=${VM_CACHE_DIR:-$ROOT/scripts/vm/.cache}/logs/bench-targets.log
  mkdir -p "$WORK/vm"
  { head -1 scripts/vm/scenarios/bench-targets.sh
    echo "BENCH_RUNS=$VM_RUNS BENCH_SECONDS=$VM_SECS BENCH_CASES='${BENCH_CASES:-}'"
    tail -n +2 scripts/vm/scenarios/bench-targets.sh; } >"$scen"
  note "vm: $VM_RUNS runs of ${VM_SECS}s per figure (console: $log)"
  if ! VM_VERBOSE='' scripts/vm/run.sh "$scen" >"$WORK/vm/run.out" 2>&1; then
    tail -30 "$WORK/vm/run.out" >&2
    note "vm: the scenario failed (log $log)"
    return 1
  fi
  awk '$1 == "BENCH" && $2 == "vm" { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$log" |
    tee -a "$SAMPLES"
  # The target process's own CPU per I/O (iserd, tgtd), median of the runs.
  awk '$1 == "INFO" && $5 == "process-cpu-us-per-io" { print $3, $4, $6 }' "$log" | sort -k1,2 -k3n |
    awk '{ k = $1 " " $2; v[k, ++n[k]] = $3; if (!(k in seen)) { seen[k]; order[++m] = k } }
      END { for (i = 1; i <= m; i++) { k = order[i]; c = n[k]
        med = c % 2 ? v[k, (c + 1) / 2] : (v[k, c / 2] + v[k, c / 2 + 1]) / 2
        printf "vm-process\t%s\t%s\t%.1f\n", k, "us/IO", med } }' | tr ' ' '\t' >"$RESULTS/vm-process-cpu.tsv"
}

# goal LABEL SECTION CASE A B MIN: compares A's median with B's in the summary.
goal() {
  awk -F'\t' -v label="$1" -v s="$2" -v c="$3" -v a="$4" -v b="$5" -v min="$6" '
    $1 == s && $2 == c && $3 == a { ma = $6; ca = $10 }
    $1 == s && $2 == c && $3 == b { mb = $6; cb = $10 }
    END {
      if (ma == "" || mb == "" || mb == 0) { printf "  %-52s no data\n", label; exit }
      r = ma / mb
      printf "  %-52s %s/%s = %.2f (want >= %s) %s", label, a, b, r, min, (r >= min ? "met" : "NOT MET")
      if (s == "host" && ca != "-" && cb != "-") printf "; CPU/IO %s vs %s us %s", ca, cb, (ca + 0 < cb + 0 ? "(less)" : "(NOT less)")
      printf "\n"
    }' "$RESULTS/latest.tsv"
}

scripts/install-deps.sh
for cmd in tgtd tgtadm iscsi-perf ss fallocate; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/install-deps.sh installs it as root)"
done
[ -x bin/iserd ] || make build
mkdir -p "$RESULTS" "$WORK/bin"
CGO_ENABLED=0 go build -o "$WORK/bin/" ./bench/cmd/iscsi-load ./bench/cmd/benchreport
: >"$SAMPLES"
COMPANION_CPU=$RESULTS/companion-cpu.tsv
rm -f "$RESULTS/vm-process-cpu.tsv" "$RESULTS/idle.tsv" "$COMPANION_CPU"
st=0
case $what in all | host) run_host HOST_CASES ;; sessions) run_host SESSION_CASES run_idle; RESULTS_IDLE=1 ;; cluster) run_cluster ;; esac
case $what in all | vm) run_vm || st=1 ;; esac
[ -s "$SAMPLES" ] || die "no samples collected"
echo
"$WORK/bin/benchreport" -in "$SAMPLES" -tsv "$RESULTS/latest.tsv" -svg "$RESULTS/latest.svg" \
  -title "iserd vs tgt and LIO ($(date -u +%Y-%m-%d), $(nproc) CPUs)"
if [ -s "$RESULTS/vm-process-cpu.tsv" ]; then
  echo
  echo "VM, CPU time of the target process itself per I/O (median µs; LIO runs in the kernel):"
  column -t "$RESULTS/vm-process-cpu.tsv"
fi
if [ -s "$RESULTS/idle.tsv" ]; then
  echo
  echo "idle targets (CPU ticks over 10 s; VmRSS in KiB, with no session and with the idle sessions):"
  column -t "$RESULTS/idle.tsv"
fi
if [ "$what" = cluster ]; then
  echo
  echo "PERSISTENT RESERVE OUT latency, one command at a time (µs; medians of the runs; mean = 1/rate):"
  awk -F'\t' 'BEGIN { printf "%-22s %-14s %8s %8s %8s %8s\n", "case", "target", "p50", "p99", "p99.9", "mean" }
    $1 == "cluster" && $8 == "PROUT/s" { printf "%-22s %-14s %8s %8s %8s %8.1f\n", $2, $3, $11, $12, $13, 1e6 / $6 }' "$RESULTS/latest.tsv"
  echo
  echo "iserd-cluster over iserd, medians of this run (CPU µs per I/O or command of the iserd process, and of etcd):"
  sort -k1,2 -k3n "$COMPANION_CPU" | awk -F'\t' '{ k = $1; v[k, ++n[k]] = $3 }
    END { for (k in n) { c = n[k]; printf "%s\t%.1f\n", k, c % 2 ? v[k, (c + 1) / 2] : (v[k, c / 2] + v[k, c / 2 + 1]) / 2 } }' >"$WORK/etcd-cpu"
  awk -F'\t' 'FILENAME != ARGV[1] { etcd[$1] = $2; next }
    $1 == "cluster" { m[$2, $3] = $6; c[$2, $3] = $10; if (!($2 in seen)) { seen[$2]; order[++n] = $2 } }
    END { for (i = 1; i <= n; i++) { k = order[i]; if (m[k, "iserd"] > 0)
      printf "  %-26s %.3f  CPU %s vs %s, etcd %s\n", k, m[k, "iserd-cluster"] / m[k, "iserd"], c[k, "iserd-cluster"], c[k, "iserd"], etcd[k] } }' \
    "$RESULTS/latest.tsv" "$WORK/etcd-cpu"
fi
if [ "$what" = sessions ] || [ "$what" = cluster ]; then
  note "results in $RESULTS/latest.tsv and latest.svg${RESULTS_IDLE:+ and idle.tsv}, every run in samples.tsv ($((SECONDS - START))s)"
  exit $st
fi
if [ -n "$BASELINE" ]; then
  echo
  echo "iserd over iserd-base ($BASELINE): medians and their ratio; ratios of each run's adjacent pair: median [min-max]; CPU per I/O"
  awk -F'\t' '
    function med(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $1 == "host" && ($3 == "iserd" || $3 == "iserd-base") {
      if (!($2 in seen)) { seen[$2]; order[++n] = $2 }
      v[$2, $3, ++c[$2, $3]] = $4; u[$2, $3, c[$2, $3]] = $6
    }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]; m = c[k, "iserd"] < c[k, "iserd-base"] ? c[k, "iserd"] : c[k, "iserd-base"]
        if (m == 0) continue
        delete a; delete b; delete r; delete ca; delete cb
        for (j = 1; j <= m; j++) {
          a[j] = v[k, "iserd", j]; b[j] = v[k, "iserd-base", j]; r[j] = a[j] / b[j]
          ca[j] = u[k, "iserd", j]; cb[j] = u[k, "iserd-base", j]
        }
        ma = med(a, m); mb = med(b, m); mr = med(r, m)
        printf "  %-26s %s vs %s: %.3f; pairs %.3f [%.3f-%.3f] over %d runs; CPU/IO %.1f vs %.1f us\n", k, ma, mb, ma / mb,
          mr, r[1], r[m], m, med(ca, m), med(cb, m)
      }
    }' "$SAMPLES"
fi
echo
echo "issue goals (medians of this run):"
for b in shm mem; do
  goal "host $b 4k random read QD32" host "$b/randread-4k-qd32" iserd tgt 1.5
  goal "host $b 128k sequential read" host "$b/read-128k-qd8" iserd tgt 1
done
goal "host disk 4k random read QD1" host "disk/randread-4k-qd1" iserd tgt 1
goal "host disk 4k random read QD32" host "disk/randread-4k-qd32" iserd tgt 2.5
# QD1 IOPS is the inverse of the mean latency: iserd's mean within 1.3x of LIO's is IOPS >= 1/1.3.
goal "vm tcp 4k random read QD1 (mean latency <= 1.3x)" vm "tcp/randread-4k-qd1" iserd lio 0.77
goal "vm iser 4k random read QD1 (mean latency <= 1.3x)" vm "iser/randread-4k-qd1" iserd lio 0.77
goal "vm tcp 4k random read QD16 (>= 1.2x LIO)" vm "tcp/randread-4k-qd16" iserd lio 1.2
for c in randread-4k-qd16 randwrite-4k-qd16; do
  goal "vm tcp $c" vm "tcp/$c" iserd lio 1
  goal "vm iser $c" vm "iser/$c" iserd lio 1
done
for c in randread-4k-qd16 randwrite-4k-qd16 read-128k-qd8 write-128k-qd8; do
  goal "vm iser $c, libibverbs vs native provider" vm "iser/$c" iserd-ibv iserd 0.95
done
note "results in $RESULTS/latest.tsv and latest.svg, every run in samples.tsv ($((SECONDS - START))s)"
exit $st
