# vm-timeout: 600
# COMPARE AND WRITE (VMware's ATS) atomic across gateways with the Linux initiator: two iserd
# gateways (gw-a on 192.0.2.1, gw-b on 192.0.2.2) on one shared loop device, coordinated
# through etcd; one session to each (two /dev/sdX of the same LUN). A loop per gateway
# increments a counter in block 0: it reads the block (O_DIRECT), COMPARE AND WRITEs old to
# old+1 with sg_compare_and_write and tries again on a miscompare. The counter must end at the
# number of successful commands: no increment lost. Prints the time per increment through one
# gateway alone (the lock kept there) and through both at once (the lock handed over).
IQN=iqn.2026-12.org.iserd:vm-scaleout-caw
INCS=${CAW_INCS:-100} # successful increments per loop
MISCOMPARE=14         # sg3_utils' exit status for a miscompare (SG_LIB_CAT_MISCOMPARE)
# block N: a 512-byte block holding counter N (16 decimal digits, then zeroes).
block() { printf '%016d' "$1" && head -c 496 /dev/zero; }
# counter DEV: the counter in block 0, read through DEV without the page cache.
counter() {
  local v
  v=$(dd if="$1" bs=512 count=1 iflag=direct status=none | head -c 16) || return 1
  echo $((10#$v))
}
# incr DEV N OUT: increments the counter N times through DEV; writes "ok miscompares others"
# to OUT. Other failures (unit attentions, BUSY that the kernel gave up on) are retried, at most
# 20 times in all.
incr() {
  local dev=$1 n=$2 ok=0 mis=0 other=0 dir rc cur
  dir=$(mktemp -d)
  while [ "$ok" -lt "$n" ]; do
    dd if="$dev" of="$dir/old" bs=512 count=1 iflag=direct status=none
    cur=$(head -c 16 "$dir/old")
    { cat "$dir/old" && block $((10#$cur + 1)); } >"$dir/caw"
    rc=0
    sg_compare_and_write --in="$dir/caw" --lba=0 --num=1 --xferlen=1024 "$dev" >"$dir/out" 2>&1 || rc=$?
    case $rc in
      0) ok=$((ok + 1)) ;;
      "$MISCOMPARE") mis=$((mis + 1)) ;;
      *)
        other=$((other + 1))
        [ "$other" -le 20 ] || { echo "incr $dev: status $rc: $(cat "$dir/out")" >&2; return 1; }
        ;;
    esac
  done
  echo "$ok $mis $other" >"$3"
}
# run WHAT DEV...: one incr loop per DEV at once; checks the counter and prints the figures.
run() {
  local what=$1 t0 before after sum=0 mis=0 other=0 d i=0 pids=() r
  shift
  before=$(counter "$1")
  t0=$(now)
  for d; do
    incr "$d" "$INCS" "$PWD/res$i" &
    pids+=($!)
    i=$((i + 1))
  done
  for i in "${pids[@]}"; do wait "$i" || fail "$what: an increment loop failed"; done
  local took
  took=$(since "$t0")
  for ((i = 0; i < $#; i++)); do
    read -r -a r <"$PWD/res$i"
    sum=$((sum + r[0])) mis=$((mis + r[1])) other=$((other + r[2]))
  done
  after=$(counter "$1")
  log "FIGURE $what: $sum increments in ${took}s ($(awk -v t="$took" -v n="$sum" 'BEGIN { printf "%.1f", 1000 * t / n }') ms each, reads and process starts included), $mis miscompares, $other other failures retried"
  assert_eq "$((before + sum))" "$after" "$what: the counter (from $before, $sum successful COMPARE AND WRITEs)"
}

cluster_two_hosts "$IQN" caw # host1 ($H1) through gw-a, host2 ($H2) through gw-b
block 0 >"$PWD/zero" && dd if="$PWD/zero" of="$H1" bs=512 count=1 oflag=direct status=none # from a file: dd reads a pipe in pieces

run "gw-a alone" "$H1"
run "gw-a and gw-b at once" "$H1" "$H2"
grep -h "compare and write" "$CLUSTER_DIR"/a.log "$CLUSTER_DIR"/b.log || true
