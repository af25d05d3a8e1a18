# vm-timeout: 300
# dm-multipath (multipath-tools with ALUA priorities) over one iserd target reached through two
# addresses, one target port group each (active/optimized on 192.0.2.1, active/non-optimized on
# 192.0.2.2): multipath groups the paths by ALUA priority and sends I/O to the optimized one;
# fio crc32c write+verify on the map continues while the optimized portal goes away (listener
# removed, connections reset) and after it returns; the time from the loss to resumed I/O is
# printed. Then SET TARGET PORT GROUPS puts the first group in standby and reads go the other way.
IQN=iqn.2026-11.org.iserd:vm-mpath
A=$VM_ADDR
B=192.0.2.2
ip addr add "$B/24" dev d0 2>/dev/null || true
mkdir -p /tmp/iserd-mpath
cat >/tmp/iserd-mpath.yaml <<EOC
data_dir: /tmp/iserd-mpath
portals:
  - {address: "$A:3260", tpgt: 1}
  - {address: "$B:3260", tpgt: 2}
targets:
  - name: $IQN
    open: true
    port_groups:
      - {id: 1, state: active/optimized, tpgts: [1]}
      - {id: 2, state: active/non-optimized, tpgts: [2]}
    luns:
      - {lun: 0, path: lun0.img, size: 128MiB}
EOC
iserd_start /tmp/iserd-mpath.yaml
mpath_up "$IQN" "$A" "$B"
mp=$MP
assert_contains "$TOPO" "prio=50" "multipath -ll (active/optimized group)"
assert_contains "$TOPO" "prio=10" "multipath -ll (active/non-optimized group)"

fio --name=mpath --filename="$mp" --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
  --bs=4k --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 --exitall_on_error \
  --time_based --runtime=40 --verify_backlog=1024 >/tmp/fio-mpath.log 2>&1 &
fio_pid=$!
sleep 5
optimized=$(multipathd show paths raw format "%d %p" | awk '$2 == 50 {print $1}')
[ -n "$optimized" ] || fail "no path with ALUA priority 50: $(multipathd show paths)"
before=$(map_ios "/dev/$optimized")
sleep 2
[ "$(map_ios "/dev/$optimized")" -gt "$before" ] || fail "no I/O on the optimized path $optimized"
lost=$(now)
iserctl portal remove "$A:3260" >/dev/null
ss -K dst "$A" dport = 3260 >/dev/null 2>&1 || true
ss -K src "$A" sport = 3260 >/dev/null 2>&1 || true
secs=$(resumed_after "$mp" "$lost")
log "FIGURE multipath: optimized portal lost, I/O resumed on the other path after ${secs}s"
dmesg | grep -E 'connection|session|alua|multipath|device-mapper' | tail -20
sleep 5
iserctl portal add "$A:3260" --tpgt 1 >/dev/null
mpath_wait 2 60 >/dev/null
log "the optimized path is back: $(multipathd show paths raw format '%d %t %T %p' | tr '\n' ';')"
wait "$fio_pid" || { cat /tmp/fio-mpath.log >&2; fail "fio verify on $mp failed across the path loss"; }
log "fio verify on $mp: $(grep -E '^ +(read|write): IOPS=' /tmp/fio-mpath.log | tr -s ' ' | tr '\n' ';')"

# Explicit ALUA through the other path: group 1 standby, then I/O goes to 192.0.2.2 only.
other=$(multipathd show paths raw format "%d" | grep -vx "$optimized")
sg_stpg --standby --tp=1 "/dev/$other" >/dev/null 2>&1 || sg_stpg --standby --tp=1 "/dev/$other" >/dev/null
wait_until 20 "multipath to see 192.0.2.1's group in standby" eval \
  "multipathd show paths raw format '%d %p' | grep -q '^$optimized 1\$'"
log "after SET TARGET PORT GROUPS (group 1 standby): $(multipathd show paths raw format '%d %t %T %p' | tr '\n' ';')"
before=$(map_ios "/dev/$other")
dd if="$mp" of=/dev/null bs=4k count=256 iflag=direct status=none
[ "$(map_ios "/dev/$other")" -gt "$before" ] || fail "reads did not go to $other once group 1 was in standby"
multipath_stop
