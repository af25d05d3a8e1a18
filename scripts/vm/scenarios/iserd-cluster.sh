# vm-timeout: 420
# Cluster SCSI with the Linux initiator: two sessions with different initiator names on one LUN
# (open-iscsi ifaces), sg_persist register / reserve (every type) / preempt and abort / clear,
# an APTPL reservation surviving an iserd restart; ALUA with two portals in two port groups:
# sg_rtpg reports them, I/O on the standby path is refused, sg_stpg changes the states.
IQN=iqn.2026-11.org.iserd:vm-cluster
DATA=/tmp/iserd-cluster
mkdir -p "$DATA"
cat >/tmp/iserd-cluster.yaml <<EOC
data_dir: $DATA
portals:
  - {address: "$VM_ADDR:3260", tpgt: 1}
  - {address: "$VM_ADDR:3261", tpgt: 2}
targets:
  - name: $IQN
    open: true
    port_groups:
      - {id: 1, state: active/optimized, tpgts: [1]}
      - {id: 2, state: standby, tpgts: [2]}
    luns:
      - {lun: 0, path: lun0.img, size: 64MiB}
EOC
iserd_start /tmp/iserd-cluster.yaml

# Two ifaces, each with its own initiator name.
for n in a b; do iface_new "if$n" "iqn.2026-11.org.iserd:node-$n"; done
# disk_of IFACE PORT: logs in through IFACE to the portal on PORT and prints the new disk.
disk_of() { iface_login "$IQN" "$VM_ADDR:$2" "$1"; }
A=$(disk_of ifa 3260)
B=$(disk_of ifb 3260)
log "node-a: $A, node-b: $B"
assert_eq 2 "$(iscsiadm -m session | wc -l)" "sessions"

# wr DEV: 0 when a 512-byte direct write succeeds; rd DEV likewise for a read.
wr() { dd if=/dev/zero of="$1" bs=512 count=1 seek=100 oflag=direct status=none 2>/dev/null; }
rd() { dd if="$1" of=/dev/null bs=512 count=1 skip=100 iflag=direct status=none 2>/dev/null; }
# pr ARGS: sg_persist, once more after a unit attention (releases and preemptions raise them
# on the other node, as SPC-4 requires).
pr() { sg_persist --no-inquiry "$@" >/dev/null 2>&1 || sg_persist --no-inquiry "$@" >/dev/null; }
# clear the power-on unit attentions
sg_turs "$A" >/dev/null 2>&1 || true; sg_turs "$B" >/dev/null 2>&1 || true

pr --out --register --param-sark=0xa "$A"
pr --out --register --param-sark=0xb "$B"
sg_turs "$A" >/dev/null 2>&1 || true
keys=$(sg_persist --no-inquiry -i -k "$A")
assert_contains "$keys" "0xa" "READ KEYS"
assert_contains "$keys" "0xb" "READ KEYS"

# Every reservation type: who may write and read while node-a holds it.
# type: 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR (both nodes are registered, so
# the registrants-only and all-registrants types let node-b in).
for spec in "1 fail ok" "3 fail fail" "5 ok ok" "6 ok ok" "7 ok ok" "8 ok ok"; do
  set -- $spec
  pr --out --reserve --param-rk=0xa --prout-type="$1" "$A"
  holder=0xa
  case $1 in 7 | 8) holder=0x0 ;; esac # all-registrants: every registrant holds it, the key reads 0
  assert_contains "$(sg_persist --no-inquiry -i -r "$A")" "Key=$holder" "READ RESERVATION type $1"
  wr "$A" || fail "type $1: the holder's write was refused"
  if wr "$B"; then got_w=ok; else got_w=fail; fi
  if rd "$B"; then got_r=ok; else got_r=fail; fi
  assert_eq "$2/$3" "$got_w/$got_r" "type $1: node-b write/read"
  pr --out --release --param-rk=0xa --prout-type="$1" "$A"
  log "reservation type $1: node-b write $got_w, read $got_r"
