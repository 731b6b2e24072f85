#!/usr/bin/env bash
#
# Runs all the tests: formatting, clippy, then the whole workspace's tests
# against real NATS, PostgreSQL and Redis (started when absent, exactly as
# scripts/run.sh does, and stopped again at the end).
#
#   scripts/test.sh            cargo fmt --check, cargo machete, clippy, cargo test --workspace
#   scripts/test.sh ARGS...    the same, but `cargo test --workspace ARGS...`
#                              (e.g. scripts/test.sh decide -- --nocapture)
#
# The tests take their dependencies from CHECKLINE_DATABASE_URL,
# CHECKLINE_NATS_URL and CHECKLINE_REDIS_URL (exported here) and create fresh
# databases and prefixes of their own on those servers.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

svc_trap_cleanup

# The tests get a nats-server of their own, on its own ports and with a
# throwaway store: every test makes streams of its own, they should not
# accumulate from run to run, and they must not share a server (and its
# storage reservations) with a system that scripts/run.sh may be running.
SVC_NATS_STORE_DIR=$RUN_DIR/nats-test
SVC_NATS_EPHEMERAL=1
CHECKLINE_NATS_PORT=${CHECKLINE_TEST_NATS_PORT:-4251}
CHECKLINE_NATS_MONITOR_PORT=${CHECKLINE_TEST_NATS_MONITOR_PORT:-8251}

if [[ "${CI:-}" == true ]]; then
    export CARGO_TERM_COLOR=never
fi

step() {
    printf '\n==> %s\n' "$*"
}

step "dependencies: NATS, PostgreSQL, Redis"
ensure_rust
for component in rustfmt clippy; do
    tool=${component/rustfmt/fmt}
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 ||
            svc_die "cargo $tool is missing and there is no rustup to add $component"
        rustup component add "$component"
    fi
done
ensure_services
printf 'CHECKLINE_NATS_URL=%s\nCHECKLINE_DATABASE_URL=%s\nCHECKLINE_REDIS_URL=%s\n' \
    "$CHECKLINE_NATS_URL" "$CHECKLINE_DATABASE_URL" "$CHECKLINE_REDIS_URL"

# Databases left by tests that failed before cleaning up after themselves.
if command -v psql >/dev/null 2>&1; then
    psql -Atq "${CHECKLINE_DATABASE_URL%/*}/postgres" \
        -c "SELECT datname FROM pg_database WHERE datname LIKE 'checkline\_test\_%' OR datname LIKE 'checkline\_e2e\_%'" 2>/dev/null |
        while read -r db; do
            [[ -n $db ]] && psql -q "${CHECKLINE_DATABASE_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1
        done || true
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

