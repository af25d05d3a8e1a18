# vm-timeout: 2400
# Soak (make soak; not part of make test-vm): for SOAK_MINUTES (default 30), fio writes and
# verifies (crc32c) one LUN over iSCSI/TCP and another over iSER at the same time, in passes
# that run back to back, while iserd is SIGKILLed and restarted every SOAK_CYCLE seconds (120)
# and connections are dropped at random moments in between: the TCP connection's socket is
# destroyed on the initiator's or on iserd's side (ss -K), or iserd closes a session at once
# (iserctl session logout --now). The initiator must recover every time (replacement_timeout
# 300 s) with no verify or I/O error. At the same point of every cycle (both sessions logged in
# and settled, just before the kill) iserd's open descriptors and RSS are measured: the
# descriptors must match those just after the cycle's first login (the drops leak none) and
# those of the first cycle, RSS may exceed the first cycle's by at most SOAK_RSS_MARGIN_MB (32).
# Prints a line per cycle and a summary.
SOAK_MINUTES=${SOAK_MINUTES:-30}
CYCLE=${SOAK_CYCLE:-120}
RSS_MARGIN_MB=${SOAK_RSS_MARGIN_MB:-32}
SIZE=${SOAK_SIZE:-48M}            # region each fio pass writes and verifies, per LUN
IQN_TCP=iqn.2026-11.org.iserd:soak-tcp
IQN_ISER=iqn.2026-11.org.iserd:soak-iser
DATA=/tmp/soak
S=/tmp/soak-state                  # flags and logs shared with the background loops
[[ $SOAK_MINUTES =~ ^[0-9]+$ ]] && [ "$SOAK_MINUTES" -ge 3 ] || fail "SOAK_MINUTES=$SOAK_MINUTES: want at least 3"
cycles=$((SOAK_MINUTES * 60 / CYCLE))
log "soak: $SOAK_MINUTES minutes, $cycles kill/restart cycles of ${CYCLE}s, fio passes of $SIZE per LUN"

modprobe -a inet_diag tcp_diag || fail "ss -K needs the inet_diag and tcp_diag modules"
mkdir -p "$DATA" "$S"
cat >/tmp/soak.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260", transport: both}]
limits: {buffer_memory: 256MiB}
targets:
  - name: $IQN_TCP
    open: true
    luns: [{lun: 0, path: tcp.img, size: 128MiB}]
  - name: $IQN_ISER
    open: true
    luns: [{lun: 0, path: iser.img, size: 128MiB}]
EOC
iserd_start /tmp/soak.yaml
login_tcp "$IQN_TCP"
login_iser "$IQN_ISER"
dev_tcp=$(wait_disk "$IQN_TCP")
dev_iser=$(wait_disk "$IQN_ISER")
# Commands wait out a reconnection instead of failing: the session queues them for up to
# replacement_timeout, and the SCSI timer does not run out while it is being repaired.
for s in /sys/class/iscsi_session/session*; do echo 300 >"$s/recovery_tmo"; done
for d in "$dev_tcp" "$dev_iser"; do echo 120 >"/sys/block/${d#/dev/}/device/timeout"; done

