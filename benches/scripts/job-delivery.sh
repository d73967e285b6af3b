#!/usr/bin/env bash
# How long a new job takes to reach a data plane over NATS, against the Unix socket, in one
# run: a three-server NATS cluster on loopback, `otedama run` in cluster mode (its own data
# plane linked to the control plane over the Unix socket) and a second data-plane host with
# no control plane (`otedama dataplane`, linked over NATS), both on the synthetic chain with
# a new block every second and the same number of miners from `otedama-loadgen`. Each core
# logs every job it sends ("job broadcast"): `since_built_ms`, from the control plane
# building the job (its id is the builder's wall clock in ms) to the core taking it, and
# `elapsed_ms`, the broadcast to its miners. The same jobs reach both hosts, so the two
# columns compare the two links job for job.
#
# Usage: benches/scripts/job-delivery.sh [CONNECTIONS_PER_HOST] [SECONDS]
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), NATS_SERVER.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
connections=${1:-1000}
seconds=${2:-30}

dir=$(mktemp -d /tmp/otedama-job-delivery.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
# shellcheck source=nats-cluster.sh
source "$here/nats-cluster.sh"
start_nats

payout=bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt
common=(--chain synthetic --coin bitcoin --network regtest --payout-address "$payout"
  --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0
  --synthetic-job-interval-ms 1000 --share-log-sync false "${nats_urls[@]}")
RUST_LOG=warn,otedama_dataplane=info "$bin_dir/otedama" run "${common[@]}" --cluster-host socket-host \
  --data-dir "$dir/a" --stratum-listen 127.0.0.1:23333 --sv2-listen 127.0.0.1:23335 \
  --quic-listen 127.0.0.1:23336 --api-listen 127.0.0.1:23334 >"$dir/socket-host.log" 2>&1 &
pids+=($!)
RUST_LOG=warn,otedama_dataplane=info "$bin_dir/otedama" dataplane "${common[@]}" --cluster-host nats-host \
  --data-dir "$dir/b" --stratum-listen 127.0.0.1:23343 --sv2-listen 127.0.0.1:23345 \
  --quic-listen 127.0.0.1:23346 >"$dir/nats-host.log" 2>&1 &
pids+=($!)
for port in 23333 23343; do
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
done
sleep 3

loaders=()
for port in 23333 23343; do
  "$bin_dir/otedama-loadgen" --target "127.0.0.1:$port" --user "$payout.delivery" \
    --connections "$connections" --rate 200 --duration "$seconds" >"$dir/loadgen-$port.log" 2>&1 &
  loaders+=($!)
done
for pid in "${loaders[@]}"; do wait "$pid"; done

# One line per job and core: host, job id:core, since_built_ms, elapsed_ms, connections.
for host in socket-host nats-host; do
  sed 's/\x1b\[[0-9;]*m//g' "$dir/$host.log" | grep 'job broadcast' |
    sed -E 's/.*core=([0-9]+).*job_id=([0-9]+).*since_built_ms=([0-9]+).*connections=([0-9]+).*elapsed_ms=([0-9]+).*/\2:\1 \3 \5 \4/' |
    awk -v host="$host" 'NF == 4 && $4 > 0 { print host, $1, $2, $3, $4 }'
done >"$dir/jobs.txt"

quantiles() { # column of jobs.txt for one host: count p50 p90 max
  awk -v host="$1" -v col="$2" '$1 == host { print $col }' "$dir/jobs.txt" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "0 - - -"; exit }
      p50 = v[int((NR - 1) * 0.5) + 1]; p90 = v[int((NR - 1) * 0.9) + 1]; print NR, p50, p90, v[NR] }'
}
echo "jobs sent to miners (per core), ${connections} connections a host, ${seconds} s, a new block every second"
printf '%-12s %6s  %-28s %-28s\n' host jobs "since built ms p50/p90/max" "broadcast ms p50/p90/max"
for host in socket-host nats-host; do
  read -r n a50 a90 amax <<<"$(quantiles "$host" 3)"
  read -r _ b50 b90 bmax <<<"$(quantiles "$host" 4)"
  printf '%-12s %6s  %-28s %-28s\n' "$host" "$n" "$a50 / $a90 / $amax" "$b50 / $b90 / $bmax"
done
# Job for job and core for core: the NATS host's delay minus the socket host's.
awk '$1 == "socket-host" { s[$2] = $3 } $1 == "nats-host" { n[$2] = $3 }
  END { for (j in n) if (j in s) print n[j] - s[j] }' "$dir/jobs.txt" | sort -n |
  awk '{ v[NR] = $1 } END { if (NR == 0) { print "no job reached both hosts"; exit }
    printf "NATS minus socket, same job and core (%d): p50 %d ms, p90 %d ms, max %d ms\n",
      NR, v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.9) + 1], v[NR] }'
