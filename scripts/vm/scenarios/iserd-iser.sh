# vm-timeout: 1200
# The Linux initiator over iSER (ib_iser on rdma_rxe) against iserd, once with each RDMA provider
# (native: rdma's own rxe provider; libibverbs: rdma-core's librxe through libibverbs.so.1):
# discovery, login, ext4 with checksummed files, fio crc32c verify (512 B..1 MiB, QD 1..64),
# logout/login with the data intact, 20 login/logout cycles that leak no file descriptor or
# RDMA resource, and rxe0 deleted under a running fio (the session fails, iserd releases the
# device, stays up, serves TCP and iSER again once rxe0 is back, and leaks nothing). Then, with libibverbs.so.1 moved away, provider libibverbs: one clear log line,
# an iSER portal refused with the reason, TCP served. ISER_PROVIDERS narrows the providers.
IQN=iqn.2026-11.org.iserd:vm-iser

# iser_run PROVIDER: the whole scenario with rdma.provider PROVIDER.
iser_run() {
local provider=$1
log "iSER with rdma.provider $provider"
pings=$(ping_timeouts)
DATA=/tmp/iserd-iser-$provider
mkdir -p "$DATA"
cat >/tmp/iserd-iser.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260", transport: both}]
rdma: {provider: $provider}
targets:
  - name: $IQN
    open: true
    luns:
      - {lun: 0, path: lun0.img, size: 768MiB, block_size: 512, thin: true}
EOC
iserd_start /tmp/iserd-iser.yaml

timed "login iser" login_iser "$IQN"
want=rxe
[ "$provider" = libibverbs ] && want=libibverbs
iserctl rdma --json
st=$(iserctl rdma)
echo "$st"
assert_eq "$want" "$(awk '$1 == "rxe0" {print $NF}' <<<"$st")" "the provider iserctl rdma shows for rxe0"
[[ $(awk '$1 == "rxe0" {print $(NF - 1)}' <<<"$st") == [1-9]*/* ]] || fail "iserctl rdma shows no QP held on rxe0"
dev=$(wait_disk "$IQN")
assert_contains "$(iscsiadm -m session)" "iser: " "iscsiadm -m session"
assert_contains "$(sg_readcap "$dev")" "805306368 bytes" "sg_readcap $dev"

mkfs.ext4 -q -F -E nodiscard "$dev" 200M
mkdir -p /mnt/iser
mount "$dev" /mnt/iser
for i in 1 2 3; do head -c $((i * 3 << 20)) /dev/urandom >/mnt/iser/file$i; done
(cd /mnt/iser && sha256sum file* >/tmp/iser-sums)
umount /mnt/iser

timed "fio iser qd32" fio_verify "$dev" 256M --offset=256M --size=256M \
  --bssplit=512/10:4k/30:64k/25:256k/20:1m/15 --iodepth=32
timed "fio iser qd1" fio_verify "$dev" 2M --offset=520M --size=1M --bs=512 --iodepth=1
timed "fio iser qd64" fio_verify "$dev" 32M --offset=530M --size=32M --bs=1m --iodepth=64
[ "$(ping_timeouts)" = "$pings" ] || fail "the initiator's NOP-Out ping timed out: a connection stalled"

timed "logout" logout_all
timed "relogin" login_iser "$IQN"
dev=$(wait_disk "$IQN")
mount "$dev" /mnt/iser
(cd /mnt/iser && sha256sum -c --quiet /tmp/iser-sums) || fail "file checksums changed across iSER logout/login"
umount /mnt/iser
logout_all
log "checksums intact after iSER logout and login"

fds() { ls /proc/"$ISERD_PID"/fd | wc -l; }
# QPs, CQs, PDs and cm_ids must come back exactly; memory registrations may
# only shrink: the buffer pool unmaps regions idle for 30 s and iSER
# deregisters them first.
rdma_objs() { rdma resource show 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(qp|cq|pd|cm_id)$/) s += $(i + 1)} END {print s + 0}'; }
rdma_mrs() { rdma resource show 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i == "mr") s += $(i + 1)} END {print s + 0}'; }
fd0=$(fds) r0=$(rdma_objs) m0=$(rdma_mrs)
for i in $(seq 20); do
  login_iser "$IQN" >/dev/null
  wait_disk "$IQN" >/dev/null
  logout_all
done
sleep 1
fd1=$(fds) r1=$(rdma_objs) m1=$(rdma_mrs)
log "after 20 iSER login/logout cycles: fds $fd0 -> $fd1, rdma qp+cq+pd+cm_id $r0 -> $r1, mr $m0 -> $m1"
assert_eq "$fd0" "$fd1" "iserd open file descriptors"
assert_eq "$r0" "$r1" "RDMA QPs, CQs, PDs and cm_ids (rdma resource show)"
[ "$m1" -le "$m0" ] || { echo "memory registrations grew: $m0 -> $m1"; exit 1; }

log "rxe0 deleted under a live iSER session ($provider): the session fails, iserd releases the device and stays up"
login_iser "$IQN" >/dev/null
dev=$(wait_disk "$IQN")
fio --name=rm --filename="$dev" --rw=randrw --bs=4k --iodepth=8 --ioengine=libaio --direct=1 --size=64M \
  --runtime=30 --time_based >/tmp/fio-rm.log 2>&1 &
fpid=$!
sleep 3
timed "rdma link delete rxe0" timeout 60 rdma link delete rxe0 || fail "rdma link delete rxe0 did not finish: the device is still held"
if wait "$fpid"; then fail "fio kept running on a session whose RDMA device was deleted"; fi
tail -3 /tmp/fio-rm.log
alive "$ISERD_PID" || fail "iserd exited after the device was deleted"
logout_all || true
rdma link add rxe0 type rxe netdev d0
wait_until 30 "iserd listening for iSER again" rdma_listening 3260 || { tail -20 "$ISERD_LOG"; fail "the iSER portal did not come back"; }
timed "login tcp after removal" login_tcp "$IQN" >/dev/null
wait_disk "$IQN" >/dev/null
logout_all
timed "login iser after removal" login_iser "$IQN" >/dev/null
wait_disk "$IQN" >/dev/null
logout_all
sleep 1
fd2=$(fds) r2=$(rdma_objs)
log "after the device came back and one more iSER login: fds $fd0 -> $fd2, rdma qp+cq+pd+cm_id $r0 -> $r2"
assert_eq "$fd0" "$fd2" "iserd open file descriptors after the device removal"
assert_eq "$r0" "$r2" "RDMA QPs, CQs, PDs and cm_ids after the device removal"
grep -E "RDMA device|listening again" "$ISERD_LOG" | tail -5
iserd_stop
}

for p in ${ISER_PROVIDERS:-native libibverbs}; do
  iser_run "$p"
done

log "libibverbs missing: provider libibverbs, TCP portal served, iSER portal refused with the reason"
lib=$(ls /usr/lib/x86_64-linux-gnu/libibverbs.so.1)
mv "$lib" "$lib.hidden"
trap 'mv "$lib.hidden" "$lib" 2>/dev/null' EXIT
DATA=/tmp/iserd-iser-nolib
mkdir -p "$DATA"
cat >/tmp/iserd-iser.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260"}]
rdma: {provider: libibverbs}
targets:
  - name: $IQN
    open: true
    luns: [{lun: 0, path: lun0.img, size: 64MiB}]
EOC
: >"$ISERD_LOG"
iserd_start /tmp/iserd-iser.yaml
out=$(iserctl portal add "$VM_ADDR:3262" --transport iser 2>&1) && fail "an iSER portal was added without libibverbs: $out"
echo "$out"
assert_contains "$out" "libibverbs" "iserctl portal add's refusal"
assert_contains "$out" "rxe0" "iserctl portal add's refusal"
timed "login tcp" login_tcp "$IQN"
wait_disk "$IQN" >/dev/null
logout_all
n=$(grep -c "libibverbs cannot be loaded" "$ISERD_LOG" || true)
grep "libibverbs cannot be loaded" "$ISERD_LOG"
assert_eq 1 "$n" "log lines about libibverbs"
iserd_stop
mv "$lib.hidden" "$lib"
trap - EXIT
