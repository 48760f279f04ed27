#!/usr/bin/env bash
# Browser tests of the dashboard: Debian's Chromium, driven by Playwright,
# against a real `slapos up`. SLAPOS_BIN defaults to target/debug/slapos.
# Screenshots of the main pages go to docs/screenshots/ (SLAPOS_SCREENSHOTS).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bash "$repo/scripts/setup-browser.sh"
venv=${SLAPOS_BROWSER_VENV:-$repo/.venv-browser}
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
