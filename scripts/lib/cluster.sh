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
# Stops the cluster's processes and forgets them (a later cluster_start begins afresh).
cluster_stop() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  rm -rf "${CLUSTER_DIR:?}"/[0-9]* "$CLUSTER_DIR/certs" "$CLUSTER_DIR/plaintext"
}
cluster_cleanup() { cluster_stop; rm -rf "$CLUSTER_DIR"; }
trap cluster_cleanup EXIT

# Starts 3 nodes; arguments are passed to every storaged (e.g. --quiet-after-ms 0).
cluster_start() {
  local initial="1=127.0.0.1:${PORTS[0]},2=127.0.0.1:${PORTS[1]},3=127.0.0.1:${PORTS[2]}" i
  # Mutual TLS, as a real install runs: a CA, one certificate per node, one for cairnctl
  # (plaintext for a --storaged build from before TLS, for before/after figures).
  local tls=1
  "$BIN" --help | grep -q -- --tls-dir || { tls=0; touch "$CLUSTER_DIR/plaintext"; }
  "$CTL" certs init --dir "$CLUSTER_DIR/certs/ca" >/dev/null
  "$CTL" certs issue --ca-dir "$CLUSTER_DIR/certs/ca" --identity admin --out "$CLUSTER_DIR/certs/admin" >/dev/null
  for i in 1 2 3; do
    mkdir -p "$CLUSTER_DIR/$i"
    "$CTL" certs issue --ca-dir "$CLUSTER_DIR/certs/ca" --identity "node:$i" --ip 127.0.0.1 \
      --out "$CLUSTER_DIR/certs/node-$i" >/dev/null
    "$BIN" --node-id "$i" --listen "127.0.0.1:${PORTS[$((i-1))]}" --data-dir "$CLUSTER_DIR/$i" \
      --initial-cluster "$initial" $( ((tls)) && echo --tls-dir "$CLUSTER_DIR/certs/node-$i") \
      "$@" >"$CLUSTER_DIR/$i.log" 2>&1 &
    PIDS+=($!)
  done
  # Ready once a meta leader answers with all three nodes registered.
  for _ in $(seq 150); do
    ctl -o json cluster status 2>/dev/null | python3 -c \
      'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["nodes"]) >= 3 else 1)' \
      2>/dev/null && return 0
    sleep 0.2
  done
  echo "cluster did not start; logs in $CLUSTER_DIR" >&2
  return 1
}

ctl() { if [[ -e "$CLUSTER_DIR/plaintext" ]]; then "$CTL" --insecure --endpoint "127.0.0.1:${PORTS[0]}" "$@"
  else "$CTL" --tls-dir "$CLUSTER_DIR/certs/admin" --endpoint "127.0.0.1:${PORTS[0]}" "$@"; fi; }

# CPU ticks (user + system) used so far by the given pids together.
cpu_ticks() { local t=0 p; for p in "$@"; do
  t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo "$t"; }

# Cores used by the given pids over WINDOW seconds, after a 2 s settle.
cores_used() { sleep 2; local a b; a=$(cpu_ticks "$@"); sleep "$WINDOW"; b=$(cpu_ticks "$@")
  python3 -c "print(f'{($b - $a) / $(getconf CLK_TCK) / $WINDOW:.3f}')"; }

# Resident memory of the given pids together, in MiB.
rss_mib() { local t=0 p; for p in "$@"; do
  t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"))); done; echo $((t / 1024)); }
