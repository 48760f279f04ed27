#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust tests (store story on
# SQLite and PostgreSQL, fixture replay, HTTP tests), then the interop suite
# in which the real slapos.core 1.26.1 client and CLI drive our proxy, and
# the same suite against the real Python proxy; browser tests of the
# dashboard in headless Chromium.
#
# PostgreSQL: SLAPOS_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres
# when a server answers there). Set SLAPOS_SKIP_REFERENCE=1 to skip the run
# against the Python proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ -z "${SLAPOS_TEST_POSTGRES:-}" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  export SLAPOS_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres
fi
[ -n "${SLAPOS_TEST_POSTGRES:-}" ] || echo "warning: no PostgreSQL: the PostgreSQL runs are skipped" >&2

# One download cache for every node the tests start (Debian packages, fetches).
export SLAPOS_DOWNLOAD_CACHE=${SLAPOS_DOWNLOAD_CACHE:-$PWD/target/download-cache}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace --quiet 2>&1 | tee target/cargo-test.log
grep -q "test result: ok" target/cargo-test.log

step "browser: the dashboard in Debian's Chromium (Playwright) against slapos up"
cargo build --quiet -p slapos
SLAPOS_BIN="$PWD/target/debug/slapos" bash tests/browser/run.sh

step "interop: the real slapos.core client and CLI against our proxy"
cargo build --quiet -p slapos
SLAPOS_BIN="$PWD/target/debug/slapos" bash tests/interop/run.sh ours

if [ "${SLAPOS_SKIP_REFERENCE:-0}" != 1 ]; then
  step "interop: the same suite against the reference proxy"
  bash tests/interop/run.sh reference
fi
