# Sourced by the cluster benchmarks: a three-server NATS JetStream cluster on loopback.
# Needs `$dir` (a scratch directory) and the `pids` array (what the caller's cleanup kills).
# Sets `nats_urls` (the pool's --nats-url flags). start_nats starts a fresh cluster (empty
# stores: no stream, host slot or leader lease of an earlier run), stop_nats stops it.

nats_server=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[[ -x $nats_server ]] || { echo "nats-server not found (Debian package nats-server)" >&2; exit 2; }
nats_client_ports=(24222 24223 24224)
nats_route_ports=(24232 24233 24234)
nats_urls=()
for i in 0 1 2; do nats_urls+=(--nats-url "nats://127.0.0.1:${nats_client_ports[$i]}"); done
nats_pids=()

start_nats() {
  rm -rf "$dir/n0" "$dir/n1" "$dir/n2"
  nats_pids=()
  local i j routes
  for i in 0 1 2; do
    routes=()
    for j in 0 1 2; do
      [[ $j == "$i" ]] || routes+=("\"nats-route://127.0.0.1:${nats_route_ports[$j]}\"")
    done
    mkdir -p "$dir/n$i"
    cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${nats_client_ports[$i]}
jetstream { store_dir: "$dir/n$i", max_memory_store: 64MB, max_file_store: 4GB }
cluster { name: otedama, listen: 127.0.0.1:${nats_route_ports[$i]}, routes: [$(IFS=,; echo "${routes[*]}")] }
EOF
    "$nats_server" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
    nats_pids+=($!)
    pids+=($!)
  done
  sleep 3
}

stop_nats() {
  local pid
  for pid in "${nats_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

# CPU seconds the cluster's servers have used so far (user + system, summed).
nats_cpu_s() {
  local pid ticks=0 clk
  clk=$(getconf CLK_TCK)
  for pid in "${nats_pids[@]}"; do
    [[ -r /proc/$pid/stat ]] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  awk -v t="$ticks" -v c="$clk" 'BEGIN { printf "%.2f", t / c }'
}

# Bytes the cluster's servers hold on disk (all three stores).
nats_store_bytes() { du -sb "$dir/n0" "$dir/n1" "$dir/n2" | awk '{ s += $1 } END { print s }'; }
