# vm-timeout: 1200
# Benchmark for bench/run.sh: the Linux initiator with fio (libaio, O_DIRECT) against iserd,
# LIO and tgt over iSCSI/TCP and against iserd and LIO over iSER (rdma_rxe), each target on its
# own file of the same size in tmpfs, all logged in at once and measured in turn (runs
# interleaved across targets). Over iSER, iserd runs twice: target iserd drives rxe0 with the
# native provider, target iserd-ibv (a second iserd on port 3264) with the libibverbs provider.
# Prints one line per run:
#   BENCH vm TRANSPORT/CASE TARGET VALUE UNIT CPU_US_PER_IO P50 P99 P99.9
# (fio's completion latency percentiles in µs).
# CPU is the whole VM's busy time (initiator and target: LIO has no process to measure) per I/O;
# for iserd and tgtd a line "INFO vm TRANSPORT/CASE TARGET process-cpu-us-per-io N" follows
# with the target process's own utime+stime per I/O.
# BENCH_RUNS and BENCH_SECONDS (set by bench/run.sh in a copy of this file) override the defaults;
# BENCH_CASES (case names) narrows the cases.
RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECONDS:-4}
SIZE_MB=192
DATA=/tmp/bench-data
mkdir -p "$DATA"
for f in iserd-tcp iserd-iser iserd-ibv lio-tcp lio-iser tgt-tcp; do
  fallocate -l "${SIZE_MB}M" "$DATA/$f.img" # real pages for every target, no holes
done

IQN_ISERD=iqn.2026-11.org.iserd:bench
IQN_LIO=iqn.2003-01.org.linux-iscsi.vm:bench
IQN_TGT=iqn.2001-04.com.example:bench
cat >/tmp/iserd-bench.yaml <<EOC
portals: [{address: "$VM_ADDR:3260", transport: both}]
log: {level: warn}
targets:
  - name: $IQN_ISERD-tcp
    open: true
    luns: [{lun: 0, path: $DATA/iserd-tcp.img, size: ${SIZE_MB}MiB}]
  - name: $IQN_ISERD-iser
    open: true
    luns: [{lun: 0, path: $DATA/iserd-iser.img, size: ${SIZE_MB}MiB}]
EOC
iserd_start /tmp/iserd-bench.yaml
cat >/tmp/iserd-bench-ibv.yaml <<EOC
portals: [{address: "$VM_ADDR:3264", transport: both}] # TCP for the discovery before the iSER login
rdma: {provider: libibverbs}
log: {level: warn}
targets:
  - name: $IQN_ISERD-ibv
    open: true
    luns: [{lun: 0, path: $DATA/iserd-ibv.img, size: ${SIZE_MB}MiB}]
EOC
"$ISERD_BIN" -config /tmp/iserd-bench-ibv.yaml -admin-socket '' >>/tmp/iserd-ibv.log 2>&1 &
IBV_PID=$!
wait_until 30 "the libibverbs iserd" rdma_listening 3264 || { cat /tmp/iserd-ibv.log; fail "the libibverbs iserd does not listen"; }
LIO_PORTAL=$VM_ADDR:3261 lio_setup_fileio bench_tcp "$DATA/lio-tcp.img" "${SIZE_MB}M" "$IQN_LIO-tcp"
LIO_PORTAL=$VM_ADDR:3263 lio_setup_fileio bench_iser "$DATA/lio-iser.img" "${SIZE_MB}M" "$IQN_LIO-iser" iser
TGT_PORTAL=$VM_ADDR:3262 tgt_setup "$IQN_TGT-tcp" "$DATA/tgt-tcp.img"

# Each entry: transport target iqn portal; the disk is found after login.
entries=(
  "tcp iserd $IQN_ISERD-tcp $VM_ADDR:3260"
  "tcp lio $IQN_LIO-tcp $VM_ADDR:3261"
  "tcp tgt $IQN_TGT-tcp $VM_ADDR:3262"
  "iser iserd $IQN_ISERD-iser $VM_ADDR:3260"
  "iser iserd-ibv $IQN_ISERD-ibv $VM_ADDR:3264"
  "iser lio $IQN_LIO-iser $VM_ADDR:3263"
)
declare -A disk
for e in "${entries[@]}"; do
  read -r transport target iqn portal <<<"$e"
  "login_$transport" "$iqn" "$portal"
  disk[$transport/$target]=$(wait_disk "$iqn")
  log "$transport/$target: ${disk[$transport/$target]}"