now() { cut -d. -f1 /proc/uptime; }
# logged_in: both sessions are logged in, as the initiator and as iserd see them.
logged_in() {
  local s n=0
  for s in /sys/class/iscsi_session/session*; do
    [ "$(cat "$s/state")" = LOGGED_IN ] || return 1
    n=$((n + 1))
  done
  [ "$n" -eq 2 ] && [ "$(iserctl session list 2>/dev/null | grep -c ' iqn.2026-11.org.iserd:soak-')" -eq 2 ]
}
fds() { ls "/proc/$ISERD_PID/fd" | wc -l; }
# conn_errors: connection failures the initiator has detected since boot (each drop and each
# kill shows up as one per affected connection).
conn_errors() { dmesg | grep -c 'detected conn error' || true; }
rss_mb() { awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$ISERD_PID/status"; }
# tsih_of TARGET: the TSIH iserd gave the session to TARGET (awk reads to the end: an early
# exit would fail the pipeline with iserctl's SIGPIPE).
tsih_of() { iserctl session list | awk -v t="$1" '$2 == t && !n++ {print $1}'; }

# fio_loop NAME DEV: write+verify passes over the first $SIZE of DEV until $S/stop appears;
# counts passes in $S/NAME.passes, keeps a failed pass's output in $S/NAME.failed.
fio_loop() {
  local name=$1 dev=$2 pass=0 out
  while [ ! -e "$S/stop" ]; do
    pass=$((pass + 1))
    if ! out=$(fio --name="soak-$name" --filename="$dev" --ioengine=libaio --direct=1 --iodepth=16 \
      --rw=randwrite --bssplit=4k/50:64k/30:256k/20 --size="$SIZE" --randseed="$pass" \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --exitall_on_error 2>&1); then
      echo "$out" >"$S/$name.failed"
      return
    fi
    echo "$pass" >"$S/$name.passes"
  done
}

# drop_loop: while $S/drops-on exists, drops a connection every 8-30 s (when both sessions are
# up), choosing at random: the TCP connection's initiator socket or iserd's socket destroyed
# (ss -K), or a session closed by iserd at once. Appends "KIND" lines to $S/drops, and what a
# drop that could not be made printed to $S/drop-errors.
drop_loop() {
  local kind tsih
  exec 2>>"$S/drop-errors"
  while [ ! -e "$S/stop" ]; do
    sleep $((8 + RANDOM % 23))
    [ -e "$S/drops-on" ] || continue
    logged_in || { echo "recovering-missed" >>"$S/drops"; continue; }   # one drop at a time
    case $((RANDOM % 4)) in
      0) kind=tcp-initiator-socket; ss -tnK state established '( dport = :3260 )' >/dev/null ;;
      1) kind=tcp-iserd-socket; ss -tnK state established '( sport = :3260 )' >/dev/null ;;
      2) kind=iser-session-closed; tsih=$(tsih_of "$IQN_ISER") && [ -n "$tsih" ] &&
           iserctl session logout "$tsih" --now >/dev/null ;;
      3) kind=tcp-session-closed; tsih=$(tsih_of "$IQN_TCP") && [ -n "$tsih" ] &&
           iserctl session logout "$tsih" --now >/dev/null ;;
    esac && echo "$kind" >>"$S/drops" || { echo "$kind-missed" >>"$S/drops"; echo "$kind missed (tsih '$tsih')" >&2; }
  done
}

