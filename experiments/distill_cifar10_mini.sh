#!/usr/bin/env bash
# The key comparison at reduced scale: the same resnet8 student, same schedule and seeds, trained
# alone (CE), with KD from the CE teacher, and with KD from the ICC teacher (lambda 0.05, delta 0.5,
# the defaults), over seeds 0 1 2. Needs the teachers of experiments/teacher_cifar10_mini.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
teachers="${TEACHERS:-runs/teacher_cifar10_mini}"
out="${OUT:-runs/distill_cifar10_mini}"
flagfile=experiments/flags/distill_cifar10_mini.flags
runs=()
for seed in ${SEEDS:-0 1 2}; do
  .venv/bin/python experiments/run.py --flagfile=$flagfile --mode=teacher --arch=resnet8 \
    --icc_lambda=0 --seed=$seed --output_dir=$out/alone_seed$seed
  for teacher in lambda0_delta0.5 lambda0.05_delta0.5; do
    .venv/bin/python experiments/run.py --flagfile=$flagfile --teacher=$teachers/$teacher/model.keras \
      --seed=$seed --output_dir=$out/kd_from_${teacher}_seed$seed
  done
  runs+=("$out/alone_seed$seed" "$out/kd_from_lambda0_delta0.5_seed$seed" "$out/kd_from_lambda0.05_delta0.5_seed$seed")
done
.venv/bin/python experiments/summarize.py --group_seeds "${runs[@]}"
