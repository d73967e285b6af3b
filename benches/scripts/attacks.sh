#!/usr/bin/env bash
# Runs each attack of issue 16 against `otedama run` (synthetic chain, SHA256d or scrypt,
# default bounds) while `otedama-loadgen` keeps honest miners busy, on loopback only and bounded in
# time. For each attack it prints one row: honest acked shares/s just before and during the
# attack (two loadgen runs of the same shape, so the ratio is measured in the same run),
# the RSS (VmRSS) of the data plane and of the control plane just before the attack, at
# its peak during it and 60 s after it ended, and what the attacker saw (connections
# closed by the pool, API answers), then the pool's refusals by reason from /metrics. It
# exits 1 if honest throughput during any attack fell below HONEST_RATIO_MIN (0.80) of its
# rate just before.
#
# Usage: benches/scripts/attacks.sh
# Environment: OTEDAMA_BIN_DIR (default: the release target directory), PORT (default
# 24333, below the ephemeral port range like every script here), HONEST (loadgen flags for the honest miners), ATTACK_S (default 25), ONLY (the
# names of the attacks to run, space separated; default all), COIN (bitcoin, the default:
# SHA256d shares; or litecoin: scrypt shares, which the pool hashes in batches).
set -euo pipefail

bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
here=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-24333}
api_port=$((port + 1))
quic_port=$((port + 2))
attack_s=${ATTACK_S:-25}
coin=${COIN:-bitcoin}
case $coin in
  bitcoin) payout=bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt ;;
  litecoin) payout=rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4j ;;
  *) echo "COIN must be bitcoin or litecoin" >&2; exit 2 ;;
esac
honest_ratio_min=0.80
below_ratio=()
read -r -a honest_flags <<<"${HONEST:---connections 200 --rate 5000 --duration 8}"

data_dir=$(mktemp -d /tmp/otedama-attacks.XXXXXX)
attack_pid=
cleanup() {
  [[ -n $attack_pid ]] && kill "$attack_pid" 2>/dev/null || true
  kill "$pool_pid" 2>/dev/null || true
  wait "$pool_pid" 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

# VmRSS in KiB summed over the pool's processes of one role (dataplane, controlplane).
role_rss_kib() {
  local total=0 rss
  for pid in $(pgrep -f "otedama $1 .*$data_dir" || true); do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${rss:-0}))
  done
  echo "$total"
}

# The pool takes any hash as a share (so the honest generator needs no mining), keeps every
# other default: the bounds under test are the defaults an operator gets.
RUST_LOG=${RUST_LOG:-warn} "$bin_dir/otedama" run \
  --chain synthetic --coin "$coin" --network regtest --payout-address "$payout" \
  --data-dir "$data_dir" --stratum-listen "127.0.0.1:$port" --api-listen "127.0.0.1:$api_port" \
  --quic-listen "127.0.0.1:$quic_port" \
  --difficulty-min 1e-10 --start-difficulty 1e-10 --vardiff-share-interval-s 0 \
  >"$data_dir/pool.log" 2>&1 &
pool_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
sleep 2

honest_rate() {
  "$bin_dir/otedama-loadgen" --target "127.0.0.1:$port" --user "$payout.honest" \
    --source-ips 127.0.0.10-127.0.0.19 "${honest_flags[@]}" 2>/dev/null |
    awk '/^shares acked\/s/ {print $3}'
}

refusals() {
  curl -s "http://127.0.0.1:$api_port/metrics" |
    awk '/^otedama_dataplane_refusals_total/ {sub(/.*reason="/, ""); sub(/"}/, ""); printf "%s=%s ", $1, $2}'
}

printf '%-20s %10s %10s %7s %18s %18s  %s\n' attack honest/s during ratio \
  "dataplane MB b/p/a" "control MB b/p/a" "attacker"
run_attack() {
  local name=$1; shift
  [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && return 0
  local before during result rss ratio
  local data_before data_peak data_after control_before control_peak control_after
  before=$(honest_rate)
  data_before=$(role_rss_kib dataplane) control_before=$(role_rss_kib controlplane)
  data_peak=$data_before control_peak=$control_before
  "$@" >"$data_dir/attack.json" &
  attack_pid=$!
  sleep 3
  during=$(honest_rate)
  while kill -0 "$attack_pid" 2>/dev/null; do
    rss=$(role_rss_kib dataplane); ((rss > data_peak)) && data_peak=$rss
    rss=$(role_rss_kib controlplane); ((rss > control_peak)) && control_peak=$rss
    sleep 1
  done
  wait "$attack_pid" || true
  attack_pid=
  sleep 60
  data_after=$(role_rss_kib dataplane) control_after=$(role_rss_kib controlplane)
  # The attack script prints one JSON line; the share flood is a load generator.
  result=$(grep -m1 -E '^\{|^shares acked/s' "$data_dir/attack.json" || echo "-")
  ratio=$(awk -v b="$before" -v d="$during" 'BEGIN { if (b > 0) printf "%.2f", d / b; else print "0" }')
  awk -v r="$ratio" -v m="$honest_ratio_min" 'BEGIN { exit !(r < m) }' && below_ratio+=("$name ($ratio)")
  printf '%-20s %10s %10s %7s %18s %18s  %s\n' "$name" "$before" "$during" "$ratio" \
    "$((data_before / 1024))/$((data_peak / 1024))/$((data_after / 1024))" \
    "$((control_before / 1024))/$((control_peak / 1024))/$((control_after / 1024))" "$result"
}

attack() { python3 "$here/attack.py" "$@" --duration "$attack_s"; }
run_attack stratum-idle attack stratum-idle --port "$port" --connections 5000 --sources 1
run_attack stratum-idle-spread attack stratum-idle --port "$port" --connections 5000 --sources 50
run_attack stratum-slowloris attack stratum-slowloris --port "$port" --connections 3000 --sources 50
run_attack share-flood "$bin_dir/otedama-loadgen" --target "127.0.0.1:$port" --user "$payout.flood" \
  --source-ips 127.0.2.1-127.0.2.4 --connections 50 --rate 1000000 --inflight-max 256 \
  --suggest-difficulty 1e-9 --duration "$attack_s"
run_attack quic-initials "$bin_dir/otedama-loadgen" --target "127.0.0.1:$quic_port" \
  --protocol quic --quic-ca "$data_dir/quic-cert.pem" --quic-initial-flood \
  --source-ips 127.0.3.1-127.0.3.50 --connect-rate 20000 --duration "$attack_s"
run_attack http-slowloris attack http-slowloris --port "$api_port" --connections 5000 --sources 50
run_attack api-flood attack api-flood --port "$api_port" --connections 200 --sources 20
echo "refusals: $(refusals)"
if ((${#below_ratio[@]})); then
  echo "honest throughput fell below $honest_ratio_min of its rate before: ${below_ratio[*]}" >&2
  exit 1
fi
echo "honest throughput stayed at or above $honest_ratio_min of its rate before, in every attack"
