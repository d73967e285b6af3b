#!/usr/bin/env bash
# Otedama side by side with a second pool, with the same load: starts one `otedama run` on
# the synthetic chain (SHA256d, every hash a valid share at the load's difficulty, shares
# made durable before their ack), then runs `otedama-loadgen --protocol v1` with the same
# flags against Otedama and against the other pool, alternating, ROUNDS times each. For
# each run it prints shares answered per second (accepted or refused: a pool whose lowest
# difficulty is above the load's refuses every share, after the same validation) and
# shares acknowledged per second; then the median of each pool and the ratio
# Otedama ÷ other.
#
# The other pool is anything that speaks Stratum V1 on a loopback address: ckpool, another
# Otedama, another build of this one. Give it the same cores as Otedama for a fair
# comparison (POOL_FLAGS="--cores 0" here, `taskset -c 0` there), and the load generator
# the others (LOADGEN_PREFIX="taskset -c 1").
#
# Usage: benches/scripts/sidebyside.sh OTHER_HOST:PORT [loadgen flags...]   (default flags:
#        --connections 1000 --rate 100000 --duration 20)
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default
# 24353, below the ephemeral port range; the run uses PORT and PORT+1), ROUNDS (default 2), OTHER_USER (the worker name for
# the other pool; default: the one Otedama is given), LOADGEN_PREFIX, POOL_FLAGS.
set -euo pipefail

[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
other=$1
shift
bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
port=${PORT:-24353}
v1_port=$port api_port=$((port + 1))
rounds=${ROUNDS:-2}
loadgen_flags=("$@")
[[ ${#loadgen_flags[@]} -eq 0 ]] && loadgen_flags=(--connections 1000 --rate 100000 --duration 20)
payout=bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt
other_user=${OTHER_USER:-$payout.sidebyside}
for binary in otedama otedama-loadgen; do
  [[ -x $bin_dir/$binary ]] || {
    echo "no $bin_dir/$binary: build with \`cargo build --release\` or set OTEDAMA_BIN_DIR" >&2
    exit 1
  }
done

data_dir=$(mktemp -d /tmp/otedama-sidebyside.XXXXXX)
cleanup() { kill "$pool_pid" 2>/dev/null || true; wait "$pool_pid" 2>/dev/null || true; rm -rf "$data_dir"; }
trap cleanup EXIT

# shellcheck disable=SC2086
RUST_LOG=${RUST_LOG:-warn} "$bin_dir/otedama" run \
  --chain synthetic --coin bitcoin --network regtest --payout-address "$payout" \
  --data-dir "$data_dir" --api-listen "127.0.0.1:$api_port" \
  --stratum-listen "127.0.0.1:$v1_port" \
  --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0 \
  ${POOL_FLAGS:-} >"$data_dir/pool.out" 2>"$data_dir/pool.log" &
pool_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$v1_port") 2>/dev/null; then break; fi
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$v1_port") 2>/dev/null || {
  echo "otedama did not listen on 127.0.0.1:$v1_port; its log:" >&2
  tail -20 "$data_dir/pool.log" >&2
  exit 1
}
other_host=${other%:*} other_port=${other##*:}
(exec 3<>"/dev/tcp/$other_host/$other_port") 2>/dev/null || {
  echo "nothing listens on $other (the other pool)" >&2
  exit 1
}
sleep 2

field() { echo "$1" | sed -n "s/.*\"$2\":\\([0-9.]*\\).*/\\1/p"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A answered acked
for round in $(seq "$rounds"); do
  for pool in otedama other; do
    if [[ $pool == otedama ]]; then
      target=127.0.0.1:$v1_port user=$payout.sidebyside
    else
      target=$other user=$other_user
    fi
    echo "== round $round: $pool ($target)"
    output=$(${LOADGEN_PREFIX:-} "$bin_dir/otedama-loadgen" --target "$target" --protocol v1 \
      --user "$user" "${loadgen_flags[@]}")
    echo "$output" | grep -E '^(connections held|shares )' || true
    json=$(echo "$output" | tail -1)
    answered[$pool]+="$(field "$json" answered_per_s) "
    acked[$pool]+="$(field "$json" shares_per_s) "
  done
done

echo
printf '%-8s %28s %28s\n' pool "answered/s (median; runs)" "acked/s (median)"
for pool in otedama other; do
  a=$(tr ' ' '\n' <<<"${answered[$pool]}" | grep . | median)
  k=$(tr ' ' '\n' <<<"${acked[$pool]}" | grep . | median)
  printf '%-8s %12.0f (%s) %14.0f\n' "$pool" "$a" "${answered[$pool]% }" "$k"
  declare "median_$pool=$a"
done
# shellcheck disable=SC2154
awk -v o="$median_otedama" -v t="$median_other" \
  'BEGIN { if (t > 0) printf "otedama / other, answered shares/s: %.2f\n", o / t; else print "the other pool answered nothing" }'
