#!/usr/bin/env bash
# The CIFAR-10 converged design on Tiny-ImageNet at 32 x 32 (experiments/results/tinyimagenet_converged.md).
#
#   bash experiments/tinyimagenet_converged.sh [STAGE ...]    # scratch teachers students report (default: all)
#
# scratch: the CE resnet20 teacher from scratch (flags/tinyimagenet_converged/scratch_teacher.flags) and its
#   evaluation. teachers: its fine-tunes, one-view CE, two-view CE, ICC lambda 0.05 and 0.1, fine-tuning seeds
#   0, 1, 2 each (12 teachers), each evaluated. students: KD from each teacher and the student alone, seeds 0,
#   1, 2. Finished runs (here or committed under experiments/results/tinyimagenet_converged) are reused and an
#   interrupted one resumes: the same command continues after a kill or in a fresh clone. Each finished run's
#   metrics.json (and the teachers' model.keras, which the next stage reads) is copied under the results folder
#   to be committed. report: the tables, the rule's answer and the figure from those copies
#   (experiments/tinyimagenet_report.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
out="${OUT:-runs/tinyimagenet_converged}"
flags=experiments/flags/tinyimagenet_converged
committed=experiments/results/tinyimagenet_converged
stages="${*:-scratch teachers students report}"
py=.venv/bin/python
mkdir -p "$out" "$committed"
cp -rn "$committed/." "$out/"

keep() {  # keep DIR: the run's record (and a teacher's model) beside the results file
  local dir=$1 name; name=${dir#"$out"/}
  mkdir -p "$committed/$name"
  cp "$dir/metrics.json" "$committed/$name/"
  [[ ! -f "$dir/model.keras" || $name == students/* ]] || cp "$dir/model.keras" "$committed/$name/"
}
once() {  # once DIR ARGS...: runs run.py into DIR unless DIR/metrics.json exists, then keeps its record
  local dir=$1; shift
  [[ -f "$dir/metrics.json" ]] || $py experiments/run.py "$@" --output_dir="$dir"
  keep "$dir"
}
evaluate() {
  once "$1/evaluate" --mode=evaluate --model="$1/model.keras" --dataset=tinyimagenet --image_size=32
}
teachers() {  # the names of step 2's teachers
  for arm in ce1_lambda0 ce2_lambda0 icc_lambda0.05 icc_lambda0.1; do
    for seed in 0 1 2; do echo "ft_${arm}_seed$seed"; done
  done
}

if [[ " $stages " == *" scratch "* ]]; then
  once "$out/scratch_teacher" --flagfile="$flags/scratch_teacher.flags"
  evaluate "$out/scratch_teacher"
fi
if [[ " $stages " == *" teachers "* ]]; then
  for teacher in $(teachers); do
    arm=${teacher#ft_}; arm=${arm%_seed*}; seed=${teacher##*_seed}; lambda=${arm#*_lambda}
    views=2; [[ $arm != ce1_* ]] || views=1
    once "$out/$teacher" --flagfile="$flags/ft_teacher.flags" --icc_lambda="$lambda" --views=$views --seed="$seed"
    evaluate "$out/$teacher"
  done
fi
if [[ " $stages " == *" students "* ]]; then
  for seed in 0 1 2; do  # every setting of seed 0 first
    once "$out/students/alone_seed$seed" --flagfile="$flags/student.flags" --seed="$seed"
    for teacher in $(teachers); do
      once "$out/students/kd_${teacher}_seed$seed" --flagfile="$flags/student.flags" --seed="$seed" \
        --teacher="$out/$teacher/model.keras" --objectives=kd:0.9 --ce_weight=0.1
    done
  done
fi
if [[ " $stages " == *" report "* ]]; then
  $py experiments/tinyimagenet_report.py --results_dir="$committed"
fi
