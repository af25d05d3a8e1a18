# vm-timeout: 900
# The cgo-free rdma package over rdma_rxe: rdmaping beside rdma-core's ibv_rc_pingpong and rping
# with the ratios printed, then the package's device tests (rdma_cm connect, SEND/WRITE/READ of
# 1 B..4 MiB verified, 10,000 round trips without leaks, reject, peer killed, memory window bound
# and then invalidated by a SEND with invalidate, port flap, device removal). Those run last
# since they flap d0 and delete and re-create rxe0. They need rdma.test in the VM:
# CGO_ENABLED=0 go test -c -o DIR/rdma.test ./rdma with VM_TESTBIN_DIR=DIR (or the binary in
# bin/). rdmaping comes from bin/ (make build) or DIR. Then the same with the libibverbs provider
# (rdma-core's librxe through libibverbs.so.1): rdmaping against ibv_rc_pingpong and perftest's
# ib_write_bw and ib_read_bw at 64 KiB, native rdmaping beside it, and the device tests again.
# A freshly built rdmaping in VM_TESTBIN_DIR wins over the one from bin/.
RDMAPING=/usr/local/bin/rdmaping
[ -x "$RDMAPING" ] || RDMAPING=$(command -v rdmaping) || fail "rdmaping missing: run 'make build' or put it in VM_TESTBIN_DIR"
assert_contains "$(rdma link show)" "rxe0"

gid=$(rxe_gid_index)
size=4096
iters=1000
rounds=3

# usec_of FILE: the usec/iter figure of an ibv_rc_pingpong or rdmaping output.
usec_of() { sed -n 's/.* \([0-9.]*\) usec\/iter.*/\1/p' "$1" | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
minof() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || (b != "" && b + 0 < a + 0)) print b; else print a }'; }

# rdmaping_pair LOG ARGS...: an rdmaping server (with the flags in $SERVER_ARGS) and a client with
# ARGS, client output in LOG.
rdmaping_pair() {
  local out=$1 srv try
  shift
  "$RDMAPING" -s -a "$VM_ADDR" -once $SERVER_ARGS >rdmaping-server.log 2>&1 &
  srv=$!
  for try in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.3
    if "$RDMAPING" -a "$VM_ADDR" "$@" >"$out" 2>&1; then
      wait "$srv" || { cat rdmaping-server.log; return 1; }
      return 0
    fi
  done
  cat "$out" rdmaping-server.log
  kill "$srv" 2>/dev/null
  return 1
}

# ibv_pair LOG ARGS...: ibv_rc_pingpong server and client with ARGS, client output in LOG.
ibv_pair() {
  local out=$1 srv
  shift
  ibv_rc_pingpong -d rxe0 -g "$gid" "$@" >ibv-server.log 2>&1 &
  srv=$!
  wait_until 10 "the ibv_rc_pingpong server" port_listening 18515
  timeout 120 ibv_rc_pingpong -d rxe0 -g "$gid" "$@" "$VM_ADDR" >"$out" 2>&1 || { cat "$out" ibv-server.log; return 1; }
  wait "$srv" || { cat ibv-server.log; return 1; }
}

# rping_run: one rping client/server run of $iters x $size; prints usec per iteration (whole run).
rping_run() {
  local srv t0 t1 try
  rping -s -a "$VM_ADDR" -C "$iters" -S "$size" >rping-server.log 2>&1 &
  srv=$!
  for try in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.3
    t0=$(cut -d' ' -f1 /proc/uptime)
    if timeout 120 rping -c -a "$VM_ADDR" -C "$iters" -S "$size" >rping-client.log 2>&1; then
      t1=$(cut -d' ' -f1 /proc/uptime)
      wait "$srv" || { cat rping-server.log; return 1; }
      awk -v a="$t0" -v b="$t1" -v n="$iters" 'BEGIN { printf "%.2f\n", (b - a) * 1e6 / n }'
      return 0
    fi
  done
  cat rping-client.log rping-server.log
  return 1
}

