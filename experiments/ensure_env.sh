#!/usr/bin/env bash
# Creates the virtual environment (.venv, or $KERAS_ICCKD_VENV) if it is missing and installs a
# requirements file into it (default requirements.txt; tests/run_all.sh passes requirements-test.txt).
# Each file's hash, with the files it includes (-r), is stamped into the environment
# (.venv/.requirements.sha256 for requirements.txt, .venv/.<name>.sha256 for another); the file is
# installed again only when that hash changes, and pip then only adds what is missing.
# Usage: bash experiments/ensure_env.sh [requirements file]; prints nothing when it is current.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
requirements="${1:-$root/requirements.txt}"
[[ "$requirements" = /* ]] || requirements="$root/$requirements"
if [ ! -f "$requirements" ]; then
  echo "ensure_env.sh: requirements file '$requirements' does not exist" >&2
  exit 2
fi
name="$(basename "$requirements" .txt)"
stamp="$venv/.${name}.sha256"
# The file and every file it includes with -r (paths relative to the including file).
included() {
  echo "$1"
  sed -n 's/^[[:space:]]*-r[[:space:]]*//p' "$1" | while read -r inner; do
    [[ "$inner" = /* ]] || inner="$(dirname "$1")/$inner"
    included "$inner"
  done
}
if [ "$name" = requirements ]; then
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"  # the stamp of environments made before
else
  want="$(included "$requirements" | xargs cat | sha256sum | cut -d' ' -f1)"
fi
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setting up $venv from $(basename "$requirements") (a minute or more)..."
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  "$venv/bin/python" -m pip check
  echo "$want" > "$stamp"
fi