# The scripts are half of how the system runs and is tested: a quoting slip
# in one (an apostrophe inside a single-quoted program) breaks it silently
# until the step that runs it. Debian's shellcheck, installed when missing.
step "shellcheck scripts/"
command -v shellcheck >/dev/null 2>&1 || svc_apt_install shellcheck
shellcheck -x scripts/*.sh scripts/lib/*.sh

# Unused dependencies: cargo-machete (crates.io, pinned) reads the manifests
# and the sources in seconds, so it runs before the long steps. It is
# installed into .run/ on first use, like the other tools.
step "cargo machete (no unused dependencies)"
CARGO_MACHETE_VERSION=0.9.2
CARGO_MACHETE=$RUN_DIR/cargo-machete/bin/cargo-machete
if [[ "$("$CARGO_MACHETE" --version 2>/dev/null)" != "$CARGO_MACHETE_VERSION" ]]; then
    cargo install cargo-machete --version "$CARGO_MACHETE_VERSION" --locked --root "$RUN_DIR/cargo-machete" ||
        svc_die "cargo install cargo-machete --version $CARGO_MACHETE_VERSION failed"
fi
"$CARGO_MACHETE" --skip-target-dir "$ROOT"

# The compose file and its cluster profile cannot run here (no Docker
# engine); what can be checked without one is, in seconds.
step "compose: dclint, the profiles' wiring, haproxy -c, nats-server -t"
bash "$ROOT/scripts/lint-compose.sh"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if (($#)); then
    step "cargo test --workspace $*"
    cargo test --workspace "$@"
else
    step "cargo test --workspace -- --test-threads=2"
    cargo test --workspace -- --test-threads=2
fi

# The real binaries, started as an operator would, and the flash sale the
# README promises: 2,000 buyers for 100 units, every invariant checked by the
# load test. Its own database and prefix keep it apart from everything else.
step "end to end: flash sale of 2,000 buyers for 100 units through the built binaries"
cargo build --workspace --bins
E2E_DB="checkline_e2e_$$"
E2E_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
e2e_env=(
    CHECKLINE_DATABASE_URL="${CHECKLINE_DATABASE_URL%/*}/$E2E_DB"
    CHECKLINE_PREFIX="e2e$$"
    CHECKLINE_STREAM_MAX_BYTES=$((64 * 1024 * 1024))
    CHECKLINE_HTTP_ADDR="127.0.0.1:$E2E_PORT"
    CHECKLINE_JWT_SECRET="end-to-end-test-secret-end-to-end-test"
    CHECKLINE_LOG=warn
)
mkdir -p "$RUN_DIR/logs"
env "${e2e_env[@]}" target/debug/checkline-worker >"$RUN_DIR/logs/e2e-worker.log" 2>&1 &
E2E_WORKER=$!
svc_on_cleanup "svc_stop_pid $E2E_WORKER e2e-worker"
env "${e2e_env[@]}" target/debug/checkline-api >"$RUN_DIR/logs/e2e-api.log" 2>&1 &
E2E_API=$!
svc_on_cleanup "svc_stop_pid $E2E_API e2e-api"
for _ in $(seq 1 150); do
    curl -fsS --max-time 2 "http://127.0.0.1:$E2E_PORT/readyz" >/dev/null 2>&1 && break
    svc_alive "$E2E_API" || { svc_show_log "$RUN_DIR/logs/e2e-api.log"; svc_die "the api exited"; }
    sleep 0.2
done
env "${e2e_env[@]}" CHECKLINE_API_URL="http://127.0.0.1:$E2E_PORT" \
    target/debug/checkline-loadtest flash-sale --buyers 2000 --stock 100 --concurrency 128 \
    --json-out "$RUN_DIR/logs/e2e-flash-sale.json"
svc_stop_pid "$E2E_API" e2e-api
svc_stop_pid "$E2E_WORKER" e2e-worker
if command -v psql >/dev/null 2>&1; then
    psql -q "${CHECKLINE_DATABASE_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS $E2E_DB WITH (FORCE)" || true
fi

step "runner: scripts/run.sh restarts a killed worker and a killed NATS, and Ctrl-C stops everything"
bash "$ROOT/scripts/run-check.sh"

step "fault suite: a flash sale through killed workers, restarted NATS, PostgreSQL and Redis, a paused worker and a lost stream"
bash "$ROOT/scripts/fault-suite.sh"

step "cluster suite: three nats-servers with replicated streams, two APIs; a killed stream leader, a paused follower, a killed API, a worker outliving its server (about 2 minutes)"
bash "$ROOT/scripts/cluster-suite.sh"

# The contract fuzzer: schemathesis (PyPI, pinned, installed into .run/venv
# beside nats-server) generates requests from the served OpenAPI document and
# fails on any 5xx and on any response whose status, headers, content type or
# body the document does not allow, and on schema-violating input that is
# accepted. Once as an admin (every operation but the orders), once as a
# customer (the orders), each bounded in time. Tokens are passed as headers;
# schemathesis filters them out of what it prints.
step "contract fuzzing: schemathesis against the built binaries (about 2 minutes)"
SCHEMATHESIS_VERSION=4.32.5
if [[ "$("$RUN_DIR/venv/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]]; then
    if [[ ! -x "$RUN_DIR/venv/bin/pip" ]]; then
        _svc_ensure_python_venv
        python3 -m venv "$RUN_DIR/venv" || svc_die "python3 -m venv failed"
    fi
    "$RUN_DIR/venv/bin/pip" install --disable-pip-version-check -q "schemathesis==$SCHEMATHESIS_VERSION" ||
        svc_die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi
ST_DB="checkline_st_$$"
ST_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
st_env=(
    CHECKLINE_DATABASE_URL="${CHECKLINE_DATABASE_URL%/*}/$ST_DB"
    CHECKLINE_PREFIX="st$$"
    CHECKLINE_STREAM_MAX_BYTES=$((64 * 1024 * 1024))
    CHECKLINE_HTTP_ADDR="127.0.0.1:$ST_PORT"
    CHECKLINE_JWT_SECRET="contract-fuzzing-secret-contract-fuzzing"
    CHECKLINE_RESTOCK_WAIT_MS=1000
    CHECKLINE_LOG=warn
)
env "${st_env[@]}" target/debug/checkline-worker >"$RUN_DIR/logs/st-worker.log" 2>&1 &
ST_WORKER=$!
svc_on_cleanup "svc_stop_pid $ST_WORKER st-worker"
env "${st_env[@]}" target/debug/checkline-api >"$RUN_DIR/logs/st-api.log" 2>&1 &
ST_API=$!
svc_on_cleanup "svc_stop_pid $ST_API st-api"
for _ in $(seq 1 150); do
    curl -fsS --max-time 2 "http://127.0.0.1:$ST_PORT/readyz" >/dev/null 2>&1 && break
    svc_alive "$ST_API" || { svc_show_log "$RUN_DIR/logs/st-api.log"; svc_die "the api exited"; }
    sleep 0.2
done
ST_ADMIN=$(env "${st_env[@]}" target/debug/checkline-token --sub contract-admin --role admin --ttl-secs 900)
ST_CUSTOMER=$(env "${st_env[@]}" target/debug/checkline-token --sub contract-customer --role customer --ttl-secs 900)
st_run() {
    local token=$1
    shift
    (cd "$RUN_DIR" && "$RUN_DIR/venv/bin/st" run "http://127.0.0.1:$ST_PORT/openapi.json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
        --max-examples 10 --max-time 60 --request-timeout 5 --no-color \
        --header "Authorization: Bearer $token" "$@")
}
st_run "$ST_ADMIN" --exclude-tag orders
st_run "$ST_CUSTOMER" --include-tag orders
svc_stop_pid "$ST_API" st-api
svc_stop_pid "$ST_WORKER" st-worker
if command -v psql >/dev/null 2>&1; then
    psql -q "${CHECKLINE_DATABASE_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS $ST_DB WITH (FORCE)" || true
fi

step "browser: the storefront and the console in headless Chromium (Playwright), about 3 minutes"
bash "$ROOT/scripts/browser-test.sh"

step "all checks passed"
