# vm-timeout: 240
# The Linux initiator against LIO (the kernel target) on one fileio LUN: login over TCP, fio
# with verify, logout; then the same over iSER (ib_iser -> ib_isert on rdma_rxe).
IQN=iqn.2003-01.org.linux-iscsi.vm:lio-fileio
lio_setup_fileio disk0 /tmp/lio-disk0.img 256M "$IQN" iser

for transport in tcp iser; do
  timed "login $transport" "login_$transport" "$IQN"
  dev=$(timed "disk $transport" wait_disk "$IQN")
  assert_contains "$(iscsiadm -m session)" "$transport: " "iscsiadm -m session"
  assert_contains "$(sg_readcap "$dev")" "268435456 bytes" "sg_readcap $dev"
  timed "fio $transport" fio_verify "$dev" 32M
  timed "logout $transport" logout_all
done
