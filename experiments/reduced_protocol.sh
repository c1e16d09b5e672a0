#!/usr/bin/env bash
# The reduced protocol for 2 CPU cores (experiments/results/README.md): on real CIFAR-10 (a
# class-balanced 10,000 / 2,000 subset of the bundled archive), a resnet20 CE teacher and a resnet20
# ICC teacher (6 epochs, one seed), then the resnet8 student of experiments/flags/reduced/ alone, with
# KD from each teacher, with ICC + RKD and with DKD, over seeds $SEEDS (default 0,1,2) through
# experiments/sweep.py, one table in runs/distill_cifar10_mini/sweep.md. Finished runs are reused and
# interrupted ones resume, so the same command continues after a crash.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
for lambda in 0 0.05; do
  dir="runs/teacher_cifar10_mini/lambda${lambda}_delta0.5"
  [[ -f "$dir/metrics.json" ]] ||
  .venv/bin/python experiments/run.py --flagfile=experiments/flags/teacher_cifar10_mini.flags \
    --icc_lambda="$lambda" --icc_delta=0.5 --output_dir="$dir"
done
.venv/bin/python experiments/sweep.py --flagfiles='experiments/flags/reduced/*.flags' \
  --seeds="${SEEDS:-0,1,2}" --output_root=runs/distill_cifar10_mini
