#!/usr/bin/env bash
# Part 1: a 3-node storaged cluster on loopback, driven by cairnctl: create a 3-replica
# volume, write and read it back, snapshot and restore it, kill a node, read again.
# Part 2: the whole stack on one machine (cairn-harness up --with-cairn: API server,
# scheduler, kubelets, storaged, cairn-csi, cairn-provisioner), driven by the real kubectl:
# the example StatefulSet gets its volumes, a recreated pod finds its data, and scaling
# down and deleting the claims removes every volume. DEMO_KEEP_RUNNING=1 leaves it up.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --all-targets
BIN="$CARGO_TARGET_DIR/debug"
DIR="${DEMO_DIR:-$(mktemp -d /var/tmp/cairn-demo.XXXX)}"
P=(17101 17102 17103)
INIT="1=127.0.0.1:${P[0]},2=127.0.0.1:${P[1]},3=127.0.0.1:${P[2]}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
# Waits up to $1 seconds for the command after it to succeed.
until_ok() { local n=$(($1 * 5)); shift; for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }
trap cleanup EXIT INT TERM
echo "== a cluster CA, a certificate per node and one for cairnctl (mutual TLS everywhere)"
"$BIN/cairnctl" certs init --dir "$DIR/certs/ca"
for i in 1 2 3; do
  "$BIN/cairnctl" certs issue --ca-dir "$DIR/certs/ca" --identity "node:$i" --ip 127.0.0.1 --out "$DIR/certs/node-$i"
done
"$BIN/cairnctl" certs issue --ca-dir "$DIR/certs/ca" --identity admin --out "$DIR/certs/admin"
for i in 1 2 3; do
  "$BIN/storaged" --node-id "$i" --listen "127.0.0.1:${P[$((i-1))]}" --data-dir "$DIR/node-$i" \
    --initial-cluster "$INIT" --label "zone=z$i" --tls-dir "$DIR/certs/node-$i" >"$DIR/node-$i.log" 2>&1 &
  PIDS+=($!)
done
CTL=("$BIN/cairnctl" --tls-dir "$DIR/certs/admin" --endpoint "127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}")
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
echo "== snapshot it, overwrite the volume, restore the snapshot into a new volume"
"${CTL[@]}" snapshot create demo-snap --volume demo
head -c 1048576 /dev/urandom >"$DIR/payload2"
"${CTL[@]}" volume write demo --offset 4096 --file "$DIR/payload2"
"${CTL[@]}" volume create demo-restored --size 1GiB --replicas 3 --from-snapshot demo-snap
"${CTL[@]}" volume read demo-restored --offset 4096 --length 1048576 --file "$DIR/restored"
cmp "$DIR/payload" "$DIR/restored" && echo "restored from the snapshot: identical to the data before the overwrite"
"${CTL[@]}" snapshot ls
echo "== kill -9 node 1, read again through the survivors"
kill -9 "${PIDS[0]}"
"${CTL[@]}" volume read demo --offset 4096 --length 1048576 --file "$DIR/readback2"
cmp "$DIR/payload2" "$DIR/readback2" && echo "after losing a node: identical (the overwrite)"
"${CTL[@]}" volume ls
cleanup
PIDS=()
echo "== part 1 done; data and logs in $DIR"

echo "== part 2: cairn-harness up --nodes 3 --with-cairn (a one-machine Kubernetes with Cairn)"
"$BIN/cairn-harness" up --nodes 3 --data-dir "$DIR/k8s" --with-cairn >"$DIR/harness.log" 2>&1 &
PIDS+=($!)
until_ok 60 grep -qx ready "$DIR/harness.log" || { echo "harness not up; see $DIR/harness.log" >&2; exit 1; }
grep -E '^(api-server|storaged|logs):' "$DIR/harness.log"
export KUBECONFIG="$DIR/k8s/kubeconfig"
# cairnctl against the harness's storaged, with the admin certificate the harness issued.
hctl() { "$BIN/cairnctl" --tls-dir "$(sed -n 's/^admin-tls-dir: //p' "$DIR/harness.log")" \
  --endpoint "$(sed -n 's/^storaged: //p' "$DIR/harness.log")" "$@"; }
kubectl get nodes,storageclass,csidriver
echo "== kubectl apply -f manifests/examples/statefulset.yaml"
kubectl apply -f manifests/examples/statefulset.yaml
kubectl rollout status statefulset/web --timeout=180s
kubectl get pods,pvc,pv -o wide
hctl volume ls
until_ok 60 test "$(kubectl logs web-0 | wc -l)" -ge 1
echo "== web-0's log (one line per boot, kept on its volume):"; kubectl logs web-0
echo "== delete pod web-0; the StatefulSet recreates it with the same claim"
uid=$(kubectl get pod web-0 -o jsonpath='{.metadata.uid}')
kubectl delete pod web-0
until_ok 120 test "$(kubectl get pod web-0 -o jsonpath='{.metadata.uid}' 2>/dev/null)" != "$uid"
until_ok 120 test "$(kubectl logs web-0 2>/dev/null | wc -l)" -ge 2
echo "== web-0's log after the restart (both boots: its data survived):"; kubectl logs web-0
if [[ "${DEMO_KEEP_RUNNING:-0}" == 1 ]]; then
  echo "running; KUBECONFIG=$KUBECONFIG; Ctrl-C to stop"; wait; exit 0
fi
echo "== scale to 0 and delete the claims: the volumes go (reclaimPolicy Delete)"
kubectl scale statefulset web --replicas=0
kubectl wait --for=delete pod/web-0 pod/web-1 --timeout=120s 2>/dev/null || true
kubectl delete -f manifests/examples/statefulset.yaml
kubectl delete pvc data-web-0 data-web-1
until_ok 120 test "$(kubectl get pv -o name | wc -l)" -eq 0
echo "PersistentVolumes left: $(kubectl get pv -o name | wc -l); storaged volumes left:"
hctl volume ls
echo "== stopping the harness (pods, mounts, every process it started)"
cleanup
PIDS=()
echo "== demo done; data and logs in $DIR"

