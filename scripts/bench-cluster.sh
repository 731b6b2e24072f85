#!/usr/bin/env bash
#
# One nats-server (streams with one replica) beside a three-node cluster
# (streams with three), on the same machine, in one session: the same
# release binaries (one API, one worker) and the same load-test scenarios,
# run in turn against each, ROUNDS times, so that the machine's noise falls
# on both alike. Prints accepted orders per second and accept latency of each
# run side by side, and the ratio of the medians (cluster / single).
#
#   scripts/bench-cluster.sh            3 rounds
#   CHECKLINE_BENCH_ROUNDS=1 scripts/bench-cluster.sh
#
# The three nodes share this machine's disk and cores, so a real cluster
# (one node per machine) pays the network round trip to a follower instead
# of its CPU and fsync here. Results: .run/bench-cluster/<timestamp>/.
# Uses CHECKLINE_BIN_DIR (default target/release, built when unset),
# PostgreSQL and Redis found or started as by scripts/run.sh, and nats-servers
# of its own on CHECKLINE_CLUSTER_NATS_PORT (default here 4295-4297, monitor
# 8295-8297, routes 6295-6297) and 4294 (monitor 8294) for the single one.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

ROUNDS=${CHECKLINE_BENCH_ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9]$ ]] || svc_die "CHECKLINE_BENCH_ROUNDS=$ROUNDS: expected 1-9"
BIN=${CHECKLINE_BIN_DIR:-$ROOT/target/release}
OUT="$RUN_DIR/bench-cluster/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

ensure_rust
ensure_curl
ensure_nats_binary
export CHECKLINE_CLUSTER_NATS_PORT=${CHECKLINE_CLUSTER_NATS_PORT:-4295}
export CHECKLINE_CLUSTER_NATS_MONITOR_PORT=${CHECKLINE_CLUSTER_NATS_MONITOR_PORT:-8295}
export CHECKLINE_CLUSTER_NATS_ROUTE_PORT=${CHECKLINE_CLUSTER_NATS_ROUTE_PORT:-6295}
SINGLE_PORT=4294
SINGLE_MONITOR=8294
SVC_NATS_CLUSTER_DIR="$OUT/nats-cluster"
svc_nats_cluster_ports_free
svc_port_open 127.0.0.1 "$SINGLE_PORT" && svc_die "port $SINGLE_PORT is in use"
unset CHECKLINE_NATS_URL
ensure_postgres
ensure_redis
if [[ -z ${CHECKLINE_BIN_DIR:-} ]]; then
    cargo build --release --workspace --bins
fi

declare -A PIDS=()
start() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$OUT/$name.log" 2>&1 &
    PIDS[$name]=$!
    svc_on_cleanup "svc_stop_pid ${PIDS[$name]} $name"
}

mkdir -p "$OUT/nats-single"
start nats-single "$NATS_BIN" -c "$NATS_CONFIG" -p "$SINGLE_PORT" -m "$SINGLE_MONITOR" -sd "$OUT/nats-single"
for i in 1 2 3; do
    mkdir -p "$SVC_NATS_CLUSTER_DIR/nats-$i"
    svc_nats_node_cmd "$i"
    start "nats-$i" "${NODE_CMD[@]}"
done
svc_wait_nats_cluster 60 || svc_die "the NATS cluster did not become healthy"

