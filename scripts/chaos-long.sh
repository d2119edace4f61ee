#!/usr/bin/env bash
# The long chaos run of issue 21: mixed faults, up to four at a time (stacked within the minority
# budget, decision 070), on nine storaged nodes with three volumes and the block workload; prints
# the verdict table (with storaged's CPU and bytes written, and the budget as the record proves
# it) and keeps the report, the plot and the run's log in $OUT. Needs root, /dev/fuse and
# nftables; build first. DURATION (default 10m), SEED (1000), NODES (9), OVERLAP (4), VOLUMES (3),
# GAP (10ms..100ms), HOLD (100ms..500ms): 633 faults in 10 minutes on 2 cores at load 15-18
# (8 Dec; docs/benchmarks.md); FAULTS, OUT (/var/tmp/cairn-chaos-long), BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10m}"
SEED="${SEED:-1000}"
NODES="${NODES:-9}"
OVERLAP="${OVERLAP:-4}"
VOLUMES="${VOLUMES:-3}"
GAP="${GAP:-10ms..100ms}"
HOLD="${HOLD:-100ms..500ms}"
FAULTS="${FAULTS:-kill,pause,powerloss,eio,disk-full,slow-disk,partition,clock,clock-slow}"
OUT="${OUT:-/var/tmp/cairn-chaos-long}"
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/debug/cairn-chaos}"
[ -x "$BIN" ] || { echo "chaos-long: $BIN is missing: cargo build --workspace first" >&2; exit 2; }
mkdir -p "$OUT"
set +e
"$BIN" run --name long --seed "$SEED" --duration "$DURATION" --nodes "$NODES" --volumes "$VOLUMES" \
  --overlap "$OVERLAP" --gap "$GAP" --hold "$HOLD" --faults "$FAULTS" \
  --report "$OUT/report.json" --plot "$OUT/latency.svg" 2>"$OUT/run.log" | tee "$OUT/table.txt"
status=${PIPESTATUS[0]}
set -e
faults=$(python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["faults"].values()))' "$OUT/report.json" 2>/dev/null || echo "?")
echo "faults injected: $faults; exit status $status; report, plot and log in $OUT"
exit "$status"
