#!/usr/bin/env bash
# The converged-scale CIFAR-10 study (experiments/results/converged_cifar10.md): does KD from an
# intra-class contrastive (ICC) teacher beat KD from a CE teacher when the teachers are converged?
#
#   bash experiments/converged_cifar10.sh [STAGE ...]    # stages: teachers students scratch twoview long report
#                                                         # (default: all)
#
# teachers: imports the published akamaster resnet20 (../shared/teachers), fine-tunes it on the full
#   CIFAR-10 JPEG copy with CE and with CE + lambda * L_intra (experiments/flags/converged/ft_teacher.flags)
#   for lambda in $LAMBDAS, three more CE teachers with --seed=1, 2, 3 and second lambda-0.05 and lambda-0.1
#   ICC teachers with --seed=1, and evaluates each teacher (--mode=evaluate, soft labels at T = 4).
# students: the resnet8 student flagfiles of experiments/flags/converged/ over seeds $SEEDS through
#   experiments/sweep.py (alone; KD from each teacher, the four CE teachers included; DKD; CRD; KD + RKD from
#   the ICC teacher that rkd_icc.flags names and from the CE teacher).
# scratch: two pairs (seeds 0 and 1) of resnet20 CE and ICC teachers from random initialisation
#   (scratch_teacher.flags), then KD from each.
# twoview: the two-view CE control: lambda-0 teachers fine-tuned like the ICC teachers (ft_teacher.flags with
#   --views=2: two views through the network, CE on the first alone) with fine-tuning seeds 0-3, their
#   evaluations, then KD from each (kd_twoview_ce*.flags).
# long: part 3, students of 15 epochs (long_student.flags): KD from the chosen ICC teacher (lambda 0.05,
#   fine-tuning seed 0) and from its two-view CE control (seed 0), and the student alone, over seeds $SEEDS.
# report: tables and the figure (experiments/converged_report.py).
# Finished runs (here or committed under experiments/results/converged_cifar10) are reused and
# interrupted ones resume: the same command continues after a kill or in a fresh clone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
out="${OUT:-runs/converged_cifar10}"
data=../shared/datasets/cifar10-jpeg.tar.gz
flags=experiments/flags/converged
lambdas="${LAMBDAS:-0 0.01 0.05 0.1}"
seeds="${SEEDS:-0,1,2}"
stages="${*:-teachers students scratch twoview long report}"
py=.venv/bin/python
committed=experiments/results/converged_cifar10

# Runs finished in earlier sessions are committed under $committed (metrics.json, the teachers'
# model.keras and evaluations): start from them, so that only what is missing runs.
mkdir -p "$out"
cp -rn "$committed/." "$out/"

once() {  # once DIR ARGS...: runs run.py into DIR unless DIR/metrics.json exists
  local dir=$1; shift
  [[ -f "$dir/metrics.json" ]] || $py experiments/run.py "$@" --output_dir="$dir"
}

