#!/usr/bin/env bash
# Runs the interop suite: the real slapos.core 1.26.1 client and CLI against
# a master.
#   tests/interop/run.sh [reference|ours] [pytest args...]
# reference (default, or $INTEROP_TARGET): `slapos proxy start` of the venv.
# ours: $SLAPOS_BIN proxy start (default <repo>/target/release/slapos).
# Extra pytest args are relative to tests/interop, e.g.
#   tests/interop/run.sh ours test_cli.py -k shared -x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

target=${INTEROP_TARGET:-reference}
case "${1:-}" in
  reference|ours) target=$1; shift ;;
esac

"$repo/scripts/setup-reference.sh"
venv=${SLAPOS_REF_VENV:-$repo/.venv-ref}
export SLAPOS_REF_VENV=$venv

if [ "$target" = ours ]; then
  export SLAPOS_BIN=${SLAPOS_BIN:-$repo/target/release/slapos}
  if [ ! -x "$SLAPOS_BIN" ]; then
    echo "run.sh: SLAPOS_BIN=$SLAPOS_BIN does not exist or is not executable" \
         "(build it with: cargo build --release)" >&2
    exit 2
  fi
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider \
  --timeout="${INTEROP_TIMEOUT:-180}" --target="$target" "$@"
