#!/usr/bin/env bash
#
# The benchmark suite behind BENCHMARKS.md: starts a release build of
# checkline (one worker) on its own database and prefix, runs the load test's
# scenarios against it (with the row-locking baseline in the same runs), and
# records each scenario's report, JSON and the CPU time every process used.
#
#   scripts/bench.sh              all scenarios
#   scripts/bench.sh hot          only the scenarios whose name contains "hot"
#
# Results: .run/bench/<timestamp>/. Run it on a machine with nothing else
# going on; every figure shares the cores with the load generator.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

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
export CHECKLINE_DATABASE_URL="${CHECKLINE_DATABASE_URL%/*}/checkline_bench"
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

run() {
    local name=$1
    shift
    [[ -z $FILTER || $name == *"$FILTER"* ]] || return 0
    printf '\n==> %s: checkline-loadtest %s\n' "$name" "$*"
    python3 "$ROOT/scripts/cpu-per-process.py" "$OUT/$name.cpu.json" -- \
        "$BIN/checkline-loadtest" "$@" --json-out "$OUT/$name.json" | tee "$OUT/$name.txt"
}

run hot-closed hot-product --buyers 50000 --concurrency 256 --decisions db --baseline --baseline-pool 16
run hot-open-2000 hot-product --mode open --rate 2000 --duration-secs 15 --decisions db
run hot-open-5000 hot-product --mode open --rate 5000 --duration-secs 15 --decisions db
run many-products many-products --products 100 --buyers 50000 --concurrency 256 --decisions db
run storm-closed sold-out-storm --buyers 50000 --concurrency 512 --baseline --baseline-pool 16
run flash-sale flash-sale --buyers 10000 --stock 100 --concurrency 256

printf '\nresults in %s\n' "$OUT"