# The VM shares a loaded host: each pair runs $rounds times alternately and the best run counts.
# rdmaping sleeps on completion events in the Go netpoller by default; -syscallwait sleeps in
# epoll_wait(2) on a thread of its own; -poll busy-polls. Every mode is reported.
log "SEND ping-pong, $size bytes x $iters, best of $rounds: ibv_rc_pingpong vs rdmaping (polling, then events)"
ip= gp= ie= ge= gs= rp= gr=
for r in $(seq "$rounds"); do
  ibv_pair ibv.log -s "$size" -n "$iters" && ip=$(minof "$ip" "$(usec_of ibv.log)")
  SERVER_ARGS=-poll rdmaping_pair go.log -t send -S "$size" -n "$iters" -poll && gp=$(minof "$gp" "$(usec_of go.log)")
  cat ibv.log go.log | grep usec/iter
  ibv_pair ibv.log -s "$size" -n "$iters" -e && ie=$(minof "$ie" "$(usec_of ibv.log)")
  SERVER_ARGS= rdmaping_pair go.log -t send -S "$size" -n "$iters" && ge=$(minof "$ge" "$(usec_of go.log)")
  cat ibv.log go.log | grep usec/iter
  SERVER_ARGS=-syscallwait rdmaping_pair go.log -t send -S "$size" -n "$iters" -syscallwait &&
    gs=$(minof "$gs" "$(usec_of go.log)")
  grep usec/iter go.log
  u=$(rping_run) && rp=$(minof "$rp" "$u")
  SERVER_ARGS= rdmaping_pair go.log -t rping -S "$size" -n "$iters" && gr=$(minof "$gr" "$(usec_of go.log)")
  echo "rping: $u usec/iter (whole run)"; grep usec/iter go.log
done
echo "FIGURE send-poll  ibv_rc_pingpong=${ip}us rdmaping -poll=${gp}us ratio=$(ratio "$gp" "$ip")"
echo "FIGURE send-event ibv_rc_pingpong -e=${ie}us rdmaping=${ge}us ratio=$(ratio "$ge" "$ie") (netpoller)"
echo "FIGURE send-event ibv_rc_pingpong -e=${ie}us rdmaping -syscallwait=${gs}us ratio=$(ratio "$gs" "$ie")"
echo "FIGURE rping-cycle rping=${rp}us(whole run) rdmaping -t rping=${gr}us ratio=$(ratio "$gr" "$rp")"

log "RDMA WRITE and READ latency and bandwidth (rdmaping)"
SERVER_ARGS= rdmaping_pair go-rw.log -t write,read -S 4096,65536 -n 200 -q 16
cat go-rw.log
SERVER_ARGS= rdmaping_pair go-rw.log -t write,read -S 1048576,4194304 -n 20 -q 4
cat go-rw.log

# perf_pair LOG PROG ARGS...: a perftest server and client (PROG is ib_write_bw or ib_read_bw).
perf_pair() {
  local out=$1 prog=$2 srv
  shift 2
  "$prog" -d rxe0 -x "$gid" -F --report_gbits "$@" >perf-server.log 2>&1 &
  srv=$!
  wait_until 10 "the $prog server" port_listening 18515
  timeout 120 "$prog" -d rxe0 -x "$gid" -F --report_gbits "$@" "$VM_ADDR" >"$out" 2>&1 || { cat "$out" perf-server.log; return 1; }
  wait "$srv" || { cat perf-server.log; return 1; }
}
# mbit_of_perf FILE SIZE: perftest's average bandwidth for SIZE in Mbit/s.
mbit_of_perf() { awk -v s="$2" '$1 == s {printf "%.0f\n", $4 * 1000}' "$1" | tail -1; }
# mbit_of_go FILE TEST: rdmaping's bandwidth line for TEST (write or read) in Mbit/s.
mbit_of_go() { sed -n "s/^rdmaping: $2 *bw .* \([0-9.]*\) Mbit\/sec.*/\1/p" "$1" | tail -1; }
maxof() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || (b != "" && b + 0 > a + 0)) print b; else print a }'; }

