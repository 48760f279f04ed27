#!/usr/bin/env bash
# Benchmark: the reference SlapOS proxy (slapos.core 1.26.1) against ours.
#   bench/run.sh [compare.py options...]     e.g. bench/run.sh --quick
#                                                 bench/run.sh --only ours
# Installs wrk if missing, installs the reference venv (scripts/setup-reference.sh),
# builds our release binary unless SLAPOS_BIN is set, then runs bench/compare.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk" >&2
  if ! apt-get install -y wrk >&2; then
    apt-get update >&2
    apt-get install -y wrk >&2
  fi
fi

"$repo/scripts/setup-reference.sh"
venv=${SLAPOS_REF_VENV:-$repo/.venv-ref}
export SLAPOS_REF_VENV=$venv

if [ -z "${SLAPOS_BIN:-}" ]; then
  echo "bench: building our release binary (cargo build --release -p slapos)" >&2
  (cd "$repo" && cargo build --release -p slapos)
  export SLAPOS_BIN=$repo/target/release/slapos
fi
if [ ! -x "$SLAPOS_BIN" ]; then
  echo "bench: SLAPOS_BIN=$SLAPOS_BIN is not an executable" >&2
  exit 2
fi

exec "$venv/bin/python" "$here/compare.py" --slapos-bin "$SLAPOS_BIN" --ref-venv "$venv" "$@"
