#!/usr/bin/env bash
# Runs `otedama run` on a synthetic chain (no node needed, SHA256d, every hash a valid share)
# and drives it with `otedama-loadgen` on loopback. Prints the load generator's summary (with
# the pool's acknowledgement stages over the run, from its /metrics), then
# the data plane's memory (VmRSS summed over its processes, from /proc/PID/status) and the
# kernel's slab growth while the connections were held.
#
# Usage: benches/scripts/loadtest.sh [pool flags...] -- [loadgen flags...]
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default 23333:
# below the ephemeral port range, so no client socket of a big run, nor its TIME_WAIT, holds
# it or the API port after it), COIN (bitcoin: SHA256d shares, the default; litecoin: scrypt shares), LOADGEN_PREFIX (a
# command to run the generator under, such as `taskset -c 1`), POOL_LOG (where the pool's log
# goes; by default it is deleted with the run's data directory). With
# RUST_LOG=otedama_dataplane=info the log has one "job broadcast" line per core and job,
# with the longest time the core went without serving shares (longest_slice_us).
set -euo pipefail

bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
port=${PORT:-23333}
api_port=$((port + 1))
pool_flags=()
while [[ $# -gt 0 && $1 != "--" ]]; do pool_flags+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
loadgen_flags=("$@")

data_dir=$(mktemp -d /tmp/otedama-loadtest.XXXXXX)
cleanup() { kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true; rm -rf "$data_dir"; }
trap cleanup EXIT

dataplane_rss_kib() {
  local total=0
  for pid in $(pgrep -f "otedama dataplane --process-index .* --config $data_dir/" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }

coin=${COIN:-bitcoin}
case $coin in
  bitcoin) payout=bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt ;;
  litecoin) payout=rltc1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5l62ze4 ;;
  *) echo "COIN must be bitcoin or litecoin" >&2; exit 2 ;;
esac
RUST_LOG=${RUST_LOG:-warn} "$bin_dir/otedama" run \
  --chain synthetic --coin "$coin" --network regtest --payout-address "$payout" \
  --data-dir "$data_dir" --stratum-listen "127.0.0.1:$port" --api-listen "127.0.0.1:$api_port" \
  --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0 \
  "${pool_flags[@]}" >"${POOL_LOG:-$data_dir/pool.log}" 2>&1 &
pool_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
sleep 1
# Cluster mode: the load starts once the control plane leads and the share shipper is
# connected, so a run measures the cluster at work, not its start (electing the stream's
# leader, taking the lease), which replicated acknowledgements would wait through.
metric() { curl -s "http://127.0.0.1:$api_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
if [[ " ${pool_flags[*]} " == *" --nats-url "* ]]; then
  command -v curl >/dev/null || { echo "cluster mode needs curl to see the cluster ready" >&2; exit 2; }
  for _ in $(seq 600); do
    if [[ $(metric otedama_cluster_leading) == 1 && $(metric otedama_share_shipping_planes) -ge 1 &&
      $(metric otedama_share_shipping_disconnected) == 0 ]]; then break; fi
    sleep 0.1
  done
fi
rss_before=$(dataplane_rss_kib)
slab_before=$(slab_kib)

${LOADGEN_PREFIX:-} "$bin_dir/otedama-loadgen" --target "127.0.0.1:$port" --user "$payout.loadgen" \
  --pool-metrics "127.0.0.1:$api_port" "${loadgen_flags[@]}" &
loadgen_pid=$!
# Sample memory while the connections are held: the peak over the run.
rss_peak=$rss_before
slab_peak=$slab_before
while kill -0 "$loadgen_pid" 2>/dev/null; do
  rss=$(dataplane_rss_kib); slab=$(slab_kib)
  ((rss > rss_peak)) && rss_peak=$rss
  ((slab > slab_peak)) && slab_peak=$slab
  sleep 1
done
wait "$loadgen_pid"
connections=unknown
if command -v curl >/dev/null; then
  connections=$(curl -s "http://127.0.0.1:$api_port/api/v1/stats" | sed -n 's/.*"connections":\([0-9]*\).*/\1/p' || true)
fi
echo "data plane VmRSS: ${rss_before} KiB before, ${rss_peak} KiB peak ($(( (rss_peak - rss_before) )) KiB for the connections)"
echo "kernel slab: ${slab_before} KiB before, ${slab_peak} KiB peak ($(( slab_peak - slab_before )) KiB)"
echo "pool connections right after the run (closing, so falling to 0): ${connections:-unknown}"
