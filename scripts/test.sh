#!/usr/bin/env bash
#
# Runs all the tests: formatting, clippy, then the whole workspace's tests
# against real NATS, PostgreSQL and Redis (started when absent, exactly as
# scripts/run.sh does, and stopped again at the end).
#
#   scripts/test.sh            cargo fmt --check, clippy, cargo test --workspace
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

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

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

step "fault suite: a flash sale through killed workers and restarted NATS, PostgreSQL and Redis"
bash "$ROOT/scripts/fault-suite.sh"

step "all checks passed"
