#!/usr/bin/env bash
#
# The cluster suite: checkline on a three-node NATS cluster with every stream
# replicated three times, two APIs and three workers, started as a production
# host runs them (each binary on its own, nothing supervising them: this
# script is the operator who restarts what it killed). Three parts:
#
#  1. One order per key across APIs: a flash sale in which every buyer's
#     first attempt goes to both APIs at once with the same Idempotency-Key
#     and body; both answers must name the same order.
#  2. A sale with buyers spread over both APIs, retrying on the other API
#     when theirs does not answer, during which
#       - the orders stream's leader (asked of the monitoring endpoint) is
#         SIGKILLed, and started again on its store a few seconds later;
#       - a follower of the stream is SIGSTOPped for longer than the longest
#         election timeout of NATS's Raft (9 s), then resumed;
#       - an API is SIGKILLed while its buyers retry on the other one, and
#         started again later.
#     The load test then checks every invariant: every 202 decided exactly
#     once, per-product queue order, stock exact.
#  3. A worker given one server keeps working when that server dies: the
#     three workers are stopped, a fourth one started with CHECKLINE_NATS_URL
#     naming only nats-3 takes every partition, nats-3 is SIGKILLed, and a
#     flash sale through it must still be decided whole.
# Each part fails the suite when the load test's checks or its own check
# fail. Bounded by CHECKLINE_CLUSTER_SUITE_TIMEOUT_SECS (default 600).
#
#   scripts/cluster-suite.sh     (scripts/test.sh runs it)
#
# Its nats-servers use CHECKLINE_CLUSTER_NATS_PORT (default here 4291-4293),
# CHECKLINE_CLUSTER_NATS_MONITOR_PORT (8291-8293) and
# CHECKLINE_CLUSTER_NATS_ROUTE_PORT (6291-6293), with stores under
# .run/cluster-suite/; PostgreSQL and Redis are found or started as by
# scripts/run.sh, with a database of its own. Uses the debug binaries in
# target/debug (built if missing).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

