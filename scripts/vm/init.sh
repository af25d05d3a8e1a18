#!/bin/sh
# PID 1 of the test VM (installed as /init by run.sh). Sets the VM up (modules, rdma_rxe on a
# dummy interface, iscsid), runs each scenario listed in /etc/vm-run.conf under bash with
# lib.sh sourced, prints a marker line with its status, and powers off.
# Markers: @@VM:<token>:BEGIN:<name>, @@VM:<token>:END:<name>:<status>:<seconds>,
#          @@VM:<token>:DONE:<status>  (run.sh and run-all.sh parse them).
export PATH=/usr/sbin:/usr/bin:/usr/local/bin HOME=/root TERM=dumb
. /etc/vm-run.conf

now() { cut -d' ' -f1 /proc/uptime; }
marker() { echo "@@VM:$VM_TOKEN:$*"; }

# drain_console waits (at most 2 s) until the serial port has sent what is queued: power-off
# does not wait for it.
drain_console() {
  prev= i=0
  while [ $i -lt 40 ]; do
    cur=$(sed -n 's/^0:.* tx:\([0-9]*\).*/\1/p' /proc/tty/driver/serial)
    [ "$cur" = "$prev" ] && return
    prev=$cur i=$((i + 1))
    sleep 0.05
  done
}

power_off() {
  sync
  drain_console
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

setup() {
  mount -t proc proc /proc &&
  mount -t sysfs sysfs /sys &&
  mount -t devtmpfs devtmpfs /dev &&
  mkdir -p /dev/pts /dev/shm &&
  mount -t devpts devpts /dev/pts &&
  mount -t tmpfs tmpfs /dev/shm &&
  mount -t tmpfs tmpfs /run &&
  mount -t tmpfs tmpfs /tmp || return
  echo /bin/modprobe >/proc/sys/kernel/modprobe
  hostname vm
  ip link set lo up || return
  # crc32 crypto first: rdma_rxe cannot init without it. The -intel/-pclmul ones need CPU features.
  modprobe -q crc32c-intel 2>/dev/null
  modprobe -q crc32-pclmul 2>/dev/null
  for m in configfs crc32_generic crc32c_generic rdma_rxe ib_uverbs rdma_ucm ib_iser iscsi_tcp dummy veth sd_mod sg ext4; do
    modprobe "$m" || { echo "vm: modprobe $m failed"; return 1; }
  done
  mount -t configfs configfs /sys/kernel/config || return
  ip link add d0 type dummy &&
  ip addr add "$VM_ADDR/24" dev d0 &&
  ip link set d0 up &&
  rdma link add rxe0 type rxe netdev d0 || { echo "vm: rdma_rxe setup failed"; return 1; }
  # The initiator name is fixed (in vm-run.conf) so that ACLs in scenarios can name it.
  mkdir -p /run/lock/iscsi /etc/iscsi/ifaces /var/lib/iscsi /etc/target &&
  echo "InitiatorName=$VM_INITIATOR" >/etc/iscsi/initiatorname.iscsi || return
  # A D-Bus system bus, as on a Debian host: targetcli (LIO's shell) connects to it at start.
  mkdir -p /run/dbus && dbus-daemon --config-file=/usr/share/dbus-1/session.conf \
    --address=unix:path=/run/dbus/system_bus_socket --fork ||
    { echo "vm: dbus-daemon did not start"; return 1; }
  iscsid -f >/tmp/iscsid.log 2>&1 &
  i=0
  while ! grep -q ISCSIADM_ABSTRACT /proc/net/unix; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "vm: iscsid did not start"; cat /tmp/iscsid.log; return 1; }
    sleep 0.1
  done
}

# run_one NAME FILE TIMEOUT: runs one scenario in its own session, killed at TIMEOUT seconds,
# then cleans up whatever it left behind (sessions, LIO, tgt, iserd).
run_one() {
  name=$1 file=$2 limit=$3
  marker "BEGIN:$name"
  start=$(now)
  dir=$(mktemp -d /tmp/scenario.XXXXXX)
  (cd "$dir" && exec setsid bash -c 'SCENARIO=$0; set -eE -o pipefail; . /usr/lib/vm/lib.sh; trap vm_err_trace ERR; . "$1"' \
    "$name" "$file" </dev/null 2>&1) &
  pid=$!
  setsid sh -c "sleep $limit; echo 'vm: scenario $name timed out after ${limit}s, killing it'; kill -9 -$pid" &
  watchdog=$!
  wait $pid
  status=$?
  kill -9 "-$watchdog" 2>/dev/null
  kill -9 "-$pid" 2>/dev/null
  bash -c '. /usr/lib/vm/lib.sh; vm_cleanup' >/tmp/cleanup.log 2>&1 || {
    echo "vm: cleanup after $name failed:"; cat /tmp/cleanup.log
  }
  # /tmp is the VM's memory: a scenario's files (LUN images, a cluster's shared device) go
  # with it, or later scenarios run out of space.
  rm -rf "$dir"
  marker "END:$name:$status:$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
  [ "$status" -eq 0 ] || [ "$status" -eq 77 ]
}

echo   # ends the firmware's last console line
overall=0
if setup; then
  echo "vm: ready after $(now)s of uptime"
  for entry in $VM_SCENARIOS; do          # entries are name=timeout; files in /usr/lib/vm/scenarios
    name=${entry%=*}
    limit=${entry#*=}
    left=$(awk -v t="$VM_TIMEOUT" -v u="$(now)" 'BEGIN { printf "%d", t - u - 20 }')
    [ "$left" -lt "$limit" ] && limit=$left
    [ "$limit" -lt 1 ] && limit=1
    run_one "$name" "/usr/lib/vm/scenarios/$name.sh" "$limit" || overall=1
  done
else
  echo "vm: setup failed"
  dmesg | tail -20
  overall=2
fi
marker "DONE:$overall"
power_off
