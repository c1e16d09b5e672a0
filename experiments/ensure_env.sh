#!/usr/bin/env bash
# Creates the virtual environment (.venv, or $KERAS_ICCKD_VENV) if it is missing or if
# requirements.txt changed since it was made, and installs requirements.txt into it.
# Usage: source it or run it; it prints nothing when the environment is already current.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setting up $venv from requirements.txt (about a minute)..."
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
  "$venv/bin/python" -m pip check
  echo "$want" > "$stamp"
fi
