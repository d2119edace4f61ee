#!/usr/bin/env bash
# Runs the upstream CSI sanity suite (kubernetes-csi/csi-test's csi-sanity) against cairn-csi
# in `all` mode over a 3-node storaged cluster on loopback. Needs root (loop devices, mounts).
#
#   CSI_SANITY=/path/to/csi-sanity csi/scripts/sanity.sh [extra csi-sanity flags]
#   (block access: add --csi.testvolumeaccesstype=block)
#
# csi-sanity is Go and not vendored here; v5.3.1 (go 1.18, vendored deps) builds offline with
# Debian's golang-go:  cd csi-test && GOFLAGS=-mod=vendor go build ./cmd/csi-sanity
set -euo pipefail
: "${CSI_SANITY:?set CSI_SANITY to the csi-sanity binary}"
TARGET="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}/debug"
STORAGED="${CAIRN_STORAGED_BIN:-$TARGET/storaged}"
CSI="${CAIRN_CSI_BIN:-$TARGET/cairn-csi}"
CTL="${CAIRN_CTL_BIN:-$TARGET/cairnctl}"
WORK=$(mktemp -d /var/tmp/cairn-sanity.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  findmnt -rn -o TARGET | grep "^$WORK" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    mkdir -p "$WORK.logs" && cp "$WORK"/*.log "$WORK.logs/" 2>/dev/null || true
    echo "sanity: exit $rc; logs kept in $WORK.logs" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
P=(17411 17412 17413)
INIT="1=127.0.0.1:${P[0]},2=127.0.0.1:${P[1]},3=127.0.0.1:${P[2]}"
for i in 1 2 3; do
  "$STORAGED" --node-id "$i" --listen "127.0.0.1:${P[$((i-1))]}" --data-dir "$WORK/s$i" \
    --initial-cluster "$INIT" --node-name "node-$i" --capacity 50GiB >"$WORK/storaged-$i.log" 2>&1 &
  pids+=($!)
done
EPS="127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
# csi-sanity does not wait for readiness: start it only once all three nodes are registered.
for _ in $(seq 1 300); do
  n=$("$CTL" --endpoint "$EPS" -o json node ls 2>/dev/null | grep -o '"name"' | wc -l || true)
  [ "$n" -ge 3 ] && break
  sleep 0.2
done
[ "$n" -ge 3 ] || { echo "sanity: storaged cluster did not come up; see $WORK/storaged-*.log" >&2; exit 1; }
mkdir -p "$WORK/kubelet"
"$CSI" --mode all --endpoint "unix://$WORK/csi.sock" --node-id node-1 \
  --storaged "$EPS" \
  --kubelet-root "$WORK/kubelet" --allowed-path-prefix "$WORK/sanity" >"$WORK/csi.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -S "$WORK/csi.sock" ] && break; sleep 0.2; done
mkdir -p "$WORK/sanity"
printf 'replicas: "1"\n' > "$WORK/params.yaml"
"$CSI_SANITY" --csi.endpoint "$WORK/csi.sock" \
  --csi.mountdir "$WORK/sanity/mount" --csi.stagingdir "$WORK/sanity/staging" \
  --csi.testvolumesize $((64 << 20)) --csi.testvolumeexpandsize $((128 << 20)) \
  --csi.testvolumeparameters "$WORK/params.yaml" --csi.testnodevolumeattachlimit "$@"
