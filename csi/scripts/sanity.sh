#!/usr/bin/env bash
# Runs the upstream CSI sanity suite (kubernetes-csi/csi-test's csi-sanity) against cairn-csi
# over a 3-node storaged cluster on loopback, with mutual TLS as installed: a cluster CA, a
# `node:N` certificate per storaged, and node-1's cairn-csi in `--mode all` holding both of its
# certificates (`controller`, `csi-node:node-1`). CSI_MODE=split runs it as the manifests do
# instead: a controller process and a node process on two sockets (`--csi.controllerendpoint`);
# csi-sanity v5.3.1 then skips its two whole-cycle node tests ("should work", "should be
# idempotent"), as it looks for the controller service on the node socket.
# Needs root (loop devices, mounts, FUSE).
#
#   CSI_SANITY=/path/to/csi-sanity [CSI_MODE=split] csi/scripts/sanity.sh [extra csi-sanity flags]
#   (block access: add --csi.testvolumeaccesstype=block)
#
# csi-sanity is Go and not vendored here; v5.3.1 (go 1.18, vendored deps) builds offline with
# Debian's golang-go:  cd csi-test && GOFLAGS=-mod=vendor go build ./cmd/csi-sanity
# Binaries come from $CARGO_TARGET_DIR/debug (cargo build --workspace) unless CAIRN_*_BIN say.
set -euo pipefail
: "${CSI_SANITY:?set CSI_SANITY to the csi-sanity binary}"
TARGET="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}/debug"
STORAGED="${CAIRN_STORAGED_BIN:-$TARGET/storaged}"
CSI="${CAIRN_CSI_BIN:-$TARGET/cairn-csi}"
CTL="${CAIRN_CTL_BIN:-$TARGET/cairnctl}"
for b in "$CSI_SANITY" "$STORAGED" "$CSI" "$CTL"; do
  [ -x "$b" ] || { echo "sanity: $b is not an executable (cargo build --workspace?)" >&2; exit 2; }
done
case "${CSI_MODE:=all}" in all | split) ;; *) echo "sanity: CSI_MODE is all or split" >&2; exit 2 ;; esac
WORK=$(mktemp -d /var/tmp/cairn-sanity.XXXXXX)
pids=()

# Unmount everything under $WORK (deepest first), then detach loop devices backed by files there.
release_work() {
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 {print $1}' |
    xargs -r -n1 losetup -d 2>/dev/null || true
}
cleanup() {
  local rc=$?
  release_work
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  # storaged's frontends (one per FUSE attachment) outlive it by design: end those of this run.
  local fe
  fe=$(pgrep -f -- " frontend .*$WORK/s[123]/" || true)
  if [ -n "$fe" ]; then
    kill -9 $fe 2>/dev/null || true
    for p in $fe; do for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  fi
  release_work
  if [ "$rc" -ne 0 ]; then
    mkdir -p "$WORK.logs" && cp "$WORK"/*.log "$WORK.logs/" 2>/dev/null || true
    echo "sanity: exit $rc; logs kept in $WORK.logs" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Certificates, as an install has them.
"$CTL" certs init --dir "$WORK/certs/ca" >/dev/null
tls() {
  local dir="$WORK/certs/${1//:/-}"
  "$CTL" certs issue --ca-dir "$WORK/certs/ca" --identity "$1" --out "$dir" >/dev/null
  echo "$dir"
}

P=(17411 17412 17413)
INIT="1=127.0.0.1:${P[0]},2=127.0.0.1:${P[1]},3=127.0.0.1:${P[2]}"
for i in 1 2 3; do
  "$STORAGED" --node-id "$i" --listen "127.0.0.1:${P[$((i-1))]}" --data-dir "$WORK/s$i" \
    --initial-cluster "$INIT" --node-name "node-$i" --capacity 50GiB \
    --tls-dir "$(tls "node:$i")" >"$WORK/storaged-$i.log" 2>&1 &
  pids+=($!)
done
EPS="127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
ADMIN=$(tls admin)
# csi-sanity does not wait for readiness: start it only once all three nodes are registered.
n=0
for _ in $(seq 1 300); do
  n=$("$CTL" --endpoint "$EPS" --tls-dir "$ADMIN" -o json node ls 2>/dev/null | grep -o '"name"' | wc -l || true)
  [ "$n" -ge 3 ] && break
  sleep 0.2
done
[ "$n" -ge 3 ] || { echo "sanity: storaged cluster did not come up; see $WORK/storaged-*.log" >&2; exit 1; }

mkdir -p "$WORK/kubelet" "$WORK/sanity"
NODE_ARGS=(--node-id node-1 --storaged "$EPS" --kubelet-root "$WORK/kubelet"
  --allowed-path-prefix "$WORK/sanity")
if [ "$CSI_MODE" = all ]; then
  # One process, both identities: `controller` (--tls-dir) and `csi-node:node-1`.
  "$CSI" --mode all --endpoint "unix://$WORK/node.sock" "${NODE_ARGS[@]}" \
    --tls-dir "$(tls controller)" --node-tls-dir "$(tls csi-node:node-1)" >"$WORK/csi-node.log" 2>&1 &
  pids+=($!)
  SOCKS=(node)
else
  "$CSI" --mode controller --endpoint "unix://$WORK/controller.sock" --storaged "$EPS" \
    --tls-dir "$(tls controller)" >"$WORK/csi-controller.log" 2>&1 &
  pids+=($!)
  "$CSI" --mode node --endpoint "unix://$WORK/node.sock" "${NODE_ARGS[@]}" \
    --tls-dir "$(tls csi-node:node-1)" >"$WORK/csi-node.log" 2>&1 &
  pids+=($!)
  SOCKS=(controller node)
fi
for s in "${SOCKS[@]}"; do
  for _ in $(seq 1 300); do
    "$CSI" probe --ready --timeout 2 --endpoint "unix://$WORK/$s.sock" 2>/dev/null && break
    sleep 0.2
  done
  "$CSI" probe --ready --timeout 2 --endpoint "unix://$WORK/$s.sock" ||
    { echo "sanity: cairn-csi ($s) not ready; see $WORK/csi-$s.log" >&2; exit 1; }
done

printf 'replicas: "1"\n' > "$WORK/params.yaml"
"$CSI_SANITY" --csi.endpoint "$WORK/node.sock" --csi.controllerendpoint "$WORK/${SOCKS[0]}.sock" \
  --csi.mountdir "$WORK/sanity/mount" --csi.stagingdir "$WORK/sanity/staging" \
  --csi.testvolumesize $((64 << 20)) --csi.testvolumeexpandsize $((128 << 20)) \
  --csi.testvolumeparameters "$WORK/params.yaml" --csi.testnodevolumeattachlimit "$@"
