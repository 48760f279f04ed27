#!/usr/bin/env bash
# Installs what the dashboard's browser tests need: Debian's Chromium and a
# virtualenv with Playwright (driving that Chromium, no bundled browser) and
# pytest. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SLAPOS_BROWSER_VENV:-$here/.venv-browser}
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import playwright, pytest' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'playwright==1.*' pytest pytest-timeout
echo "setup-browser: Playwright installed in $venv" >&2
