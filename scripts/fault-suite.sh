#!/usr/bin/env bash
#
# The fault suite: a flash sale with retrying clients while the system is
# knocked about, then every invariant of the contract checked.
#
# It runs on dependencies of its own, so it can kill and restart them: a
# private PostgreSQL cluster, a private Redis and a private nats-server (the
# pinned one), on their own ports, with state under .run/fault/. During the
# sale it
#   - SIGKILLs one of three workers and later starts it again,
#   - SIGKILLs nats-server (a crash, not a clean stop) and starts it again on
#     the same store: every order it acknowledged must still be there,
#   - restarts PostgreSQL (fast shutdown, then start),
#   - stops Redis for a while and starts it again,
#   - pauses (SIGSTOP) the worker that is deciding the sale for three lease
#     TTLs, then resumes it (SIGCONT): the others must take its partitions
#     over while it sleeps, and it must find itself fenced when it wakes,
#   - deletes the queue stream, as an operator or a lost NATS store would
#     (scripts/lib/nats_stream_delete.py), while every worker is held for
#     2 s so that accepted orders are lost with it: every order accepted
#     before must still be decided, and the sale must go on,
# one after the other, so that each one's effect can be told apart in the
# logs, while the load test's buyers retry 503s with the same
# Idempotency-Key, as a storefront would. The load test then checks
# invariants 1-5 against PostgreSQL and the API; the suite fails when it
# fails or when a fault's own check did.
#
#   scripts/fault-suite.sh        (scripts/test.sh runs it after the tests)
#   CHECKLINE_FAULT_SKIP_STREAM_LOSS=1 scripts/fault-suite.sh
#                                 the same without deleting the stream
#
# Uses the debug binaries in target/debug (built if missing).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

# Once the sale runs, each line says when, so faults and effects line up
# with the other logs.
SALE_START=
log() {
    if [[ -n $SALE_START ]]; then
        printf '[fault] t+%ss %s\n' $((SECONDS - SALE_START)) "$*" >&2
    else
        printf '[fault] %s\n' "$*" >&2
    fi
}

SKIP_STREAM_LOSS=${CHECKLINE_FAULT_SKIP_STREAM_LOSS:-0}
[[ $SKIP_STREAM_LOSS == 0 || $SKIP_STREAM_LOSS == 1 ]] ||
    svc_die "CHECKLINE_FAULT_SKIP_STREAM_LOSS=$SKIP_STREAM_LOSS: expected 0 or 1"
# What a fault's own check found wrong; reported (and failing the suite)
# after the load test's invariant checks, which run in any case.
FAULT_FAILURES=()
fault_failed() {
    log "FAILED: $*"
    FAULT_FAILURES+=("$*")
}

ensure_rust
ensure_curl
ensure_nats_binary

# Everything of this suite lives apart from a running system and the tests.
RUN_DIR="$ROOT/.run/fault"
LOG_DIR="$RUN_DIR/logs"
rm -rf "$RUN_DIR"
mkdir -p "$LOG_DIR"
PG_PORT=${CHECKLINE_FAULT_PG_PORT:-5441}
REDIS_PORT=${CHECKLINE_FAULT_REDIS_PORT:-6391}
export CHECKLINE_NATS_PORT=${CHECKLINE_FAULT_NATS_PORT:-4254}
export CHECKLINE_NATS_MONITOR_PORT=${CHECKLINE_FAULT_NATS_MONITOR_PORT:-8254}
export CHECKLINE_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/checkline"
export CHECKLINE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
unset CHECKLINE_NATS_URL
SVC_NATS_STORE_DIR="$RUN_DIR/nats"
SVC_NATS_EPHEMERAL=0

for port in "$PG_PORT" "$REDIS_PORT" "$CHECKLINE_NATS_PORT"; do
    if svc_port_open 127.0.0.1 "$port"; then
        svc_die "port $port is in use; the fault suite needs its own PostgreSQL, Redis and NATS (set CHECKLINE_FAULT_*_PORT)"
    fi
done
ensure_postgres
ensure_redis
ensure_nats

PG_BIN=$(_svc_pg_bindir)
PG_DATA="$RUN_DIR/pg"
[[ -f $PG_DATA/PG_VERSION ]] || PG_DATA=${TMPDIR:-/tmp}/checkline-pg-$PG_PORT

