# Sourced by the other scripts: creates .venv (once) and installs the pinned requirements
# whenever a requirements file changed. Usage: . scripts/venv.sh [requirements-test.txt]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "error: could not create .venv: on Debian run 'apt-get install python3-venv'" >&2; exit 2; }
fi
stamp=.venv/.installed
want=$(cat requirements.txt "$@" setup.cfg | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  reqs=(-r requirements.txt)
  for f in "$@"; do reqs+=(-r "$f"); done
  .venv/bin/python -m pip install --disable-pip-version-check -q "${reqs[@]}"
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
