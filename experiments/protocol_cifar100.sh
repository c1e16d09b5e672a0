#!/usr/bin/env bash
# The full CIFAR-100 protocol of one standard pair, for a GPU (240 epochs per run):
#   bash experiments/protocol_cifar100.sh PAIR PATH/cifar-100-python.tar.gz
# PAIR: resnet8x4_from_resnet32x4, wrn_16_2_from_wrn_40_2, resnet20_from_resnet56, vgg8_from_vgg13,
# shufflenetv2_from_resnet32x4 or mobilenetv2_from_vgg13. Trains the CE and the ICC teacher (seed 0,
# experiments/flags/teacher_<arch>_cifar100_{ce,icc}.flags), then every student flagfile of the pair
# (alone, KD from each teacher, ICC + RKD, DKD, CRD, PCKD, DCD) over seeds $SEEDS (default 0,1,2)
# with experiments/sweep.py: one table in runs/sweep_<PAIR>/sweep.md. Every run is resumable:
# starting the same command again continues where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pair="${1:?usage: protocol_cifar100.sh PAIR PATH/cifar-100-python.tar.gz}"
data="${2:?usage: protocol_cifar100.sh PAIR PATH/cifar-100-python.tar.gz}"
teacher="${pair#*_from_}"
flags="$root/experiments/flags"
if [[ "$pair" == "$teacher" || ! -f "$flags/student_${pair}_cifar100_alone.flags" ]]; then
  echo "unknown pair '$pair'; known: $(ls "$flags" | sed -n 's/^student_\(.*\)_cifar100_alone.flags$/\1/p' | tr '\n' ' ')" >&2
  exit 2
fi
[[ -e "$data" ]] || { echo "CIFAR-100 data '$data' does not exist" >&2; exit 2; }
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
for kind in ce icc; do
  out="runs/teacher_${teacher}_cifar100_${kind}"
  [[ -f "$out/metrics.json" ]] ||
  .venv/bin/python experiments/run.py --flagfile="experiments/flags/teacher_${teacher}_cifar100_${kind}.flags" \
    --data_dir="$data"
done
.venv/bin/python experiments/sweep.py --flagfiles="experiments/flags/student_${pair}_cifar100_*.flags" \
  --seeds="${SEEDS:-0,1,2}" --output_root="runs/sweep_${pair}" --set=data_dir="$data"