if [[ ! -x target/debug/checkline-api || ! -x target/debug/checkline-worker || ! -x target/debug/checkline-loadtest ]]; then
    cargo build --workspace --bins
fi

HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CHECKLINE_HTTP_ADDR="127.0.0.1:$HTTP_PORT"
export CHECKLINE_API_URL="http://127.0.0.1:$HTTP_PORT"
export CHECKLINE_JWT_SECRET="fault-suite-secret-fault-suite-secret"
export CHECKLINE_PREFIX=fault
export CHECKLINE_STREAM_MAX_BYTES=$((256 * 1024 * 1024))
export CHECKLINE_LEASE_TTL_MS=3000
export CHECKLINE_REBALANCE_INTERVAL_MS=300
export CHECKLINE_LOG=${CHECKLINE_LOG:-warn}
# Short publish timeouts, so that a request caught by the NATS restart fails
# fast (503) and its buyer retries.
export CHECKLINE_PUBLISH_TIMEOUT_MS=2000

declare -A WORKER_PIDS=()
start_worker() {
    local i=$1
    CHECKLINE_WORKER_ID="fault-worker-$i" target/debug/checkline-worker >>"$LOG_DIR/worker-$i.log" 2>&1 &
    WORKER_PIDS[$i]=$!
    svc_on_cleanup "svc_stop_pid ${WORKER_PIDS[$i]} worker-$i"
}
for i in 1 2 3; do start_worker "$i"; done
target/debug/checkline-api >>"$LOG_DIR/api.log" 2>&1 &
API_PID=$!
svc_on_cleanup "svc_stop_pid $API_PID api"
for _ in $(seq 1 150); do
    curl -fsS --max-time 2 "$CHECKLINE_API_URL/readyz" >/dev/null 2>&1 && break
    svc_alive "$API_PID" || {
        svc_show_log "$LOG_DIR/api.log"
        svc_die "the api exited"
    }
    sleep 0.2
done

ADMIN_TOKEN=$(target/debug/checkline-token --sub fault-admin --role admin --ttl-secs 3600)
# stats_partitions: "partition owner last_decided_at pending" per partition,
# from GET /v1/admin/stats ("-" for none); fails when the API does not answer.
stats_partitions() {
    local body
    body=$(curl -fsS --max-time 3 -H "Authorization: Bearer $ADMIN_TOKEN" \
        "$CHECKLINE_API_URL/v1/admin/stats" 2>/dev/null) || return 1
    python3 -c '
import json, sys
for p in json.loads(sys.stdin.read()).get("partitions") or []:
    print(p["partition"], p.get("owner") or "-", p.get("last_decided_at") or "-", p.get("pending") or 0)
' <<<"$body"
}

# The sale: an open-loop arrival rate, so that buyers keep arriving through
# every fault, and retrying clients (503 and network errors, same key).
RATE=${CHECKLINE_FAULT_RATE:-300}
DURATION=${CHECKLINE_FAULT_DURATION_SECS:-45}
# Stock for all but the last few seconds of buyers: orders keep being
# accepted and queued through every fault, and the sale still sells out.
STOCK=$((RATE * (DURATION - 5)))
((STOCK >= RATE)) || STOCK=$RATE
log "flash sale: $RATE buyers/s for ${DURATION}s, stock $STOCK"
target/debug/checkline-loadtest flash-sale \
    --mode open --rate "$RATE" --duration-secs "$DURATION" \
    --stock "$STOCK" \
    --max-attempts 1000 --max-retry-after-secs 2 --request-timeout-secs 10 \
    --decision-timeout-secs 120 \
    --json-out "$LOG_DIR/fault-flash-sale.json" >"$LOG_DIR/loadtest.log" 2>&1 &
LOAD_PID=$!
svc_on_cleanup "svc_stop_pid $LOAD_PID loadtest"
SALE_START=$SECONDS

sleep 2
log "SIGKILL worker 1"
kill -KILL "${WORKER_PIDS[1]}"
sleep 2
log "start worker 1 again"
start_worker 1

sleep 2
log "SIGKILL nats-server"
kill -KILL "$SVC_NATS_PID"
sleep 2
log "start nats-server again on the same store"
unset CHECKLINE_NATS_URL
ensure_nats

sleep 3
log "restart PostgreSQL"
_svc_pg_run "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 restart >>"$LOG_DIR/pg-restart.log" 2>&1 ||
    svc_die "PostgreSQL did not restart (see $LOG_DIR/pg-restart.log)"

