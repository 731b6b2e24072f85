#!/usr/bin/env bash
#
# The benchmark suite behind BENCHMARKS.md: starts a release build of
# checkline (one worker) on its own database and prefix, runs the load test's
# scenarios against it (with the row-locking baseline in the same runs), then
# the wrk cross-check (scripts/bench-wrk.sh), and records each scenario's
# report, JSON and the CPU time every process used, overall and per order
# (scripts/cpu-per-process.py; printed after each run and again at the end).
#
#   scripts/bench.sh              all scenarios
#   scripts/bench.sh hot          only the scenarios whose name contains "hot"
#   scripts/bench.sh wrk          only the wrk cross-check
#   scripts/bench.sh --quick [F]  the same scenarios with small numbers (about
#                                 2,000 orders, 1,000/s for 3 s, wrk for 3 s):
#                                 checks that the suite runs, measures nothing
#
# CHECKLINE_BENCH_DB names the database (default checkline_bench, next to
# CHECKLINE_DATABASE_URL's). Results: .run/bench/<timestamp>/. Run it on a
# machine with nothing else going on; every figure shares the cores with the
# load generator.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

QUICK=0
if [[ ${1:-} == --quick ]]; then
    QUICK=1
    shift
fi
FILTER=${1:-}
BIN=${CHECKLINE_BIN_DIR:-$ROOT/target/release}
OUT="$RUN_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

ensure_rust
ensure_services
if [[ -z ${CHECKLINE_BIN_DIR:-} ]]; then
    cargo build --release --workspace --bins
fi

HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CHECKLINE_HTTP_ADDR="127.0.0.1:$HTTP_PORT"
export CHECKLINE_API_URL="http://127.0.0.1:$HTTP_PORT"
export CHECKLINE_DATABASE_URL="${CHECKLINE_DATABASE_URL%/*}/${CHECKLINE_BENCH_DB:-checkline_bench}"
export CHECKLINE_PREFIX=bench
export CHECKLINE_JWT_SECRET="benchmark-secret-benchmark-secret-123"
export CHECKLINE_LOG=warn
# The load test is one client address and thousands of customers a second:
# per-address and per-customer rate limits would measure themselves.
export CHECKLINE_RATE_LIMITS=off

"$BIN/checkline-worker" >"$OUT/worker.log" 2>&1 &
WORKER=$!
svc_on_cleanup "svc_stop_pid $WORKER worker"
"$BIN/checkline-api" >"$OUT/api.log" 2>&1 &
API=$!
svc_on_cleanup "svc_stop_pid $API api"
for _ in $(seq 1 150); do
    curl -fsS --max-time 2 "$CHECKLINE_API_URL/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done

# Orders of the closed loops, the storm and the flash sale; open-loop rates
# and lengths; wrk's length.
if [[ $QUICK == 1 ]]; then
    CLOSED=2000 STORM=2000 FLASH=1000 HIGH_RATE=1000 LOW_RATE=500 MID_RATE=1000
    OPEN_SECS=3 WRK_SECS=3 CARTS=2000 READERS=16
else
    CLOSED=50000 STORM=50000 FLASH=10000 HIGH_RATE=10000 LOW_RATE=2000 MID_RATE=5000
    OPEN_SECS=15 WRK_SECS=20 CARTS=20000 READERS=128
fi

# Each run's per-process CPU is taken over the load's own windows (the run's
# and its baseline's, from its JSON report) and divided by the orders.
cpu() {
    local name=$1
    shift
    python3 "$ROOT/scripts/cpu-per-process.py" "$OUT/$name.cpu.json" --report "$OUT/$name.json" -- "$@"
}

run() {
    local name=$1
    shift
    [[ -z $FILTER || $name == *"$FILTER"* ]] || return 0
    printf '\n==> %s: checkline-loadtest %s\n' "$name" "$*"
    cpu "$name" "$BIN/checkline-loadtest" "$@" --json-out "$OUT/$name.json" | tee "$OUT/$name.txt"
}

run_wrk() {
    local name=$1
    shift
    [[ -z $FILTER || $name == *"$FILTER"* ]] || return 0
    printf '\n==> %s: bench-wrk.sh %s\n' "$name" "$*"
    CHECKLINE_BIN_DIR=$BIN cpu "$name" "$ROOT/scripts/bench-wrk.sh" "$@" --json-out "$OUT/$name.json" |
        tee "$OUT/$name.txt"
}

run hot-closed hot-product --buyers $CLOSED --concurrency 256 --decisions db --baseline --baseline-pool 16
run hot-open-2000 hot-product --mode open --rate $LOW_RATE --duration-secs $OPEN_SECS --decisions db
run hot-open-5000 hot-product --mode open --rate $MID_RATE --duration-secs $OPEN_SECS --decisions db
run hot-open-10000 hot-product --mode open --rate $HIGH_RATE --duration-secs $OPEN_SECS --decisions db
run many-products many-products --products 100 --buyers $CLOSED --concurrency 256 --decisions db \
    --baseline --baseline-pool 16
run many-open-10000 many-products --products 100 --mode open --rate $HIGH_RATE --duration-secs $OPEN_SECS \
    --decisions db
run storm-closed sold-out-storm --buyers $STORM --concurrency 512 --baseline --baseline-pool 16
run flash-sale flash-sale --buyers $FLASH --stock 100 --concurrency 256
# Carts of 1-3 lines over the same 100 products, stock enough for most: half
# reserved (then confirmed, cancelled, raced or abandoned), beside the
# one-line many-products run above.
run cart cart --buyers $CARTS --products 100 --stock 1000 --concurrency 256
# The same carts fighting over 20 products with small stock: holds, waits
# and releases on every product.
run cart-contended cart --buyers $CARTS --products 20 --stock 50 --concurrency 256
# Product reads beside orders on the same product: reads/s and the
# freshness bound, then each load alone.
run reads read --readers $READERS --order-rate $MID_RATE --duration-secs $OPEN_SECS
run reads-alone read --reads-only --readers $READERS --duration-secs $OPEN_SECS
run_wrk wrk-hot --products 1 --customers 2000 --duration $WRK_SECS --threads 2 --connections 256
run_wrk wrk-many --products 100 --customers 2000 --duration $WRK_SECS --threads 2 --connections 256

shopt -s nullglob
cpu_files=("$OUT"/*.cpu.json)
if [[ ${#cpu_files[@]} -gt 0 ]]; then
    printf '\n==> CPU per order, by run\n'
    python3 "$ROOT/scripts/cpu-per-process.py" --show "${cpu_files[@]}" | tee "$OUT/cpu-per-order.txt"
fi
printf '\nresults in %s\n' "$OUT"
