#!/usr/bin/env bash
# The product's restart target: how long a pool with SHARES (default 10,000,000) shares
# in its share log takes, from `otedama run` starting, until a miner is connected and has
# its first job (subscribe, authorize, mining.notify), for STARTS (default 3) starts.
# The shares are put there the real way: otedama-loadgen submits them to the pool first.
# Loopback only, bounded in time.
#
# Usage: benches/scripts/restart-time.sh
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default
# 26333, below the ephemeral port range), SHARES, STARTS, SYNC (share_log_sync while
# filling; default false, which fills faster and stores the same records).
set -euo pipefail
bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
port=${PORT:-26333}
shares=${SHARES:-10000000}
data_dir=$(mktemp -d /tmp/otedama-restart.XXXXXX)
pool_pid=
start_pool() {
  RUST_LOG=warn "$bin_dir/otedama" run --chain synthetic --coin bitcoin --network regtest \
    --payout-address bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt --data-dir "$data_dir" \
    --stratum-listen "127.0.0.1:$port" --api-listen "127.0.0.1:$((port + 1))" \
    --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0 \
    --share-log-sync "${SYNC:-false}" --share-retention-hours 48 \
    >>"$data_dir/pool.log" 2>&1 &
  pool_pid=$!
}
stop_pool() {
  kill "$pool_pid" 2>/dev/null || true
  wait "$pool_pid" 2>/dev/null || true
}
trap 'stop_pool; rm -rf "$data_dir"' EXIT
accepted() {
  curl -s "http://127.0.0.1:$((port + 1))/api/v1/stats" |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("shares_accepted", 0))' 2>/dev/null || echo 0
}

start_pool
sleep 5
deadline=$((SECONDS + 1800))
while (($(accepted) < shares)) && ((SECONDS < deadline)); do
  "$bin_dir/otedama-loadgen" --target "127.0.0.1:$port" --connections 1000 --rate 400000 \
    --duration 30 >/dev/null
done
stored=$(accepted)
echo "shares stored: $stored (share log $(du -sh "$data_dir/shares" | cut -f1))"
stop_pool

# One miner's view of a start: from the process starting until its first job.
# `started`: the wall clock just before `otedama run` was started.
probe() {
  python3 - "$port" "$1" <<'PY'
import json, socket, sys, time
port, started = int(sys.argv[1]), float(sys.argv[2])
deadline = started + 60
connected_at = None
while time.time() < deadline:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        connected_at = time.time()
        break
    except OSError:
        time.sleep(0.005)
if connected_at is None:
    sys.exit("the pool did not accept a connection within 60 s")
sock.sendall(b'{"id":1,"method":"mining.subscribe","params":["restart-probe"]}\n'
             b'{"id":2,"method":"mining.authorize","params":["bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt.probe","x"]}\n')
sock.settimeout(max(0.1, deadline - time.time()))
buffer = b""
while b'"mining.notify"' not in buffer:
    chunk = sock.recv(65536)
    if not chunk:
        sys.exit("the pool closed the connection before a job")
    buffer += chunk
print(json.dumps({"connected_s": round(connected_at - started, 3),
                  "first_job_s": round(time.time() - started, 3)}))
PY
}
for start in $(seq "${STARTS:-3}"); do
  started=$(date +%s.%N)
  start_pool
  echo "start $start: $(probe "$started")"
  stop_pool
done