sleep 3
log "stop Redis"
REDIS_PIDFILE=$(ls "$RUN_DIR"/redis/redis-"$REDIS_PORT".pid 2>/dev/null || true)
if [[ -n $REDIS_PIDFILE ]]; then
    kill -TERM "$(cat "$REDIS_PIDFILE")" || true
    sleep 3
    log "start Redis again"
    ensure_redis
else
    log "no Redis pid file found; skipping the Redis outage"
fi

# A paused worker: the one deciding the sale right now (the owner of the
# partition with the latest decision), stopped for three lease TTLs. Its
# leases expire while it sleeps, so the others must take its partitions
# over; when it wakes, its leases are gone and any commit it had in hand is
# refused by the fencing token.
sleep 2
PAUSE_ID=
PAUSE_PARTS=
if parts=$(stats_partitions); then
    PAUSE_ID=$(LC_ALL=C sort -k3 <<<"$parts" | awk '$3 != "-" { owner = $2 } END { print owner }')
    [[ $PAUSE_ID == fault-worker-[123] ]] || PAUSE_ID=$(awk '$2 ~ /^fault-worker-[123]$/ { print $2; exit }' <<<"$parts")
    PAUSE_PARTS=$(awk -v w="$PAUSE_ID" '$2 == w { printf "%s ", $1 }' <<<"$parts")
