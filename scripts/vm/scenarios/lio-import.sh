# vm-timeout: 180
# Migration from LIO: two targets configured with targetcli (a fileio LUN behind one-way CHAP; two
# block LUNs on brd ram disks behind mutual CHAP, mapped to the initiator in crossed order), data
# written through LIO by the Linux initiator, `targetcli saveconfig`, LIO cleared, the saved
# file turned into iserd's configuration by `iserctl import lio --dry-run`, iserd started on it,
# and the same open-iscsi node records (no new discovery, no edit) log in again and read the
# same data back (sha256 per LUN).
T1=iqn.2003-01.org.linux-iscsi.vm:mig-fileio
T2=iqn.2003-01.org.linux-iscsi.vm:mig-block
P=$VM_ADDR:3260
SAVED=/etc/rtslib-fb-target/saveconfig.json
MB=8 # written per LUN

command -v targetcli >/dev/null || fail "targetcli is not in the VM image (scripts/vm/build.sh)"
[ ! -e "$SAVED" ] || fail "$SAVED exists before the scenario saved anything"
modprobe brd rd_nr=2 rd_size=$((32 << 10)) # two 32 MiB block devices
modprobe -a target_core_mod target_core_file target_core_iblock iscsi_target_mod

timed "targetcli ls (start-up)" targetcli ls
# Per-ACL CHAP: targetcli creates TPGs with authentication=0; the administrator turns it on.
# Mapped LUNs of $T2: the initiator's LUN 0 is the TPG's LUN 1 and the other way round.
timed "targetcli setup" targetcli <<EOC
set global auto_add_default_portal=false auto_add_mapped_luns=false auto_save_on_exit=false
/backstores/fileio create name=migfile file_or_dev=/tmp/lio-mig.img size=32M
/backstores/block create name=migram0 dev=/dev/ram0
/backstores/block create name=migram1 dev=/dev/ram1
/iscsi create $T1
/iscsi/$T1/tpg1/portals create $VM_ADDR 3260
/iscsi/$T1/tpg1/luns create /backstores/fileio/migfile
/iscsi/$T1/tpg1/acls create $VM_INITIATOR
/iscsi/$T1/tpg1/acls/$VM_INITIATOR create mapped_lun=0 tpg_lun_or_backstore=0
/iscsi/$T1/tpg1/acls/$VM_INITIATOR set auth userid=mig-fileio-user password=lio-oneway-secret1
/iscsi/$T1/tpg1 set attribute authentication=1
/iscsi create $T2
/iscsi/$T2/tpg1/portals create $VM_ADDR 3260
/iscsi/$T2/tpg1/luns create /backstores/block/migram0 lun=0
/iscsi/$T2/tpg1/luns create /backstores/block/migram1 lun=1
/iscsi/$T2/tpg1/acls create $VM_INITIATOR
/iscsi/$T2/tpg1/acls/$VM_INITIATOR create mapped_lun=0 tpg_lun_or_backstore=1
/iscsi/$T2/tpg1/acls/$VM_INITIATOR create mapped_lun=1 tpg_lun_or_backstore=0
/iscsi/$T2/tpg1/acls/$VM_INITIATOR set auth userid=mig-block-user password=lio-mutual-secret2 mutual_userid=mig-block-target mutual_password=lio-mutual-secret3
/iscsi/$T2/tpg1 set attribute authentication=1
ls
EOC
# targetcli's batch mode reports errors but goes on: check the result in configfs
acl2=$LIO/iscsi/$T2/tpgt_1/acls/$VM_INITIATOR
[ "$(cat "$LIO/iscsi/$T1/tpgt_1/attrib/authentication")" = 1 ] &&
  [ "$(cat "$LIO/iscsi/$T2/tpgt_1/attrib/authentication")" = 1 ] &&
  [ "$(readlink -f "$(find "$acl2/lun_0" -maxdepth 1 -type l)")" = "$(readlink -f "$LIO/iscsi/$T2/tpgt_1/lun/lun_1")" ] &&
  [ "$(cat "$acl2/auth/password_mutual")" = lio-mutual-secret3 ] ||
  fail "targetcli did not configure LIO as asked (see its output above)"

