# vm-timeout: 600
# The Linux initiator (open-iscsi over iscsi_tcp) against iserd: discovery, login, ext4 with
# checksummed files, fio crc32c verify with 512 B..1 MiB blocks, logout and re-login with the
# data intact, and SIGKILL of iserd under a write load losing no completed write.
IQN=iqn.2026-11.org.iserd:vm
pings=$(ping_timeouts)
DATA=/tmp/iserd-data
mkdir -p "$DATA"
cat >/tmp/iserd.yaml <<EOC
data_dir: $DATA
portals: [{address: "0.0.0.0:3260"}]
targets:
  - name: $IQN
    open: true
    luns:
      - {lun: 0, path: lun0.img, size: 768MiB, block_size: 512, thin: true}
EOC
iserd_start /tmp/iserd.yaml

timed "login tcp" login_tcp "$IQN"
dev=$(wait_disk "$IQN")
assert_contains "$(iscsiadm -m session)" "tcp: " "iscsiadm -m session"
assert_contains "$(sg_readcap "$dev")" "805306368 bytes" "sg_readcap $dev"
assert_contains "$(sg_inq "$dev")" "ISERD" "sg_inq $dev"

# A file system with checksummed files.
mkfs.ext4 -q -F -E nodiscard "$dev" 200M
mkdir -p /mnt/iserd
mount "$dev" /mnt/iserd
for i in 1 2 3 4; do head -c $((i * 3 << 20)) /dev/urandom >/mnt/iserd/file$i; done
(cd /mnt/iserd && sha256sum file* >/tmp/sums)
umount /mnt/iserd

# Random writes then verified reads of 256 MiB past the file system, block sizes 512 B..1 MiB.
timed "fio tcp" fio_verify "$dev" 256M --offset=256M --size=256M \
  --bssplit=512/10:4k/30:64k/25:256k/20:1m/15 --iodepth=32
timed "fio tcp qd1" fio_verify "$dev" 2M --offset=520M --size=1M --bs=512 --iodepth=1
[ "$(ping_timeouts)" = "$pings" ] || fail "the initiator's NOP-Out ping timed out: a connection stalled"

timed "logout" logout_all
timed "relogin" login_tcp "$IQN"
dev=$(wait_disk "$IQN")
mount "$dev" /mnt/iserd
(cd /mnt/iserd && sha256sum -c --quiet /tmp/sums) || fail "file checksums changed across logout/login"
umount /mnt/iserd
log "file checksums intact after logout and login"

# SIGKILL during a write load: every write that completed must survive the restart.
: >/tmp/done
(
  for i in $(seq 0 399); do
    { printf 'iserd-block-%08d\n' "$i"; head -c 4075 /dev/zero; } |
      dd of="$dev" bs=4096 seek=$((150000 + i)) count=1 oflag=direct conv=notrunc status=none &&
      echo "$i" >>/tmp/done
  done
) &
writer=$!
sleep 4
log "killing iserd (SIGKILL) after $(wc -l </tmp/done) completed writes"
kill -KILL "$ISERD_PID"
wait "$ISERD_PID" 2>/dev/null || true
before=$(wc -l </tmp/done)
iserd_start /tmp/iserd.yaml
wait "$writer" || true
after=$(wc -l </tmp/done)
log "writes completed: $before before the kill, $after in all"
[ "$after" -gt "$before" ] || fail "no write completed after iserd restarted (session did not recover)"
bad=0
while read -r i; do
  got=$(dd if="$dev" bs=4096 skip=$((150000 + i)) count=1 iflag=direct status=none | head -c 20)
  [ "$got" = "$(printf 'iserd-block-%08d' "$i")" ] || { echo "block $i lost: read '$got'"; bad=$((bad + 1)); }
done </tmp/done
[ $bad -eq 0 ] || fail "$bad completed writes were lost across SIGKILL"
log "all $after completed writes survived SIGKILL and restart"
timed "logout" logout_all
iserd_stop
