#!/usr/bin/env bash
#
# Cross-check of the load test's figures with an independent generator:
# wrk posts orders to a running checkline, then the queue is left to drain
# and the accepted and decided counts are read from GET /v1/admin/stats.
#
#   scripts/bench-wrk.sh [--products N] [--customers N] [--duration SECS]
#                        [--threads T] [--connections C] [--json-out FILE]
#
# Defaults: 1 product, 2000 customers, 20 s, -t2 -c256. Needs wrk
# (apt-get install -y wrk), the API at CHECKLINE_API_URL (default
# http://127.0.0.1:8080), its secret in CHECKLINE_JWT_SECRET, and
# checkline-loadtest in CHECKLINE_BIN_DIR (default target/release), which
# signs the tokens (`checkline-loadtest tokens`).
#
# Every request carries a distinct Idempotency-Key; customers and products
# are taken round-robin (scripts/wrk/orders.lua). The products are created
# through the admin API with stock enough never to sell out. After wrk, the
# stats are read every second until no partition has a pending order; then
# accepted/s = orders of the run's products / wrk's duration, and decided/s =
# those orders, all decided / (from wrk's start to the latest
# last_decided_at of the products' partitions). --json-out writes these
# figures with the run's window (started_at, duration_secs, orders answered)
# in the shape scripts/cpu-per-process.py --report reads.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${CHECKLINE_BIN_DIR:-$ROOT/target/release}
API=${CHECKLINE_API_URL:-http://127.0.0.1:8080}
API=${API%/}
PRODUCTS=1
CUSTOMERS=2000
DURATION=20
THREADS=2
CONNECTIONS=256
JSON_OUT=
DRAIN_TIMEOUT_SECS=300
# Each product can take every order of the run: the largest stock the API takes.
STOCK=1000000000

die() {
    printf 'bench-wrk: %s\n' "$*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --products) PRODUCTS=$2 ;;
    --customers) CUSTOMERS=$2 ;;
    --duration) DURATION=$2 ;;
    --threads) THREADS=$2 ;;
    --connections) CONNECTIONS=$2 ;;
    --json-out) JSON_OUT=$2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift 2 || die "$1 needs a value"
done
for value in "$PRODUCTS" "$CUSTOMERS" "$DURATION" "$THREADS" "$CONNECTIONS"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $value"
done
command -v wrk >/dev/null || die "wrk is not installed (apt-get install -y wrk)"
[[ -n ${CHECKLINE_JWT_SECRET:-} ]] || die "CHECKLINE_JWT_SECRET must be the API's secret"
[[ -x $BIN/checkline-loadtest ]] || die "no $BIN/checkline-loadtest (cargo build --release -p checkline-loadtest)"
curl -fsS --max-time 5 "$API/readyz" >/dev/null || die "the API at $API is not ready"

RUN=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Tokens are signed before the run, so that wrk only sends.
"$BIN/checkline-loadtest" tokens --customers "$CUSTOMERS" --prefix "wrk-$RUN" >"$WORK/tokens"
ADMIN=$("$BIN/checkline-loadtest" tokens --admin)

for ((i = 0; i < PRODUCTS; i++)); do
    curl -fsS --max-time 10 -X POST "$API/v1/products" \
        -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
        -d "{\"sku\":\"WRK-$RUN-$i\",\"name\":\"wrk $RUN\",\"price_cents\":1000,\"stock\":$STOCK}" |
        python3 -c 'import json, sys; p = json.load(sys.stdin); print(p["id"], p["partition"])' \
            >>"$WORK/created" ||
        die "creating product WRK-$RUN-$i failed"
done
cut -d' ' -f1 "$WORK/created" >"$WORK/products"

stats() {
    curl -fsS --max-time 30 -H "Authorization: Bearer $ADMIN" "$API/v1/admin/stats" >"$WORK/stats.json" ||
        die "GET /v1/admin/stats failed"
    # Prints: decided orders of the run's products, pending orders of every
    # partition, and the latest last_decided_at of the products' partitions
    # (seconds since the epoch, 0 if none).
    python3 - "$WORK/stats.json" "$WORK/created" <<'PY'
import json, sys
from datetime import datetime
stats = json.load(open(sys.argv[1]))
created = [line.split() for line in open(sys.argv[2]) if line.strip()]
ours = {product for product, _ in created}
partitions = {int(partition) for _, partition in created}
decided = sum(p["confirmed_orders"] + p["rejected_orders"] for p in stats["products"] if p["id"] in ours)
pending = sum(p["pending"] for p in stats["partitions"])
last = max((datetime.fromisoformat(p["last_decided_at"].replace("Z", "+00:00")).timestamp()
            for p in stats["partitions"]
            if p["partition"] in partitions and p["last_decided_at"]), default=0.0)
print(decided, pending, last)
PY
}

