# vm-timeout: 300
# sg3_utils against the same iserd LUN over iscsi_tcp and over ib_iser, the latter once with each
# RDMA provider (native, then libibverbs after a restart): every answer must be the same (after
# the /dev name is normalised), and libiscsi's iscsi-inq reads it over iser:// with both.
IQN=iqn.2026-11.org.iserd:vm-sg
DATA=/tmp/iserd-sg
mkdir -p "$DATA"
sg_config() {
cat >/tmp/iserd-sg.yaml <<EOC
data_dir: $DATA
portals: [{address: "$VM_ADDR:3260", transport: both}]
rdma: {provider: $1}
targets:
  - name: $IQN
    open: true
    luns:
      - {lun: 0, path: lun0.img, size: 64MiB, block_size: 512, thin: true, serial: SGPARITY01}
EOC
}
sg_config native
iserd_start /tmp/iserd-sg.yaml

# run CMD...: runs CMD, printing its exit status when it fails (set -e would end the scenario).
run() { "$@" || echo "exit $?"; }

# sg_suite DEV OUT: runs the sg3_utils checks, writing their answers to OUT.
sg_suite() {
  local dev=$1 out=$2
  head -c 512 /dev/zero >/tmp/zero512
  { head -c 512 /dev/zero; head -c 512 /dev/urandom; } >/tmp/caw-ok
  {
    echo "## sg_inq"; run sg_inq "$dev"
    for p in 0x00 0x80 0x83 0xb0 0xb1 0xb2; do echo "## sg_vpd $p"; run sg_vpd --page="$p" "$dev"; done
    echo "## sg_readcap -l"; run sg_readcap -l "$dev"
    echo "## sg_luns"; run sg_luns "$dev"
    echo "## sg_sync"; run sg_sync "$dev"
    echo "## sg_write_same"; run sg_write_same --16 --in=/tmp/zero512 --lba=1000 --num=64 "$dev"
    echo "## sg_write_same unmap"; run sg_write_same --16 --unmap --in=/tmp/zero512 --lba=2048 --num=2048 "$dev"
    echo "## sg_unmap"; run sg_unmap --force --lba=4096 --num=2048 "$dev"
    echo "## sg_get_lba_status"; run sg_get_lba_status --lba=4096 "$dev"
    dd if=/dev/zero of="$dev" bs=512 seek=5000 count=1 oflag=direct status=none
    echo "## sg_compare_and_write match"; run sg_compare_and_write --in=/tmp/caw-ok --lba=5000 "$dev"
    echo "## sg_compare_and_write miscompare"; run sg_compare_and_write --quiet --in=/tmp/caw-ok --lba=5000 "$dev"
    echo "## sg_reset device"; run sg_reset --device --no-esc "$dev"
    echo "## sg_reset target"; run sg_reset --target --no-esc "$dev"
    echo "## sg_turs after resets"; run sg_turs "$dev"; run sg_turs "$dev"
  } >"$out" 2>&1
  sed -i "s#$dev#DEV#g" "$out"
}

login_tcp "$IQN"
dev=$(wait_disk "$IQN")
sg_suite "$dev" /tmp/sg-tcp.txt
logout_all
cat /tmp/sg-tcp.txt
assert_contains "$(cat /tmp/sg-tcp.txt)" "SGPARITY01" "VPD 0x80"
assert_contains "$(grep -A3 'miscompare' /tmp/sg-tcp.txt)" "exit 14" "COMPARE AND WRITE miscompare"
for provider in native libibverbs; do
  if [ "$provider" != native ]; then
    iserd_stop
    sg_config "$provider"
    iserd_start /tmp/iserd-sg.yaml
  fi
  login_iser "$IQN"
  dev=$(wait_disk "$IQN")
  sg_suite "$dev" "/tmp/sg-iser-$provider.txt"
  assert_contains "$(iscsiadm -m session)" "iser: " "iscsiadm -m session"
  logout_all
  if ! diff -u /tmp/sg-tcp.txt "/tmp/sg-iser-$provider.txt"; then
    fail "sg3_utils answers differ between iscsi_tcp and ib_iser (provider $provider)"
  fi
  log "sg3_utils answers identical over iscsi_tcp and ib_iser (provider $provider)"
  out=$(iscsi-inq "iser://$VM_ADDR/$IQN/0" 2>&1) || fail "iscsi-inq over iser:// failed (provider $provider): $out"
  assert_contains "$out" "ISERD" "iscsi-inq iser://"
  log "libiscsi iscsi-inq over iser:// reads the target (provider $provider)"
done
iserd_stop