log "libibverbs provider: SEND ping-pong ($size bytes x $iters) and 64 KiB RDMA WRITE/READ bandwidth against rdma-core, best of $rounds"
lp= le= ip= ie= lw= lr= nw= nr= pw= pr=
bwn=2000
for r in $(seq "$rounds"); do
  ibv_pair ibv.log -s "$size" -n "$iters" && ip=$(minof "$ip" "$(usec_of ibv.log)")
  SERVER_ARGS="-poll -provider libibverbs" rdmaping_pair go.log -provider libibverbs -t send -S "$size" -n "$iters" -poll &&
    lp=$(minof "$lp" "$(usec_of go.log)")
  ibv_pair ibv.log -s "$size" -n "$iters" -e && ie=$(minof "$ie" "$(usec_of ibv.log)")
  SERVER_ARGS="-provider libibverbs" rdmaping_pair go.log -provider libibverbs -t send -S "$size" -n "$iters" &&
    le=$(minof "$le" "$(usec_of go.log)")
  grep -h "provider\|usec/iter" go.log ibv.log
  perf_pair perf.log ib_write_bw -s 65536 -n "$bwn" -t 16 && pw=$(maxof "$pw" "$(mbit_of_perf perf.log 65536)")
  perf_pair perf.log ib_read_bw -s 65536 -n "$bwn" -t 16 && pr=$(maxof "$pr" "$(mbit_of_perf perf.log 65536)")
  SERVER_ARGS="-provider libibverbs" rdmaping_pair go.log -provider libibverbs -t write,read -S 65536 -n "$bwn" -q 16 &&
    { lw=$(maxof "$lw" "$(mbit_of_go go.log write)"); lr=$(maxof "$lr" "$(mbit_of_go go.log read)"); }
  grep -h "bw" go.log
  SERVER_ARGS="-provider native" rdmaping_pair go.log -provider native -t write,read -S 65536 -n "$bwn" -q 16 &&
    { nw=$(maxof "$nw" "$(mbit_of_go go.log write)"); nr=$(maxof "$nr" "$(mbit_of_go go.log read)"); }
  grep -h "bw" go.log
  echo "perftest: write ${pw}Mbit/s read ${pr}Mbit/s"
done
echo "FIGURE libibverbs send-poll  ibv_rc_pingpong=${ip}us rdmaping -provider libibverbs -poll=${lp}us ratio=$(ratio "$lp" "$ip")"
echo "FIGURE libibverbs send-event ibv_rc_pingpong -e=${ie}us rdmaping -provider libibverbs=${le}us ratio=$(ratio "$le" "$ie")"
echo "FIGURE libibverbs write-bw 64KiB ib_write_bw=${pw}Mbit/s rdmaping libibverbs=${lw}Mbit/s ratio=$(ratio "$lw" "$pw") (native rdmaping ${nw}Mbit/s)"
echo "FIGURE libibverbs read-bw 64KiB ib_read_bw=${pr}Mbit/s rdmaping libibverbs=${lr}Mbit/s ratio=$(ratio "$lr" "$pr") (native rdmaping ${nr}Mbit/s)"

# The TestIbvC tests compile C against verbs.h: the host runs them, the VM has no compiler.
if ! command -v rdma.test >/dev/null; then
  log "SKIP rdma package tests: no rdma.test (build it with 'CGO_ENABLED=0 go test -c -o DIR/rdma.test ./rdma', set VM_TESTBIN_DIR=DIR)"
else
log "rdma package tests (port flap and device removal included; rxe0 is re-created at the end)"
RDMA_TEST_ADDR=$VM_ADDR RDMA_TEST_PORT_EVENTS=1 RDMA_TEST_DEVICE_REMOVAL=1 \
  timed rdma.test rdma.test -test.v -test.count=1 -test.timeout 300s -test.skip '^TestIbvC' 2>&1 | tee rdma-test.log |
  grep -E '^(--- |PASS|FAIL|ok)|round trips|SIGKILL|resources|child:|ended:|_test\.go:[0-9]+: '
grep -q '^PASS$' rdma-test.log || fail "rdma.test failed"
grep -q -- '--- SKIP' rdma-test.log && fail "rdma.test skipped device tests in a VM that has rxe0"
assert_contains "$(rdma link show)" "rxe0"
log "rdma package tests with the libibverbs provider"
RDMA_TEST_PROVIDER=libibverbs RDMA_TEST_ADDR=$VM_ADDR RDMA_TEST_PORT_EVENTS=1 RDMA_TEST_DEVICE_REMOVAL=1 \
  timed "rdma.test (libibverbs)" rdma.test -test.v -test.count=1 -test.timeout 300s -test.skip '^TestIbvC' 2>&1 | tee rdma-test.log |
  grep -E '^(--- |PASS|FAIL|ok)|round trips|SIGKILL|resources|child:|ended:|_test\.go:[0-9]+: '
grep -q '^PASS$' rdma-test.log || fail "rdma.test failed with the libibverbs provider"
assert_contains "$(rdma link show)" "rxe0"
fi

log "rdma-go passed"
