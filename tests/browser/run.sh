#!/usr/bin/env bash
# Browser tests of the dashboard: Debian's Chromium, driven by Playwright,
# against a real `slapos up`. SLAPOS_BIN defaults to target/debug/slapos.
# Screenshots of the main pages go to target/screenshots/; set
# SLAPOS_SCREENSHOTS=docs/screenshots to refresh the README's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bash "$repo/scripts/setup-browser.sh"
venv=${SLAPOS_BROWSER_VENV:-$repo/.venv-browser}
if [ -n "${SLAPOS_SCREENSHOTS:-}" ]; then export SLAPOS_SCREENSHOTS=$(realpath -m "$SLAPOS_SCREENSHOTS"); fi
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