done

# busy_jiffies: the VM's busy CPU time so far, in USER_HZ (100/s) ticks.
busy_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# proc_jiffies TARGET: utime+stime of the target's processes (iserd; tgtd, which runs as two),
# or nothing (LIO).
proc_jiffies() {
  local pids p
  case $1 in
    iserd) pids=$ISERD_PID ;;
    iserd-ibv) pids=$IBV_PID ;;
    tgt) pids=$(pidof tgtd) ;;
    *) return 0 ;;
  esac
  for p in $pids; do sed 's/.*) //' "/proc/$p/stat"; done | awk '{ s += $12 + $13 } END { print s }'
}

# measure TRANSPORT TARGET CASE RW BS_KB QD: one fio run, one BENCH line (and an INFO line).
measure() {
  local transport=$1 target=$2 cname=$3 rw=$4 bs=$5 qd=$6 j0 j1 p0 p1 out kb iops ms value unit
  p0=$(proc_jiffies "$target")
  j0=$(busy_jiffies)
  out=$(fio --name=bench --filename="${disk[$transport/$target]}" --ioengine=libaio --direct=1 \
    --rw="$rw" --bs="${bs}k" --iodepth="$qd" --size=$((SIZE_MB - 32))M --runtime="$SECS" --time_based \
    --output-format=terse --terse-version=3 2>&1) || { echo "fio $transport/$target $cname failed: $out" >&2; return 1; }
  j1=$(busy_jiffies)
  p1=$(proc_jiffies "$target")
  out=$(tail -1 <<<"$out")
  # Terse v3: the read side starts at field 6, the write side at 47; from there KiB, bandwidth,
  # IOPS, runtime, 4 slat and 4 clat figures, then 20 clat percentile fields "P%=USEC".
  local base=6 p50 p99 p999
  case $rw in *read) ;; *) base=47 ;; esac
  read -r kb iops ms p50 p99 p999 <<<"$(awk -F';' -v b=$base '{
    for (i = b + 12; i < b + 32; i++) { split($i, kv, "%="); q[kv[1] + 0] = kv[2] }
    print $b, $(b + 2), $(b + 3), q[50], q[99], q[99.9] }' <<<"$out")"
  [ "${ms:-0}" -gt 0 ] && [ "${kb:-0}" -gt 0 ] || { echo "fio $transport/$target $cname: no I/O ($out)" >&2; return 1; }
  if [ "$bs" -ge 64 ]; then
    value=$(awk -v kb="$kb" -v ms="$ms" 'BEGIN { printf "%.1f", kb * 1024 / ms / 1000 }') unit=MB/s
  else
    value=$iops unit=IOPS
  fi
  awk -v t="$transport/$cname" -v n="$target" -v v="$value" -v u="$unit" -v j=$((j1 - j0)) -v ios=$((kb / bs)) \
    -v l="${p50:--} ${p99:--} ${p999:--}" 'BEGIN { printf "BENCH vm %s %s %s %s %.1f %s\n", t, n, v, u, j * 10000 / ios, l }'
  if [ -n "$p0" ]; then
    awk -v t="$transport/$cname" -v n="$target" -v j=$((p1 - p0)) -v ios=$((kb / bs)) \
      'BEGIN { printf "INFO vm %s %s process-cpu-us-per-io %.1f\n", t, n, j * 10000 / ios }'
  fi
}

cases=(
  "randread-4k-qd1 randread 4 1"
  "randread-4k-qd16 randread 4 16"
  "randwrite-4k-qd16 randwrite 4 16"
  "read-128k-qd8 read 128 8"
  "write-128k-qd8 write 128 8"
)
for c in "${cases[@]}"; do
  read -r name rw bs qd <<<"$c"
  [ -z "${BENCH_CASES:-}" ] || [[ " $BENCH_CASES " == *" $name "* ]] || continue
  for run in $(seq "$RUNS"); do
    for e in "${entries[@]}"; do
      read -r transport target _ <<<"$e"
      measure "$transport" "$target" "$name" "$rw" "$bs" "$qd"
    done
  done
done
logout_all
iserd_stop
kill "$IBV_PID"; wait "$IBV_PID" || true
tgt_teardown
lio_teardown
