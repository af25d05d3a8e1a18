# vm-timeout: 120
# The Linux initiator against tgt (the userspace reference target) over TCP: login, fio with
# verify, logout. (tgt's iSER does not work in this VM; LIO is the iSER reference.)
IQN=iqn.2001-04.com.example:tgt-disk
tgt_setup "$IQN" /tmp/tgt-disk.img 128M
timed "login tcp" login_tcp "$IQN"
dev=$(timed "disk tcp" wait_disk "$IQN")
assert_contains "$(sg_readcap "$dev")" "134217728 bytes" "sg_readcap $dev"
timed "fio tcp" fio_verify "$dev" 16M
timed "logout tcp" logout_all
