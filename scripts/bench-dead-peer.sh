#!/usr/bin/env bash
# What a dead or stopped follower costs the survivors: 3 storaged nodes on loopback with N
# 3-replica volumes (data written), CPU of the two survivors from /proc/<pid>/stat over a
# window, idle with all up, then with one follower killed (-9), then stopped (SIGSTOP).
# Usage: scripts/bench-dead-peer.sh [--volumes N] [--window S] [--storaged BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=1
source scripts/lib/cluster.sh "$@"
cluster_start
echo "creating $VOLUMES volumes and writing 1 MiB to each" >&2
head -c 1048576 /dev/urandom >"$CLUSTER_DIR/data"
for v in $(seq "$VOLUMES"); do
  ctl volume create "v$v" --size 64MiB --replicas 3 >/dev/null
  ctl volume write "v$v" --offset 0 --file "$CLUSTER_DIR/data" >/dev/null
done
META=$(ctl -o json cluster status | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta_leader_id"])')
VICTIM=$(( META % 3 + 1 ))
SURVIVORS=()
for i in 1 2 3; do ((i == VICTIM)) || SURVIVORS+=("${PIDS[$((i-1))]}"); done
IDLE=$(cores_used "${SURVIVORS[@]}")
kill -STOP "${PIDS[$((VICTIM-1))]}"
PAUSED=$(cores_used "${SURVIVORS[@]}")
kill -CONT "${PIDS[$((VICTIM-1))]}"
sleep 2
kill -9 "${PIDS[$((VICTIM-1))]}"
KILLED=$(cores_used "${SURVIVORS[@]}")
printf '| volumes | survivors idle (cores) | follower stopped | follower killed |\n|---|---|---|---|\n'
printf '| %s | %s | %s | %s |\n' "$VOLUMES" "$IDLE" "$PAUSED" "$KILLED"
