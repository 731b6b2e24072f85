#!/usr/bin/env bash
#
# Product reads measured from outside with wrk, against a running checkline:
# one product (GET /v1/products/{id}), the list page that holds it
# (GET /v1/products?limit=50&cursor=...), and revalidation of the product
# (If-None-Match with its ETag, answered 304).
#
#   scripts/bench-reads.sh [--duration SECS] [--threads T] [--connections C]
#
# Defaults: 10 s each, -t2 -c128. Needs wrk (apt-get install -y wrk), curl,
# python3, the API at CHECKLINE_API_URL (default http://127.0.0.1:8080) and
# its secret in CHECKLINE_JWT_SECRET; checkline-loadtest in
# CHECKLINE_BIN_DIR (default target/release) signs the admin token. The
# product is created through the admin API. Prints one line per target:
# requests/s and wrk's latency percentiles. Orders are measured by the load
# test (`checkline-loadtest read` runs reads and orders together).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${CHECKLINE_BIN_DIR:-$ROOT/target/release}
API=${CHECKLINE_API_URL:-http://127.0.0.1:8080}
API=${API%/}
DURATION=10
THREADS=2
CONNECTIONS=128

die() {
    printf 'bench-reads: %s\n' "$*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) DURATION=$2 ;;
    --threads) THREADS=$2 ;;
    --connections) CONNECTIONS=$2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift 2 || die "$1 needs a value"
done
for value in "$DURATION" "$THREADS" "$CONNECTIONS"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $value"
done
command -v wrk > /dev/null || die "wrk is not installed (apt-get install -y wrk)"
[[ -n ${CHECKLINE_JWT_SECRET:-} ]] || die "CHECKLINE_JWT_SECRET is not set"
[[ -x $BIN/checkline-loadtest ]] || die "no $BIN/checkline-loadtest (cargo build --release)"

ADMIN=$("$BIN/checkline-loadtest" tokens --admin) \
    || die "cannot sign an admin token"
SKU="READS-$(date +%s%N)"
PRODUCT=$(curl -fsS -X POST "$API/v1/products" -H "authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' \
    -d "{\"sku\":\"$SKU\",\"name\":\"Flash phone\",\"price_cents\":19900,\"stock\":100}") \
    || die "cannot create the product at $API"
ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<< "$PRODUCT")

# The list page that holds the product: walk from the first.
CURSOR=
while :; do
    PAGE=$(curl -fsS "$API/v1/products?limit=50${CURSOR:+&cursor=$CURSOR}")
    FOUND=$(python3 -c '
import json, sys
page = json.load(sys.stdin)
ids = [p["id"] for p in page["items"]]
print("yes" if sys.argv[1] in ids else (page["next_cursor"] or "end"))' "$ID" <<< "$PAGE")
    [[ $FOUND == yes ]] && break
    [[ $FOUND == end ]] && die "product $ID is on no list page"
    CURSOR=$FOUND
done
LIST="$API/v1/products?limit=50${CURSOR:+&cursor=$CURSOR}"
ETAG=$(curl -fsS -D - -o /dev/null "$API/v1/products/$ID" | tr -d '\r' \
    | awk -F': ' 'tolower($1) == "etag" { print $2 }')

# wrk's report, summed up on one line.
SUMMARY='
import re, sys
text = sys.stdin.read()
rate = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{sys.argv[1]:<12} {float(rate):>10.0f} req/s   p50 {lat.get(\"50\")}  p90 {lat.get(\"90\")}  p99 {lat.get(\"99\")}"
      + (f"   non-2xx/3xx {non2xx.group(1)}" if non2xx else ""))
'

run() {
    local name=$1
    shift
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" | python3 -c "$SUMMARY" "$name"
}

echo "bench-reads: $API, -t$THREADS -c$CONNECTIONS, ${DURATION}s each"
run product "$API/v1/products/$ID"
run list "$LIST"
if [[ -n $ETAG ]]; then
    run revalidate -H "If-None-Match: $ETAG" "$API/v1/products/$ID"
else
    echo "revalidate   (no ETag: not measured)"
fi
