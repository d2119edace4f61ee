#!/usr/bin/env bash
# Benchmarks storaged beside a 3-member etcd and an fio fsync baseline, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --all-targets -q
"$CARGO_TARGET_DIR/debug/cairn-bench" "$@"
