#!/usr/bin/env bash
#
# Runs the whole checkline system in the foreground: NATS, PostgreSQL and
# Redis (started when absent), the worker(s) and the API. Ctrl-C stops it.
#
#   scripts/run.sh            start, print the URL, demo tokens and examples
#   scripts/run.sh --demo     the same, then run the flash-sale load test
#                             (10,000 buyers, 100 units) against it
#   scripts/run.sh --cluster  three clustered nats-servers (streams replicated
#                             3 times), two APIs and three workers
#                             (scripts/cluster.sh is the same)
#
# It supervises what it starts: a worker, the API or a nats-server it started
# that dies is logged and started again after a backoff (doubling from
# CHECKLINE_RUN_RESTART_DELAY_MS up to CHECKLINE_RUN_RESTART_MAX_DELAY_MS,
# back to the start once the process has stayed up for
# CHECKLINE_RUN_RESTART_RESET_MS), while the rest keep serving. Ctrl-C or
# SIGTERM stops the API, then the workers, then NATS and the databases, each
# given CHECKLINE_RUN_STOP_TIMEOUT_MS before it is killed.
#
# Environment (all optional):
#   CHECKLINE_HTTP_ADDR     where the API listens (default 127.0.0.1:8080)
#   CHECKLINE_WORKERS       number of worker processes (default 1; 3 with
#                           --cluster)
#   CHECKLINE_APIS          number of API processes (default 1; 2 with
#                           --cluster), listening on consecutive ports from
#                           CHECKLINE_HTTP_ADDR's
#   CHECKLINE_JWT_SECRET    HS256 key for tokens (default: a local dev secret)
#   CHECKLINE_RUN_PROFILE   cargo profile of the binaries: release (default)
#                           or debug
#   CHECKLINE_RUN_STATE_DIR where logs, pid files and the NATS store go
#                           (default .run)
#   CHECKLINE_RUN_RESTART_DELAY_MS, CHECKLINE_RUN_RESTART_MAX_DELAY_MS,
#   CHECKLINE_RUN_RESTART_RESET_MS, CHECKLINE_RUN_STOP_TIMEOUT_MS: see above
#   CHECKLINE_DATABASE_URL, CHECKLINE_REDIS_URL, CHECKLINE_NATS_URL,
#   CHECKLINE_NATS_PORT, CHECKLINE_NATS_MONITOR_PORT,
#   CHECKLINE_CLUSTER_NATS_PORT, CHECKLINE_CLUSTER_NATS_MONITOR_PORT,
#   CHECKLINE_CLUSTER_NATS_ROUTE_PORT: see scripts/lib/services.sh
#   Every other CHECKLINE_* variable is passed on to the binaries.
#
# Logs: .run/logs/api.log (api-N.log with several), .run/logs/worker-N.log
# (also shown here, with a [name] prefix), .run/logs/nats.log (nats-N.log in
# a cluster), postgres.log, redis.log. Pid files of the running processes:
# .run/pids/NAME.pid (rewritten on every restart).
#
# With --cluster, the three nats-servers are supervised like the rest (one
# that dies is started again on its store and rejoins), and their stores are
# in .run/nats-cluster/. CHECKLINE_NATS_URL lists the three servers and
# CHECKLINE_STREAM_REPLICAS is 3, unless set otherwise.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

usage() {
    sed -n '3,11p' "$0" | sed 's/^# \{0,1\}//'
}

DEMO=0
CLUSTER=0
for arg in "$@"; do
    case $arg in
    --demo) DEMO=1 ;;
    --cluster) CLUSTER=1 ;;
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
if ((CLUSTER)); then
    WORKERS=${CHECKLINE_WORKERS:-3}
    APIS=${CHECKLINE_APIS:-2}
else
    WORKERS=${CHECKLINE_WORKERS:-1}
    APIS=${CHECKLINE_APIS:-1}
fi
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "CHECKLINE_WORKERS=$WORKERS: expected a whole number >= 1"
[[ $APIS =~ ^[1-9]$ ]] || die "CHECKLINE_APIS=$APIS: expected a whole number from 1 to 9"

