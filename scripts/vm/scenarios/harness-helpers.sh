# vm-timeout: 60
# Self-test of lib.sh: negative paths of the helpers, rdma_cm listeners, two LIO LUNs on another
# port, teardown of LIO and tgt.
assert_fail to_bytes 1.5G
assert_eq 1048576 "$(to_bytes 1M)"
rping -s -a "$VM_ADDR" -p 3262 -C 1 >/dev/null 2>&1 &
wait_until 10 "rping listening" rdma_listening 3262
assert_fail rdma_listening 3263
assert_fail port_listening 3262
kill %1
assert_fail login_tcp iqn.2024-01.test:none "$VM_ADDR:3999"
assert_fail wait_disk "" 1
ISERD_BIN=/nonexistent assert_fail iserd_start /etc/hosts
LIO_PORTAL=$VM_ADDR:3261 lio_setup_fileio d1 /tmp/d1.img 16M iqn.2024-01.test:a
LIO_PORTAL=$VM_ADDR:3261 lio_setup_fileio d2 /tmp/d2.img 8M iqn.2024-01.test:a
login_tcp iqn.2024-01.test:a "$VM_ADDR:3261"
dev=$(wait_disk iqn.2024-01.test:a)
assert_eq 2 "$(session_disks iqn.2024-01.test:a | wc -l)" "LUN count"
fio_verify "$dev" 4M --bs=4k --iodepth=4
logout_all
lio_teardown
assert_eq "" "$(ls /sys/kernel/config/target/core | grep fileio || true)" "backstores left"
tgt_setup iqn.2024-01.test:t /tmp/t.img 8M
tgt_teardown
assert_fail alive $(pidof tgtd)
log "helpers ok"
