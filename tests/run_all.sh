#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite once per Keras backend (TensorFlow, JAX).
# Extra arguments go to pytest (e.g. tests/test_losses.py -x). One backend only:
#   KERAS_BACKEND=jax .venv/bin/python -m pytest tests
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh" || exit 1
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
status=0
for backend in tensorflow jax; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest -q "$@" || status=1
done
exit $status