failed() { ls "$S"/*.failed >/dev/null 2>&1; }
# sleep_until T: sleeps until uptime T, returning early (nonzero) when a fio pass failed.
sleep_until() {
  while [ "$(now)" -lt "$1" ]; do
    failed && return 1
    sleep 1
  done
}

fio_loop tcp "$dev_tcp" &
fio_tcp=$!
fio_loop iser "$dev_iser" &
fio_iser=$!
drop_loop &
drops_pid=$!

rows=() fd_ref= rss_ref= problems=() kills=0
start=$(now)
for cycle in $(seq "$cycles"); do
  t0=$(now)
  wait_until 240 "both sessions to log in again" logged_in || { problems+=("cycle $cycle: no relogin within 240s"); break; }
  recovered=$(($(now) - t0))
  sleep 2
  fd_start=$(fds) errs0=$(conn_errors)
  : >"$S/drops"
  touch "$S/drops-on"
  sleep_until $((t0 + CYCLE - 25)) || break
  rm -f "$S/drops-on"
  # The same point of every cycle: drops are over, both sessions are back and settled.
  wait_until 120 "both sessions to log in after the last drop" logged_in ||
    { problems+=("cycle $cycle: no relogin within 120s of the last drop"); break; }
  sleep 3
  fd_end=$(fds) rss=$(rss_mb)
  ndrops=$(grep -vc -- -missed "$S/drops" || true)
  nerrs=$(($(conn_errors) - errs0))
  : "${fd_ref:=$fd_end}" "${rss_ref:=$rss}"
  rows+=("$(printf '%5d %9ds %6d %11d %9d %7d %8d' "$cycle" "$recovered" "$ndrops" "$nerrs" "$fd_start" "$fd_end" "$rss")")
  log "cycle $cycle: relogin ${recovered}s, $ndrops drops ($(sort "$S/drops" | uniq -c | awk '{printf "%s%s x%d", (NR > 1 ? ", " : ""), $2, $1}')), $nerrs connection errors seen by the initiator, fds $fd_start -> $fd_end, RSS ${rss} MiB"
  [ "$nerrs" -ge "$ndrops" ] || problems+=("cycle $cycle: $ndrops drops but the initiator saw $nerrs connection errors")
  [ "$fd_end" -eq "$fd_start" ] || problems+=("cycle $cycle: fds $fd_start after login, $fd_end after the drops")
  [ "$fd_end" -eq "$fd_ref" ] || problems+=("cycle $cycle: fds $fd_end, first cycle $fd_ref")
  [ "$rss" -le $((rss_ref + RSS_MARGIN_MB)) ] || problems+=("cycle $cycle: RSS $rss MiB, first cycle $rss_ref MiB + ${RSS_MARGIN_MB} allowed")
  sleep_until $((t0 + CYCLE)) || break
  [ "$cycle" -eq "$cycles" ] && break    # the last cycle ends with a clean stop, not a kill
  kill -KILL "$ISERD_PID"
  wait "$ISERD_PID" 2>/dev/null || true
  kills=$((kills + 1))
  iserd_start /tmp/soak.yaml >/dev/null
done
touch "$S/stop"
rm -f "$S/drops-on"
log "soak loop over after $(($(now) - start))s; waiting for the fio passes under way"
wait "$drops_pid" || true
wait_until 300 "the last fio passes" eval "! alive $fio_tcp $fio_iser" || problems+=("fio passes did not end")
wait "$fio_tcp" "$fio_iser" || true

[ -s "$S/drop-errors" ] && { echo "--- drops that could not be made:"; cat "$S/drop-errors"; }
verify_errors=0
for n in tcp iser; do
  if [ -e "$S/$n.failed" ]; then
    echo "--- failed fio pass over $n:"
    tail -40 "$S/$n.failed"
    v=$(grep -ciE 'verify|bad magic|crc32c' "$S/$n.failed" || true)
    verify_errors=$((verify_errors + v))
    problems+=("fio over $n failed ($v verify lines)")
  fi
done
echo "SOAK SUMMARY: $SOAK_MINUTES min, $((${#rows[@]})) cycles measured, $kills SIGKILL+restarts," \
  "fio passes tcp=$(cat "$S/tcp.passes" 2>/dev/null || echo 0) iser=$(cat "$S/iser.passes" 2>/dev/null || echo 0)" \
  "of $SIZE each, verify errors $verify_errors"
echo "cycle   relogin  drops  conn-errors  fds@login fds@end RSS(MiB)"
printf '%s\n' "${rows[@]}"
echo "margins: fds equal within a cycle and to the first cycle's; RSS <= first cycle + ${RSS_MARGIN_MB} MiB"
# A crash: its whole report (the faulting goroutine comes first) up to 150 lines.
if grep -qE '^(panic:|fatal error:|unexpected fault address|WARNING: DATA RACE)' "$ISERD_LOG"; then
  problems+=("iserd log shows a panic")
  sed -n '/^\(panic:\|fatal error:\|unexpected fault address\|WARNING: DATA RACE\)/,$p' "$ISERD_LOG" | head -150
fi
if [ ${#problems[@]} -gt 0 ]; then
  printf 'problem: %s\n' "${problems[@]}"
  fail "soak failed"
fi
logout_all
iserd_stop
log "soak passed"
