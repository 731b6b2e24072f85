#!/usr/bin/env bash
#
# Runs the whole checkline system in the foreground: NATS, PostgreSQL and
# Redis (started when absent), the worker(s) and the API. Ctrl-C stops it.
#
#   scripts/run.sh            start, print the URL, demo tokens and examples
#   scripts/run.sh --demo     the same, then run the flash-sale load test
#                             (10,000 buyers, 100 units) against it
#
# Environment (all optional):
#   CHECKLINE_HTTP_ADDR     where the API listens (default 127.0.0.1:8080)
#   CHECKLINE_WORKERS       number of worker processes (default 1)
#   CHECKLINE_JWT_SECRET    HS256 key for tokens (default: a local dev secret)
#   CHECKLINE_DATABASE_URL, CHECKLINE_REDIS_URL, CHECKLINE_NATS_URL,
#   CHECKLINE_NATS_PORT, CHECKLINE_NATS_MONITOR_PORT: see scripts/lib/services.sh
#   Every other CHECKLINE_* variable is passed on to the binaries.
#
# Logs: .run/logs/api.log, .run/logs/worker-N.log (also shown here, with a
# [name] prefix), .run/logs/nats.log, postgres.log, redis.log.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

usage() {
    sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//'
}

DEMO=0
for arg in "$@"; do
    case $arg in
    --demo) DEMO=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "unknown argument: $arg" >&2
        usage >&2
        exit 2
        ;;
    esac
done

log() { printf '[run] %s\n' "$*" >&2; }
die() {
    printf '[run] error: %s\n' "$*" >&2
    exit 1
}

# Until everything is up, Ctrl-C aborts (and cleans up) like any failure.
svc_trap_cleanup

# --------------------------------------------------------------- settings --

DEV_JWT_SECRET="checkline-local-development-secret-not-for-production"
if [[ -z "${CHECKLINE_JWT_SECRET:-}" ]]; then
    CHECKLINE_JWT_SECRET=$DEV_JWT_SECRET
    log "WARNING: CHECKLINE_JWT_SECRET is not set; using the local development secret"
    log "WARNING: \"$DEV_JWT_SECRET\" (anyone can mint tokens with it)"
fi
export CHECKLINE_JWT_SECRET

export CHECKLINE_HTTP_ADDR=${CHECKLINE_HTTP_ADDR:-127.0.0.1:8080}
WORKERS=${CHECKLINE_WORKERS:-1}
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "CHECKLINE_WORKERS=$WORKERS: expected a whole number >= 1"

# The URL clients use: a wildcard listen address is reached on loopback.
case $CHECKLINE_HTTP_ADDR in
\[*\]:*)
    HTTP_HOST=${CHECKLINE_HTTP_ADDR%]:*}]
    HTTP_PORT=${CHECKLINE_HTTP_ADDR##*]:}
    ;;
*:*)
    HTTP_HOST=${CHECKLINE_HTTP_ADDR%:*}
    HTTP_PORT=${CHECKLINE_HTTP_ADDR##*:}
    ;;
*) die "CHECKLINE_HTTP_ADDR=$CHECKLINE_HTTP_ADDR: expected host:port" ;;
esac
[[ $HTTP_PORT =~ ^[0-9]+$ ]] || die "CHECKLINE_HTTP_ADDR=$CHECKLINE_HTTP_ADDR: bad port"
case $HTTP_HOST in
0.0.0.0 | "") HTTP_HOST=127.0.0.1 ;;
"[::]") HTTP_HOST="[::1]" ;;
esac
export CHECKLINE_API_URL="http://$HTTP_HOST:$HTTP_PORT"
if svc_port_open "$HTTP_HOST" "$HTTP_PORT"; then
    die "$HTTP_HOST:$HTTP_PORT is already in use (another scripts/run.sh?); set CHECKLINE_HTTP_ADDR to a free address"
fi

# ------------------------------------------------------- dependencies, build --

ensure_rust
ensure_services

# One build of every binary (api, worker, token, loadtest): building them
# together keeps one feature set, so nothing is compiled twice.
log "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins

