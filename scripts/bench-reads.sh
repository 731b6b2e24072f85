#!/usr/bin/env bash
#
# Product reads measured from outside with wrk, against a running checkline:
# one product (GET /v1/products/{id}), the list page that holds it
# (GET /v1/products?limit=50&cursor=...), and revalidation of the product
# (If-None-Match with its ETag, answered 304).
#
#   scripts/bench-reads.sh [--duration SECS] [--threads T] [--connections C]
#
# Defaults: 10 s each, -t2 -c128. The list page holds 50 products made
# for the run. Needs wrk (apt-get install -y wrk), curl,
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
# Fifty products, created one after another: their ids are time-ordered, so
# they fill one list page, which starts after the id before the first.
RUN=$(date +%s%N)
IDS=()
for i in $(seq 1 50); do
    PRODUCT=$(curl -fsS -X POST "$API/v1/products" -H "authorization: Bearer $ADMIN" \
        -H 'content-type: application/json' \
        -d "{\"sku\":\"READS-$RUN-$i\",\"name\":\"Flash phone $i\",\"price_cents\":19900,\"stock\":100}") \
        || die "cannot create products at $API"
    IDS+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<< "$PRODUCT")")
done
ID=${IDS[0]}
CURSOR=
BEFORE=
while :; do
    PAGE=$(curl -fsS "$API/v1/products?limit=200${BEFORE:+&cursor=$BEFORE}")
    # The id before ours on this page, or "next <cursor>" to read on.
    STEP=$(python3 -c '
import json, sys
page, target, before = json.load(sys.stdin), sys.argv[1], sys.argv[2]
for p in page["items"]:
    if p["id"] == target:
        print("found " + before)
        break
    before = p["id"]
else:
    print("next " + (page["next_cursor"] or "end") + " " + before)' "$ID" "${BEFORE:--}" <<< "$PAGE")
    case $STEP in
    "found -") CURSOR= && break ;;
    found*) CURSOR=${STEP#found } && break ;;
    "next end"*) die "product $ID is on no list page" ;;
    *) BEFORE=$(cut -d' ' -f2 <<< "$STEP") ;;
    esac
done
LIST="$API/v1/products?limit=50${CURSOR:+&cursor=$CURSOR}"
ETAG=$(curl -fsS -D - -o /dev/null "$API/v1/products/$ID" | tr -d '\r' \
    | awk -F': ' 'tolower($1) == "etag" { print $2 }')

# wrk's report, summed up on one line.
SUMMARY='
import re, sys
text = sys.stdin.read()
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M))
p50, p90, p99 = (lat.get(p, "?") for p in ("50", "90", "99"))
line = f"{sys.argv[1]:<12} {rate:>10.0f} req/s   p50 {p50}  p90 {p90}  p99 {p99}"
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if non2xx:
    line += "   non-2xx/3xx " + non2xx.group(1)
print(line)
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