printf 'wrk -t%s -c%s -d%ss: %s product(s), %s customers, run %s\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$PRODUCTS" "$CUSTOMERS" "$RUN" >&2
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
START=$(date +%s.%N)
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"s --timeout 10s \
    -s "$ROOT/scripts/wrk/orders.lua" "$API/v1/orders" -- "$WORK/tokens" "$WORK/products" "$RUN" |
    tee "$WORK/wrk.out"
WRK_END=$(date +%s.%N)
LAST_DECIDED=0

# Wait for the queue to drain: nothing pending, and the decided count the
# same on two reads a second apart. Requests wrk had in flight when it
# stopped are still being accepted after it returns; a single read with
# nothing pending can come before their orders are written.
PREVIOUS=-1
while :; do
    read -r DECIDED PENDING LAST_DECIDED < <(stats)
    NOW=$(date +%s.%N)
    [[ $PENDING == 0 && $DECIDED == "$PREVIOUS" ]] && break
    PREVIOUS=$DECIDED
    if python3 -c "import sys; sys.exit(0 if $NOW - $WRK_END > $DRAIN_TIMEOUT_SECS else 1)"; then
        printf 'bench-wrk: %s orders still pending after %s s; figures taken now\n' \
            "$PENDING" "$DRAIN_TIMEOUT_SECS" >&2
        break
    fi
    sleep 1
done

python3 - "$WORK/wrk.out" "$DECIDED" "$PENDING" "$START" "$LAST_DECIDED" "$STARTED_AT" \
    "$PRODUCTS" "$CUSTOMERS" "$THREADS" "$CONNECTIONS" "$RUN" "${JSON_OUT:-}" <<'PY'
import json, sys

(wrk_out, decided, pending, start, last_decided, started_at,
 products, customers, threads, connections, run, json_out) = sys.argv[1:]
decided, pending = int(decided), int(pending)
start, last_decided = float(start), float(last_decided)
lines = {}
for line in open(wrk_out):
    if line.startswith("wrk-"):
        tag, _, rest = line.strip().partition(" ")
        lines[tag] = dict(part.split("=", 1) for part in rest.split())
if "wrk-result" not in lines:
    sys.exit("bench-wrk: wrk printed no result (see its output above)")
result = {k: int(v) for k, v in lines["wrk-result"].items()}
latency = {k: float(v) for k, v in lines["wrk-latency"].items()}
statuses = {k: int(v) for k, v in lines.get("wrk-status", {}).items()}
wrk_secs = result["duration_us"] / 1e6
# Only accepted orders have rows, and after the drain every one is decided
# (if the drain timed out, the figure is a lower bound and the run fails).
accepted = decided
until_drained = max(last_decided - start, wrk_secs)
socket_errors = sum(result[k] for k in ("connect", "read", "write", "timeout"))
report = {
    "scenario": f"wrk {products} product{'s' if int(products) > 1 else ''}",
    "system": "checkline",
    "run_id": run,
    "started_at": started_at,
    "duration_secs": round(until_drained, 3),
    "submission_secs": round(wrk_secs, 3),
    "config": {"threads": int(threads), "connections": int(connections),
               "products": int(products), "customers": int(customers)},
    "responses": {"answered": result["requests"], "statuses": statuses,
                  "socket_errors": socket_errors},
    "stats": {"accepted": accepted, "decided": decided, "pending_left": pending},
    "throughput": {"requests_per_sec": round(result["requests"] / wrk_secs, 1),
                   "accepted_per_sec": round(accepted / wrk_secs, 1),
                   "decided_per_sec": round(decided / until_drained, 1)},
    "latency_ms": latency,
}
print(f"\nwrk -t{threads} -c{connections}, {products} product(s), {customers} customers")
print(f"  requests      {result['requests']} in {wrk_secs:.2f} s "
      f"({report['throughput']['requests_per_sec']:.1f}/s); "
      f"statuses {' '.join(f'{k}:{v}' for k, v in sorted(statuses.items()))}; "
      f"socket errors {socket_errors}")
print(f"  latency (ms)  p50 {latency['p50_ms']:.2f}  p90 {latency['p90_ms']:.2f}  "
      f"p99 {latency['p99_ms']:.2f}  p99.9 {latency['p999_ms']:.2f}  max {latency['max_ms']:.2f}")
print(f"  accepted/s    {report['throughput']['accepted_per_sec']:.1f}  "
      f"({accepted} orders of the run's products, over wrk's {wrk_secs:.2f} s)")
print(f"  decided/s     {report['throughput']['decided_per_sec']:.1f}  "
      f"({decided} decided, the last {until_drained:.2f} s after wrk's start)")
if pending:
    print(f"  NOT DRAINED   {pending} orders still pending")
accepted_202 = statuses.get("202", 0) + statuses.get("200", 0)
if accepted_202 != accepted:
    print(f"  note          wrk saw {accepted_202} orders accepted (202/200), the stats count {accepted}")
if json_out:
    with open(json_out, "w") as f:
        json.dump(report, f, indent=2)
sys.exit(1 if pending else 0)
PY
