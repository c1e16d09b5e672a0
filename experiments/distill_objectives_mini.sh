#!/usr/bin/env bash
# Each distillation objective on the reduced CIFAR-10 protocol: the resnet8 student of
# experiments/flags/distill_cifar10_mini.flags, distilled from the resnet20 CE teacher of
# experiments/teacher_cifar10_mini.sh, with each method's standard weights (CE 1 unless noted).
# Seeds: $SEEDS (default 0); $ONLY (e.g. "pckd msdcrd") runs those rows only. The student-alone
# and KD rows come from experiments/distill_cifar10_mini.sh. A run whose metrics.json exists is
# not repeated.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
teacher="${TEACHERS:-runs/teacher_cifar10_mini}/lambda0_delta0.5/model.keras"
out="${OUT:-runs/distill_cifar10_mini}"
runs=()
# name | objectives | ce weight. DKD's 20-of-240-epoch warm-up becomes 1 of 6 epochs here.
while IFS='|' read -r name objectives ce; do
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then continue; fi
  for seed in ${SEEDS:-0}; do
    [[ -f "$out/${name}_seed$seed/metrics.json" ]] ||
    .venv/bin/python experiments/run.py --flagfile=experiments/flags/distill_cifar10_mini.flags \
      --teacher="$teacher" --objectives="$objectives" --ce_weight="$ce" --seed="$seed" \
      --output_dir="$out/${name}_seed$seed"
    runs+=("$out/${name}_seed$seed")
  done
done <<'TABLE'
dkd|dkd(beta=8;warmup_epochs=1):1|1.0
rkd|rkd:1|1.0
fitnet|fitnet:100|1.0
at|at:1000|1.0
crd|crd:0.8|1.0
dcd|kd:1,dcd:1|1.0
pckd|pckd:1|1.0
msdcrd|msdcrd:1|1.0
TABLE
.venv/bin/python experiments/summarize.py --group_seeds "${runs[@]}"