BIN=$ROOT/target/release
for b in checkline-api checkline-worker checkline-token; do
    [[ -x $BIN/$b ]] || die "$BIN/$b was not built"
done

# -------------------------------------------------------------- processes --

declare -A PIDS=() # name -> pid of the processes run.sh watches
NAMES=()           # their start order
FOLLOWERS=()       # pids (and process groups) of the log followers

# shellcheck disable=SC2317 # called from cleanup
_run_stop_followers() {
    local pid
    ((${#FOLLOWERS[@]})) || return 0
    sleep 0.5 # let them print the last lines
    for pid in "${FOLLOWERS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    FOLLOWERS=()
}

# shellcheck disable=SC2317 # called from cleanup
_run_stop() {
    local name=$1 pid=$2
    if svc_alive "$pid"; then
        log "stopping $name (pid $pid)"
    fi
    svc_stop_pid "$pid" "$name" 30
}

# Registered before any process, so it runs after all of them are stopped.
svc_on_cleanup _run_stop_followers

# start_process NAME COMMAND...: runs COMMAND in its own session (so that a
# Ctrl-C reaches only this script, which then stops everything in order),
# logging to .run/logs/NAME.log, shown here with a [NAME] prefix.
start_process() {
    local name=$1 logfile=$LOG_DIR/$1.log pid
    shift
    mkdir -p "$LOG_DIR"
    [[ -f $logfile ]] && mv -f "$logfile" "$logfile.prev"
    : >"$logfile"
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'tail -n +1 -F -- "$1" 2>/dev/null | sed -u "s/^/[$2] /"' _ "$logfile" "$name" </dev/null &
    FOLLOWERS+=("$!")
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    pid=$!
    PIDS[$name]=$pid
    NAMES+=("$name")
    svc_on_cleanup "_run_stop $name $pid"
    log "started $name (pid $pid, log $logfile)"
}

show_logs() {
    local name
    for name in "${NAMES[@]}"; do
        svc_show_log "$LOG_DIR/$name.log" 20
    done
    if [[ -n $SVC_NATS_PID ]]; then
        svc_show_log "$LOG_DIR/nats.log" 10
    fi
}

# The name of a watched process that is no longer running, if any.
dead_process() {
    local name
    for name in "${NAMES[@]}"; do
        if ! svc_alive "${PIDS[$name]}"; then
            printf '%s\n' "$name"
            return 0
        fi
    done
    if [[ -n $SVC_NATS_PID ]] && ! svc_alive "$SVC_NATS_PID"; then
        printf 'nats-server\n'
    fi
    return 0
}

report_death() {
    local name=$1 rc=0
    if [[ $name == nats-server ]]; then
        wait "$SVC_NATS_PID" 2>/dev/null || rc=$?
    else
        wait "${PIDS[$name]}" 2>/dev/null || rc=$?
    fi
    printf '[run] error: %s exited unexpectedly (exit status %s); stopping everything\n' "$name" "$rc" >&2
    show_logs
}

# Workers first, then the API; cleanup runs in reverse, so the API stops
# taking orders before the workers go, and NATS and the databases go last.
for ((i = 1; i <= WORKERS; i++)); do
    start_process "worker-$i" env CHECKLINE_WORKER_ID="worker-$i" "$BIN/checkline-worker"
done
start_process api "$BIN/checkline-api"

log "waiting for $CHECKLINE_API_URL/readyz"
ready=0
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    if curl -fsS -o /dev/null --max-time 2 "$CHECKLINE_API_URL/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    dead=$(dead_process)
    if [[ -n $dead ]]; then
        report_death "$dead"
        exit 1
    fi
    sleep 0.2
done
if ((!ready)); then
    printf '[run] error: %s/readyz did not answer 200 within 60s\n' "$CHECKLINE_API_URL" >&2
    show_logs
    exit 1
fi

# From here on, Ctrl-C and SIGTERM are the normal way to stop: exit 0.
STOP=0
trap 'STOP=1' INT TERM

# ------------------------------------------------------------------ banner --

mint_token() {
    "$BIN/checkline-token" --sub "$1" --role "$2" --ttl-secs 86400
}
ADMIN_TOKEN=$(mint_token admin admin) || {
    log "WARNING: checkline-token failed for admin"
    ADMIN_TOKEN="<checkline-token --sub admin --role admin failed>"
}
ALICE_TOKEN=$(mint_token alice customer) || {
    log "WARNING: checkline-token failed for alice"
    ALICE_TOKEN="<checkline-token --sub alice --role customer failed>"
}

if [[ $CHECKLINE_JWT_SECRET == "$DEV_JWT_SECRET" ]]; then
    SECRET_SHOWN=\'$DEV_JWT_SECRET\'
else
    # shellcheck disable=SC2016 # printed for the reader's shell to expand
    SECRET_SHOWN='"$CHECKLINE_JWT_SECRET"'
fi

cat <<EOF

=====================================================================
 checkline is running at $CHECKLINE_API_URL   ($WORKERS worker(s))
=====================================================================

  NATS        $CHECKLINE_NATS_URL
  PostgreSQL  $CHECKLINE_DATABASE_URL
  Redis       $CHECKLINE_REDIS_URL

Demo tokens (valid 24 h), for the examples below:

  export CHECKLINE_API_URL=$CHECKLINE_API_URL
  export ADMIN_TOKEN=$ADMIN_TOKEN
  export ALICE_TOKEN=$ALICE_TOKEN

1. Create a product (admin):

  curl -sS -X POST "\$CHECKLINE_API_URL/v1/products" \\
    -H "Authorization: Bearer \$ADMIN_TOKEN" -H 'Content-Type: application/json' \\
    -d '{"sku":"FLASH-1","name":"Flash phone","price_cents":19900,"stock":100,"max_per_customer":2}'

2. Place an order (alice), with the product "id" from step 1:

  curl -sS -X POST "\$CHECKLINE_API_URL/v1/orders" \\
    -H "Authorization: Bearer \$ALICE_TOKEN" -H 'Content-Type: application/json' \\
    -H 'Idempotency-Key: demo-1' \\
    -d '{"product_id":"<product id>","quantity":1}'

3. Wait up to 5 s for the decision, with the order "id" from step 2:

  curl -sS "\$CHECKLINE_API_URL/v1/orders/<order id>?wait=5" \\
    -H "Authorization: Bearer \$ALICE_TOKEN"

More tokens: CHECKLINE_JWT_SECRET=... target/release/checkline-token --sub bob --role customer

Flash-sale demo (10,000 buyers racing for 100 units): scripts/run.sh --demo,
or against this running system:

  CHECKLINE_API_URL=$CHECKLINE_API_URL \\
  CHECKLINE_JWT_SECRET=$SECRET_SHOWN \\
  CHECKLINE_DATABASE_URL='$CHECKLINE_DATABASE_URL' \\
    target/release/checkline-loadtest flash-sale --buyers 10000 --stock 100

Logs: $LOG_DIR/   Press Ctrl-C to stop.

EOF

# ------------------------------------------------------------------- demo --

if ((DEMO)) && ((!STOP)); then
    if ((!STOP)); then
        log "running: checkline-loadtest flash-sale --buyers 10000 --stock 100"
        demo_rc=0
        "$BIN/checkline-loadtest" flash-sale --buyers 10000 --stock 100 || demo_rc=$?
        if ((demo_rc == 0)); then
            log "flash-sale demo finished; the system keeps running (Ctrl-C to stop)"
        else
            log "WARNING: the flash-sale demo exited with status $demo_rc; the system keeps running (Ctrl-C to stop)"
        fi
    elif ((!STOP)); then
        log "WARNING: building checkline-loadtest failed; the system keeps running (Ctrl-C to stop)"
    fi
fi

# ------------------------------------------------------------- foreground --

while ((!STOP)); do
    dead=$(dead_process)
    if [[ -n $dead ]]; then
        report_death "$dead"
        exit 1
    fi
    # wait, unlike sleep, returns at once when a signal arrives.
    sleep 1 &
    sleeper=$!
    wait "$sleeper" 2>/dev/null || true
    kill "$sleeper" 2>/dev/null || true
done

log "stopping"
exit 0
