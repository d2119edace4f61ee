# Shared by the cluster benchmarks: their flags (--volumes, --window, --storaged), the build,
# a 3-node storaged cluster on loopback in a temp dir cleaned up on exit, cairnctl against it,
# and CPU/RSS samplers over /proc. Source it with "$@" and VOLUMES set to its default.

WINDOW=10 BIN=""
while (($#)); do
  case "$1" in
    --volumes) VOLUMES="$2"; shift 2 ;;
    --window) WINDOW="$2"; shift 2 ;;
    --storaged) BIN="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
cargo build --workspace --all-targets -q
BIN="${BIN:-$CARGO_TARGET_DIR/debug/storaged}"
CTL="$CARGO_TARGET_DIR/debug/cairnctl"

CLUSTER_DIR=$(mktemp -d /var/tmp/cairn-bench-cluster.XXXXXX)
PIDS=()
PORTS=(17301 17302 17303)
cluster_cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$CLUSTER_DIR"
}
trap cluster_cleanup EXIT

cluster_start() {
  local initial="1=127.0.0.1:${PORTS[0]},2=127.0.0.1:${PORTS[1]},3=127.0.0.1:${PORTS[2]}" i
  for i in 1 2 3; do
    mkdir -p "$CLUSTER_DIR/$i"
    "$BIN" --node-id "$i" --listen "127.0.0.1:${PORTS[$((i-1))]}" --data-dir "$CLUSTER_DIR/$i" \
      --initial-cluster "$initial" >"$CLUSTER_DIR/$i.log" 2>&1 &
    PIDS+=($!)
  done
  # Ready once a meta leader answers with all three nodes registered.
  for _ in $(seq 150); do
    ctl -o json cluster status 2>/dev/null | python3 -c \
      'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["nodes"]) >= 3 else 1)' \
      && return 0
    sleep 0.2
  done
  echo "cluster did not start; logs in $CLUSTER_DIR" >&2
  return 1
}

ctl() { "$CTL" --endpoint "127.0.0.1:${PORTS[0]}" "$@"; }

# CPU ticks (user + system) used so far by the given pids together.
cpu_ticks() { local t=0 p; for p in "$@"; do
  t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo "$t"; }

# Cores used by the given pids over WINDOW seconds, after a 2 s settle.
cores_used() { sleep 2; local a b; a=$(cpu_ticks "$@"); sleep "$WINDOW"; b=$(cpu_ticks "$@")
  python3 -c "print(f'{($b - $a) / $(getconf CLK_TCK) / $WINDOW:.3f}')"; }

# Resident memory of the given pids together, in MiB.
rss_mib() { local t=0 p; for p in "$@"; do
  t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"))); done; echo $((t / 1024)); }
