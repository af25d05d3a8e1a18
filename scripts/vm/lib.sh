# Helpers for VM scenarios. Sourced by bash inside the VM before each scenario (which runs
# with `set -eE -o pipefail` and vm_err_trace as ERR trap) and by the cleanup between scenarios.
# Helpers print what went wrong and return nonzero (so set -e ends the scenario, and they can
# still be used in `if`); assert_* and fail print "FAIL: ..." and exit the scenario.
. /etc/vm-run.conf                      # VM_ADDR, VM_INITIATOR, VM_TOKEN, ...
LIO=/sys/kernel/config/target
ISERD_BIN=${ISERD_BIN:-/usr/bin/iserd}  # the project's bin/iserd
ISERD_LOG=/tmp/iserd.log
ISERD_PIDFILE=/tmp/iserd.pid

# ---- general ----------------------------------------------------------------------------

log() { echo "[${SCENARIO:-vm} $(cut -d' ' -f1 /proc/uptime)s] $*"; }

fail() { echo "FAIL: $*" >&2; exit 1; }

# ping_timeouts: how many NOP-Out ping timeouts the initiator has logged since boot (a
# connection that stalled for 5 s or more); compare before and after a step.
ping_timeouts() { dmesg | grep -c "ping timeout" || true; }

# skip REASON: ends the scenario as skipped (status 77), e.g. when a test binary is missing.
skip() { echo "SKIP: $*"; exit 77; }

# assert_eq EXPECTED ACTUAL [WHAT]
assert_eq() { [ "$1" = "$2" ] || fail "${3:-value}: expected '$1', got '$2'"; }

# assert_contains TEXT NEEDLE [WHAT]
assert_contains() { [[ $1 == *"$2"* ]] || fail "${3:-output} does not contain '$2'; it is:"$'\n'"$1"; }

# assert_ok CMD...: CMD must succeed (it runs in a subshell, its output goes to the console).
assert_ok() { ("$@") || fail "command failed with status $?: $*"; }

# assert_fail CMD...: CMD must fail.
assert_fail() { if ("$@"); then fail "command succeeded but should have failed: $*"; fi; }

# timed LABEL CMD...: runs CMD and prints "TIME LABEL: N.NNs" on stderr; returns CMD's status.
timed() {
  local label=$1 t0 st=0
  shift
  t0=$(cut -d' ' -f1 /proc/uptime)
  "$@" || st=$?
  awk -v l="$label" -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "TIME %s: %.2fs\n", l, b - a }' >&2
  return $st
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.2 s until it succeeds.
wait_until() {
  local limit=$1 what=$2 end
  shift 2
  end=$(($(cut -d. -f1 /proc/uptime) + limit))
  until "$@"; do
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
      echo "timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# to_bytes SIZE: prints SIZE (a number with optional K, M or G suffix, powers of 1024) in bytes.
to_bytes() {
  [[ $1 =~ ^([0-9]+)([kKmMgG]?)$ ]] || { echo "bad size '$1' (want N, NK, NM or NG)" >&2; return 1; }
  case ${BASH_REMATCH[2]} in
    "") echo "$1" ;;
    [kK]) echo $((BASH_REMATCH[1] << 10)) ;;
    [mM]) echo $((BASH_REMATCH[1] << 20)) ;;
    [gG]) echo $((BASH_REMATCH[1] << 30)) ;;
  esac
}

