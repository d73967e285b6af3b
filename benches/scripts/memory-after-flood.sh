#!/usr/bin/env bash
# The data plane's VmRSS (MB) before, at its peak while 5,000 silent Stratum connections
# from 50 addresses are held (the pool closes them at its login deadline), and AFTER_S
# (default 60) seconds after, for ROUNDS (default 3) rounds on one pool: whether the memory
# a connection flood takes is given back, and whether it is reused from round to round.
# Loopback only, bounded in time.
#
# Usage: benches/scripts/memory-after-flood.sh
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default
# 25333, below the ephemeral port range), ROUNDS, AFTER_S.
set -euo pipefail
bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
here=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-25333}
data_dir=$(mktemp -d /tmp/otedama-memory.XXXXXX)
RUST_LOG=warn "$bin_dir/otedama" run --chain synthetic --coin bitcoin --network regtest \
  --payout-address bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt --data-dir "$data_dir" \
  --stratum-listen "127.0.0.1:$port" --api-listen "127.0.0.1:$((port + 1))" \
  >"$data_dir/pool.log" 2>&1 &
pool_pid=$!
trap 'kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true; rm -rf "$data_dir"' EXIT
sleep 4
rss_mb() {
  local total=0
  for pid in $(pgrep -f "otedama dataplane .*$data_dir" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo $((total / 1024))
}
echo "before: $(rss_mb) MB"
for round in $(seq "${ROUNDS:-3}"); do
  peak=0
  python3 "$here/attack.py" stratum-idle --port "$port" --connections 5000 --sources 50 \
    --duration 15 >"$data_dir/attack.json" &
  attack_pid=$!
  while kill -0 "$attack_pid" 2>/dev/null; do
    rss=$(rss_mb); ((rss > peak)) && peak=$rss
    sleep 0.5
  done
  sleep "${AFTER_S:-60}"
  echo "round $round: peak $peak MB, ${AFTER_S:-60} s after $(rss_mb) MB; $(grep -o '"closed_by_pool": [0-9]*' "$data_dir/attack.json")"
done
