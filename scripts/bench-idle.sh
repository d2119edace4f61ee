#!/usr/bin/env bash
# What idle volumes cost: 3 storaged nodes on loopback, N 3-replica volumes (nothing
# written), the time to create them, then CPU (from /proc/<pid>/stat) and RSS of the three
# processes over a window; once with quiet groups off (--quiet-after-ms 0, every group
# heartbeating) and once as shipped, in one run.
# Usage: scripts/bench-idle.sh [--volumes N] [--window S] [--storaged BIN]
# (QUIET_MODES="2000": only the shipped row, e.g. for 1,000 volumes, where the off row is slow)
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=100
source scripts/lib/cluster.sh "$@"
ROWS=()
for quiet in ${QUIET_MODES:-0 2000}; do
  args=()
  "$BIN" --help | grep -q -- --quiet-after-ms && args=(--quiet-after-ms "$quiet")
  cluster_start "${args[@]}"
  BASE=$(cores_used "${PIDS[@]}")
  START=$(date +%s.%N) CREATED=0
  for v in $(seq "$VOLUMES"); do
    # A create that times out on an overloaded cluster is retried (creates are idempotent);
    # one that still fails ends this row, which then says how many were made.
    ok=0
    for _ in 1 2 3; do
      ctl volume create "idle-$v" --size 64MiB --replicas 3 >/dev/null 2>&1 && { ok=1; break; }
    done
    ((ok)) || { echo "quiet-after-ms $quiet: volume $v could not be created" >&2; break; }
    CREATED=$v
    ((v % 100 == 0)) && echo "quiet-after-ms $quiet: created $v of $VOLUMES" >&2
  done
  CREATE=$(python3 -c "print(f'{$(date +%s.%N) - $START:.1f}')")
  # Quiet groups need a few seconds of idleness before they stop.
  sleep 5
  IDLE=$(cores_used "${PIDS[@]}")
  ROWS+=("| ${args[*]:-(no such flag)} | $CREATED of $VOLUMES | $CREATE | $BASE | $IDLE | $(rss_mib "${PIDS[@]}") |")
  cluster_stop
done
printf '| storaged | volumes | create (s) | 3 nodes, no volumes (cores) | 3 nodes idle (cores) | RSS (MiB) |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${ROWS[@]}"