fi
if [[ $PAUSE_ID == fault-worker-[123] && -n $PAUSE_PARTS ]]; then
    PAUSE_N=${PAUSE_ID##*-}
    PAUSE_PID=${WORKER_PIDS[$PAUSE_N]}
    PAUSE_LOG=$LOG_DIR/worker-$PAUSE_N.log
    PAUSE_MS=$((3 * CHECKLINE_LEASE_TTL_MS))
    log "SIGSTOP worker $PAUSE_N ($PAUSE_ID, pid $PAUSE_PID, partitions ${PAUSE_PARTS% }) for ${PAUSE_MS}ms"
    kill -STOP "$PAUSE_PID"
    # Registered after the worker's stop, so it runs before it on exit.
    svc_on_cleanup "kill -CONT $PAUSE_PID 2>/dev/null || true"
    deadline=$((SECONDS + PAUSE_MS / 1000))
    taken=0
    while ((SECONDS < deadline)); do
        if ((!taken)) && parts=$(stats_partitions); then
            left=$(awk -v w="$PAUSE_ID" -v want=" $PAUSE_PARTS" 'index(want, " " $1 " ") && $2 == w { printf "%s ", $1 }' <<<"$parts")
            if [[ -z $left ]]; then
                taken=1
                log "after $((SECONDS - deadline + PAUSE_MS / 1000))s, partitions ${PAUSE_PARTS% } taken over while worker $PAUSE_N sleeps: $(awk -v want=" $PAUSE_PARTS" 'index(want, " " $1 " ") { printf "p%s=%s ", $1, $2 }' <<<"$parts")"
            fi
        fi
        sleep 0.5
    done
    ((taken)) || fault_failed "the partitions of the paused worker $PAUSE_N (${PAUSE_PARTS% }) were not taken over within ${PAUSE_MS}ms; still its: ${left:-unknown}"
    log_offset=$(stat -c %s "$PAUSE_LOG")
    log "SIGCONT worker $PAUSE_N"
    kill -CONT "$PAUSE_PID"
    # It must notice at once that it lost its leases (or be fenced at its
    # first commit), not carry on deciding.
    fenced=0
    for _ in $(seq 1 50); do
        if tail -c +$((log_offset + 1)) "$PAUSE_LOG" | grep -Eq 'lease lost|taken over by another worker'; then
            fenced=1
            break
        fi
        sleep 0.2
    done
    if ((fenced)); then
        log "worker $PAUSE_N was fenced on waking: $(tail -c +$((log_offset + 1)) "$PAUSE_LOG" | grep -Ec 'lease lost|taken over by another worker') lease-lost/fenced lines"
    else
        fault_failed "worker $PAUSE_N logged no lost lease or fencing within 10s of SIGCONT (see $PAUSE_LOG)"
    fi
else
    fault_failed "no worker owning partitions found in GET /v1/admin/stats; cannot pause one"
fi

# A lost stream: the queue stream (shared/src/subjects.rs: "<PREFIX>_ORDERS",
# upper-cased) deleted mid-sale. The pending rows in PostgreSQL are the
# record of every accepted order; they must all be queued again and decided.
sleep 2
STREAM="${CHECKLINE_PREFIX^^}_ORDERS"
STREAM_LOST_AT=
if ((SKIP_STREAM_LOSS)); then
    log "skipping the lost stream (CHECKLINE_FAULT_SKIP_STREAM_LOSS=1)"
else
    if ((SECONDS - SALE_START >= DURATION)); then
        log "warning: the sale has already ended; the stream is deleted after it, not during it"
    fi
    # Struck while accepted orders wait in the queue: every worker is held
    # (SIGSTOP, shorter than a lease) for 2 s first, so that the orders
    # accepted meanwhile have their messages only in the stream that goes.
    for i in "${!WORKER_PIDS[@]}"; do kill -STOP "${WORKER_PIDS[$i]}" 2>/dev/null || true; done
    sleep 2
    log "delete the queue stream $STREAM"
    # PostgreSQL's clock, to compare with the orders' created_at.
    STREAM_LOST_AT=$(psql -Atq "$CHECKLINE_DATABASE_URL" -c "SELECT now()" 2>/dev/null || true)
    if python3 "$ROOT/scripts/lib/nats_stream_delete.py" --url "$CHECKLINE_NATS_URL" "$STREAM"; then
        # The accepted orders whose queue messages went with the stream.
        lost=$(psql -Atq "$CHECKLINE_DATABASE_URL" -c \
            "SELECT count(*) FROM orders WHERE status = 'pending' AND created_at < '$STREAM_LOST_AT'" 2>/dev/null || echo unknown)
        log "stream $STREAM deleted with $lost accepted orders undecided"
    else
        fault_failed "could not delete the stream $STREAM"
    fi
    for i in "${!WORKER_PIDS[@]}"; do kill -CONT "${WORKER_PIDS[$i]}" 2>/dev/null || true; done
fi

# Orders still undecided, and how many of them were accepted before the
# stream was lost: what a load test stopped early cannot report.
report_pending() {
    local counts all before
    command -v psql >/dev/null 2>&1 || return 0
    counts=$(psql -Atq -F ' ' "$CHECKLINE_DATABASE_URL" -c \
        "SELECT count(*), count(*) FILTER (WHERE created_at < NULLIF('${STREAM_LOST_AT:-}', '')::timestamptz)
           FROM orders WHERE status = 'pending'" 2>/dev/null) || return 0
    read -r all before <<<"$counts"
    if [[ -n ${STREAM_LOST_AT:-} ]]; then
        log "orders still pending: $all, of which $before were accepted before the stream was deleted"
    else
        log "orders still pending: $all"
    fi
}

# Bounded: buyers retrying for ever must not hang the suite. A sale that
# recovers is decided well within two minutes of its end.
log "waiting for the sale and its checks"
LOAD_DEADLINE=$((SALE_START + DURATION + 120))
while svc_alive "$LOAD_PID" && ((SECONDS < LOAD_DEADLINE)); do
    sleep 1
done
if svc_alive "$LOAD_PID"; then
    fault_failed "the load test had not finished $((DURATION + 120))s after the sale started; stopped it"
    svc_stop_pid "$LOAD_PID" loadtest 10
fi
rc=0
wait "$LOAD_PID" || rc=$?
cat "$LOG_DIR/loadtest.log"
for i in 1 2 3; do
    svc_alive "${WORKER_PIDS[$i]}" || fault_failed "worker $i died during the suite (see $LOG_DIR/worker-$i.log)"
done
svc_alive "$API_PID" || fault_failed "the api died during the suite (see $LOG_DIR/api.log)"
if ((rc != 0)); then
    log "FAILED (load test exit $rc); logs in $LOG_DIR"
    report_pending
fi
if ((${#FAULT_FAILURES[@]})); then
    log "FAILED fault checks:"
    for f in "${FAULT_FAILURES[@]}"; do log "  - $f"; done
    log "logs in $LOG_DIR"
fi
if ((rc != 0)); then
    exit "$rc"
fi
((${#FAULT_FAILURES[@]} == 0)) || exit 1
if ((SKIP_STREAM_LOSS)); then
    log "passed: every invariant held through worker, NATS, PostgreSQL, Redis and paused-worker faults (stream loss skipped)"
else
    log "passed: every invariant held through worker, NATS, PostgreSQL, Redis, paused-worker and lost-stream faults"
fi