# The initiator's node records: discovered once, CHAP set once, never touched again.
disc=$(iscsiadm -m discovery -t sendtargets -p "$P")
assert_contains "$disc" " $T1" "discovery at LIO"
assert_contains "$disc" " $T2" "discovery at LIO"
node() { local t=$1; shift; iscsiadm -m node -T "$t" -p "$P" "$@"; }
set_chap() { # TARGET USER SECRET [TARGET_USER TARGET_SECRET]
  node "$1" -o update -n node.session.auth.authmethod -v CHAP
  node "$1" -o update -n node.session.auth.username -v "$2"
  node "$1" -o update -n node.session.auth.password -v "$3"
  if [ $# -gt 3 ]; then
    node "$1" -o update -n node.session.auth.username_in -v "$4"
    node "$1" -o update -n node.session.auth.password_in -v "$5"
  fi
}
set_chap "$T1" mig-fileio-user lio-oneway-secret1
set_chap "$T2" mig-block-user lio-mutual-secret2 mig-block-target lio-mutual-secret3
records() { { node "$T1"; node "$T2"; } | sha256sum; }
records_before=$(records)

# login_both WHAT: logs in to both targets and waits for their 1 and 2 disks.
login_both() {
  timed "login $T1 ($1)" node "$T1" --login >/dev/null
  timed "login $T2 ($1)" node "$T2" --login >/dev/null
  wait_until 30 "the LUNs of $T1 and $T2" eval \
    '[ "$(session_disks "$T1" | wc -l)" -eq 1 ] && [ "$(session_disks "$T2" | wc -l)" -eq 2 ]'
}
logout_both() { node "$T1" --logout >/dev/null && node "$T2" --logout >/dev/null; }
# sums: the sha256 of the first $MB MiB of every LUN of both targets, lowest LUN first.
sums() {
  local t d
  for t in "$T1" "$T2"; do
    for d in $(session_disks "$t"); do
      echo "$t/$d $(dd if=/dev/$d bs=1M count=$MB iflag=direct status=none | sha256sum | cut -d' ' -f1)"
    done
  done | sed 's|/sd[a-z]* | |'   # sdX names change between sessions; the order does not
}

login_both LIO
written=
for t in "$T1" "$T2"; do
  for d in $(session_disks "$t"); do
    dd if=/dev/urandom of=/tmp/mig-data bs=1M count=$MB status=none
    written+="$t $(sha256sum </tmp/mig-data | cut -d' ' -f1)"$'\n'
    timed "write ${MB}MiB to $t $d (LIO)" dd if=/tmp/mig-data of=/dev/$d bs=1M oflag=direct status=none
  done
done
written=${written%$'\n'}
lio=$(timed "read back (LIO)" sums)
log "written through LIO:"$'\n'"$lio"
assert_eq "$written" "$lio" "data read back through LIO"
logout_both

timed "targetcli saveconfig" targetcli saveconfig
[ -s "$SAVED" ] || fail "targetcli saveconfig did not write $SAVED"
echo "--- $SAVED"
cat "$SAVED"
timed "targetcli clearconfig" targetcli clearconfig confirm=True
[ -z "$(find "$LIO/iscsi" "$LIO/core" -mindepth 1 -maxdepth 1 -type d ! -name discovery_auth ! -name alua)" ] ||
  fail "LIO still has targets or backstores after clearconfig: $(ls "$LIO/iscsi" "$LIO/core")"
wait_until 10 "LIO to close port 3260" eval '! port_listening 3260'

mkdir -p /tmp/lio-iserd
timed "iserctl import lio" iserctl import lio "$SAVED" --dry-run >/tmp/lio-iserd/iserd.yaml 2>/tmp/lio-left.txt ||
  fail "iserctl import lio failed: $(cat /tmp/lio-left.txt)"
echo "--- iserd.yaml from iserctl import lio"
cat /tmp/lio-iserd/iserd.yaml
cat /tmp/lio-left.txt
timed "iserd start" iserd_start /tmp/lio-iserd/iserd.yaml
iserctl target show "$T1"
iserctl target show "$T2"

assert_eq "$records_before" "$(records)" "the node records"
login_both iserd
iserd_sums=$(timed "read back (iserd)" sums)
log "read through iserd:"$'\n'"$iserd_sums"
assert_eq "$written" "$iserd_sums" "data read back through iserd after the migration"
logout_both
logout_all
iserd_stop
