#!/usr/bin/env bash
# Sets up .venv if needed (requirements-test.txt: the runtime requirements plus PyTorch for the
# checkpoint importer's tests), then runs the test suite once per Keras backend (TensorFlow, JAX).
# The two sessions run side by side (much of a session is single-threaded start-up and
# compilation, so this halves the wall time on 2 cores); each one's output is printed when it
# ends. SEQUENTIAL=1 runs them one after the other with live output. Extra arguments go to pytest
# (e.g. tests/test_losses.py -x). One backend only:
#   KERAS_BACKEND=jax .venv/bin/python -m pytest tests
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh" "$root/requirements-test.txt" || exit 1
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
backends=(tensorflow jax)
status=0
if [[ -n "${SEQUENTIAL:-}" ]]; then
  for backend in "${backends[@]}"; do
    echo "=== KERAS_BACKEND=$backend ==="
    KERAS_BACKEND=$backend "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=25 "$@" || status=1
  done
  exit $status
fi
logs="$(mktemp -d)"
trap 'rm -rf "$logs"; kill "${heartbeat:-}" 2>/dev/null' EXIT
pids=()
for backend in "${backends[@]}"; do
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=25 "$@" >"$logs/$backend" 2>&1 &
  pids+=($!)
  echo "started the $backend session (pid $!)"
done
( while sleep 120; do echo "[$(date +%T)] tests still running"; done ) &
heartbeat=$!
for i in "${!backends[@]}"; do
  wait "${pids[$i]}" || status=1
  [[ $i -eq 0 ]] || kill "$heartbeat" 2>/dev/null
  echo "=== KERAS_BACKEND=${backends[$i]} ==="
  cat "$logs/${backends[$i]}"
done
exit $status
