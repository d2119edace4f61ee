#!/usr/bin/env bash
# What idle volumes cost: 3 storaged nodes on loopback, N 3-replica volumes (nothing
# written), the time to create them, then CPU (from /proc/<pid>/stat) and RSS of the three
# processes over a window. Usage: scripts/bench-idle.sh [--volumes N] [--window S] [--storaged BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=100
source scripts/lib/cluster.sh "$@"
cluster_start
BASE=$(cores_used "${PIDS[@]}")
START=$(date +%s.%N)
for v in $(seq "$VOLUMES"); do
  ctl volume create "idle-$v" --size 64MiB --replicas 3 >/dev/null
  ((v % 100 == 0)) && echo "created $v of $VOLUMES" >&2
done
CREATE=$(python3 -c "print(f'{$(date +%s.%N) - $START:.1f}')")
IDLE=$(cores_used "${PIDS[@]}")
printf '| volumes | create (s) | 3 nodes, no volumes (cores) | 3 nodes idle (cores) | RSS (MiB) |\n|---|---|---|---|---|\n'
printf '| %s | %s | %s | %s | %s |\n' "$VOLUMES" "$CREATE" "$BASE" "$IDLE" "$(rss_mib "${PIDS[@]}")"
