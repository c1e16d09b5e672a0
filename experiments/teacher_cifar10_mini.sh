#!/usr/bin/env bash
# CE teacher vs ICC teachers on real CIFAR-10 at a scale that runs on 2 CPU cores, then the table
# of experiments/results/teacher_cifar10_mini.md. Extra arguments go to every run (e.g. --seed=1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
out="${OUT:-runs/teacher_cifar10_mini}"
runs=()
extra=("$@")
for setting in "0 0.5" "0.05 0.5" "0.1 0.5" "0.1 0.0"; do
  set -- $setting
  dir="$out/lambda$1_delta$2"
  .venv/bin/python experiments/run.py --flagfile=experiments/flags/teacher_cifar10_mini.flags \
    --icc_lambda="$1" --icc_delta="$2" --output_dir="$dir" "${extra[@]}"
  runs+=("$dir")
done
.venv/bin/python experiments/summarize.py --plot="$out/ratio.png" "${runs[@]}"
