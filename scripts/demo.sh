#!/usr/bin/env bash
# Starts a 3-node storaged cluster on loopback and drives it with cairnctl:
# create a 3-replica volume, write and read it back, kill a node, read again.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --bins
BIN="$CARGO_TARGET_DIR/debug"
DIR="${DEMO_DIR:-$(mktemp -d /var/tmp/cairn-demo.XXXX)}"
P=(17101 17102 17103)
INIT="1=127.0.0.1:${P[0]},2=127.0.0.1:${P[1]},3=127.0.0.1:${P[2]}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for i in 1 2 3; do
  "$BIN/storaged" --node-id "$i" --listen "127.0.0.1:${P[$((i-1))]}" --data-dir "$DIR/node-$i" \
    --initial-cluster "$INIT" --label "zone=z$i" >"$DIR/node-$i.log" 2>&1 &
  PIDS+=($!)
done
CTL=("$BIN/cairnctl" --endpoint "127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}")
echo "== waiting for the cluster: a meta leader and all three nodes registered"
ready=0
for _ in $(seq 1 150); do
  n=$("${CTL[@]}" -o json node ls 2>/dev/null | grep -o '"reachable": *true' | wc -l || true)
  if [[ "$n" -ge 3 ]]; then ready=1; break; fi
  sleep 0.2
done
((ready)) || { echo "cluster not ready after 30 s; logs in $DIR" >&2; exit 1; }
"${CTL[@]}" cluster status
echo "== create a 1 GiB volume with 3 replicas"
"${CTL[@]}" volume create demo --size 1GiB --replicas 3
head -c 1048576 /dev/urandom >"$DIR/payload"
"${CTL[@]}" volume write demo --offset 4096 --file "$DIR/payload"
"${CTL[@]}" volume read demo --offset 4096 --length 1048576 --file "$DIR/readback"
cmp "$DIR/payload" "$DIR/readback" && echo "read back 1 MiB: identical"
"${CTL[@]}" volume get demo
echo "== kill -9 node 1, read again through the survivors"
kill -9 "${PIDS[0]}"
"${CTL[@]}" volume read demo --offset 4096 --length 1048576 --file "$DIR/readback2"
cmp "$DIR/payload" "$DIR/readback2" && echo "after losing a node: identical"
"${CTL[@]}" volume ls
echo "== demo data and logs in $DIR"
if [[ "${DEMO_KEEP_RUNNING:-0}" == 1 ]]; then echo "running; Ctrl-C to stop"; wait; fi