# alive PID...: true when one of the PIDs is a live process (zombies do not count: PID 1 of
# this VM is a shell that does not reap daemons it inherits).
alive() {
  local p
  for p; do
    [ -r "/proc/$p/stat" ] && [ "$(sed 's/.*) //; s/ .*//' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 0
  done
  return 1
}

# vm_err_trace: the ERR trap of scenarios; names the failed command and where it ran. Silent
# in subshells such as $(...): their failure shows in the command that uses them.
vm_err_trace() {
  local st=$? i where=
  [ "$BASH_SUBSHELL" -eq 0 ] || return 0
  for ((i = 1; i < ${#BASH_SOURCE[@]}; i++)); do
    where+=" ${BASH_SOURCE[i]##*/}:${BASH_LINENO[i - 1]}"
  done
  echo "FAIL: status $st from '$BASH_COMMAND' at$where" >&2
}

# port_listening PORT: true when a TCP socket listens on PORT.
port_listening() {
  awk -v p="$(printf ':%04X' "$1")" '$2 ~ p "$" && $4 == "0A" { found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6
}

# rdma_listening PORT: true when an rdma_cm id listens on PORT (e.g. an iSER portal).
rdma_listening() { rdma res show cm_id 2>/dev/null | grep -q "state LISTEN .*src-addr [^ ]*:$1 "; }

# rxe_gid_index [IPV4]: prints the GID table index of rxe0 holding IPV4 (default $VM_ADDR) as
# an IPv4-mapped RoCE v2 GID, e.g. for ibv_rc_pingpong -g.
rxe_gid_index() {
  local want gid
  want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' $(tr . ' ' <<<"${1:-$VM_ADDR}"))
  for gid in /sys/class/infiniband/rxe0/ports/1/gids/*; do
    [ "$(cat "$gid")" = "$want" ] && { echo "${gid##*/}"; return 0; }
  done
  echo "rxe_gid_index: no GID of rxe0 holds ${1:-$VM_ADDR}" >&2
  return 1
}

# ---- iserd ------------------------------------------------------------------------------

# iserd_start CONFIG_FILE [PORT]: starts $ISERD_BIN -config CONFIG_FILE in the background
# (log in $ISERD_LOG, pid in $ISERD_PID) and waits until it listens on PORT (default 3260)
# over TCP or rdma_cm.
# Call it from the scenario's own shell, not in a subshell, so that ISERD_PID stays set.
iserd_start() {
  local config=$1 port=${2:-3260} end st
  [ -f "$config" ] || { echo "iserd_start: no config file '$config'" >&2; return 1; }
  [ -x "$ISERD_BIN" ] || { echo "iserd_start: $ISERD_BIN is missing (run make build)" >&2; return 1; }
  "$ISERD_BIN" -config "$config" >>"$ISERD_LOG" 2>&1 &
  ISERD_PID=$!
  echo "$ISERD_PID" >"$ISERD_PIDFILE"
  end=$(($(cut -d. -f1 /proc/uptime) + 30))
  until port_listening "$port" || rdma_listening "$port"; do
    if ! alive "$ISERD_PID"; then
      wait "$ISERD_PID" && st=0 || st=$?
      echo "iserd_start: iserd exited with status $st before listening on port $port; its log:" >&2
      cat "$ISERD_LOG" >&2
      return 1
    fi
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
      echo "iserd_start: iserd does not listen on port $port after 30s; its log:" >&2
      cat "$ISERD_LOG" >&2
      return 1
    fi
    sleep 0.2
  done
  log "iserd running (pid $ISERD_PID, port $port)"
}

# iserd_stop: sends SIGTERM to the iserd started by iserd_start and waits up to 15 s.
# Fails when it had to be killed or exited with a status other than 0 or 143 (SIGTERM).
iserd_stop() {
  local pid st
  pid=${ISERD_PID:-$(cat "$ISERD_PIDFILE" 2>/dev/null)}
  [ -n "$pid" ] || return 0
  rm -f "$ISERD_PIDFILE"
  ISERD_PID=
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until 15 "iserd to exit" eval "! alive $pid"; then
    kill -KILL "$pid" 2>/dev/null
    echo "iserd_stop: iserd ignored SIGTERM for 15s and was killed; log tail:" >&2
    tail -20 "$ISERD_LOG" >&2
    return 1
  fi
  wait "$pid" 2>/dev/null && st=0 || st=$?
  # wait only knows our own children; a pid from the pid file reports 127.
  case $st in 0 | 127 | 143) return 0 ;; esac
  echo "iserd_stop: iserd exited with status $st; log tail:" >&2
  tail -20 "$ISERD_LOG" >&2
  return 1
}

# ---- initiator (open-iscsi) --------------------------------------------------------------

# iscsi_login IQN PORTAL TRANSPORT: discovers PORTAL over TCP, checks that IQN is offered,
# points the node record at TRANSPORT (tcp or iser) and logs in.
iscsi_login() {
  local iqn=$1 portal=${2:-$VM_ADDR} transport=$3 out
  [ -n "$iqn" ] || { echo "iscsi_login: no target name given" >&2; return 1; }
  out=$(iscsiadm -m discovery -t sendtargets -p "$portal" 2>&1) ||
    { echo "discovery at $portal failed:"$'\n'"$out" >&2; return 1; }
  if ! grep -q " $iqn\$" <<<"$out"; then
    echo "discovery at $portal does not offer $iqn; it returned:"$'\n'"$out" >&2
    return 1
  fi
  if ! iscsiadm -m node -T "$iqn" -p "$portal" >/dev/null 2>&1; then
    echo "note: discovery did not report portal $portal for $iqn (it said: $out); adding a node record"
    out=$(iscsiadm -m node -o new -T "$iqn" -p "$portal" 2>&1) ||
      { echo "creating node record $iqn at $portal failed:"$'\n'"$out" >&2; return 1; }
  fi
  out=$(iscsiadm -m node -T "$iqn" -p "$portal" -o update -n iface.transport_name -v "$transport" 2>&1) ||
    { echo "setting transport $transport on $iqn at $portal failed:"$'\n'"$out" >&2; return 1; }
  out=$(iscsiadm -m node -T "$iqn" -p "$portal" -l 2>&1) ||
    { echo "login to $iqn at $portal over $transport failed:"$'\n'"$out" >&2; return 1; }
  log "logged in to $iqn at $portal over $transport"
}

# login_tcp IQN [PORTAL]: logs in over iscsi_tcp (PORTAL defaults to $VM_ADDR, port 3260).
login_tcp() { iscsi_login "$1" "${2:-$VM_ADDR}" tcp; }

# login_iser IQN [PORTAL]: discovers over TCP, then logs in over ib_iser (rdma_rxe).
login_iser() { iscsi_login "$1" "${2:-$VM_ADDR}" iser; }

# session_disks [IQN]: lists sdX of the newest session (to IQN when given), lowest LUN first.
session_disks() {
  local n s last=
  for n in $(ls /sys/class/iscsi_session 2>/dev/null | sed 's/^session//' | sort -n); do
    s=/sys/class/iscsi_session/session$n
    [ -z "${1:-}" ] || [ "$(cat "$s/targetname")" = "$1" ] || continue
    last=$s
  done
  [ -n "$last" ] || return 1
  ls -d "$last"/device/target*/*:*:*:*/block/* 2>/dev/null | sort -t: -k 4 -n | xargs -r -n1 basename
}

# wait_disk [IQN] [SECONDS]: waits (default 30 s) for the disk of the newest iSCSI session (to
# IQN when given) and prints its /dev/sdX.
wait_disk() {
  local dev end
  end=$(($(cut -d. -f1 /proc/uptime) + ${2:-30}))
  while :; do
    dev=$(session_disks "${1:-}" | head -1 || true) # none yet is not an error
    if [ -n "$dev" ] && [ -b "/dev/$dev" ]; then
      echo "/dev/$dev"
      return 0
    fi
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
      echo "wait_disk: no disk appeared for ${1:-any session} within ${2:-30}s; sessions:" >&2
      iscsiadm -m session -P 3 >&2 2>&1
      return 1
    fi
    sleep 0.1
  done
}

# logout_all: logs out of every session and forgets all node and discovery records and the
# ifaces scenarios made (discovery binds a record to every iface there is).
logout_all() {
  local out st=0
  if [ -n "$(ls /sys/class/iscsi_session 2>/dev/null)" ]; then
    out=$(iscsiadm -m node -U all 2>&1) || { echo "logout failed:"$'\n'"$out" >&2; st=1; }
  fi
  rm -rf /var/lib/iscsi/nodes /var/lib/iscsi/send_targets
  rm -f /etc/iscsi/ifaces/*
  if [ -n "$(ls /sys/class/iscsi_session 2>/dev/null)" ]; then
    echo "logout_all: sessions remain: $(ls /sys/class/iscsi_session)" >&2
    st=1
  fi
  return $st
}

# iface_new NAME INITIATOR: creates the open-iscsi iface NAME, whose sessions carry the
# initiator name INITIATOR (several initiators on one machine; logout_all removes it).
iface_new() {
  iscsiadm -m iface -I "$1" -o new >/dev/null &&
    iscsiadm -m iface -I "$1" -o update -n iface.initiatorname -v "$2" >/dev/null
}

# iface_login IQN PORTAL IFACE: logs in to IQN at PORTAL (ip:port) through IFACE and prints the
# /dev/sdX that appeared (waits up to 10 s for it). Makes the node record itself: after a
# SendTargets discovery through IFACE, iscsiadm would log in through both records and fail.
iface_login() {
  local before d x
  before=" $(ls /sys/block | grep '^sd' | tr '\n' ' ') "
  iscsiadm -m node -T "$1" -p "$2" -I "$3" -o new >/dev/null || return 1
  iscsiadm -m node -T "$1" -p "$2" -I "$3" -l >/dev/null || return 1
  for _ in $(seq 100); do
    d=
    for x in $(ls /sys/block | grep '^sd'); do [[ $before == *" $x "* ]] || d=$x; done
    [ -n "$d" ] && { echo "/dev/$d"; return 0; }
    sleep 0.1
  done
  echo "iface_login: no disk appeared for $3 at $2" >&2
  return 1
}

# fio_verify DEV SIZE [FIO_OPTION...]: random writes of mixed sizes (4k-256k) over the first
# SIZE bytes of DEV with crc32c checksums, then reads everything back and verifies it.
# Extra options (e.g. --bs=4k, --iodepth=1) override the defaults; any --bs* option replaces
# the default block size mix.
fio_verify() {
  local dev=$1 size=$2 bs=--bssplit=4k/50:64k/30:256k/20 out st=0
  shift 2
  [[ " $* " == *" --bs"* ]] && bs=
  out=$(fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 --iodepth=16 \
    --rw=randwrite $bs --size="$size" --verify=crc32c \
    --do_verify=1 --verify_fatal=1 --exitall_on_error "$@" 2>&1) || st=$?
  if [ $st -ne 0 ]; then
    echo "fio_verify $dev $size failed with status $st:"$'\n'"$out" >&2
    return 1
  fi
  log "fio_verify $dev $size ok:"
  grep -E '^ +(read|write): IOPS=' <<<"$out"
}

# ---- dm-multipath (multipath-tools) ----------------------------------------------------

# multipath_start: starts udevd and multipathd set up for iserd's LUNs: paths grouped by ALUA
# priority (active/optimized first), a TUR checker every second, immediate failback, and I/O
# queued for up to 60 checker intervals while no path is usable.
multipath_start() {
  modprobe -a dm_multipath dm_round_robin dm_service_time scsi_dh_alua || return 1
  mkdir -p /etc/multipath
  cat >/etc/multipath.conf <<'EOC'
defaults {
	user_friendly_names yes
	find_multipaths no
	polling_interval 1
	max_polling_interval 1
}
devices {
	device {
		vendor "ISERD"
		product ".*"
		path_grouping_policy group_by_prio
		prio alua
		hardware_handler "1 alua"
		path_checker tur
		failback immediate
		no_path_retry 60
	}
}
EOC
  if ! pidof systemd-udevd >/dev/null; then
    /lib/systemd/systemd-udevd --daemon --resolve-names=never >/tmp/udevd.log 2>&1 ||
      { echo "multipath_start: udevd failed:" >&2; cat /tmp/udevd.log >&2; return 1; }
  fi
  udevadm trigger --action=add --subsystem-match=block && udevadm settle --timeout=30 || return 1
  multipathd >/tmp/multipathd.log 2>&1 || { echo "multipath_start: multipathd failed:" >&2; cat /tmp/multipathd.log >&2; return 1; }
  wait_until 20 "multipathd" eval 'multipathd show daemon >/dev/null 2>&1'
}

# mpath_login IQN ADDRESS...: logs in over TCP to IQN at each address, each session set to give a
# lost path up after 5 s (multipath then retries on another) instead of holding it in recovery.
mpath_login() {
  local iqn=$1 p
  shift
  for p in "$@"; do
    login_tcp "$iqn" "$p" || return 1
    iscsiadm -m node -T "$iqn" -p "$p" -o update -n node.session.timeo.replacement_timeout -v 5 || return 1
  done
}

# mpath_up IQN ADDRESS...: logs in through every address (mpath_login), starts multipathd and
# waits for one map with a path per address; sets MP to the map's device and TOPO to
# `multipath -ll`, which must show the ALUA hardware handler.
mpath_up() {
  local iqn=$1
  shift
  mpath_login "$iqn" "$@" || return 1
  timed "multipathd start" multipath_start || return 1
  MP=$(timed "multipath map with $# paths" mpath_wait $#) || return 1
  TOPO=$(multipath -ll)
  log "multipath topology:"$'\n'"$TOPO"
  assert_contains "$TOPO" "hwhandler='1 alua'" "multipath -ll"
}

# map_ios DEV: reads and writes DEV (a /dev/mapper name too) has completed so far.
map_ios() { awk '{print $1 + $5}' "/sys/block/$(basename "$(readlink -f "$1")")/stat"; }

# resumed_after DEV SINCE: waits until DEV completes I/O again and prints the seconds since
# SINCE (a value of now).
resumed_after() {
  local n0
  n0=$(map_ios "$1")
  wait_until 60 "I/O to resume on $1" eval "[ \$(map_ios $1) -gt $n0 ]" || return 1
  awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%.1f\n", b - a }'
}

# mpath_wait PATHS [SECONDS]: waits (default 30 s) until one multipath map has PATHS paths the
# checker calls ready, and prints its /dev/mapper device.
mpath_wait() {
  local want=$1 end name
  end=$(($(cut -d. -f1 /proc/uptime) + ${2:-30}))
  while :; do
    name=$(multipathd show maps raw format "%n" 2>/dev/null | head -1)
    if [ -n "$name" ] && [ "$(multipathd show paths raw format "%m %t %T" 2>/dev/null |
      awk -v m="$name" '$1 == m && $2 == "active" && $3 == "ready"' | wc -l)" -eq "$want" ]; then
      echo "/dev/mapper/$name"
      return 0
    fi
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
      echo "mpath_wait: no map with $want ready paths after ${2:-30}s:" >&2
      multipath -ll >&2 2>&1
      multipathd show paths >&2 2>&1
      return 1
    fi
    sleep 0.5
  done
}

# multipath_stop: removes the maps (failing queued I/O first) and stops multipathd and udevd.
multipath_stop() {
  local m
  pidof multipathd >/dev/null || pidof systemd-udevd >/dev/null || return 0
  for m in $(dmsetup ls --target multipath 2>/dev/null | awk '{print $1}'); do
    dmsetup message "$m" 0 fail_if_no_path >/dev/null 2>&1 || true
  done
  multipathd shutdown >/dev/null 2>&1 || pkill -x multipathd || true
  multipath -F >/dev/null 2>&1 || true
  udevadm control --exit >/dev/null 2>&1 || pkill -x systemd-udevd || true
  wait_until 10 "multipathd and udevd to exit" eval '! pidof multipathd >/dev/null && ! pidof systemd-udevd >/dev/null'
}

# ---- iserd cluster: etcd and two gateways on one shared device --------------------------

VM_ADDR2=192.0.2.2 # the second gateway's address, on d0 beside $VM_ADDR
ETCD_PID=
declare -A GW_PID

# cluster_init IQN TTL: prepares a cluster whose gateways (gw_start) serve IQN with LUN 0 on
# one shared 256 MiB loop device ($CLUSTER_DEV), with a lease TTL of TTL seconds: adds
# $VM_ADDR2 to d0, keeps the cluster's files (etcd's data included) in $CLUSTER_DIR, under the
# scenario's directory, and sets cluster_cleanup as the EXIT trap.
cluster_init() {
  CLUSTER_DIR=$PWD/cluster
  CLUSTER_IQN=$1
  CLUSTER_TTL=$2
  ip addr add "$VM_ADDR2/24" dev d0 2>/dev/null || true
  mkdir -p "$CLUSTER_DIR/a" "$CLUSTER_DIR/b" "$CLUSTER_DIR/etcd" || return 1
  truncate -s 256M "$CLUSTER_DIR/shared.img" || return 1
  modprobe loop 2>/dev/null || true
  CLUSTER_DEV=$(losetup -f) || return 1 # busybox's losetup: no --show
  losetup "$CLUSTER_DEV" "$CLUSTER_DIR/shared.img" || return 1
  trap cluster_cleanup EXIT
}

# cluster_cleanup: the EXIT trap of cluster scenarios: on failure prints the end of the
# gateways' and etcd's logs; kills them (continuing stopped ones first), stops multipath,
# logs out and frees the loop device.
cluster_cleanup() {
  local st=$? p f
  if [ $st -ne 0 ]; then
    for f in a.log b.log etcd.log; do
      echo "--- $f (last lines)"
      tail -25 "$CLUSTER_DIR/$f" 2>/dev/null || true
    done
  fi
  for p in "${GW_PID[@]}" $ETCD_PID; do
    kill -CONT "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
  done
  multipath_stop || true
  logout_all || true
  losetup -d "$CLUSTER_DEV" 2>/dev/null || true
}

# etcd_start: starts etcd-server (data in $CLUSTER_DIR/etcd, kept across restarts; log in
# $CLUSTER_DIR/etcd.log, pid in $ETCD_PID) and waits until it listens on 127.0.0.1:2379.
etcd_start() {
  etcd --name vm --data-dir "$CLUSTER_DIR/etcd/data" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster vm=http://127.0.0.1:2380 \
    --log-level warn >>"$CLUSTER_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  wait_until 60 "etcd to listen" port_listening 2379
}

# etcd_stop: stops etcd (SIGTERM) and waits for it.
etcd_stop() {
  kill -TERM "$ETCD_PID" || return 1
  wait "$ETCD_PID" 2>/dev/null || true
}

# gw_start N ADDRESS TPGT: starts gateway gw-N (N is a or b) with its portal on ADDRESS:3260
# in port group TPGT (config $CLUSTER_DIR/N.yaml, log N.log, admin socket N.sock, pid in
# ${GW_PID[N]}) and waits until it listens and holds its lease.
gw_start() {
  cat >"$CLUSTER_DIR/$1.yaml" <<EOC
data_dir: $CLUSTER_DIR/$1
portals: [{address: "$2:3260", tpgt: $3}]
targets:
  - name: $CLUSTER_IQN
    open: true
    luns: [{lun: 0, path: $CLUSTER_DEV, direct: true, thin: false}]
cluster: {name: vm, node: gw-$1, endpoints: [http://127.0.0.1:2379], lease_ttl: ${CLUSTER_TTL}s}
EOC
  "$ISERD_BIN" -config "$CLUSTER_DIR/$1.yaml" -admin-socket "$CLUSTER_DIR/$1.sock" >>"$CLUSTER_DIR/$1.log" 2>&1 &
  GW_PID[$1]=$!
  wait_until 30 "gw-$1 to listen" eval "ss -ltn | grep -q ' $2:3260 '" || return 1
  wait_until 30 "gw-$1 to hold its lease" eval "gw_status $1 2>/dev/null | grep -q 'state:   allowed'"
}

# gw_stop N...: stops gateways (SIGTERM: they finish their commands and revoke their leases)
# and waits up to 15 s for them; fails when one had to be killed or exited with another status.
gw_stop() {
  local n st=0 rc
  for n; do kill -TERM "${GW_PID[$n]}" || return 1; done
  for n; do
    if ! wait_until 15 "gw-$n to exit" eval "! alive ${GW_PID[$n]}"; then
      kill -KILL "${GW_PID[$n]}"
      st=1
    fi
    wait "${GW_PID[$n]}" 2>/dev/null && rc=0 || rc=$?
    case $rc in 0 | 143) ;; *) echo "gw-$n exited with status $rc" >&2; st=1 ;; esac
  done
  return $st
}

# gw_status N: gateway N's `iserctl cluster status`.
gw_status() { iserctl --socket "$CLUSTER_DIR/$1.sock" cluster status; }

# now: seconds since boot (/proc/uptime, with hundredths); since T0: the seconds since now was T0.
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# settle DEV: TEST UNIT READY until GOOD, passing the unit attentions of new or recovered
# sessions.
settle() { wait_until 60 "TEST UNIT READY on $1" eval "sg_turs $1 >/dev/null 2>&1"; }

# cluster_two_hosts IQN NAME: a cluster serving IQN (lease TTL 3 s): etcd, gw-a on $VM_ADDR and
# gw-b on $VM_ADDR2, and two initiators, iqn.2026-12.org.iserd:NAME-host1 logged in through gw-a
# only and NAME-host2 through gw-b only (open-iscsi ifaces if1, if2), each disk answering TEST
# UNIT READY; sets H1 and H2 to their disks.
cluster_two_hosts() {
  cluster_init "$1" 3
  etcd_start
  gw_start a "$VM_ADDR" 1
  gw_start b "$VM_ADDR2" 2
  iface_new if1 "iqn.2026-12.org.iserd:$2-host1"
  iface_new if2 "iqn.2026-12.org.iserd:$2-host2"
  H1=$(iface_login "$1" "$VM_ADDR:3260" if1)
  H2=$(iface_login "$1" "$VM_ADDR2:3260" if2)
  log "host1 via gw-a: $H1, host2 via gw-b: $H2"
  settle "$H1"
  settle "$H2"
}

# ---- LIO (kernel target, configured through configfs) -----------------------------------

# cfs_write VALUE FILE: writes a configfs attribute, reporting which one failed.
cfs_write() { echo "$1" >"$2" || { echo "writing '$1' to $2 failed" >&2; return 1; }; }

# lio_setup_fileio NAME FILE SIZE IQN [iser]: exports FILE (created with SIZE if missing) as
# the next LUN of target IQN, portal $LIO_PORTAL (default $VM_ADDR:3260), open to every
# initiator without authentication; with "iser" the portal also accepts iSER.
lio_setup_fileio() {
  local name=$1 file=$2 size=$3 iqn=$4 iser=${5:-} bytes so tpg np lun
  [ $# -ge 4 ] || { echo "usage: lio_setup_fileio NAME FILE SIZE IQN [iser]" >&2; return 1; }
  bytes=$(to_bytes "$size") || return 1
  modprobe -a target_core_mod target_core_file iscsi_target_mod || return 1
  if [ "$iser" = iser ]; then modprobe ib_isert || return 1; fi
  [ -e "$file" ] || truncate -s "$bytes" "$file" || return 1
  so=$LIO/core/fileio_0/$name
  mkdir -p "$so" || return 1
  cfs_write "fd_dev_name=$file,fd_dev_size=$bytes" "$so/control" &&
    cfs_write 1 "$so/enable" || return 1
  tpg=$LIO/iscsi/$iqn/tpgt_1
  mkdir -p "$tpg" || return 1
  lun=$tpg/lun/lun_$(ls "$tpg/lun" | wc -l)
  mkdir "$lun" && ln -s "$so" "$lun/$name" || return 1
  np=$tpg/np/${LIO_PORTAL:-$VM_ADDR:3260}
  if [ ! -d "$np" ]; then
    mkdir "$np" || return 1
  fi
  if [ "$iser" = iser ]; then cfs_write 1 "$np/iser" || return 1; fi
  cfs_write 0 "$tpg/attrib/authentication" &&
    cfs_write 1 "$tpg/attrib/generate_node_acls" &&
    cfs_write 1 "$tpg/attrib/cache_dynamic_acls" &&
    cfs_write 0 "$tpg/attrib/demo_mode_write_protect" &&
    cfs_write 1 "$tpg/enable" || return 1
  log "LIO: $iqn ${lun##*/} = $file ($size) on ${np##*/}${iser:+ (tcp+iser)}"
}

# lio_teardown: removes every LIO target and backstore.
lio_teardown() {
  local t tpg d st=0
  [ -d "$LIO/iscsi" ] || [ -d "$LIO/core" ] || return 0
  for t in "$LIO"/iscsi/*; do
    [ "${t##*/}" != discovery_auth ] && [ -d "$t" ] || continue
    for tpg in "$t"/tpgt_*; do
      [ -d "$tpg" ] || continue
      echo 0 >"$tpg/enable" 2>/dev/null
      for d in "$tpg"/acls/*/lun_* "$tpg"/lun/lun_*; do
        [ -d "$d" ] || continue
        find "$d" -maxdepth 1 -type l -exec rm -f {} +
        rmdir "$d" || st=1
      done
      for d in "$tpg"/acls/* "$tpg"/np/*; do
        [ -d "$d" ] && { rmdir "$d" || st=1; }
      done
      rmdir "$tpg" || st=1
    done
    rmdir "$t" || st=1
  done
  for d in "$LIO"/core/*_[0-9]*/*; do
    [ -d "$d" ] && [ "${d##*/}" != alua ] && { rmdir "$d" || st=1; }
  done
  for d in "$LIO"/core/*_[0-9]*; do
    [ -d "$d" ] && { rmdir "$d" || st=1; }
  done
  [ $st -eq 0 ] || echo "lio_teardown: some configfs entries could not be removed" >&2
  return $st
}

# ---- tgt (userspace reference target, TCP) ---------------------------------------------

# tgt_setup IQN FILE [SIZE]: starts tgtd on $TGT_PORTAL (default $VM_ADDR:3260) if needed and
# exports FILE (created with SIZE if missing) as LUN 1 of a new target IQN, open to all.
tgt_setup() {
  local iqn=$1 file=$2 size=${3:-} tid out
  [ $# -ge 2 ] || { echo "usage: tgt_setup IQN FILE [SIZE]" >&2; return 1; }
  if [ ! -e "$file" ]; then
    [ -n "$size" ] || { echo "tgt_setup: $file does not exist and no SIZE given" >&2; return 1; }
    truncate -s "$(to_bytes "$size")" "$file" || return 1
  fi
  if ! alive $(pidof tgtd); then
    tgtd --iscsi portal="${TGT_PORTAL:-$VM_ADDR:3260}" >>/tmp/tgtd.log 2>&1 ||
      { echo "tgtd failed to start:" >&2; cat /tmp/tgtd.log >&2; return 1; }
    wait_until 10 "tgtd" eval 'tgtadm --op show --mode sys >/dev/null 2>&1' || return 1
  fi
  tid=$(($(tgtadm --lld iscsi --op show --mode target | grep -c '^Target ' || true) + 1))
  out=$( { tgtadm --lld iscsi --op new --mode target --tid "$tid" -T "$iqn" &&
    tgtadm --lld iscsi --op new --mode logicalunit --tid "$tid" --lun 1 -b "$file" &&
    tgtadm --lld iscsi --op bind --mode target --tid "$tid" -I ALL; } 2>&1) ||
    { echo "tgt_setup: tgtadm failed:"$'\n'"$out" >&2; return 1; }
  log "tgt: $iqn (tid $tid) LUN 1 = $file on ${TGT_PORTAL:-$VM_ADDR:3260}"
}

# tgt_teardown: deletes tgt's targets and stops tgtd (it ignores SIGTERM and only exits on
# request once it has no targets).
tgt_teardown() {
  local pid tid
  pid=$(pidof tgtd) && alive $pid || return 0
  for tid in $(tgtadm --lld iscsi --op show --mode target | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force || true
  done
  tgtadm --op delete --mode system || true
  wait_until 10 "tgtd to exit" eval "! alive $pid" || { kill -KILL $pid; return 1; }
}

# vm_cleanup: undoes what a scenario may have left behind; run between scenarios.
vm_cleanup() {
  local st=0
  multipath_stop || st=1
  logout_all || st=1
  iserd_stop || st=1
  tgt_teardown || st=1
  lio_teardown || st=1
  loops_detach || st=1
  return $st
}

# loops_detach: detaches the loop devices left on files of the scenarios' directories (a
# scenario killed before its own cleanup), so that removing those files frees their memory.
loops_detach() {
  local f d st=0
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case $(cat "$f") in
      /tmp/scenario.*)
        d=${f#/sys/block/}
        losetup -d "/dev/${d%%/*}" || st=1
        ;;
    esac
  done
  return $st
}
