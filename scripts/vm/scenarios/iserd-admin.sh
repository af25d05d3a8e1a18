# vm-timeout: 420
# Operating iserd with the Linux initiator: one-way and mutual CHAP with every CHAP_A open-iscsi
# offers, a wrong secret and an initiator missing from the ACL refused with the right status and
# no secret in the log; then, while fio runs, iserctl adds a LUN (seen after the rescan the unit
# attention calls for) and grows LUN 0 (seen as the new capacity), and fio ends without error.
IQN=iqn.2026-11.org.iserd:vm-admin
DATA=/tmp/iserd-admin
mkdir -p "$DATA"
ME=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)
SECRET=alice-secret-0123
MSECRET=target-secret-4567
cat >/tmp/iserd-admin.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260"}]
targets:
  - name: $IQN
    acls:
      - initiator: $ME
        chap: {user: alice, secret: $SECRET}
    luns:
      - {lun: 0, path: lun0.img, size: 256MiB}
EOC
iserd_start /tmp/iserd-admin.yaml

node() { iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -o update -n "$1" -v "$2" >/dev/null; }
iscsiadm -m discovery -t st -p "$VM_ADDR" >/dev/null
node node.session.auth.authmethod CHAP
node node.session.auth.username alice
node node.session.auth.password "$SECRET"

# One-way CHAP with each algorithm, then mutual CHAP.
for alg in MD5 SHA1 SHA256 SHA3-256; do
  node node.session.auth.chap_algs "$alg"
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -l >/dev/null || { tail -5 "$ISERD_LOG"; fail "one-way CHAP with $alg refused"; }
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -u >/dev/null
  log "one-way CHAP with $alg: logged in"
done
# Mutual CHAP configured for this initiator (now it must also challenge the target).
sed -i "s/chap: {user: alice, secret: $SECRET}/chap: {user: alice, secret: $SECRET, mutual_user: iserd, mutual_secret: $MSECRET}/" /tmp/iserd-admin.yaml
iserctl reload || fail "iserctl reload failed"
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -l >/dev/null 2>&1 && fail "one-way CHAP accepted where mutual CHAP is configured"
node node.session.auth.username_in iserd
node node.session.auth.password_in "$MSECRET"
for alg in MD5 SHA256; do
  node node.session.auth.chap_algs "$alg"
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -l >/dev/null || { tail -5 "$ISERD_LOG"; fail "mutual CHAP with $alg refused"; }
  iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -u >/dev/null
  log "mutual CHAP with $alg: logged in"
done
node node.session.auth.chap_algs "SHA3-256,SHA256,SHA1,MD5"

# A wrong secret, then an initiator name missing from the ACL.
node node.session.auth.password wrong-secret-000
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -l >/dev/null 2>&1 && fail "login with a wrong CHAP secret succeeded"
assert_contains "$(cat "$ISERD_LOG")" "status\": \"0201" "iserd log after a wrong secret"
node node.session.auth.password "$SECRET"
iscsiadm -m iface -I stranger -o new >/dev/null
iscsiadm -m iface -I stranger -o update -n iface.initiatorname -v iqn.2026-11.org.iserd:stranger >/dev/null
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -I stranger -o new >/dev/null 2>&1 || true
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -I stranger -l >/dev/null 2>&1 && fail "an initiator missing from the ACL logged in"
assert_contains "$(cat "$ISERD_LOG")" "status\": \"0202" "iserd log after an unknown initiator"
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -I stranger -o delete >/dev/null 2>&1 || true
for s in "$SECRET" "$MSECRET" wrong-secret-000; do
  grep -q -- "$s" "$ISERD_LOG" && fail "a CHAP secret appears in iserd's log"
done
log "wrong secret refused with 0201, unknown initiator with 0202, no secret in the log"

# Live changes under load.
iscsiadm -m node -T "$IQN" -p "$VM_ADDR" -l >/dev/null
dev=$(wait_disk "$IQN")
fio --name=live --filename="$dev" --ioengine=libaio --direct=1 --iodepth=8 --rw=randrw --bs=4k \
  --size=128M --time_based --runtime=25 --verify=crc32c --verify_fatal=1 --eta=never --output=/tmp/fio-live.txt &
fio_pid=$!
sleep 3
iserctl lun add "$IQN" 1 -path lun1.img -size 64MiB || fail "iserctl lun add failed"
iserctl lun resize "$IQN" 0 384MiB || fail "iserctl lun resize failed"
sleep 2
# The unit attentions (REPORTED LUNS DATA HAS CHANGED, CAPACITY DATA HAS CHANGED) reach the
# initiator with its next commands; the kernel logs them and the rescan picks the changes up.
iscsiadm -m session --rescan >/dev/null
wait_until 30 "the new LUN to appear" eval '[ "$(session_disks "$IQN" | wc -l)" -ge 2 ]'
cap=$(sg_readcap "$dev" | grep "Device size")
assert_contains "$cap" "402653184 bytes" "capacity of LUN 0 after the resize"
log "new LUN seen: $(session_disks "$IQN" | tr '\n' ' '); LUN 0: $cap"
wait "$fio_pid" || { cat /tmp/fio-live.txt; fail "fio failed while LUNs were added and resized"; }
grep -E "err=|IOPS" /tmp/fio-live.txt | head -3
dmesg | grep -iE "lun assignments|capacity data has changed|reported luns" | tail -3 || true
iserctl session list || true
logout_all
iserd_stop
