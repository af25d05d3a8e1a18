# vm-timeout: 120
# rdma-core's own tools over rdma_rxe, server and client in this VM on $VM_ADDR:
# ibv_rc_pingpong (plain verbs on an RC QP) and rping (connection set up by rdma_cm).
assert_contains "$(rdma link show)" "rxe0"
assert_contains "$(ibv_devinfo -d rxe0)" "PORT_ACTIVE" "ibv_devinfo -d rxe0"
gid=$(rxe_gid_index)
log "rxe0 GID index $gid holds $VM_ADDR"

ibv_rc_pingpong -d rxe0 -g "$gid" -n 200 >pingpong-server.log 2>&1 &
server=$!
wait_until 10 "the ibv_rc_pingpong server" port_listening 18515
timed ibv_rc_pingpong timeout 60 ibv_rc_pingpong -d rxe0 -g "$gid" -n 200 "$VM_ADDR"
wait "$server" || { cat pingpong-server.log; fail "ibv_rc_pingpong server failed"; }

rping -s -a "$VM_ADDR" -C 20 -S 4096 >rping-server.log 2>&1 &
server=$!
rping_client() { timeout 60 rping -c -a "$VM_ADDR" -C 20 -S 4096 -v >rping-client.log 2>&1; }
# rdma_cm offers no port to poll: retry the client until the server listens.
ok=
for try in 1 2 3 4 5; do
  sleep 0.5
  if timed rping rping_client; then ok=1; break; fi
done
[ -n "$ok" ] || { cat rping-client.log; fail "rping client failed $try times"; }
assert_eq 20 "$(grep -c 'ping data' rping-client.log)" "rping pings"
wait "$server" || { cat rping-server.log; fail "rping server failed"; }
log "ibv_rc_pingpong and rping passed over rxe0"
