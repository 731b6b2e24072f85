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

# A nats-server started here gets a throwaway store: every test makes streams
# of its own, and they should not accumulate from run to run.
SVC_NATS_STORE_DIR=$RUN_DIR/nats-test
SVC_NATS_EPHEMERAL=1

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

step "all checks passed"
