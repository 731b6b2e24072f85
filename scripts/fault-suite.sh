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
# while the load test's buyers retry 503s with the same Idempotency-Key, as a
# storefront would. The load test then checks invariants 1-5 against
# PostgreSQL and the API; its exit code is the suite's.
#
#   scripts/fault-suite.sh        (scripts/test.sh runs it after the tests)
#
# Uses the debug binaries in target/debug (built if missing).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
svc_trap_cleanup

log() { printf '[fault] %s\n' "$*" >&2; }

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

# The sale: an open-loop arrival rate, so that buyers keep arriving through
# every fault, and retrying clients (503 and network errors, same key).
RATE=${CHECKLINE_FAULT_RATE:-300}
DURATION=${CHECKLINE_FAULT_DURATION_SECS:-24}
log "flash sale: $RATE buyers/s for ${DURATION}s, stock $((RATE * DURATION / 3))"
target/debug/checkline-loadtest flash-sale \
    --mode open --rate "$RATE" --duration-secs "$DURATION" \
    --stock $((RATE * DURATION / 3)) \
    --max-attempts 1000 --max-retry-after-secs 2 --request-timeout-secs 10 \
    --decision-timeout-secs 180 \
    --json-out "$LOG_DIR/fault-flash-sale.json" >"$LOG_DIR/loadtest.log" 2>&1 &
LOAD_PID=$!
svc_on_cleanup "svc_stop_pid $LOAD_PID loadtest"

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

log "waiting for the sale and its checks"
rc=0
wait "$LOAD_PID" || rc=$?
cat "$LOG_DIR/loadtest.log"
if ((rc != 0)); then
    log "FAILED (load test exit $rc); logs in $LOG_DIR"
    exit "$rc"
fi
for i in 1 2 3; do
    svc_alive "${WORKER_PIDS[$i]}" || svc_die "worker $i died during the suite (see $LOG_DIR/worker-$i.log)"
done
svc_alive "$API_PID" || svc_die "the api died during the suite (see $LOG_DIR/api.log)"
log "passed: every invariant held through worker, NATS, PostgreSQL and Redis faults"
