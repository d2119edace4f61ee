#!/usr/bin/env bash
# Builds the `cairn` image (the Dockerfile's) with no container engine: mmdebstrap lays down a Debian bookworm root
# filesystem with the runtime packages, the already-built binaries go to /usr/local/bin, umoci writes an OCI archive.
#
#   cargo build --workspace --all-targets && scripts/image.sh [--name cairn:dev] [--out cairn-image.oci.tar]
#
# Idempotent: the root filesystem layer is cached in $CAIRN_IMAGE_CACHE keyed by its package list, and an archive
# whose inputs (that layer, the binaries, the name) did not change is left as it is.
# Exit codes: 0 built or up to date; 69 a tool is missing; 75 the Debian mirror cannot be reached; else a failure.
set -euo pipefail

RUNTIME_PACKAGES=(e2fsprogs xfsprogs util-linux mount kmod fuse3 ca-certificates libstdc++6) # = the Dockerfile's
BINARIES=(storaged cairnctl cairn-csi cairn-provisioner)
SUITE=bookworm
VARIANT=minbase
# As debian:bookworm-slim: no manual pages, documentation (but copyrights) or translations.
DPKG_OPTS=(path-exclude=/usr/share/man/* path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright
  path-exclude=/usr/share/locale/* path-exclude=/usr/share/info/*)

NAME="${CAIRN_IMAGE_NAME:-cairn:dev}"
OUT="${CAIRN_IMAGE_OUT:-cairn-image.oci.tar}"
BIN_DIR="${CAIRN_BIN_DIR:-${CARGO_TARGET_DIR:-/var/tmp/cairn-target}/debug}"
CACHE="${CAIRN_IMAGE_CACHE:-/var/tmp/cairn-image-cache}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

usage() {
  cat <<EOF
usage: $0 [--name REPO:TAG] [--out FILE] [--bin-dir DIR] [--cache DIR]
  --name     image name; its tag names the image inside the archive (default $NAME)
  --out      OCI archive to write (default $OUT)
  --bin-dir  where the built binaries are (default $BIN_DIR)
  --cache    where the root filesystem layer is cached (default $CACHE)
environment: CAIRN_IMAGE_NAME, CAIRN_IMAGE_OUT, CAIRN_BIN_DIR, CAIRN_IMAGE_CACHE, DEBIAN_MIRROR
EOF
}

while (($#)); do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

START=$SECONDS
say() { echo "image: [$((SECONDS - START))s] $*" >&2; }
die() { local code="$1"; shift; echo "image: $*" >&2; exit "$code"; }

TAG="${NAME##*:}"
[[ "$NAME" == *:* && "$TAG" != */* ]] || TAG=latest
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die 2 "invalid tag '$TAG' in --name $NAME"

for tool in mmdebstrap umoci tar sha256sum flock; do
  command -v "$tool" >/dev/null || die 69 "$tool is not installed: run scripts/deps.sh (apt-get install mmdebstrap umoci)"
done
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || die 1 "$BIN_DIR/$b is missing: run 'cargo build --workspace --all-targets' (or pass --bin-dir)"
done
mkdir -p "$CACHE"
# One build at a time per cache (concurrent test runs share it).
exec 9>"$CACHE/.lock"
flock 9

# 1. The base image: an OCI layout holding the Debian root filesystem as one layer, cached by what it is made of.
base_key=$(printf '%s\n' "$SUITE" "$VARIANT" "${RUNTIME_PACKAGES[@]}" "${DPKG_OPTS[@]}" | sha256sum | cut -c1-16)
BASE="$CACHE/base-$base_key"
if [[ ! -f "$BASE/index.json" ]]; then
  host="${MIRROR#*://}"; host="${host%%/*}"; port=80
  [[ "$MIRROR" == https://* ]] && port=443
  timeout 10 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null \
    || die 75 "cannot reach the Debian mirror $MIRROR: mmdebstrap needs network to it (set DEBIAN_MIRROR to a reachable one)"
  say "root filesystem: mmdebstrap $SUITE ($VARIANT + ${RUNTIME_PACKAGES[*]}) from $MIRROR"
  tmp=$(mktemp -d "$CACHE/.base.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  dpkgopt=(); for o in "${DPKG_OPTS[@]}"; do dpkgopt+=(--dpkgopt="$o"); done
  mmdebstrap --quiet --variant="$VARIANT" --include="$(IFS=,; echo "${RUNTIME_PACKAGES[*]}")" "${dpkgopt[@]}" \
    "$SUITE" "$tmp/rootfs.tar" "$MIRROR"
  say "root filesystem: $(du -h "$tmp/rootfs.tar" | cut -f1); writing the base layer"
  umoci init --layout "$tmp/layout"
  umoci new --image "$tmp/layout:base"
  umoci raw add-layer --image "$tmp/layout:base" \
    --history.created_by "mmdebstrap --variant=$VARIANT --include=${RUNTIME_PACKAGES[*]} $SUITE" "$tmp/rootfs.tar"
  rm -rf "$CACHE"/base-*
  mv "$tmp/layout" "$BASE"
  rm -rf "$tmp"
  trap - EXIT
else
  say "root filesystem: cached in $BASE"
fi

# 2. Is the archive already made of exactly these inputs?
say "hashing the binaries in $BIN_DIR"
inputs=$({
  echo "base $base_key name $NAME"
  (cd "$BIN_DIR" && sha256sum "${BINARIES[@]}")
  sha256sum <"$0"
})
if [[ -f "$OUT" && -f "$OUT.inputs" ]] && [[ "$(cat "$OUT.inputs")" == "$inputs" ]]; then
  say "$OUT ($NAME) is up to date"
  exit 0
fi

# 3. The binaries layer on top of the base, the image config, and the archive.
work=$(mktemp -d "$CACHE/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -a "$BASE" "$work/layout"
say "binaries layer: ${BINARIES[*]} -> /usr/local/bin"
tar -C "$BIN_DIR" --owner=0 --group=0 --numeric-owner --mode=0755 --mtime=@0 \
  --transform 's,^,usr/local/bin/,' -cf "$work/bins.tar" "${BINARIES[@]}"
umoci raw add-layer --image "$work/layout:base" --tag "$TAG" \
  --history.created_by "scripts/image.sh: ${BINARIES[*]} from $BIN_DIR" "$work/bins.tar"
umoci config --image "$work/layout:$TAG" \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.cmd bash --config.workingdir / \
  --config.label org.opencontainers.image.title=cairn
umoci rm --image "$work/layout:base"
umoci gc --layout "$work/layout"
say "writing $OUT"
mkdir -p "$(dirname "$OUT")"
tar -C "$work/layout" -cf "$work/image.oci.tar" .
mv "$work/image.oci.tar" "$OUT"
printf '%s\n' "$inputs" >"$OUT.inputs"
say "done: $OUT ($(du -h "$OUT" | cut -f1)), image $NAME (tag '$TAG' in the archive)"
echo "image: push with: skopeo copy oci-archive:$OUT:$TAG docker://REGISTRY/cairn:$TAG" >&2