done

# PREEMPT AND ABORT: node-b takes an exclusive-access reservation from node-a.
pr --out --reserve --param-rk=0xa --prout-type=1 "$A"
pr --out --preempt-abort --param-rk=0xb --param-sark=0xa --prout-type=3 "$B"
sg_turs "$B" >/dev/null 2>&1 || true
res=$(sg_persist --no-inquiry -i -r "$B")
assert_contains "$res" "Key=0xb" "reservation after preempt and abort"
keys=$(sg_persist --no-inquiry -i -k "$B")
[[ $keys != *0xa* ]] || fail "node-a's key survived PREEMPT AND ABORT: $keys"
sg_turs "$A" >/dev/null 2>&1 || true
rd "$A" && fail "node-a could read through node-b's exclusive access reservation"
rd "$B" || fail "node-b could not read through its own reservation"
log "preempt and abort: node-b holds exclusive access, node-a is out"

# CLEAR removes every key and the reservation.
pr --out --clear --param-rk=0xb "$B"
assert_contains "$(sg_persist --no-inquiry -i -k "$B")" "there are NO registered" "READ KEYS after CLEAR"

# APTPL: a reservation that survives a restart of iserd.
pr --out --register --param-sark=0xc --param-aptpl "$A"
pr --out --reserve --param-rk=0xc --prout-type=1 "$A"
iserd_stop
iserd_start /tmp/iserd-cluster.yaml
wait_until 60 "node-a's session to recover" sg_turs "$A" || sg_turs "$A" >/dev/null 2>&1 || true
wait_until 60 "node-a's session to recover" eval "sg_turs $A >/dev/null 2>&1 || sg_turs $A >/dev/null 2>&1"
res=$(sg_persist --no-inquiry -i -r "$A")
assert_contains "$res" "Key=0xc" "reservation after iserd restart (APTPL)"
wr "$B" && fail "node-b wrote through node-a's restored write-exclusive reservation"
pr --out --clear --param-rk=0xc "$A"
log "APTPL reservation survived the restart"

# ALUA: node-a's second path through portal group 2 (standby).
C=$(disk_of ifa 3261)
sg_turs "$C" >/dev/null 2>&1 || true
rtpg=$(sg_rtpg -d "$A")
log "sg_rtpg: $(echo $rtpg)"
assert_contains "$rtpg" "active/optimized" "sg_rtpg"
assert_contains "$rtpg" "standby" "sg_rtpg"
out=$(sg_raw -r 512 "$C" 28 00 00 00 00 64 00 00 01 00 2>&1) && fail "read on the standby path succeeded"
assert_contains "$out" "standby" "sense of a read on the standby path"
rd "$A" || fail "read on the optimized path failed"
# Make group 2 optimized and group 1 standby through SET TARGET PORT GROUPS.
sg_stpg --tp=1,2 --state=s,ao "$A" || fail "sg_stpg failed"
sg_turs "$C" >/dev/null 2>&1 || true
sg_raw -r 512 "$C" 28 00 00 00 00 64 00 00 01 00 >/dev/null 2>&1 || fail "read on the now optimized path failed"
log "ALUA: standby path refused, sg_stpg switched the groups"
# The new states are saved to the configuration and come back after a restart.
sleep 1
iserd_stop
iserd_start /tmp/iserd-cluster.yaml
# (group 1 is standby now: TEST UNIT READY is refused there, REPORT TARGET PORT GROUPS is not)
wait_until 60 "node-a's session to recover" eval "sg_rtpg $A >/dev/null 2>&1 || sg_rtpg $A >/dev/null 2>&1"
rtpg=$(sg_rtpg -d "$A" | tr '\n' ' ')
[[ $rtpg == *"group id : 0x2"*"(active/optimized)"* ]] || fail "group 2 is not optimized after the restart: $rtpg"
log "ALUA states set by SET TARGET PORT GROUPS survived the restart"
logout_all
iserd_stop
