#!/usr/bin/env bash
# The pool's job broadcast against its bound, in one run (issue 19): the time the pool's core
# takes to send a new job to all its connections (the "job broadcast … elapsed_ms" lines of
# its log), against the time the same core takes to `write` a line of the same length once
# to as many idle loopback sockets, with raw syscalls and nothing else
# (`otedama-broadcast-baseline`), with the other ends idle and with them reading on the
# generator's core as the generator does (on loopback each write then also wakes the reader,
# on the writer's core). The baselines run before and after the pool.
#
# Usage: benches/scripts/broadcast-bound.sh CONNECTIONS [PROCESSES] [JOBS]
#   The pool runs on core 0 and the generator on core 1. One process may hold 20,000 files
#   here, so past about 19,000 connections the pool is split into PROCESSES processes, all
#   on core 0, which broadcast each job at the same time: a job's time is its slowest
#   process's. The baseline writes to the same number of sockets in PROCESSES parts, one
#   after another on core 0: a round's time is the sum of its parts'.
# Environment: OTEDAMA_BIN_DIR (release binaries: otedama, otedama-loadgen,
# otedama-broadcast-baseline), NOTIFY_BYTES (the pool's notify line with its newline;
# 1225 for the synthetic chain's jobs, read from the pool).
set -euo pipefail

connections=${1:?usage: broadcast-bound.sh CONNECTIONS [PROCESSES] [JOBS]}
processes=${2:-1}
jobs=${3:-6}
bin_dir=${OTEDAMA_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/otedama-target}/release}
notify_bytes=${NOTIFY_BYTES:-1225}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/otedama-broadcast.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The baseline writes to its share of the sockets in PROCESSES parts, one after another.
# With more than one process, a third baseline ("split"): PROCESSES writers at once on core
# 0, each to its part, their rounds started together, as the pool's processes broadcast a
# job together; a round is as long as its slowest writer. It carries the cost the split
# itself puts on the core (switching between processes, each with its own sockets), which
# a host whose file limit lets one process hold every connection does not pay.
baseline() {
  local name=$1 receivers
  for receivers in idle reading; do
    for ((p = 0; p < processes; p++)); do
      "$bin_dir/otedama-broadcast-baseline" --connections $((connections / processes)) \
        --line-bytes "$notify_bytes" --core 0 --receivers "$receivers" --receivers-core 1 \
        --rounds 5 >"$work/$name-$receivers.$p.json"
    done
  done
  if ((processes > 1)); then
    # Time for every writer to connect its sockets first: at 100,000 in all, 15 s was
    # too little (every round started late).
    local start_ms=$(($(date +%s%3N) + 10000 + connections * 6 / 10))
    local pids=()
    for ((p = 0; p < processes; p++)); do
      "$bin_dir/otedama-broadcast-baseline" --connections $((connections / processes)) \
        --line-bytes "$notify_bytes" --core 0 --receivers idle --receivers-core 1 \
        --rounds 5 --rounds-at-unix-ms "$start_ms" --round-interval-ms 3000 \
        >"$work/$name-split.$p.json" &
      pids+=($!)
    done
    wait "${pids[@]}"
  fi
}

baseline before
# One job every 5 s; the first broadcasts reach connections still logging in.
POOL_LOG=$work/pool.log RUST_LOG=warn,otedama_dataplane=info OTEDAMA_BIN_DIR=$bin_dir \
  LOADGEN_PREFIX="taskset -c 1" "$here/loadtest.sh" --cores 0 --dataplane-processes "$processes" \
  --synthetic-job-interval-ms 5000 -- --connections "$connections" --rate 0 \
  --duration $((jobs * 5 + 10 + connections / 4000)) --processes "$processes" >/dev/null
baseline after

python3 - "$work" "$connections" "$processes" <<'EOF'
import json, re, statistics, sys
work, connections, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rounds(name):
    runs = [json.load(open(f"{work}/{name}.{p}.json")) for p in range(processes)]
    # A round is the sum of its parts, written one after another on the core.
    return [sum(run["rounds_ms"][r] for run in runs) for r in range(len(runs[0]["rounds_ms"]))]
baseline = {f"{when}, receivers {mode}": rounds(f"{when}-{mode}")
            for mode in ("idle", "reading") for when in ("before", "after")}
if processes > 1:
    # The writers ran at once: a round is as long as its slowest writer.
    for when in ("before", "after"):
        runs = [json.load(open(f"{work}/{when}-split.{p}.json")) for p in range(processes)]
        late = sum(run["late_rounds"] for run in runs)
        if late:
            print(f"warning: {late} split-baseline rounds started late ({when}); they overlapped less")
        baseline[f"{when}, split"] = [max(run["rounds_ms"][r] for run in runs)
                                      for r in range(len(runs[0]["rounds_ms"]))]
jobs = {}
for line in open(f"{work}/pool.log"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    match = re.search(r"job broadcast .*job_id=(\d+) .*connections=(\d+) elapsed_ms=(\d+)", line)
    if match:
        job, count, ms = match.groups()
        jobs.setdefault(job, []).append((int(count), int(ms)))
# Jobs that reached every connection, each as long as its slowest process.
pool = [max(ms for _, ms in parts) for parts in jobs.values()
        if sum(count for count, _ in parts) == connections]
if not pool:
    sys.exit(f"no job reached all {connections} connections in the pool's log")
for name, values in baseline.items():
    print(f"baseline {name} (ms per round): {' '.join(f'{v:.1f}' for v in values)}")
print(f"pool, jobs that reached all {connections} (ms): {' '.join(map(str, pool))}")
pool_median = statistics.median(pool)
waited = sum(json.load(open(f"{work}/{when}-{mode}.{p}.json"))["would_block"]
             for when in ("before", "after")
             for mode in (("idle", "reading", "split") if processes > 1 else ("idle", "reading"))
             for p in range(processes))
if waited:
    print(f"warning: the baseline found a socket buffer full {waited} times; its figures include that wait")
modes = [("idle", "receivers idle"), ("reading", "receivers reading")]
if processes > 1:
    modes.append(("split: processes at once, idle", "split"))
for mode, key in modes:
    bound = statistics.median(baseline[f"before, {key}"] + baseline[f"after, {key}"])
    print(f"pool median {pool_median:.0f} ms / baseline ({mode}) median {bound:.1f} ms"
          f" = {pool_median / bound:.2f}  ({bound * 1000 / connections:.2f} us a socket for the"
          f" baseline, {pool_median * 1000 / connections:.2f} for the pool)")
EOF
