#!/usr/bin/env bash
#
# Checks that scripts/run.sh supervises what it starts, as an operator would
# see it. First a worker setting that makes every worker fail at start-up:
# run.sh must stop with status 1 and name the worker, not restart it for
# ever. Then run.sh with three workers on free ports, and
#   - SIGKILL a worker: the others must take its partitions over (run.sh
#     restarts it only after the lease TTL, here), run.sh must start it again
#     while the API keeps answering, and it must get partitions back;
#   - SIGKILL the nats-server run.sh started: it must be started again and
#     the API must become ready again;
#   - SIGINT to run.sh (a Ctrl-C): it must exit 0 and leave no process
#     behind (every process it started carries this run's CHECKLINE_PREFIX).
# Then run.sh --cluster (three nats-servers, two APIs, three workers):
#   - both APIs ready, the streams on three servers;
#   - SIGKILL a nats-server: restarted, healthy, both APIs still ready;
#   - SIGKILL an API: restarted and ready, the other one answering meanwhile;
#   - SIGINT: exit 0, nothing left behind.
# Fails when any step is not reached within its time; the whole check is
# bounded by CHECKLINE_RUN_CHECK_TIMEOUT_SECS (default 180).
#
#   scripts/run-check.sh          (scripts/test.sh runs it)
#
# Uses the debug binaries (run.sh builds them if needed), PostgreSQL and Redis
# where CHECKLINE_DATABASE_URL / CHECKLINE_REDIS_URL point (a database of its
# own), and a nats-server of its own that run.sh starts.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

log() { printf '[run-check] %s\n' "$*" >&2; }

LIMIT=${CHECKLINE_RUN_CHECK_TIMEOUT_SECS:-180}
[[ $LIMIT =~ ^[1-9][0-9]{0,4}$ ]] ||
    svc_die "CHECKLINE_RUN_CHECK_TIMEOUT_SECS=$LIMIT: expected a whole number of seconds >= 1"

ensure_curl
command -v python3 >/dev/null 2>&1 || svc_die "python3 is required (to pick free ports)"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

