#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (-D warnings) and `cargo test --workspace`.
# One cargo profile and a persistent target dir, so RocksDB's C++ compiles once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
