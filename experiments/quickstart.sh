#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv if needed, then trains an ICC teacher on the
# CIFAR-10 subset bundled with the package and says where the model and results went.
# Extra arguments are passed to experiments/run.py (e.g. --data_dir=../shared/datasets/cifar10-jpeg.tar.gz
# for the full CIFAR-10, or --epochs=5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$venv/bin/python" experiments/run.py --flagfile=experiments/flags/quickstart.flags "$@"