SERVER_DB=${CHECKLINE_DATABASE_URL%/*}
export CHECKLINE_JWT_SECRET="benchmark-secret-benchmark-secret-123"
export CHECKLINE_LOG=warn
export CHECKLINE_RATE_LIMITS=off
# Each system's stream reserves its size on the servers' file store (10 GB,
# nats/*.conf): a run's orders need a fraction of 512 MiB.
export CHECKLINE_STREAM_MAX_BYTES=$((512 * 1024 * 1024))

# system NAME NATS_URL REPLICAS: one API and one worker on a database and
# prefix of their own; sets API_URL and SYSTEM_PIDS.
SYSTEM_PIDS=()
system() {
    local name=${1//-/_} nats=$2 replicas=$3 port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    API_URL="http://127.0.0.1:$port"
    local vars=(CHECKLINE_NATS_URL="$nats" CHECKLINE_STREAM_REPLICAS="$replicas"
        CHECKLINE_DATABASE_URL="$SERVER_DB/checkline_bench_$name" CHECKLINE_PREFIX="bench_$name"
        CHECKLINE_HTTP_ADDR="127.0.0.1:$port")
    start "worker-$name" env "${vars[@]}" "$BIN/checkline-worker"
    SYSTEM_PIDS=("${PIDS[worker-$name]}")
    start "api-$name" env "${vars[@]}" "$BIN/checkline-api"
    SYSTEM_PIDS+=("${PIDS[api-$name]}")
    for _ in $(seq 1 300); do
        curl -fsS --max-time 2 "$API_URL/readyz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    svc_die "the $name system did not become ready (see $OUT/api-$name.log)"
}

# The scenarios: a hot product and 100 products, closed loops of 256 users;
# an open loop at 5,000 orders/s for accept latency at a set rate.
scenarios=(
    "hot|hot-product --buyers 30000 --concurrency 256 --decisions db"
    "many|many-products --products 100 --buyers 30000 --concurrency 256 --decisions db"
    "open5000|hot-product --mode open --rate 5000 --duration-secs 10 --decisions db"
)

run_all() {
    local label=$1 nats=$2 replicas=$3 round=$4 entry key args
    system "$label-$round" "$nats" "$replicas"
    for entry in "${scenarios[@]}"; do
        key=${entry%%|*}
        args=${entry#*|}
        printf '==> round %s, %s, %s: checkline-loadtest %s\n' "$round" "$label" "$key" "$args"
        # shellcheck disable=SC2086 # the scenario's arguments
        CHECKLINE_API_URL=$API_URL CHECKLINE_DATABASE_URL="$SERVER_DB/checkline_bench_${label}_$round" \
            "$BIN/checkline-loadtest" $args --json-out "$OUT/$label-$key-$round.json" \
            >"$OUT/$label-$key-$round.txt" 2>&1 ||
            printf '    (the load test failed: see %s)\n' "$OUT/$label-$key-$round.txt"
    done
    for pid in "${SYSTEM_PIDS[@]}"; do svc_stop_pid "$pid" system 15; done
}

CLUSTER_URL=$(svc_nats_cluster_url)
for ((round = 1; round <= ROUNDS; round++)); do
    # Alternate which goes first, so neither always runs on a warmer machine.
    if ((round % 2)); then
        run_all single "nats://127.0.0.1:$SINGLE_PORT" 1 "$round"
        run_all cluster "$CLUSTER_URL" 3 "$round"
    else
        run_all cluster "$CLUSTER_URL" 3 "$round"
        run_all single "nats://127.0.0.1:$SINGLE_PORT" 1 "$round"
    fi
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    label, key, _round = os.path.basename(path)[:-5].split("-")
    with open(path) as f:
        report = json.load(f)
    thr = report.get("throughput") or {}
    lat = (report.get("latency_ms") or {}).get("accept") or {}
    rows.setdefault((key, label), []).append((thr.get("accepted_per_sec"), lat.get("p50_ms"), lat.get("p99_ms"), report.get("passed")))
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def fmt(v, unit=""):
    return "-" if v is None else f"{v:,.1f}{unit}"
print(f"{'scenario':<10} {'nats':<8} {'accepted/s (each run)':<36} {'median':>10} {'accept p50':>11} {'accept p99':>11}  checks")
for key in ("hot", "many", "open5000"):
    medians = {}
    for label in ("single", "cluster"):
        runs = rows.get((key, label), [])
        each = ", ".join(fmt(r[0]) for r in runs)
        m = (med([r[0] for r in runs]), med([r[1] for r in runs]), med([r[2] for r in runs]))
        medians[label] = m
        checks = "passed" if runs and all(r[3] for r in runs) else "FAILED"
        print(f"{key:<10} {label:<8} {each:<36} {fmt(m[0]):>10} {fmt(m[1], ' ms'):>11} {fmt(m[2], ' ms'):>11}  {checks}")
    s, c = medians["single"], medians["cluster"]
    if s[0] and c[0]:
        print(f"{key:<10} ratio    cluster / single: throughput {c[0] / s[0]:.2f}, accept p99 {c[2] / s[2]:.2f}")
PY
printf '\nresults in %s\n' "$OUT"