sweep() {  # sweep FLAGFILE...: seed by seed (every setting of seed 0 first), then one table over $seeds
  local list seed; list=$(IFS=,; echo "$*")
  # a failed run (exit status 1) is reported in the table and the others go on; a usage error (2: nothing
  # was run, e.g. a finished run of other flags) stops the script
  for seed in ${seeds//,/ }; do
    $py experiments/sweep.py --flagfiles="$list" --seeds="$seed" --output_root="$out/students" || [[ $? -eq 1 ]]
  done
  $py experiments/sweep.py --flagfiles="$list" --seeds="$seeds" --output_root="$out/students" || [[ $? -eq 1 ]]
}

if [[ " $stages " == *" teachers "* ]]; then
  once "$out/imported_resnet20" --mode=import --torch_checkpoint=../shared/teachers/resnet20-12fca82f.th \
    --torch_normalization=imagenet --dataset=folder --data_dir="$data"
  for lambda in $lambdas; do
    once "$out/ft_teacher_lambda$lambda" --flagfile="$flags/ft_teacher.flags" --icc_lambda="$lambda"
  done
  # more teachers, fine-tuned with other seeds: how far KD moves with the teacher alone, and at the
  # teacher level four CE teachers against five ICC teachers (lambda:seed)
  for teacher in 0:1 0:2 0.05:1 0:3 0.1:1; do
    once "$out/ft_teacher_lambda${teacher%:*}_seed${teacher#*:}" --flagfile="$flags/ft_teacher.flags" \
      --icc_lambda="${teacher%:*}" --seed="${teacher#*:}"
  done
  for teacher in $(printf 'ft_teacher_lambda%s ' $lambdas) ft_teacher_lambda0_seed1 ft_teacher_lambda0_seed2 \
      ft_teacher_lambda0.05_seed1 ft_teacher_lambda0_seed3 ft_teacher_lambda0.1_seed1; do
    once "$out/$teacher/evaluate" --mode=evaluate --model="$out/$teacher/model.keras" \
      --dataset=folder --data_dir="$data"
  done
fi
if [[ " $stages " == *" students "* ]]; then
  main=("$flags/kd_ce.flags" "$flags/kd_ce_teacher2.flags" "$flags/kd_ce_teacher3.flags"
        "$flags/kd_icc0.05_teacher2.flags" "$flags/kd_ce_teacher4.flags" "$flags/kd_icc0.1_teacher2.flags")
  for lambda in $lambdas; do [[ $lambda == 0 ]] || main+=("$flags/kd_icc$lambda.flags"); done
  sweep "${main[@]}" "$flags/alone.flags" "$flags/dkd.flags" "$flags/crd.flags"
  if [[ -f "$flags/rkd_icc.flags" ]]; then sweep "$flags/rkd_icc.flags" "$flags/rkd_ce.flags"; fi
fi
if [[ " $stages " == *" scratch "* ]]; then
  # two pairs (CE, ICC lambda 0.05): seed 0, and seed 1 (another initialisation and data order)
  for teacher in lambda0 lambda0.05 lambda0_seed1 lambda0.05_seed1; do
    lambda=${teacher#lambda}; lambda=${lambda%_seed1}; seed=0; [[ $teacher != *_seed1 ]] || seed=1
    once "$out/scratch_teacher_$teacher" --flagfile="$flags/scratch_teacher.flags" --icc_lambda="$lambda" --seed=$seed
    once "$out/scratch_teacher_$teacher/evaluate" --mode=evaluate \
      --model="$out/scratch_teacher_$teacher/model.keras" --dataset=folder --data_dir="$data"
  done
  sweep "$flags/kd_scratch_ce.flags" "$flags/kd_scratch_icc.flags"
  sweep "$flags/kd_scratch_ce_teacher2.flags" "$flags/kd_scratch_icc_teacher2.flags"
fi
if [[ " $stages " == *" twoview "* ]]; then
  for seed in 0 1 2 3; do
    teacher=twoview_teacher_lambda0; [[ $seed == 0 ]] || teacher+="_seed$seed"
    once "$out/$teacher" --flagfile="$flags/ft_teacher.flags" --icc_lambda=0 --views=2 --seed=$seed
    once "$out/$teacher/evaluate" --mode=evaluate --model="$out/$teacher/model.keras" --dataset=folder --data_dir="$data"
  done
  sweep "$flags/kd_twoview_ce.flags" "$flags/kd_twoview_ce_teacher2.flags" "$flags/kd_twoview_ce_teacher3.flags" \
    "$flags/kd_twoview_ce_teacher4.flags"
fi
if [[ " $stages " == *" long "* ]]; then
  sweep "$flags/kd_icc0.05_long.flags" "$flags/kd_twoview_ce_long.flags" "$flags/alone_long.flags"
fi
if [[ " $stages " == *" report "* ]]; then
  $py experiments/converged_report.py --runs="$out"
fi
