# vm-timeout: 240
# Migration from tgt: a targets.conf (two backing-store LUNs, an initiator-name ACL, one-way and
# mutual CHAP) served by tgtd, data written through it by the Linux initiator; then tgt stopped,
# `iserctl import tgt` into a running iserd, and the same open-iscsi node record (no new
# discovery) logs in again and reads the same data back (sha256 per LUN).
# tgt is configured with the tgtadm calls tgt-admin makes for that file: tgt-admin is Perl,
# which the VM does not have.
IQN=iqn.2001-04.com.example:migrate
P=$VM_ADDR:3260
truncate -s 64M /tmp/mig-a.img /tmp/mig-b.img
cat >/tmp/targets.conf <<EOC
# as in /etc/tgt/conf.d/
<target $IQN>
    backing-store /tmp/mig-b.img
    backing-store /tmp/mig-a.img
    initiator-name $VM_INITIATOR
    incominguser miguser migrate-secret-1
    outgoinguser migtarget migrate-secret-2
</target>
EOC

# tgt-admin numbers backing stores in path order from LUN 1 and binds ALL addresses when the
# target has no initiator-address.
tgtd --iscsi portal="$P" >>/tmp/tgtd.log 2>&1
wait_until 10 "tgtd" eval 'tgtadm --op show --mode sys >/dev/null 2>&1'
tgtadm --lld iscsi --op new --mode target --tid 1 -T "$IQN"
tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b /tmp/mig-a.img
tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 -b /tmp/mig-b.img
tgtadm --lld iscsi --op bind --mode target --tid 1 --initiator-name "$VM_INITIATOR"
tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
tgtadm --lld iscsi --op new --mode account --user miguser --password migrate-secret-1
tgtadm --lld iscsi --op bind --mode account --tid 1 --user miguser
tgtadm --lld iscsi --op new --mode account --user migtarget --password migrate-secret-2
tgtadm --lld iscsi --op bind --mode account --tid 1 --user migtarget --outgoing

# the initiator's node record, with CHAP both ways
iscsiadm -m discovery -t sendtargets -p "$P" | grep -q " $IQN\$"
node() { iscsiadm -m node -T "$IQN" -p "$P" "$@"; }
node -o update -n node.session.auth.authmethod -v CHAP
node -o update -n node.session.auth.username -v miguser
node -o update -n node.session.auth.password -v migrate-secret-1
node -o update -n node.session.auth.username_in -v migtarget
node -o update -n node.session.auth.password_in -v migrate-secret-2
timed "login to tgt" node --login
wait_disk "$IQN" >/dev/null
wait_until 10 "both LUNs" eval '[ "$(session_disks "$IQN" | wc -l)" -eq 2 ]'
before=
for d in $(session_disks "$IQN"); do
  dd if=/dev/urandom of=/dev/$d bs=1M count=8 oflag=direct status=none
  before+="$(dd if=/dev/$d bs=1M count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1) "
done
log "written through tgt: $before"
node --logout
tgt_teardown

cat >/tmp/iserd.yaml <<EOC
data_dir: /tmp/iserd-data
portals: [{address: "$P"}]
targets:
  - name: iqn.2026-11.org.iserd:already-here
    luns: [{lun: 0, backend: memory, size: 1MiB}]
EOC
iserd_start /tmp/iserd.yaml
out=$(iserctl import tgt /tmp/targets.conf --portal "$P" --dry-run 2>&1)
echo "$out"
# initiator-name without initiator-address: tgt let every initiator in; iserd keeps the ACL and says so
assert_contains "$out" "tgt-admin bound ALL" "import --dry-run"
iserctl import tgt /tmp/targets.conf --portal "$P"
iserctl target show "$IQN"

# the same node record, untouched since tgt
timed "login to iserd" node --login
wait_disk "$IQN" >/dev/null
wait_until 10 "both LUNs" eval '[ "$(session_disks "$IQN" | wc -l)" -eq 2 ]'
after=
for d in $(session_disks "$IQN"); do
  after+="$(dd if=/dev/$d bs=1M count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1) "
done
log "read through iserd: $after"
[ "$before" = "$after" ] || fail "data differs after the migration: tgt $before, iserd $after"
node --logout
logout_all
iserd_stop