# setting_ms NAME DEFAULT MIN: the value of CHECKLINE_NAME in milliseconds.
setting_ms() {
    local name=$1 value=${!1:-$2} min=$3
    [[ $value =~ ^[0-9]{1,9}$ ]] || die "$name=$value: expected a whole number of milliseconds"
    ((10#$value >= min)) || die "$name=$value: must be at least $min"
    printf '%s\n' $((10#$value))
}
RESTART_DELAY_MS=$(setting_ms CHECKLINE_RUN_RESTART_DELAY_MS 1000 100)
RESTART_MAX_DELAY_MS=$(setting_ms CHECKLINE_RUN_RESTART_MAX_DELAY_MS 30000 "$RESTART_DELAY_MS")
RESTART_RESET_MS=$(setting_ms CHECKLINE_RUN_RESTART_RESET_MS 60000 1000)
STOP_TIMEOUT_MS=$(setting_ms CHECKLINE_RUN_STOP_TIMEOUT_MS 20000 1000)

case ${CHECKLINE_RUN_PROFILE:-release} in
release) PROFILE_ARGS=(--release) BIN=$ROOT/target/release ;;
debug) PROFILE_ARGS=() BIN=$ROOT/target/debug ;;
*) die "CHECKLINE_RUN_PROFILE=$CHECKLINE_RUN_PROFILE: expected release or debug" ;;
esac

# Logs, pid files and the NATS store; the venv and database clusters stay in
# .run, shared by every run.
STATE_DIR=${CHECKLINE_RUN_STATE_DIR:-$RUN_DIR}
[[ $STATE_DIR == /* ]] || STATE_DIR=$ROOT/$STATE_DIR
mkdir -p "$STATE_DIR" 2>/dev/null || die "CHECKLINE_RUN_STATE_DIR=$STATE_DIR: cannot create it"
LOG_DIR=$STATE_DIR/logs
PID_DIR=$STATE_DIR/pids
SVC_NATS_STORE_DIR=$STATE_DIR/nats

if [[ -n ${CHECKLINE_WORKER_METRICS_ADDR:-} ]] && ((WORKERS > 1)); then
    die "CHECKLINE_WORKER_METRICS_ADDR=$CHECKLINE_WORKER_METRICS_ADDR cannot be shared by $WORKERS workers; unset it and run.sh gives each worker a port of its own"
fi

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
# API i (from 1) listens on CHECKLINE_HTTP_ADDR's port + i - 1.
declare -A API_ADDRS=() # name -> listen address
API_NAMES=()
API_URLS=()
for ((i = 1; i <= APIS; i++)); do
    port=$((HTTP_PORT + i - 1))
    ((port <= 65535)) || die "CHECKLINE_HTTP_ADDR=$CHECKLINE_HTTP_ADDR: no room for $APIS APIs on consecutive ports"
    if ((APIS == 1)); then name=api; else name=api-$i; fi
    API_NAMES+=("$name")
    API_ADDRS[$name]=${CHECKLINE_HTTP_ADDR%:*}:$port
    API_URLS+=("http://$HTTP_HOST:$port")
    if svc_port_open "$HTTP_HOST" "$port"; then
        die "$HTTP_HOST:$port is already in use (another scripts/run.sh?); set CHECKLINE_HTTP_ADDR to a free address"
    fi
done
export CHECKLINE_API_URL=${API_URLS[0]}
# Every API, comma-separated: what the load generator takes to spread buyers.
API_URL_LIST=$(IFS=,; printf '%s' "${API_URLS[*]}")

# ------------------------------------------------------- dependencies, build --

ensure_rust
if ((CLUSTER)); then
    # The cluster's nats-servers are this script's own processes (started
    # below, supervised); PostgreSQL and Redis are found or started as usual.
    [[ -z ${CHECKLINE_NATS_URL:-} ]] ||
        die "CHECKLINE_NATS_URL=$CHECKLINE_NATS_URL: --cluster starts its own three nats-servers; unset it"
    ensure_curl
    ensure_nats_binary
    SVC_NATS_CLUSTER_DIR=$STATE_DIR/nats-cluster
    svc_nats_cluster_ports_free
    CHECKLINE_NATS_URL=$(svc_nats_cluster_url)
    export CHECKLINE_NATS_URL
    export CHECKLINE_STREAM_REPLICAS=${CHECKLINE_STREAM_REPLICAS:-3}
    ensure_postgres
    ensure_redis
else
    ensure_services
fi

# One build of every binary (api, worker, token, loadtest): building them
# together keeps one feature set, so nothing is compiled twice.
log "building (cargo build${PROFILE_ARGS[*]:+ ${PROFILE_ARGS[*]}} --workspace --bins)"
cargo build "${PROFILE_ARGS[@]}" --workspace --bins

for b in checkline-api checkline-worker checkline-token; do
    [[ -x $BIN/$b ]] || die "$BIN/$b was not built"
done

# -------------------------------------------------------------- processes --

declare -A CMDS=()       # name -> command line (quoted for eval)
declare -A PIDS=()       # name -> pid of its current process
declare -A STARTED_MS=() # name -> when that process was started
declare -A DELAY_MS=()   # name -> backoff before its next restart
declare -A RESTART_MS=() # name -> when to start it again (set while it is down)
declare -A RESTARTS=()   # name -> restarts so far
NAMES=()                 # every supervised name, in start order
WORKER_NAMES=()          # the workers among them
STARTED_APIS=()          # the APIs among them
NATS_NODES=()            # the cluster's nats-servers among them (--cluster)
FOLLOWERS=()             # pids (and process groups) of the log followers
DEMO_PID=                # the --demo load test while it runs
NOW_MS=0

# Sets NOW_MS, in milliseconds, without a subshell.
now_ms() {
    local t=${EPOCHREALTIME//[.,]/}
    NOW_MS=$((10#$t / 1000))
}

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

# stop_group NAME...: SIGTERM to all of them at once, then up to
# STOP_TIMEOUT_MS for all to exit, then SIGKILL for the rest.
# shellcheck disable=SC2317 # called from cleanup
stop_group() {
    local name pid live=() deadline
    for name in "$@"; do
        pid=${PIDS[$name]:-}
        [[ -n $pid ]] || continue
        if svc_alive "$pid"; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$name")
        fi
    done
    now_ms
    deadline=$((NOW_MS + STOP_TIMEOUT_MS))
    while ((${#live[@]})); do
        local still=()
        for name in "${live[@]}"; do
            svc_alive "${PIDS[$name]}" && still+=("$name")
        done
        live=("${still[@]}")
        ((${#live[@]})) || break
        now_ms
        if ((NOW_MS >= deadline)); then
            for name in "${live[@]}"; do
                log "$name (pid ${PIDS[$name]}) did not stop in ${STOP_TIMEOUT_MS}ms, killing it"
                kill -KILL "${PIDS[$name]}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.1
    done
    for name in "$@"; do
        pid=${PIDS[$name]:-}
        [[ -n $pid ]] || continue
        wait "$pid" 2>/dev/null || true
        rm -f "$PID_DIR/$name.pid"
    done
}

# The API first, so that it stops taking orders before the workers go; the
# workers together, each finishing its batch and releasing its leases. A
# restart still pending is dropped. NATS and the databases go later, by
# their own clean-up.
# shellcheck disable=SC2317 # called from cleanup
_run_stop_children() {
    RESTART_MS=()
    if [[ -n $DEMO_PID ]]; then
        svc_stop_pid "$DEMO_PID" checkline-loadtest 5
        DEMO_PID=
    fi
    ((${#STARTED_APIS[@]})) && stop_group "${STARTED_APIS[@]}"
    ((${#WORKER_NAMES[@]})) && stop_group "${WORKER_NAMES[@]}"
    ((${#NATS_NODES[@]})) && stop_group "${NATS_NODES[@]}"
    return 0
}

# Registered after NATS and the databases and before any process, so that on
# exit the processes stop first, then their log followers, then the rest.
svc_on_cleanup _run_stop_followers
svc_on_cleanup _run_stop_children

# spawn NAME: starts (again) the process named NAME, in its own session so
# that a Ctrl-C reaches only this script, which then stops everything in
# order; its output is appended to its log.
spawn() {
    local name=$1
    if [[ $name == nats-server ]]; then
        svc_respawn_nats || return 1
        PIDS[$name]=$SVC_NATS_PID
    else
        eval "setsid ${CMDS[$name]} </dev/null >>\"\$LOG_DIR/\$name.log\" 2>&1 &"
        PIDS[$name]=$!
    fi
    now_ms
    STARTED_MS[$name]=$NOW_MS
    printf '%s\n' "${PIDS[$name]}" >"$PID_DIR/$name.pid"
}

# start_process NAME COMMAND...: runs COMMAND supervised as NAME, logging to
# .run/logs/NAME.log, shown here with a [NAME] prefix.
start_process() {
    local name=$1 logfile=$LOG_DIR/$1.log cmd
    shift
    [[ -f $logfile ]] && mv -f "$logfile" "$logfile.prev"
    : >"$logfile"
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'tail -n +1 -F -- "$1" 2>/dev/null | sed -u "s/^/[$2] /"' _ "$logfile" "$name" </dev/null &
    FOLLOWERS+=("$!")
    printf -v cmd '%q ' "$@"
    CMDS[$name]=$cmd
    NAMES+=("$name")
    DELAY_MS[$name]=$RESTART_DELAY_MS
    RESTARTS[$name]=0
    spawn "$name"
    log "started $name (pid ${PIDS[$name]}, log $logfile)"
}

show_logs() {
    local name
    for name in "${NAMES[@]}"; do
        [[ $name == nats-server ]] && continue
        svc_show_log "$LOG_DIR/$name.log" 20
    done
    if [[ -n ${PIDS[nats-server]:-} ]]; then
        svc_show_log "$LOG_DIR/nats.log" 10
    fi
}

# "exit status N" or "killed by SIGNAME" for the exit status of a process.
describe_exit() {
    local rc=$1
    if ((rc > 128 && rc < 128 + 65)); then
        printf 'killed by SIG%s' "$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))"
    else
        printf 'exit status %s' "$rc"
    fi
}

# The name of a supervised process that is no longer running, if any.
dead_process() {
    local name
    for name in "${NAMES[@]}"; do
        [[ -n ${RESTART_MS[$name]:-} ]] && continue
        if ! svc_alive "${PIDS[$name]}"; then
            printf '%s\n' "$name"
            return 0
        fi
    done
    return 0
}

# exit_status NAME: reaps the dead process and sets EXIT_HOW to how it
# ended (in this shell: only it can wait for its children).
EXIT_HOW=
exit_status() {
    local rc=0
    wait "${PIDS[$1]}" 2>/dev/null || rc=$?
    EXIT_HOW=$(describe_exit "$rc")
}

# supervise: logs each process that died and schedules its restart; starts
# again each one whose backoff has run out. The backoff doubles with every
# restart up to RESTART_MAX_DELAY_MS, and starts over for a process that had
# stayed up for RESTART_RESET_MS.
supervise() {
    local name delay
    for name in "${NAMES[@]}"; do
        [[ -n ${RESTART_MS[$name]:-} ]] && continue
        svc_alive "${PIDS[$name]}" && continue
        exit_status "$name"
        now_ms
        if ((NOW_MS - STARTED_MS[$name] >= RESTART_RESET_MS)); then
            DELAY_MS[$name]=$RESTART_DELAY_MS
        fi
        delay=${DELAY_MS[$name]}
        RESTART_MS[$name]=$((NOW_MS + delay))
        DELAY_MS[$name]=$((delay * 2 > RESTART_MAX_DELAY_MS ? RESTART_MAX_DELAY_MS : delay * 2))
        rm -f "$PID_DIR/$name.pid"
        printf '[run] %s (pid %s) exited unexpectedly (%s); restarting it in %d.%03ds, the rest keep running\n' \
            "$name" "${PIDS[$name]}" "$EXIT_HOW" $((delay / 1000)) $((delay % 1000)) >&2
    done
    for name in "${NAMES[@]}"; do
        [[ -n ${RESTART_MS[$name]:-} ]] || continue
        now_ms
        ((NOW_MS >= RESTART_MS[$name])) || continue
        unset "RESTART_MS[$name]"
        RESTARTS[$name]=$((RESTARTS[$name] + 1))
        if spawn "$name"; then
            log "restarted $name (pid ${PIDS[$name]}, restart ${RESTARTS[$name]})"
        else
            log "cannot restart $name; trying again"
        fi
    done
}

mkdir -p "$LOG_DIR" "$PID_DIR"
rm -f "$PID_DIR"/*.pid

# A nats-server started by ensure_services is supervised as well; one that
# was already running (or CHECKLINE_NATS_URL) is someone else's.
if [[ -n $SVC_NATS_PID ]]; then
    PIDS[nats-server]=$SVC_NATS_PID
    now_ms
    STARTED_MS[nats-server]=$NOW_MS
    DELAY_MS[nats-server]=$RESTART_DELAY_MS
    RESTARTS[nats-server]=0
    NAMES+=(nats-server)
    printf '%s\n' "$SVC_NATS_PID" >"$PID_DIR/nats-server.pid"
fi

# Each worker serves its metrics on a loopback port of its own, picked now
# and kept across restarts.
declare -A METRICS_ADDRS=()
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null
}
for ((i = 1; i <= WORKERS; i++)); do
    if [[ -n ${CHECKLINE_WORKER_METRICS_ADDR:-} ]]; then
        METRICS_ADDRS[worker-$i]=$CHECKLINE_WORKER_METRICS_ADDR
    elif port=$(free_port) && [[ -n $port ]]; then
        METRICS_ADDRS[worker-$i]=127.0.0.1:$port
    fi
done

# The cluster's nats-servers first, and a JetStream meta leader elected
# among them, so that the first stream is created at the first try.
if ((CLUSTER)); then
    for ((i = 1; i <= NATS_CLUSTER_SIZE; i++)); do
        mkdir -p "$SVC_NATS_CLUSTER_DIR/nats-$i"
        svc_nats_node_cmd "$i"
        start_process "nats-$i" "${NODE_CMD[@]}"
        NATS_NODES+=("nats-$i")
    done
    log "waiting for the NATS cluster ($CHECKLINE_NATS_URL) to elect its JetStream leader"
    if ! svc_wait_nats_cluster 60; then
        show_logs
        die "the NATS cluster did not become healthy within 60s"
    fi
fi

# Workers next, then the APIs.
for ((i = 1; i <= WORKERS; i++)); do
    start_process "worker-$i" env CHECKLINE_WORKER_ID="worker-$i" \
        CHECKLINE_WORKER_METRICS_ADDR="${METRICS_ADDRS[worker-$i]:-}" "$BIN/checkline-worker"
    WORKER_NAMES+=("worker-$i")
done
for name in "${API_NAMES[@]}"; do
    start_process "$name" env CHECKLINE_HTTP_ADDR="${API_ADDRS[$name]}" "$BIN/checkline-api"
    STARTED_APIS+=("$name")
done

# True when every API answers /readyz.
apis_ready() {
    local url
    for url in "${API_URLS[@]}"; do
        curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null || return 1
    done
}

# True when every worker serves its metrics: it has connected, set up its
# streams and is about to take partitions.
workers_up() {
    local name
    for name in "${WORKER_NAMES[@]}"; do
        [[ -n ${METRICS_ADDRS[$name]:-} ]] || continue
        curl -fsS -o /dev/null --max-time 2 "http://${METRICS_ADDRS[$name]}/metrics" 2>/dev/null || return 1
    done
}

# Until the API is ready and the workers are up, a process that dies is a
# start-up failure (a bad setting, a port in use): report it rather than
# restart it for ever.
log "waiting for ${API_URLS[*]/%//readyz} and the workers"
ready=0
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    if apis_ready && workers_up; then
        ready=1
        break
    fi
    dead=$(dead_process)
    if [[ -n $dead ]]; then
        exit_status "$dead"
        printf '[run] error: %s exited during start-up (%s); stopping everything\n' "$dead" "$EXIT_HOW" >&2
        show_logs
        exit 1
    fi
    sleep 0.2
done
if ((!ready)); then
    printf '[run] error: an API'"'"'s /readyz (%s) did not answer 200, or a worker did not serve its metrics, within 60s\n' "${API_URLS[*]}" >&2
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

# The worker to stop in the failover example: the last one, so that with
# several workers the first ones visibly take its partitions.
VICTIM=worker-$WORKERS
if ((WORKERS > 1)); then
    OTHERS="the other workers"
else
    OTHERS="nobody (start with CHECKLINE_WORKERS=3 to see other workers do it)"
fi
METRICS_LINES=
for name in "${WORKER_NAMES[@]}"; do
    [[ -n ${METRICS_ADDRS[$name]:-} ]] || continue
    METRICS_LINES+="    $name: curl -sS http://${METRICS_ADDRS[$name]}/metrics | grep -E 'partitions_owned|leases_'
"
done
[[ -n $METRICS_LINES ]] || METRICS_LINES="    (off: python3 was not found to pick their ports)
"
if ((APIS > 1)); then
    RUNNING_AT="$APIS APIs: ${API_URLS[*]}"
else
    RUNNING_AT=$CHECKLINE_API_URL
fi
CLUSTER_LINES=
if ((CLUSTER)); then
    CLUSTER_LINES="
The NATS cluster: streams on $CHECKLINE_STREAM_REPLICAS servers each; see each
node's view of the queue stream's leader and replicas at
  curl -sS 'http://127.0.0.1:$(svc_nats_node_port monitor 1)/jsz?streams=true' (nodes 2 and 3: $(svc_nats_node_port monitor 2), $(svc_nats_node_port monitor 3))
Kill a node (kill -KILL \$(cat $PID_DIR/nats-1.pid)): the other two keep
taking orders (a new leader within seconds), and it rejoins when restarted.
Kill an API: the other keeps serving; buyers retry there with the same key.
"
fi

cat <<EOF

=====================================================================
 checkline is running at $RUNNING_AT   ($WORKERS worker(s))
=====================================================================

  Storefront  $CHECKLINE_API_URL/#token=$ALICE_TOKEN
  Console     $CHECKLINE_API_URL/ops#token=$ADMIN_TOKEN
              (the token after # stays in the browser: it is never sent
              to the server; the pages keep it for the tab's life)

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

4. A cart of two products, held 5 minutes, then paid (confirm):

  curl -sS -X POST "\$CHECKLINE_API_URL/v1/orders" \\
    -H "Authorization: Bearer \$ALICE_TOKEN" -H 'Content-Type: application/json' \\
    -H 'Idempotency-Key: demo-cart-1' \\
    -d '{"lines":[{"product_id":"<product id>","quantity":1},{"product_id":"<another id>","quantity":1}],"reserve_secs":300}'
  curl -sS -X POST "\$CHECKLINE_API_URL/v1/orders/<order id>/confirm" \\
    -H "Authorization: Bearer \$ALICE_TOKEN"

More tokens: CHECKLINE_JWT_SECRET=... $BIN/checkline-token --sub bob --role customer

Flash-sale demo (10,000 buyers racing for 100 units): scripts/run.sh --demo,
or against this running system:

  CHECKLINE_API_URL=$API_URL_LIST \\
  CHECKLINE_JWT_SECRET=$SECRET_SHOWN \\
  CHECKLINE_DATABASE_URL='$CHECKLINE_DATABASE_URL' \\
    $BIN/checkline-loadtest flash-sale --buyers 10000 --stock 100

Failover: pause, resume or kill a worker and watch its partitions move
(the pid files are rewritten on every restart):

  kill -STOP \$(cat $PID_DIR/$VICTIM.pid)
      paused: once its leases expire (CHECKLINE_LEASE_TTL_MS, default 6 s)
      $OTHERS take its partitions over
  kill -CONT \$(cat $PID_DIR/$VICTIM.pid)
      resumed: it finds its leases lost (a late commit is fenced) and rejoins
  kill -KILL \$(cat $PID_DIR/$VICTIM.pid)
      a crash: run.sh logs it and restarts it after
      CHECKLINE_RUN_RESTART_DELAY_MS ($RESTART_DELAY_MS ms), under the same id; back within
      the lease TTL, it takes its own partitions back as their leases expire
      (set the delay above the TTL to see the others take them over first)

Watch it:
  - here: "[run] $VICTIM ... exited unexpectedly", "[run] restarted $VICTIM",
    and the "partition acquired" / "partition handed over" / "lease lost"
    lines of the [worker-N] logs
  - the partition owners:
    curl -sS "\$CHECKLINE_API_URL/v1/admin/stats" -H "Authorization: Bearer \$ADMIN_TOKEN"
  - each worker's leases and partitions (its /metrics):
${METRICS_LINES}
${CLUSTER_LINES}
Logs: $LOG_DIR/   Pids: $PID_DIR/   Press Ctrl-C to stop.

EOF

# ------------------------------------------------------------------- demo --

# In the background, so that the system stays supervised while it runs; not
# in a session of its own, so Ctrl-C ends it along with this script.
if ((DEMO)) && ((!STOP)); then
    if [[ -x $BIN/checkline-loadtest ]]; then
        log "running: checkline-loadtest flash-sale --buyers 10000 --stock 100"
        CHECKLINE_API_URL=$API_URL_LIST "$BIN/checkline-loadtest" flash-sale --buyers 10000 --stock 100 </dev/null &
        DEMO_PID=$!
    else
        log "WARNING: $BIN/checkline-loadtest was not built; the system keeps running (Ctrl-C to stop)"
    fi
fi

# ------------------------------------------------------------- foreground --

while ((!STOP)); do
    supervise
    if [[ -n $DEMO_PID ]] && ! svc_alive "$DEMO_PID"; then
        demo_rc=0
        wait "$DEMO_PID" 2>/dev/null || demo_rc=$?
        DEMO_PID=
        if ((demo_rc == 0)); then
            log "flash-sale demo finished; the system keeps running (Ctrl-C to stop)"
        else
            log "WARNING: the flash-sale demo exited with status $demo_rc; the system keeps running (Ctrl-C to stop)"
        fi
    fi
    # wait, unlike sleep, returns at once when a signal arrives.
    sleep 0.5 &
    sleeper=$!
    wait "$sleeper" 2>/dev/null || true
    kill "$sleeper" 2>/dev/null || true
done

log "stopping"
exit 0
