#!/usr/bin/env bash
# fio through the real cairn-csi: ext4 on a 3-replica and a 1-replica volume and on a
# `type: local` volume, all created, published, staged and mounted by cairn-csi over its Unix
# sockets against a 3-node storaged cluster on loopback, and ext4 on a loop device over a plain
# file (the limit), and the same FUSE + loop + ext4 path over a volume in memory (the frontend's
# ceiling). Prints IOPS, MiB/s and the ratios to the ceiling and to the limit. Needs root.
#
#   ./scripts/bench-csi.sh [--seconds N] [--file-mib N]     (defaults: 10 s per job, 256 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
while (($#)); do
  case "$1" in
    --seconds) export BENCH_SECONDS="$2"; shift 2 ;;
    --file-mib) export BENCH_FILE_MIB="$2"; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--file-mib N]" >&2; exit 2 ;;
  esac
done
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --all-targets
# The example starts storaged/cairn-csi from $CARGO_TARGET_DIR/debug, and cleans up (unmounts,
# loop devices, processes) when it ends, also on a panic.
exec "$CARGO_TARGET_DIR/debug/examples/bench_csi"