PART_START=$SECONDS
log() { printf '[cluster] %(%H:%M:%S)T t+%ss %s\n' -1 $((SECONDS - PART_START)) "$*" >&2; }
# Milliseconds since the epoch.
now_ms() {
    local t=${EPOCHREALTIME//[.,]/}
    printf '%s\n' $((10#$t / 1000))
}
FAILURES=()
failed() {
    log "FAILED: $*"
    FAILURES+=("$*")
}

LIMIT=${CHECKLINE_CLUSTER_SUITE_TIMEOUT_SECS:-600}
[[ $LIMIT =~ ^[1-9][0-9]{0,4}$ ]] ||
    svc_die "CHECKLINE_CLUSTER_SUITE_TIMEOUT_SECS=$LIMIT: expected a whole number of seconds >= 1"
# The whole suite is bounded: a watchdog ends it (and its clean-up stops
# everything) when it runs over.
SUITE_PID=$$
(
    sleep "$LIMIT"
    printf '[cluster] FAILED: the suite did not finish within %ss (CHECKLINE_CLUSTER_SUITE_TIMEOUT_SECS)\n' "$LIMIT" >&2
    kill -TERM "$SUITE_PID" 2>/dev/null
) &
WATCHDOG=$!
svc_on_cleanup "kill $WATCHDOG 2>/dev/null || true"

ensure_rust
ensure_curl
ensure_nats_binary
command -v python3 >/dev/null 2>&1 || svc_die "python3 is required (to read the monitoring endpoints)"

STATE_DIR="$ROOT/.run/cluster-suite"
LOGS="$STATE_DIR/logs"
rm -rf "$STATE_DIR"
mkdir -p "$LOGS"
export CHECKLINE_CLUSTER_NATS_PORT=${CHECKLINE_CLUSTER_NATS_PORT:-4291}
export CHECKLINE_CLUSTER_NATS_MONITOR_PORT=${CHECKLINE_CLUSTER_NATS_MONITOR_PORT:-8291}
export CHECKLINE_CLUSTER_NATS_ROUTE_PORT=${CHECKLINE_CLUSTER_NATS_ROUTE_PORT:-6291}
SVC_NATS_CLUSTER_DIR="$STATE_DIR/nats"
svc_nats_cluster_ports_free
unset CHECKLINE_NATS_URL
ensure_postgres
ensure_redis

if [[ ! -x target/debug/checkline-api || ! -x target/debug/checkline-worker || ! -x target/debug/checkline-loadtest ]]; then
    cargo build --workspace --bins
fi

DB="checkline_cluster_$$"
export CHECKLINE_DATABASE_URL="${CHECKLINE_DATABASE_URL%/*}/$DB"
svc_on_cleanup "psql -q '${CHECKLINE_DATABASE_URL%/*}/postgres' -c 'DROP DATABASE IF EXISTS $DB WITH (FORCE)' >/dev/null 2>&1 || true"
CHECKLINE_NATS_URL=$(svc_nats_cluster_url)
export CHECKLINE_NATS_URL
export CHECKLINE_STREAM_REPLICAS=3
export CHECKLINE_PREFIX=cluster
export CHECKLINE_JWT_SECRET="cluster-suite-secret-cluster-suite-secret"
export CHECKLINE_STREAM_MAX_BYTES=$((256 * 1024 * 1024))
export CHECKLINE_LEASE_TTL_MS=3000
export CHECKLINE_REBALANCE_INTERVAL_MS=300
# Short publish timeouts, so that a request caught by a leader election
# fails fast (503) and its buyer retries.
export CHECKLINE_PUBLISH_TIMEOUT_MS=2000
export CHECKLINE_LOG=${CHECKLINE_LOG:-warn}

# ------------------------------------------------------------ processes --

declare -A PIDS=() # name -> pid

# start NAME COMMAND...: runs COMMAND as NAME in its own session, appending
# to its log; stopped by the clean-up (a later start replaces the pid).
start() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    PIDS[$name]=$!
}
# shellcheck disable=SC2317 # called from the clean-up
stop_all() {
    local name
    for name in api-1 api-2 worker-1 worker-2 worker-3 worker-solo nats-1 nats-2 nats-3; do
        [[ -n ${PIDS[$name]:-} ]] || continue
        kill -CONT "${PIDS[$name]}" 2>/dev/null || true
        svc_stop_pid "${PIDS[$name]}" "$name" 10
    done
}
svc_on_cleanup stop_all

start_node() {
    mkdir -p "$SVC_NATS_CLUSTER_DIR/nats-$1"
    svc_nats_node_cmd "$1"
    start "nats-$1" "${NODE_CMD[@]}"
}
monitor_url() { printf 'http://127.0.0.1:%s' "$(svc_nats_node_port monitor "$1")"; }
# node_healthy I: nats-I answers /healthz (in the meta group, JetStream up).
node_healthy() { curl -fsS --max-time 2 -o /dev/null "$(monitor_url "$1")/healthz" 2>/dev/null; }
# wait_node I SECONDS
wait_node() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        node_healthy "$1" && return 0
        sleep 0.3
    done
    return 1
}

for i in 1 2 3; do start_node "$i"; done
svc_wait_nats_cluster 60 || {
    for i in 1 2 3; do svc_show_log "$LOGS/nats-$i.log" 15; done
    svc_die "the NATS cluster did not become healthy within 60s"
}
log "NATS cluster up: $CHECKLINE_NATS_URL"

API_PORTS=()
for i in 1 2; do
    API_PORTS+=("$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
done
start_api() {
    start "api-$1" env CHECKLINE_HTTP_ADDR="127.0.0.1:${API_PORTS[$1 - 1]}" target/debug/checkline-api
}
api_url() { printf 'http://127.0.0.1:%s' "${API_PORTS[$1 - 1]}"; }
wait_api() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        curl -fsS --max-time 2 -o /dev/null "$(api_url "$1")/readyz" 2>/dev/null && return 0
        svc_alive "${PIDS[api-$1]}" || return 1
        sleep 0.2
    done
    return 1
}
for i in 1 2 3; do
    start "worker-$i" env CHECKLINE_WORKER_ID="cluster-worker-$i" target/debug/checkline-worker
done
for i in 1 2; do start_api "$i"; done
for i in 1 2; do
    wait_api "$i" 60 || {
        svc_show_log "$LOGS/api-$i.log"
        svc_die "api-$i did not become ready"
    }
done
APIS="$(api_url 1),$(api_url 2)"
ADMIN_TOKEN=$(target/debug/checkline-token --sub cluster-admin --role admin --ttl-secs 3600)
log "two APIs ready: $APIS; three workers"

# A stream (the orders stream unless named) as the cluster sees it, from the
# first node that answers: "leader follower follower" (server names).
STREAM="${CHECKLINE_PREFIX^^}_ORDERS"
stream_placement() {
    local i body name=${1:-$STREAM}
    for i in 1 2 3; do
        body=$(curl -fsS --max-time 2 "$(monitor_url "$i")/jsz?streams=true" 2>/dev/null) || continue
        # A node lists the stream's other peers as its replicas: the stream
        # is on those and on the node itself, if the node is a peer.
        STREAM=$name SELF=nats-$i python3 -c '
import json, os, sys
for account in json.load(sys.stdin).get("account_details") or []:
    for stream in account.get("stream_detail") or []:
        cluster = stream.get("cluster") or {}
        if stream.get("name") == os.environ["STREAM"] and cluster.get("leader"):
            peers = {r["name"] for r in cluster.get("replicas") or []} | {os.environ["SELF"]}
            leader = cluster["leader"]
            print(leader, *sorted(peers - {leader}))
            sys.exit(0)
sys.exit(1)
' <<<"$body" && return 0
    done
    return 1
}
# partition_owners: the owner of every partition, one per line, from the API.
partition_owners() {
    curl -fsS --max-time 3 -H "Authorization: Bearer $ADMIN_TOKEN" "$(api_url "$1")/v1/admin/stats" 2>/dev/null |
        python3 -c '
import json, sys
for p in json.load(sys.stdin).get("partitions") or []:
    print(p.get("owner") or "-")
'
}

loadtest() {
    local name=$1
    shift
    local rc=0
    CHECKLINE_API_URL=$APIS target/debug/checkline-loadtest flash-sale \
        --json-out "$LOGS/$name.json" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    cat "$LOGS/$name.log"
    return "$rc"
}

# Every stream and bucket checkline made must be on all three servers.
for name in "$STREAM" "${CHECKLINE_PREFIX^^}_DEADLETTER" "KV_${CHECKLINE_PREFIX^^}_LEASES"; do
    placement=$(stream_placement "$name" || true)
    read -ra servers <<<"$placement"
    if ((${#servers[@]} == 3)); then
        log "$name: leader ${servers[0]}, followers ${servers[*]:1}"
    else
        failed "$name is not on three servers: '${placement:-not found}'"
    fi
done

# ---------------------------------------------- 1. one order per key, two APIs --

PART_START=$SECONDS
log "part 1: 2,000 buyers for 300 units, every first attempt sent to both APIs with the same key"
loadtest same-key --buyers 2000 --stock 300 --concurrency 64 --same-key-to-every-api ||
    failed "part 1: the load test's checks failed with the same key sent to both APIs"

# ------------------------------------------------- 2. faults during a sale --

PART_START=$SECONDS
RATE=${CHECKLINE_CLUSTER_RATE:-200}
DURATION=${CHECKLINE_CLUSTER_DURATION_SECS:-45}
STOCK=$((RATE * (DURATION - 5)))
log "part 2: $RATE buyers/s for ${DURATION}s over both APIs, stock $STOCK"
CHECKLINE_API_URL=$APIS target/debug/checkline-loadtest flash-sale \
    --mode open --rate "$RATE" --duration-secs "$DURATION" --stock "$STOCK" \
    --max-attempts 1000 --max-retry-after-secs 2 --request-timeout-secs 10 \
    --decision-timeout-secs 120 \
    --json-out "$LOGS/faults.json" >"$LOGS/faults.log" 2>&1 &
LOAD_PID=$!
svc_on_cleanup "svc_stop_pid $LOAD_PID loadtest"

name_to_node() { [[ $1 =~ ^nats-([123])$ ]] && printf '%s\n' "${BASH_REMATCH[1]}"; }

sleep 4
if placement=$(stream_placement); then
    read -r leader followers <<<"$placement"
    log "stream $STREAM: leader $leader, followers $followers"
    n=$(name_to_node "$leader") || n=
    if [[ -n $n ]]; then
        log "SIGKILL the stream leader $leader"
        kill -KILL "${PIDS[nats-$n]}"
        killed_at=$(now_ms)
        after=$(stream_placement || true)
        deadline=$((SECONDS + 20))
        while [[ -z $after || ${after%% *} == "$leader" ]] && ((SECONDS < deadline)); do
            sleep 0.2
            after=$(stream_placement || true)
        done
        if [[ -n $after && ${after%% *} != "$leader" ]]; then
            elapsed=$(($(now_ms) - killed_at))
            log "new leader ${after%% *}, seen $((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000)))s after the kill"
        else
            failed "no new leader for $STREAM within 20s of killing $leader"
        fi
        sleep 3
        log "start $leader again on its store"
        start_node "$n"
        wait_node "$n" 30 || failed "$leader did not rejoin within 30s"
    else
        failed "the stream leader $leader is not one of nats-1..3"
    fi
else
    failed "could not find the leader of $STREAM on the monitoring endpoints"
fi

sleep 3
PAUSE_SECS=12
if placement=$(stream_placement); then
    read -r leader followers <<<"$placement"
    follower=${followers%% *}
    n=$(name_to_node "$follower") || n=
    if [[ -n $n ]]; then
        log "SIGSTOP the follower $follower for ${PAUSE_SECS}s (leader $leader)"
        kill -STOP "${PIDS[nats-$n]}"
        sleep "$PAUSE_SECS"
        log "SIGCONT $follower"
        kill -CONT "${PIDS[nats-$n]}"
        wait_node "$n" 30 || failed "$follower was not healthy within 30s of SIGCONT"
    else
        failed "no follower of $STREAM to pause (placement: $placement)"
    fi
else
    failed "could not find the placement of $STREAM to pause a follower"
fi

sleep 2
log "SIGKILL api-2; its buyers retry on api-1"
kill -KILL "${PIDS[api-2]}"
sleep 6
log "start api-2 again"
start_api 2
wait_api 2 60 || failed "api-2 did not become ready again"

log "waiting for the sale and its checks"
deadline=$((SECONDS + DURATION + 150))
while svc_alive "$LOAD_PID" && ((SECONDS < deadline)); do sleep 1; done
if svc_alive "$LOAD_PID"; then
    failed "part 2: the load test had not finished; stopped it"
    svc_stop_pid "$LOAD_PID" loadtest 10
fi
rc=0
wait "$LOAD_PID" || rc=$?
cat "$LOGS/faults.log"
((rc == 0)) || failed "part 2: the load test's checks failed (exit $rc) through the faults"
for name in worker-1 worker-2 worker-3 api-1; do
    svc_alive "${PIDS[$name]}" || failed "$name died during the faults (see $LOGS/$name.log)"
done

# -------------------------------- 3. a worker given one server outlives it --

PART_START=$SECONDS
log "part 3: a worker given only nats-3 takes every partition, then nats-3 dies"
start "worker-solo" env CHECKLINE_WORKER_ID=cluster-worker-solo \
    CHECKLINE_NATS_URL="nats://127.0.0.1:$(svc_nats_node_port client 3)" target/debug/checkline-worker
for i in 1 2 3; do svc_stop_pid "${PIDS[worker-$i]}" "worker-$i" 15; done
owned=0
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
    owners=$(partition_owners 1 || true)
    if [[ -n $owners ]] && ! grep -qv '^cluster-worker-solo$' <<<"$owners"; then
        owned=1
        break
    fi
    sleep 0.5
done
if ((owned)); then
    log "cluster-worker-solo owns every partition; SIGKILL nats-3"
    kill -KILL "${PIDS[nats-3]}"
    sleep 2
    loadtest solo --buyers 1000 --stock 200 --concurrency 32 --decision-timeout-secs 60 ||
        failed "part 3: the sale through the worker whose server died was not decided whole"
    svc_alive "${PIDS[worker-solo]}" || failed "the worker given one server died with it (see $LOGS/worker-solo.log)"
    owners=$(partition_owners 1 || true)
    if grep -qv '^cluster-worker-solo$' <<<"$owners"; then
        failed "cluster-worker-solo lost partitions after its server died: $(tr '\n' ' ' <<<"$owners")"
    fi
else
    failed "cluster-worker-solo did not take every partition within 30s: $(tr '\n' ' ' <<<"${owners:-}")"
fi

PART_START=$SECONDS
if ((${#FAILURES[@]})); then
    log "FAILED:"
    for f in "${FAILURES[@]}"; do log "  - $f"; done
    log "logs in $LOGS"
    exit 1
fi
log "passed: one order per key across APIs; every invariant held through a killed stream leader, a paused follower and a killed API; a worker outlived its server"
