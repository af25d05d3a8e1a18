# vm-timeout: 420
# Two iserd gateways (gw-a on 192.0.2.1, gw-b on 192.0.2.2) serving one shared block device
# (a loop device), coordinated through etcd (etcd-server in the VM), with dm-multipath and
# ALUA priorities on the initiator. fio crc32c write+verify on the map goes on while gw-a is
# SIGKILLed (the time from the kill to resumed I/O is printed), while gw-a is restarted, and
# while gw-a is SIGSTOPped for twice the lease TTL and continued: it must be fenced when it
# resumes, so the writes it had received before the stop never land. Then etcd is stopped:
# both gateways refuse writes with NOT READY 04h/0Ch within the TTL, and serve again when it
# returns.
IQN=iqn.2026-12.org.iserd:vm-scaleout
TTL=3
A=$VM_ADDR
B=$VM_ADDR2
cluster_init "$IQN" "$TTL"
D=$CLUSTER_DIR
# live_at N NODE: prints yes or no, whether gateway N sees NODE live.
live_at() { gw_status "$1" | awk -v n="gw-$2" '$1 == n {print $2 == "(this)" ? $3 : $2}'; }

etcd_start
gw_start a "$A" 1
gw_start b "$B" 2
log "cluster:"$'\n'"$(gw_status a)"
assert_eq yes "$(live_at a b)" "gw-b live at gw-a"
mpath_up "$IQN" "$A" "$B"
mp=$MP
rtpg=$(sg_rtpg -d "/dev/$(multipathd show paths raw format '%d' | head -1)" | tr '\n' ' ')
log "sg_rtpg: $rtpg"
[[ $rtpg == *"group id : 0x1"*"active/optimized"*"group id : 0x2"*"active/optimized"* ]] ||
  fail "both gateways' groups should be active/optimized: $rtpg"

# path_of ADDRESS: the sdX of the path through ADDRESS.
path_of() {
  local s
  for s in /sys/class/iscsi_session/session*; do
    [ "$(cat "$s"/device/connection*/iscsi_connection/connection*/persistent_address)" = "$1" ] || continue
    ls "$s"/device/target*/*:*:*:*/block/
  done
}
PA=$(path_of "$A")
PB=$(path_of "$B")
log "paths: gw-a $PA, gw-b $PB"

fio --name=scaleout --filename="$mp" --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
  --bs=4k --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 --exitall_on_error \
  --time_based --runtime=120 --verify_backlog=1024 >"$D/fio.log" 2>&1 &
fio_pid=$!
sleep 5
before=$(map_ios "/dev/$PA")
sleep 2
[ "$(map_ios "/dev/$PA")" -gt "$before" ] || fail "no I/O on gw-a's path $PA"

# 1. gw-a killed.
lost=$(now)
kill -KILL "${GW_PID[a]}"
secs=$(resumed_after "$mp" "$lost")
log "FIGURE scale-out: gw-a SIGKILLed, I/O resumed on gw-b after ${secs}s"
wait_until $((TTL + 5)) "gw-b to report gw-a gone" eval '[ "$(live_at b a)" = no ]'
rtpg=$(sg_rtpg -d "/dev/$PB" | tr '\n' ' ')
[[ $rtpg == *"group id : 0x1"*"unavailable"*"group id : 0x2"* ]] || fail "gw-b should report gw-a's group unavailable: $rtpg"
log "gw-b reports gw-a's group unavailable: $rtpg"
sleep 3
gw_start a "$A" 1
mpath_wait 2 60 >/dev/null
log "gw-a is back: $(multipathd show paths raw format '%d %t %T %p' | tr '\n' ';')"

# 2. gw-a stopped for twice the TTL under writes, then continued.
sleep 3
stopped=$(now)
kill -STOP "${GW_PID[a]}"
secs=$(resumed_after "$mp" "$stopped")
log "FIGURE scale-out: gw-a SIGSTOPped, I/O resumed on gw-b after ${secs}s"
sleep $((2 * TTL))
kill -CONT "${GW_PID[a]}"
wait_until 30 "gw-a to log its fencing" grep -q "fenced: no lease renewal in time" "$D/a.log"
wait_until 30 "gw-a to rejoin" eval "gw_status a | grep -q 'state:   allowed'"
log "FIGURE scale-out: gw-a fenced at SIGCONT, $(grep 'fenced: no lease' "$D/a.log" | tail -1 | grep -o '"since_last_renewal": "[^"]*"')"
log "gw-a after SIGCONT: $(grep -E 'fenced|lease expired|lease granted' "$D/a.log" | tail -3 | cut -c1-200)"
# Commands gw-a had received before the stop and ran after it were refused: they count as errors.
log "gw-a's commands ending in errors since its restart (refused while fenced): $(iserctl --socket "$D/a.sock" metrics |
  awk '/^iserd_lun_errors_total/ {print $2}')"
wait "$fio_pid" || { cat "$D/fio.log" >&2; fail "fio verify on $mp failed across the kill and the stop of gw-a"; }
log "fio verify on $mp: $(grep -E '^ +(read|write): IOPS=' "$D/fio.log" | tr -s ' ' | tr '\n' ';')"
mpath_wait 2 60 >/dev/null

# 3. etcd stopped: both fenced within the TTL, writes refused with 04h/0Ch on every path.
etcd_stop
stopped=$(now)
for n in a b; do
  wait_until $((TTL + 2)) "gw-$n to be fenced" eval "gw_status $n | grep -q FENCED"
done
# (polled through iserctl, slow under emulation: the gateways' own log lines say when)
log "FIGURE scale-out: etcd stopped, both gateways seen fenced within $(awk -v a="$stopped" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"
for n in a b; do
  log "FIGURE scale-out: gw-$n fenced $(grep 'fenced: no lease' "$D/$n.log" | tail -1 | grep -o '"since_last_renewal": "[^"]*"') (TTL ${TTL}s)"
done
# refused DEV: a WRITE (10) through DEV fails with 04h/0Ch (after the unit attentions, if any).
refused() {
  local out
  for _ in 1 2 3; do
    out=$(sg_raw -s 512 -i /dev/zero "$1" 2a 00 00 00 01 00 00 00 01 00 2>&1) && { echo "the write succeeded"; return 1; }
    [[ $out == *"unavailable state"* ]] && { echo "$out"; return 0; }
  done
  echo "$out"
  return 1
}
for p in "$PA" "$PB"; do
  out=$(refused "/dev/$p") || fail "a write through $p while fenced: $out"
done
log "writes refused on both paths: $(echo "$out" | grep -i 'unavailable' | head -1)"
etcd_start
for n in a b; do
  wait_until 30 "gw-$n to be allowed again" eval "gw_status $n | grep -q 'state:   allowed'"
done
mpath_wait 2 60 >/dev/null
dd if=/dev/zero of="$mp" bs=4k count=16 oflag=direct status=none || fail "a write through $mp failed after etcd returned"
log "etcd back: both gateways serve again"
multipath_stop
logout_all
gw_stop a b
