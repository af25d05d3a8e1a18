# vm-timeout: 300
# Cluster-wide persistent reservations with the Linux initiator: two iserd gateways (gw-a on
# 192.0.2.1, gw-b on 192.0.2.2) on one shared loop device, coordinated through etcd; two
# initiator names (open-iscsi ifaces), host1 logged in to gw-a only and host2 to gw-b only.
# host1 registers and reserves Write Exclusive through gw-a; host2, registered through gw-b,
# has its writes refused with RESERVATION CONFLICT there and reads served; host2 preempts and
# aborts host1 through gw-b, and gw-a then reports and enforces host2's reservation. With
# APTPL set, the state survives stopping both gateways and etcd: after the restart READ KEYS
# and READ RESERVATION through either gateway report what they reported before. Prints the
# time each PERSISTENT RESERVE OUT took as sg_persist saw it.
IQN=iqn.2026-12.org.iserd:vm-scaleout-pr
A=$VM_ADDR
B=$VM_ADDR2
# restart_all: stops both gateways and etcd, starts them again and waits until both hosts'
# sessions serve again; prints how long that took.
restart_all() {
  local t0
  t0=$(now)
  gw_stop a b
  etcd_stop
  etcd_start
  gw_start a "$A" 1
  gw_start b "$B" 2
  settle "$H1"
  settle "$H2"
  log "FIGURE etcd and both gateways restarted, both sessions served again after $(since "$t0")s"
}
# duration CMD...: runs sg3_utils command CMD (verbose enough to report the command's
# duration) and prints that duration in ms; fails with CMD's output when CMD fails.
duration() {
  local out
  out=$("$1" -vvv "${@:2}" 2>&1) || { echo "$out" >&2; return 1; }
  out=$(sed -n 's/.*duration=\([0-9]*\) ms.*/\1/p' <<<"$out" | tail -1)
  [ -n "$out" ] || { echo "$1 reported no duration" >&2; return 1; }
  echo "$out"
}
# pro WHAT DEV SG_PERSIST_OPTION...: a PERSISTENT RESERVE OUT through DEV that must succeed at
# the first attempt; prints the time the command took as sg_persist saw it.
pro() {
  local what=$1 dev=$2 ms
  shift 2
  ms=$(duration sg_persist --no-inquiry --out "$@" "$dev") || fail "PR OUT $what through $dev failed"
  log "FIGURE PR OUT $what: ${ms} ms"
}
# pri DEV OPTION: PERSISTENT RESERVE IN through DEV (-k READ KEYS, -r READ RESERVATION).
pri() { sg_persist --no-inquiry -i "$2" "$1"; }
# write10 DEV, read10 DEV: one block at LBA 256 with sg_raw, which prints the status and sense.
write10() { sg_raw -s 512 -i /dev/zero "$1" 2a 00 00 00 01 00 00 00 01 00 2>&1; }
read10() { sg_raw -r 512 "$1" 28 00 00 00 01 00 00 00 01 00 2>&1; }
# refused WHO DEV: a WRITE through DEV must end in RESERVATION CONFLICT, and so must a direct
# write through the block layer.
refused() {
  local out
  out=$(write10 "$2") && fail "$1's WRITE through $2 succeeded: $out"
  assert_contains "$out" "SCSI Status: Reservation Conflict" "$1's WRITE through $2"
  ! dd if=/dev/zero of="$2" bs=512 count=1 seek=256 oflag=direct status=none 2>/dev/null ||
    fail "$1's direct write through $2 succeeded"
}
# served WHO DEV OP: a WRITE or READ (OP write10 or read10) through DEV must succeed.
served() {
  local out
  out=$($3 "$2") || fail "$1's ${3%10} through $2 failed: $out"
}

cluster_two_hosts "$IQN" pr # host1 ($H1) through gw-a, host2 ($H2) through gw-b