TAG=runcheck$$
STATE=$RUN_DIR/run-check
OUT=$STATE/run.out
HTTP_PORT=$(free_port)
NATS_PORT=$(free_port)
NATS_MON_PORT=$(free_port)
API=http://127.0.0.1:$HTTP_PORT
BASE_DB_URL=${CHECKLINE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/checkline}
DB_NAME=checkline_$TAG
DB_URL=${BASE_DB_URL%/*}/$DB_NAME
SECRET=run-check-secret-run-check-secret-run-check
rm -rf "$STATE"
mkdir -p "$STATE"

RUN_PID=
RUN_ARGS=() # run.sh's arguments
SEEN_PIDS=()
FAILED=0

# True when process $1's environment holds the entry $2.
env_has() {
    local entries=() e
    mapfile -d "" entries 2>/dev/null <"/proc/$1/environ" || return 1
    for e in "${entries[@]}"; do
        [[ $e == "$2" ]] && return 0
    done
    return 1
}

# Pids of live processes that carry this run's prefix in their environment:
# everything run.sh started, and run.sh itself.
tagged_pids() {
    local dir pid
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if env_has "$pid" "CHECKLINE_PREFIX=$TAG" && svc_alive "$pid"; then
            printf '%s\n' "$pid"
        fi
    done
    return 0
}

# pid_of NAME: the live process run.sh runs as NAME (worker-N, api,
# nats-server), found by its command name and environment, so that the check
# does not rely on what run.sh says about itself.
pid_of() {
    local name=$1 comm want dir pid
    case $name in
    worker-*) want=checkline-worke ;; # /proc/PID/comm keeps 15 characters
    api) want=checkline-api ;;
    *) want=$name ;;
    esac
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        read -r comm 2>/dev/null <"$dir/comm" || continue
        [[ $comm == "$want" ]] || continue
        env_has "$pid" "CHECKLINE_PREFIX=$TAG" || continue
        if [[ $name == worker-* ]] && ! env_has "$pid" "CHECKLINE_WORKER_ID=$name"; then
            continue
        fi
        svc_alive "$pid" || continue
        printf '%s\n' "$pid"
        return 0
    done
    return 0
}

# shellcheck disable=SC2317 # called on exit
finish() {
    local rc=$? pid
    set +e
    trap '' INT TERM
    if [[ -n $RUN_PID ]] && svc_alive "$RUN_PID"; then
        log "stopping run.sh (pid $RUN_PID)"
        svc_stop_pid "$RUN_PID" run.sh 40
    fi
    # Whatever run.sh left behind (the check has failed then) goes too.
    for pid in $(tagged_pids); do
        log "killing left-over pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
        kill -KILL "$pid" 2>/dev/null
    done
    if command -v psql >/dev/null 2>&1; then
        psql -q "${BASE_DB_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1
    fi
    if ((rc != 0 || FAILED)); then
        svc_show_log "$OUT" 60
        log "FAILED; run.sh's output is $OUT, its logs are in $STATE/logs"
        ((rc != 0)) || rc=1
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    log "FAILED: $*"
    FAILED=1
    exit 1
}

# wait_for SECS DESCRIPTION COMMAND...: until COMMAND succeeds, at most SECS
# (and never past the whole check's limit); fails the check otherwise.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    ((deadline <= LIMIT)) || deadline=$LIMIT
    while ! "$@"; do
        if [[ -n $RUN_PID ]] && ! svc_alive "$RUN_PID"; then
            fail "run.sh exited while waiting for: $what"
        fi
        ((SECONDS < deadline)) || fail "not within ${secs}s: $what"
        sleep 0.2
    done
    log "ok: $what (after ${SECONDS}s)"
}

remember() { SEEN_PIDS+=("$@"); }

running() {
    local name
    for name in worker-1 worker-2 worker-3 api nats-server; do
        [[ -n $(pid_of "$name") ]] || return 1
    done
    grep -q 'checkline is running at' "$OUT"
}
api_ready() { curl -fsS -o /dev/null --max-time 2 "$API/readyz"; }
api_answers() { curl -sS -o /dev/null --max-time 2 "$API/healthz"; }

# owners [PARTITION...]: the owner of each partition (or of the given ones)
# in GET /v1/admin/stats, one per line, "-" for none.
owners() {
    local body
    body=$(curl -fsS --max-time 3 -H "Authorization: Bearer $ADMIN_TOKEN" "$API/v1/admin/stats" 2>/dev/null) || return 1
    python3 -c '
import json, sys
want = {int(a) for a in sys.argv[1:]}
parts = json.loads(sys.stdin.read()).get("partitions") or []
for p in parts:
    if not want or p["partition"] in want:
        print(p["partition"], p.get("owner") or "-")
' "$@" <<<"$body"
}
all_partitions_owned() {
    local out
    out=$(owners) || return 1
    [[ -n $out && $out != *" -"* ]]
}
# balanced: every partition has an owner and each of the three workers owns
# its share (at least partitions / 3). A worker that comes up after the
# others gets its share by handover, and a partition being handed over has
# no owner for a moment, so "every partition owned" alone can be seen
# before the last worker has joined.
balanced() {
    local out count name
    out=$(owners) || return 1
    [[ -n $out && $out != *" -"* ]] || return 1
    count=$(wc -l <<<"$out")
    for name in worker-1 worker-2 worker-3; do
        (($(grep -c " $name\$" <<<"$out") >= count / 3)) || return 1
    done
}
# owned_by PATTERN PARTITION...: each of the partitions has an owner that
# matches PATTERN.
owned_by() {
    local pattern=$1 out line
    shift
    out=$(owners "$@") || return 1
    [[ -n $out ]] || return 1
    while read -r line; do
        # shellcheck disable=SC2053 # PATTERN is a glob
        [[ ${line#* } == $pattern ]] || return 1
    done <<<"$out"
}

# restarted NAME OLD_PID: a new process of NAME runs.
restarted() {
    local pid
    pid=$(pid_of "$1")
    [[ -n $pid && $pid != "$2" ]]
}
restarted_cluster() {
    local pid
    pid=$(cluster_pid "$1")
    [[ -n $pid && $pid != "$2" ]]
}

nats_healthy() {
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$NATS_MON_PORT/healthz?js-enabled-only=true"
}

# start_run [VAR=VALUE...]: starts run.sh with three workers in the
# background, on this check's ports, prefix and database.
start_run() {
    # SIGINT must reach run.sh as a Ctrl-C would: a background job of a
    # script starts with it ignored, so it is reset to the default first.
    env -u CHECKLINE_NATS_URL \
        CHECKLINE_WORKERS=3 \
        CHECKLINE_RUN_PROFILE=debug \
        CHECKLINE_RUN_STATE_DIR="$STATE" \
        CHECKLINE_RUN_RESTART_DELAY_MS=5000 \
        CHECKLINE_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
        CHECKLINE_NATS_PORT="$NATS_PORT" \
        CHECKLINE_NATS_MONITOR_PORT="$NATS_MON_PORT" \
        CHECKLINE_PREFIX="$TAG" \
        CHECKLINE_DATABASE_URL="$DB_URL" \
        CHECKLINE_JWT_SECRET="$SECRET" \
        CHECKLINE_STREAM_MAX_BYTES=$((64 * 1024 * 1024)) \
        CHECKLINE_LEASE_TTL_MS=3000 \
        CHECKLINE_REBALANCE_INTERVAL_MS=500 \
        CHECKLINE_LOG=info \
        "$@" env --default-signal=INT bash "$ROOT/scripts/run.sh" "${RUN_ARGS[@]}" >"$OUT" 2>&1 </dev/null &
    RUN_PID=$!
    remember "$RUN_PID"
}

# ------------------------------------------------- a worker that cannot start --

# A bad setting is a start-up failure: run.sh must stop with the worker's
# error, not restart it for ever.
log "scripts/run.sh with a worker setting that stops every worker at start-up"
start_run CHECKLINE_BATCH_MAX=not-a-number
stopped() { ! svc_alive "$RUN_PID"; }
wait_for_exit() {
    local secs=$1 deadline=$((SECONDS + $1))
    while svc_alive "$RUN_PID"; do
        ((SECONDS < deadline)) || fail "run.sh still running ${secs}s after start with a worker that cannot start"
        sleep 0.2
    done
}
wait_for_exit 45
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=
((rc == 1)) || fail "run.sh exited with status $rc for a worker that cannot start (expected 1)"
grep -q 'worker-[123] exited during start-up' "$OUT" || fail "run.sh did not say which worker failed at start-up"
[[ -z $(tagged_pids) ]] || fail "processes left behind after the failed start: $(tagged_pids | tr '\n' ' ')"
log "ok: run.sh stopped with status 1 for a worker that cannot start (after ${SECONDS}s)"

# ------------------------------------------------------------------ start --

log "scripts/run.sh with 3 workers on $API (NATS $NATS_PORT/$NATS_MON_PORT, prefix $TAG, state $STATE)"
start_run

wait_for 75 "run.sh is up: 3 workers, the API and NATS running, the banner printed" running
wait_for 10 "the API is ready" api_ready
for name in worker-1 worker-2 worker-3 api nats-server; do remember "$(pid_of "$name")"; done
ADMIN_TOKEN=$(CHECKLINE_JWT_SECRET=$SECRET target/debug/checkline-token --sub run-check --role admin --ttl-secs 600)
wait_for 20 "every partition has an owner" all_partitions_owned
wait_for 30 "each worker owns its share of the partitions" balanced

# ------------------------------------------------------- a worker is lost --

# The restart comes after the lease TTL (see CHECKLINE_RUN_RESTART_DELAY_MS
# above), so the other workers must take worker-2's partitions first.
VICTIM_PARTS=$(owners | awk '$2 == "worker-2" { print $1 }')
[[ -n $VICTIM_PARTS ]] || fail "worker-2 owns no partition: $(owners | tr '\n' ' ')"
OLD=$(pid_of worker-2)
log "SIGKILL worker-2 (pid $OLD), owner of partitions $(echo "$VICTIM_PARTS" | tr '\n' ' ')"
kill -KILL "$OLD"
api_answers || fail "the API stopped answering when worker-2 died"
wait_for 5 "run.sh logged worker-2's death" grep -q "worker-2 .*exited unexpectedly" "$OUT"
# shellcheck disable=SC2086 # one argument per partition
wait_for 15 "worker-1 and worker-3 took worker-2's partitions over" owned_by 'worker-[13]' $VICTIM_PARTS
wait_for 15 "worker-2 restarted" restarted worker-2 "$OLD"
remember "$(pid_of worker-2)"
api_answers || fail "the API stopped answering while worker-2 was restarted"
for name in worker-1 worker-3 api; do
    [[ -n $(pid_of "$name") ]] || fail "$name stopped when worker-2 died"
done
# shellcheck disable=SC2086 # one argument per partition
wait_for 20 "the restarted worker-2 got partitions back" owned_by 'worker-2' $VICTIM_PARTS
wait_for 10 "every partition has an owner" all_partitions_owned

# ---------------------------------------------------------- NATS is lost --

OLD=$(pid_of nats-server)
log "SIGKILL nats-server (pid $OLD)"
kill -KILL "$OLD"
wait_for 15 "run.sh logged nats-server's death" grep -q "nats-server .*exited unexpectedly" "$OUT"
wait_for 15 "nats-server restarted" restarted nats-server "$OLD"
remember "$(pid_of nats-server)"
wait_for 15 "the new nats-server is healthy" nats_healthy
wait_for 30 "the API is ready again" api_ready
for name in worker-1 worker-2 worker-3 api; do
    [[ -n $(pid_of "$name") ]] || fail "$name stopped when NATS died"
done

# ------------------------------------------------------------------ Ctrl-C --

log "SIGINT to run.sh (pid $RUN_PID)"
kill -INT "$RUN_PID"
wait_for 45 "run.sh stopped" stopped
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=
((rc == 0)) || fail "run.sh exited with status $rc after SIGINT (expected 0)"
for pid in "${SEEN_PIDS[@]}"; do
    if [[ -n $pid ]] && svc_alive "$pid"; then
        fail "pid $pid is still running after run.sh stopped: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    fi
done
left=$(tagged_pids)
[[ -z $left ]] || fail "processes left behind after run.sh stopped: $(echo "$left" | tr '\n' ' ')"
for port in "$HTTP_PORT" "$NATS_PORT"; do
    if svc_port_open 127.0.0.1 "$port"; then
        fail "port $port still answers after run.sh stopped"
    fi
done
log "ok: a killed worker and a killed NATS were restarted, Ctrl-C left nothing behind (after ${SECONDS}s)"

# ------------------------------------------------------------- --cluster --

# Ports of the cluster's nats-servers: three consecutive free ones of each
# kind, found by trying bases.
cluster_base() {
    local base port ok
    for base in $(seq "$1" 7 $(($1 + 140))); do
        ok=1
        for port in "$base" $((base + 1)) $((base + 2)); do
            svc_port_open 127.0.0.1 "$port" && ok=0
        done
        ((ok)) && printf '%s\n' "$base" && return 0
    done
    fail "no three free ports from $1"
}
CL_NATS=$(cluster_base 4311)
CL_MON=$(cluster_base 8311)
CL_ROUTE=$(cluster_base 6311)
HTTP_PORT2=$((HTTP_PORT + 1))
svc_port_open 127.0.0.1 "$HTTP_PORT2" && HTTP_PORT=$(free_port) && HTTP_PORT2=$((HTTP_PORT + 1))
API=http://127.0.0.1:$HTTP_PORT
API2=http://127.0.0.1:$HTTP_PORT2
SEEN_PIDS=()

# cluster_pid NAME: the live process run.sh runs as NAME (nats-N, api-N).
cluster_pid() {
    local name=$1 dir pid comm
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        read -r comm 2>/dev/null <"$dir/comm" || continue
        env_has "$pid" "CHECKLINE_PREFIX=$TAG" || continue
        case $name in
        nats-*)
            [[ $comm == nats-server ]] || continue
            tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -q -- "--name $name " || continue
            ;;
        api-1 | api-2)
            [[ $comm == checkline-api ]] || continue
            local port=$HTTP_PORT
            [[ $name == api-2 ]] && port=$HTTP_PORT2
            env_has "$pid" "CHECKLINE_HTTP_ADDR=127.0.0.1:$port" || continue
            ;;
        *) return 0 ;;
        esac
        svc_alive "$pid" || continue
        printf '%s\n' "$pid"
        return 0
    done
    return 0
}
cluster_running() {
    local name
    for name in nats-1 nats-2 nats-3 api-1 api-2; do
        [[ -n $(cluster_pid "$name") ]] || return 1
    done
    for name in worker-1 worker-2 worker-3; do
        [[ -n $(pid_of "$name") ]] || return 1
    done
    grep -q 'checkline is running at 2 APIs' "$OUT"
}
both_ready() { curl -fsS -o /dev/null --max-time 2 "$API/readyz" && curl -fsS -o /dev/null --max-time 2 "$API2/readyz"; }
node_healthy() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$((CL_MON + $1 - 1))/healthz"; }
# The queue stream is on three servers (a leader and two followers).
replicated() {
    curl -fsS --max-time 2 "http://127.0.0.1:$CL_MON/jsz?streams=true" 2>/dev/null | STREAM="${TAG^^}_ORDERS" python3 -c '
import json, os, sys
for a in json.load(sys.stdin).get("account_details") or []:
    for s in a.get("stream_detail") or []:
        c = s.get("cluster") or {}
        # replicas: the peers of the stream other than the node asked, nats-1
        if s.get("name") == os.environ["STREAM"] and c.get("leader") and len(c.get("replicas") or []) == 2:
            sys.exit(0)
sys.exit(1)'
}

RUN_ARGS=(--cluster)
log "scripts/run.sh --cluster on $API and $API2 (NATS $CL_NATS-$((CL_NATS + 2)))"
start_run CHECKLINE_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
    CHECKLINE_CLUSTER_NATS_PORT="$CL_NATS" CHECKLINE_CLUSTER_NATS_MONITOR_PORT="$CL_MON" \
    CHECKLINE_CLUSTER_NATS_ROUTE_PORT="$CL_ROUTE" CHECKLINE_RUN_RESTART_DELAY_MS=1000
wait_for 75 "run.sh --cluster is up: 3 nats-servers, 3 workers, 2 APIs, the banner printed" cluster_running
wait_for 10 "both APIs are ready" both_ready
wait_for 10 "the queue stream is on three servers" replicated
for name in nats-1 nats-2 nats-3 api-1 api-2; do remember "$(cluster_pid "$name")"; done
for name in worker-1 worker-2 worker-3; do remember "$(pid_of "$name")"; done

OLD=$(cluster_pid nats-2)
log "SIGKILL nats-2 (pid $OLD)"
kill -KILL "$OLD"
api_answers || fail "api-1 stopped answering when nats-2 died"
wait_for 15 "run.sh logged nats-2's death" grep -q "nats-2 .*exited unexpectedly" "$OUT"
wait_for 15 "nats-2 restarted" restarted_cluster nats-2 "$OLD"
remember "$(cluster_pid nats-2)"
wait_for 30 "nats-2 is healthy again" node_healthy 2
wait_for 30 "both APIs are ready" both_ready

OLD=$(cluster_pid api-2)
log "SIGKILL api-2 (pid $OLD)"
kill -KILL "$OLD"
wait_for 5 "api-1 still ready" api_ready
wait_for 15 "run.sh logged api-2's death" grep -q "api-2 .*exited unexpectedly" "$OUT"
wait_for 15 "api-2 restarted" restarted_cluster api-2 "$OLD"
remember "$(cluster_pid api-2)"
wait_for 30 "both APIs are ready" both_ready

log "SIGINT to run.sh --cluster (pid $RUN_PID)"
kill -INT "$RUN_PID"
wait_for 60 "run.sh --cluster stopped" stopped
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=
((rc == 0)) || fail "run.sh --cluster exited with status $rc after SIGINT (expected 0)"
for pid in "${SEEN_PIDS[@]}"; do
    if [[ -n $pid ]] && svc_alive "$pid"; then
        fail "pid $pid is still running after run.sh --cluster stopped: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    fi
done
left=$(tagged_pids)
[[ -z $left ]] || fail "processes left behind after run.sh --cluster stopped: $(echo "$left" | tr '\n' ' ')"
log "passed in ${SECONDS}s: a killed worker, NATS, cluster node and API were restarted, Ctrl-C left nothing behind"
