#!/usr/bin/env bash
# What cluster mode costs a pool's acknowledged shares, in one run: `loadtest.sh` three
# times with the same load, first as a single host, then in cluster mode against a
# three-server NATS JetStream cluster started here on loopback (each data-plane process
# ships its share log to the replicated stream, the control plane mirrors every log from
# it), once with `share_ack = local` (a share is acknowledged once in the host's own log, so
# shipping costs throughput and CPU, not a wait) and once with `share_ack = replicated` (the
# acknowledgement also waits for the stream's quorum). Everything (pool, NATS servers,
# generator) shares this machine's cores.
#
# Usage: benches/scripts/cluster-cost.sh [loadgen flags...]
# Environment: as loadtest.sh; NATS_SERVER (default: nats-server on PATH or /usr/sbin).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
loadgen_flags=("$@")
((${#loadgen_flags[@]})) || loadgen_flags=(--connections 1000 --rate 400000 --duration 15)

dir=$(mktemp -d /tmp/otedama-cluster-cost.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
# shellcheck source=nats-cluster.sh
source "$here/nats-cluster.sh"

echo "== single host =="
"$here/loadtest.sh" -- "${loadgen_flags[@]}"
echo
echo "== cluster mode (three NATS servers, share_ack = local) =="
start_nats
cpu_before=$(nats_cpu_s)
"$here/loadtest.sh" --cluster-host bench "${nats_urls[@]}" -- "${loadgen_flags[@]}"
echo "NATS servers: $(awk -v a="$(nats_cpu_s)" -v b="$cpu_before" 'BEGIN { printf "%.2f", a - b }') CPU s over the run, $(nats_store_bytes) bytes stored"
stop_nats
echo
echo "== cluster mode (three NATS servers, share_ack = replicated) =="
start_nats
cpu_before=$(nats_cpu_s)
"$here/loadtest.sh" --cluster-host bench "${nats_urls[@]}" --share-ack replicated -- "${loadgen_flags[@]}"
echo "NATS servers: $(awk -v a="$(nats_cpu_s)" -v b="$cpu_before" 'BEGIN { printf "%.2f", a - b }') CPU s over the run, $(nats_store_bytes) bytes stored"
stop_nats