# 1. host1 registers and reserves Write Exclusive through gw-a; host2 registers through gw-b.
pro "register 0x1 (host1, gw-a)" "$H1" --register --param-sark=0x1 --param-aptpl
pro "reserve WE 0x1 (host1, gw-a)" "$H1" --reserve --param-rk=0x1 --prout-type=1
pro "register 0x2 (host2, gw-b)" "$H2" --register --param-sark=0x2 --param-aptpl
keys=$(pri "$H2" -k)
log "FIGURE PR IN READ KEYS (host2, gw-b), for comparison: $(duration sg_persist --no-inquiry -i -k "$H2") ms"
res=$(pri "$H2" -r)
log "through gw-b:"$'\n'"$keys"$'\n'"$res"
assert_contains "$keys" "2 registered reservation keys" "READ KEYS through gw-b"
assert_contains "$keys" "0x1" "READ KEYS through gw-b"
assert_contains "$keys" "0x2" "READ KEYS through gw-b"
assert_contains "$res" "Key=0x1" "READ RESERVATION through gw-b"
assert_contains "$res" "type: Write Exclusive" "READ RESERVATION through gw-b"

# 2. Write Exclusive: host2's writes through gw-b are refused, its reads served.
refused host2 "$H2"
served host2 "$H2" read10
served host1 "$H1" write10
log "host1 holds Write Exclusive: host2's writes through gw-b refused ($(write10 "$H2" | grep 'SCSI Status')), reads served"

# 3. host2 preempts and aborts host1 through gw-b.
pro "preempt and abort 0x1 (host2, gw-b)" "$H2" --preempt-abort --param-rk=0x2 --param-sark=0x1 --prout-type=1
out=$(sg_raw "$H1" 00 00 00 00 00 00 2>&1) && fail "host1's first command after the preemption found no unit attention"
assert_contains "$out" "Registrations preempted" "host1's TEST UNIT READY through gw-a after the preemption"
log "host1 through gw-a: $(grep -i 'additional sense' <<<"$out")"
keys=$(pri "$H1" -k)
res=$(pri "$H1" -r)
log "through gw-a:"$'\n'"$keys"$'\n'"$res"
assert_contains "$keys" "1 registered reservation key" "READ KEYS through gw-a after the preemption"
assert_contains "$keys" "0x2" "READ KEYS through gw-a after the preemption"
[[ $keys != *0x1* ]] || fail "host1's key survived PREEMPT AND ABORT: $keys"
assert_contains "$res" "Key=0x2" "READ RESERVATION through gw-a after the preemption"
assert_contains "$res" "type: Write Exclusive" "READ RESERVATION through gw-a after the preemption"
refused host1 "$H1"
served host1 "$H1" read10
served host2 "$H2" write10
log "host2 holds Write Exclusive: host1's writes through gw-a refused, host2's served"

# 4. APTPL: host1 registers again, then both gateways and etcd are stopped and started.
pro "register 0x3 (host1, gw-a)" "$H1" --register --param-sark=0x3 --param-aptpl
assert_contains "$(sg_persist --no-inquiry -i -c "$H1")" "PTPL_A): 1" "REPORT CAPABILITIES through gw-a"
declare -A before
for h in H1 H2; do before[$h]=$(pri "${!h}" -k; pri "${!h}" -r); done
assert_eq "${before[H1]}" "${before[H2]}" "PR IN through gw-a and through gw-b"
log "before the restart:"$'\n'"${before[H1]}"
restart_all
for h in H1 H2; do
  assert_eq "${before[$h]}" "$(pri "${!h}" -k; pri "${!h}" -r)" "PR IN through ${!h} after the restart of etcd and both gateways"
done
refused host1 "$H1"
served host2 "$H2" write10
log "after the restart of etcd and both gateways: the same keys, holder, type and generation through both"

# 5. Without APTPL the same restart is a power cycle: every registration and the reservation go.
pro "register 0x2 again without APTPL (host2, gw-b)" "$H2" --register --param-rk=0x2 --param-sark=0x2
assert_contains "$(sg_persist --no-inquiry -i -c "$H2")" "PTPL_A): 0" "REPORT CAPABILITIES through gw-b"
restart_all
for h in H1 H2; do
  assert_contains "$(pri "${!h}" -k)" "there are NO registered reservation keys" "READ KEYS through ${!h} after a restart without APTPL"
  assert_contains "$(pri "${!h}" -r)" "there is NO reservation held" "READ RESERVATION through ${!h} after a restart without APTPL"
done
served host1 "$H1" write10
log "after a restart without APTPL: no keys, no reservation, host1 writes again"
logout_all
gw_stop a b
etcd_stop
