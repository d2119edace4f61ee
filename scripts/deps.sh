#!/usr/bin/env bash
# Installs what Cairn's build, tests, demo and benchmarks need on Debian, idempotently:
# only packages that are missing are installed.
set -euo pipefail

PKGS=(clang libclang-dev e2fsprogs xfsprogs fio fuse3 etcd-server etcd-client util-linux mount qemu-utils kmod iproute2 procps mmdebstrap umoci nftables faketime python3 curl ca-certificates)

missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Loop devices and FUSE must be usable.
modprobe loop 2>/dev/null || true
modprobe fuse 2>/dev/null || true
command -v cargo >/dev/null || { echo "deps: cargo (rustup) is required" >&2; exit 1; }
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
done
