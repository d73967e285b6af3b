#!/usr/bin/env bash
# Compares Stratum V1, Stratum V2 over Noise/TCP and Stratum V2 over QUIC in one run: one
# `otedama run` on the synthetic chain (SHA256d, every hash a valid share) listening with
# all three, then `otedama-loadgen` with the same connections, share rate and duration for
# each protocol in turn. For each it prints the load generator's figures (shares/s, ack
# latency, bytes on the wire per share) and the data plane's CPU time per acknowledged
# share (utime + stime of its processes from /proc, over the run), then a table with V1 as
# the baseline.
#
# Usage: benches/scripts/protocols.sh [loadgen flags...]   (default: --connections 1000
#        --rate 10000 --duration 20)
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default
# 24433, below the ephemeral port range; the run uses PORT to PORT+3), LOADGEN_PREFIX (such as `taskset -c 1`), POOL_FLAGS
# (more flags for the pool, such as `--cores 0`).
set -euo pipefail

bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
port=${PORT:-24433}
v1_port=$port sv2_port=$((port + 1)) quic_port=$((port + 2)) api_port=$((port + 3))
loadgen_flags=("$@")
[[ ${#loadgen_flags[@]} -eq 0 ]] && loadgen_flags=(--connections 1000 --rate 10000 --duration 20)
payout=bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt

data_dir=$(mktemp -d /tmp/otedama-protocols.XXXXXX)
cleanup() { kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true; rm -rf "$data_dir"; }
trap cleanup EXIT

# shellcheck disable=SC2086
RUST_LOG=${RUST_LOG:-warn} "$bin_dir/otedama" run \
  --chain synthetic --coin bitcoin --network regtest --payout-address "$payout" \
  --data-dir "$data_dir" --api-listen "127.0.0.1:$api_port" \
  --stratum-listen "127.0.0.1:$v1_port" --sv2-listen "127.0.0.1:$sv2_port" \
  --quic-listen "127.0.0.1:$quic_port" \
  --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0 \
  ${POOL_FLAGS:-} >"$data_dir/pool.out" 2>"$data_dir/pool.log" &
pool_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$v1_port") 2>/dev/null; then break; fi
  sleep 0.1
done
sleep 2
key=$(sed -n 's#^Stratum V2: stratum2+tcp://[^/]*/##p' "$data_dir/pool.out" | head -1)
[[ -n $key ]] || { echo "the pool printed no authority key" >&2; exit 1; }

# CPU seconds (user + system) the data-plane processes have used so far.
dataplane_cpu_ticks() {
  local total=0
  for pid in $(pgrep -f "otedama dataplane --process-index .* --config $data_dir/" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
ticks_per_s=$(getconf CLK_TCK)

declare -A summary cpu_us
for protocol in v1 v2 quic; do
  case $protocol in
    v1) target=$v1_port ;;
    v2) target=$sv2_port ;;
    quic) target=$quic_port ;;
  esac
  echo "== $protocol"
  before=$(dataplane_cpu_ticks)
  output=$(${LOADGEN_PREFIX:-} "$bin_dir/otedama-loadgen" --target "127.0.0.1:$target" \
    --protocol "$protocol" --authority-key "$key" --quic-ca "$data_dir/quic-cert.pem" \
    --user "$payout.$protocol" "${loadgen_flags[@]}")
  after=$(dataplane_cpu_ticks)
  echo "$output"
  json=$(echo "$output" | tail -1)
  summary[$protocol]=$json
  acked=$(echo "$json" | sed -n 's/.*"shares_acked":\([0-9]*\).*/\1/p')
  cpu_us[$protocol]=$(awk -v t=$((after - before)) -v hz="$ticks_per_s" -v n="$acked" \
    'BEGIN { printf "%.2f", (n > 0) ? t / hz * 1e6 / n : 0 }')
  echo "data plane CPU per acknowledged share: ${cpu_us[$protocol]} us (whole run, ramp-up included)"
done

field() { echo "${summary[$1]}" | sed -n "s/.*\"$2\":\\([0-9.]*\\).*/\\1/p"; }
echo
echo "protocol  shares/s  ack p50 us  ack p99 us  wire B/share  (vs v1)  dataplane CPU us/share  (vs v1)"
for protocol in v1 v2 quic; do
  awk -v p="$protocol" -v s="$(field "$protocol" shares_per_s)" -v a50="$(field "$protocol" ack_p50_us)" \
      -v a99="$(field "$protocol" ack_p99_us)" -v w="$(field "$protocol" wire_bytes_per_share)" \
      -v w1="$(field v1 wire_bytes_per_share)" -v c="${cpu_us[$protocol]}" -v c1="${cpu_us[v1]}" \
      'BEGIN { printf "%-8s  %8.0f  %10d  %10d  %12.1f  %7.2f  %22.2f  %7.2f\n", p, s, a50, a99, w, (w1 > 0) ? w / w1 : 0, c, (c1 > 0) ? c / c1 : 0 }'
done
