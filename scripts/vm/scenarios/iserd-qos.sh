# vm-timeout: 720
# Rate limits (QoS) with the Linux initiator and fio, 20 s per measure, over TCP and then iSER:
# a 100 IOPS limit at QD128 (the CmdSN window shrinks to 50, no ping timeout or SCSI error, no
# command held a second), 2,000 IOPS and 40 MiB/s within 5%, a limit changed under fio taking
# effect within a second, and two initiators of weights 1 and 3 sharing a 2,000 IOPS LUN 1:3
# within 10%. Every limit is set live with iserctl.
IQN=iqn.2026-11.org.iserd:vm-qos
NODE_A=iqn.2026-11.org.iserd:qos-a
NODE_B=iqn.2026-11.org.iserd:qos-b
DATA=/tmp/iserd-qos
mkdir -p "$DATA"
cat >/tmp/iserd-qos.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260", transport: both}]
targets:
  - name: $IQN
    open: true
    acls:
      - {initiator: $NODE_A, weight: 1}
      - {initiator: $NODE_B, weight: 3}
    luns:
      - {lun: 0, path: lun0.img, size: 256MiB}
EOC
iserd_start /tmp/iserd-qos.yaml

# io_errors: initiator ping timeouts and SCSI errors the kernel has logged so far.
io_errors() {
  dmesg | grep -Eci 'ping timeout|I/O error|timing out command|detected conn error|abort|device offlined|rejecting I/O|Sense Key' || true
}
# measure DEV FIO_OPTION...: 20 s of fio (after 1 s of ramp) on DEV; prints "IOPS KiB/s".
measure() {
  local dev=$1 out
  shift
  out=$(fio --minimal --name=qos --filename="$dev" --ioengine=libaio --direct=1 --time_based --runtime=20 \
    --ramp_time=1 --size=192M "$@") || { echo "fio on $dev failed: $out" >&2; return 1; }
  awk -F';' '{print $8, $7}' <<<"$out"
}
# within GOT WANT FRACTION: true when GOT is within FRACTION of WANT.
within() { awk -v g="$1" -v w="$2" -v f="$3" 'BEGIN { exit !(g >= w * (1 - f) && g <= w * (1 + f)) }'; }
# Figures out of range are collected, so that one run reports them all; the scenario fails at the end.
MISSES=
miss() { echo "MISS: $*"; MISSES="$MISSES"$'\n'"  $*"; }
expect_eq() { [ "$1" = "$2" ] || miss "$3: expected '$1', got '$2'"; }
# limit ARGS...: replaces LUN 0's limits (a fresh limiter: its counters start at zero).
limit() { iserctl qos clear "$IQN" --lun 0 >/dev/null && iserctl qos set "$IQN" --lun 0 "$@" >/dev/null; }
# limiter_stats: what LUN 0's limiter admitted, how many waited and overdrew, and its wait histogram.
limiter_stats() {
  local j
  j=$(qos_json)
  echo "admitted $(json_num admitted <<<"$j"), throttled $(json_num throttled <<<"$j"), overdrawn $(json_num overdrawn <<<"$j"), waits:" \
    "$(grep -A1 '"le"' <<<"$j" | sed -n 's/.*"\(le\|count\)": *"*\([^",]*\).*/\2/p' | tr '\n' ' ')"
}
# cpu_ticks: busy and total jiffies of the VM so far.
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
# busy_since "BUSY TOTAL": the share of CPU time used since then, in percent.
busy_since() { cpu_ticks | awk -v b0="${1% *}" -v t0="${1#* }" '{ printf "%d%%", 100 * ($1 - b0) / ($2 - t0) }'; }
# qos_json: the target's limits, limiters and session windows.
qos_json() { iserctl -json qos show "$IQN"; }
# json_num KEY: the first number after "KEY": in standard input.
json_num() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p" | head -1; }
# ms_now: wall clock in milliseconds (fio --log_unix_epoch uses the same clock).
ms_now() { local t=$EPOCHREALTIME; echo "${t%.*}${t#*.}" | cut -c1-13; }
# new_iface NAME INITIATOR TRANSPORT: an open-iscsi iface with its own initiator name.
new_iface() {
  iscsiadm -m iface -I "$1" -o new >/dev/null
  iscsiadm -m iface -I "$1" -o update -n iface.initiatorname -v "$2" >/dev/null
  iscsiadm -m iface -I "$1" -o update -n iface.transport_name -v "$3" >/dev/null
}
# disk_of IFACE: logs in through IFACE and prints the new disk.
disk_of() {
  local before d x
  before=" $(ls /sys/block | grep '^sd' | tr '\n' ' ') "
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -I "$1" -o new >/dev/null 2>&1 || true
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -I "$1" -l >/dev/null
  for _ in $(seq 100); do
    d=
    for x in $(ls /sys/block | grep '^sd'); do [[ $before == *" $x "* ]] || d=$x; done
    [ -n "$d" ] && { echo "/dev/$d"; return 0; }
    sleep 0.1
  done
  echo "no disk appeared for $1" >&2
  return 1
}

suite() {
  local tr=$1 dev errs got slow iops kib w tc delay after ia ib ratio c0 n0 t0 rate
  errs=$(io_errors)

  # 100 IOPS at QD128: set before login, so the session starts with a window of 50.
  limit --iops 100
  timed "login $tr" iscsi_login "$IQN" "$VM_ADDR" "$tr"
  dev=$(wait_disk "$IQN")
  n0=$(qos_json | json_num admitted)
  t0=$(ms_now)
  read -r iops kib <<<"$(measure "$dev" --rw=randread --bs=4k --iodepth=128)"
  got=$(qos_json)
  rate=$(awk -v n="$(($(json_num admitted <<<"$got") - n0))" -v ms="$(($(ms_now) - t0))" 'BEGIN { printf "%.1f", n * 1000 / ms }')
  w=$(json_num cmd_window <<<"$got")
  # fio's figure is low by its end: the I/Os it still has queued take 1.28 s to drain at 100
  # IOPS, a time it counts without their completions; iserd's count over the run is the rate.
  log "$tr: 100 IOPS limit at QD128: iserd admitted $rate per second, fio $iops IOPS; window $w; limiter $(limiter_stats)"
  within "$rate" 100 0.05 || miss "$tr: $rate IOPS admitted under a 100 IOPS limit"
  expect_eq 50 "$w" "$tr: CmdSN window under 100 IOPS"
  expect_eq "$errs" "$(io_errors)" "$tr: ping timeouts and SCSI errors in dmesg at QD128 under 100 IOPS"
  expect_eq 0 "$(json_num overdrawn <<<"$got")" "$tr: commands admitted after waiting 1 s"
  # waits of 1 s or more fall in the buckets up to 2.5s and +Inf
  slow=$(grep -A1 -E '"le": "(2.5s|\+Inf)"' <<<"$got" | sed -n 's/.*"count": *\([0-9]*\).*/\1/p' |
    awk '{ s += $1 } END { print s + 0 }')
  expect_eq 0 "$slow" "$tr: commands that waited 1 s or more"

  iserctl qos clear "$IQN" --lun 0 >/dev/null
  c0=$(cpu_ticks)
  read -r iops kib <<<"$(fio --minimal --name=base --filename="$dev" --ioengine=libaio --direct=1 --time_based \
    --runtime=5 --size=192M --rw=randread --bs=4k --iodepth=32 | awk -F';' '{print $8, $7}')"
  log "$tr: no limit, 4k QD32 for 5 s: $iops IOPS, VM CPU $(busy_since "$c0")"
  limit --iops 2000
  c0=$(cpu_ticks)
  read -r iops kib <<<"$(measure "$dev" --rw=randread --bs=4k --iodepth=32)"
  log "$tr: 2000 IOPS limit, 4k QD32: $iops IOPS, VM CPU $(busy_since "$c0"); limiter $(limiter_stats)"
  within "$iops" 2000 0.05 || miss "$tr: $iops IOPS under a 2000 IOPS limit"

  limit --bandwidth 40MiB
  c0=$(cpu_ticks)
  read -r iops kib <<<"$(measure "$dev" --rw=read --bs=64k --iodepth=16)"
  log "$tr: 40 MiB/s limit, 64k QD16: $kib KiB/s ($iops IOPS), VM CPU $(busy_since "$c0"); limiter $(limiter_stats)"
  within "$kib" 40960 0.05 || miss "$tr: $kib KiB/s under a 40 MiB/s limit"

  # A limit changed under fio: 2000 IOPS, then 500 after 8 s.
  limit --iops 2000
  rm -f /tmp/qos-live_iops.*.log
  fio --name=live --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k --iodepth=32 \
    --time_based --runtime=20 --size=192M --write_iops_log=/tmp/qos-live --log_avg_msec=200 \
    --log_unix_epoch=1 >/dev/null &
  sleep 8
  tc=$(ms_now)
  iserctl qos set "$IQN" --lun 0 --iops 500 >/dev/null
  wait $!
  # The first 200 ms interval ending after the change whose rate is within 15% of 500 (its end
  # bounds when the new limit took hold), and the rate over the rest once a second has passed.
  read -r delay after <<<"$(awk -F', *' -v tc="$tc" '
    $1 > tc && !d && $2 <= 575 { d = $1 - tc }
    $1 > tc + 1000 { s += $2; n++ }
    END { printf "%d %d\n", d ? d : 99999, n ? s / n : 0 }' /tmp/qos-live_iops.1.log)"
  log "$tr: 2000 -> 500 IOPS under fio: in effect within ${delay} ms; then $after IOPS"
  [ "$delay" -le 1000 ] || miss "$tr: the new limit took ${delay} ms to take effect"
  within "$after" 500 0.05 || miss "$tr: $after IOPS after the change to 500"
  logout_all

  # Two initiators, weights 1 (node-a) and 3 (node-b), on one LUN limited to 2000 IOPS.
  limit --iops 2000
  new_iface ifa "$NODE_A" "$tr"
  new_iface ifb "$NODE_B" "$tr"
  iscsiadm -m discovery -t st -p "$VM_ADDR" -I ifa -I ifb >/dev/null
  local da db
  da=$(disk_of ifa)
  db=$(disk_of ifb)
  measure "$da" --rw=randread --bs=4k --iodepth=32 >/tmp/qos-a &
  local pa=$!
  measure "$db" --rw=randread --bs=4k --iodepth=32 >/tmp/qos-b &
  wait "$pa" $!
  ia=$(cut -d' ' -f1 /tmp/qos-a)
  ib=$(cut -d' ' -f1 /tmp/qos-b)
  ratio=$(awk -v a="$ia" -v b="$ib" 'BEGIN { printf "%.2f", b / a }')
  log "$tr: weights 1:3 under 2000 IOPS: node-a $ia, node-b $ib IOPS (ratio $ratio, sum $((ia + ib))); limiter $(limiter_stats)"
  iscsiadm -m session
  within "$ratio" 3 0.10 || miss "$tr: node-b/node-a = $ratio, want 3 +-10%"
  within "$((ia + ib))" 2000 0.05 || miss "$tr: $((ia + ib)) IOPS in all under a 2000 IOPS limit"
  expect_eq "$errs" "$(io_errors)" "$tr: ping timeouts and SCSI errors in dmesg"
  logout_all
  iserctl qos clear "$IQN" --lun 0 >/dev/null
}

suite tcp
suite iser
iserctl qos show "$IQN"
iserd_stop
[ -z "$MISSES" ] || fail "figures out of range:$MISSES"
