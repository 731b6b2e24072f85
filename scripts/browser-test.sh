#!/usr/bin/env bash
#
# The browser tests: the storefront (/) and the operations console (/ops) in
# headless Chromium from Debian's packages, driven by Playwright (PyPI,
# pointed at that Chromium with executable_path; Playwright's own browser
# downloads are never used), against the API and workers started as plain
# binaries, as on a production host. Each test module starts its own system
# on a fresh database and prefix (browser/conftest.py).
#
#   scripts/browser-test.sh               all browser tests
#   scripts/browser-test.sh -k console    pytest arguments
#
# scripts/test.sh runs it with its services; run alone, it starts whatever of
# NATS, PostgreSQL and Redis is missing, like scripts/test.sh.
#
# Environment: CHECKLINE_BROWSER_TEST_TIMEOUT_SECS (default 900) bounds the
# whole run; CHECKLINE_CHROMIUM (default /usr/bin/chromium).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

TIMEOUT_SECS=${CHECKLINE_BROWSER_TEST_TIMEOUT_SECS:-900}
[[ $TIMEOUT_SECS =~ ^[1-9][0-9]*$ ]] ||
    svc_die "CHECKLINE_BROWSER_TEST_TIMEOUT_SECS must be a positive number of seconds, got '$TIMEOUT_SECS'"
export CHECKLINE_CHROMIUM=${CHECKLINE_CHROMIUM:-/usr/bin/chromium}

if [[ -z "${CHECKLINE_DATABASE_URL:-}" || -z "${CHECKLINE_NATS_URL:-}" || -z "${CHECKLINE_REDIS_URL:-}" ]]; then
    svc_trap_cleanup
    SVC_NATS_STORE_DIR=$RUN_DIR/nats-test
    SVC_NATS_EPHEMERAL=1
    CHECKLINE_NATS_PORT=${CHECKLINE_TEST_NATS_PORT:-4251}
    CHECKLINE_NATS_MONITOR_PORT=${CHECKLINE_TEST_NATS_MONITOR_PORT:-8251}
    ensure_rust
    ensure_services
fi

if [[ ! -x $CHECKLINE_CHROMIUM ]]; then
    [[ $CHECKLINE_CHROMIUM == /usr/bin/chromium ]] ||
        svc_die "CHECKLINE_CHROMIUM=$CHECKLINE_CHROMIUM is not an executable"
    svc_apt_install chromium
fi

# Python packages, pinned, in .run/venv beside nats-server and schemathesis;
# reinstalled only when browser/requirements.txt changes.
STAMP=$RUN_DIR/venv/.browser-requirements
if ! cmp -s "$ROOT/browser/requirements.txt" "$STAMP" 2>/dev/null; then
    if [[ ! -x "$RUN_DIR/venv/bin/pip" ]]; then
        _svc_ensure_python_venv
        python3 -m venv "$RUN_DIR/venv" || svc_die "python3 -m venv failed"
    fi
    "$RUN_DIR/venv/bin/pip" install --disable-pip-version-check -q -r "$ROOT/browser/requirements.txt" ||
        svc_die "pip install -r browser/requirements.txt failed"
    cp "$ROOT/browser/requirements.txt" "$STAMP"
fi

cargo build -p checkline-api -p checkline-worker --bins
export CHECKLINE_BIN_DIR=$ROOT/target/debug
mkdir -p "$RUN_DIR/logs/browser"
# Playwright must not look for, or fetch, a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
cd "$ROOT/browser"
timeout --kill-after=30 "$TIMEOUT_SECS" "$RUN_DIR/venv/bin/python" -m pytest -p no:cacheprovider -q "$@" ||
    {
        rc=$?
        ((rc == 124)) && svc_log "the browser tests did not finish within $TIMEOUT_SECS s"
        svc_log "logs of the systems under test: $RUN_DIR/logs/browser/"
        exit "$rc"
    }
