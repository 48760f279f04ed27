#!/usr/bin/env bash
# Installs the reference implementation (slapos.core 1.26.1, the real Python
# client, CLI, proxy and node) into a virtualenv, for interop tests and
# benchmarks. Idempotent: a venv that already has it is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SLAPOS_REF_VENV:-$here/.venv-ref}
py=${SLAPOS_REF_PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" /root/.pyenv/versions/3.12.1/bin/python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      py=$cand; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup-reference: no Python >= 3.12 found (the reference node needs it)" >&2; exit 1; }
if [ -x "$venv/bin/slapos" ] && "$venv/bin/python" -c 'import slapos.slap, slapos.libnetworkcache, pytest' 2>/dev/null; then
  exit 0
fi
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  'slapos.core==1.26.1' slapos.libnetworkcache pytest pytest-timeout
echo "setup-reference: reference installed in $venv" >&2
