# Sourced by demo.sh and test.sh: make (or reuse) .venv and install the project into it.
# Usage: EXTRAS=test . scripts/_venv.sh   (EXTRAS empty: the plain install)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${SD2TFLITE_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
spec="$ROOT"
if [ -n "${EXTRAS:-}" ]; then spec="$ROOT[$EXTRAS]"; fi
echo ">> installing sd2tflite and its dependencies (first time: a few minutes)" >&2
"$VENV/bin/python" -m pip install --quiet -e "$spec" >&2
