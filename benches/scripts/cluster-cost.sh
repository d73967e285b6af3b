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
nats_server=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[[ -x $nats_server ]] || { echo "nats-server not found (Debian package nats-server)" >&2; exit 2; }
loadgen_flags=("$@")
((${#loadgen_flags[@]})) || loadgen_flags=(--connections 1000 --rate 400000 --duration 15)

dir=$(mktemp -d /tmp/otedama-cluster-cost.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

client_ports=(24222 24223 24224)
route_ports=(24232 24233 24234)
urls=()
for i in 0 1 2; do urls+=(--nats-url "nats://127.0.0.1:${client_ports[$i]}"); done

# A fresh cluster for each cluster-mode run: the stream, the host slots and the leader lease
# of a run before would otherwise still be there (the same host name's log would not match
# the stream, and the last run's control plane would hold the lease until it lapses).
nats_pids=()
start_nats() {
  rm -rf "$dir/n0" "$dir/n1" "$dir/n2"
  nats_pids=()
  for i in 0 1 2; do
    routes=()
    for j in 0 1 2; do
      [[ $j == "$i" ]] || routes+=("\"nats-route://127.0.0.1:${route_ports[$j]}\"")
    done
    mkdir -p "$dir/n$i"
    cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${client_ports[$i]}
jetstream { store_dir: "$dir/n$i", max_memory_store: 64MB, max_file_store: 4GB }
cluster { name: otedama, listen: 127.0.0.1:${route_ports[$i]}, routes: [$(IFS=,; echo "${routes[*]}")] }
EOF
    "$nats_server" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
    nats_pids+=($!)
    pids+=($!)
  done
  sleep 3
}
stop_nats() {
  for pid in "${nats_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

echo "== single host =="
"$here/loadtest.sh" -- "${loadgen_flags[@]}"
echo
echo "== cluster mode (three NATS servers, share_ack = local) =="
start_nats
"$here/loadtest.sh" --cluster-host bench "${urls[@]}" -- "${loadgen_flags[@]}"
stop_nats
echo
echo "== cluster mode (three NATS servers, share_ack = replicated) =="
start_nats
"$here/loadtest.sh" --cluster-host bench "${urls[@]}" --share-ack replicated -- "${loadgen_flags[@]}"
stop_nats
