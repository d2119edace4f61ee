#!/usr/bin/env bash
# Rebuild speed of a 3-replica volume (1 GiB written) at the default --rebuild-rate and
# unlimited, as a share of the disk's sequential write (fio), and 4 KiB random-write IOPS on
# another volume during the rebuild as a share of the same without one.
# Usage: scripts/bench-rebuild.sh [--written 1GiB] [--seconds 5] [--rates 100MiB,unlimited]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --all-targets -q
"$CARGO_TARGET_DIR/debug/cairn-rebuild-bench" "$@"
