#!/usr/bin/env bash
# The package as a user installs it: builds the wheel, installs it into fresh virtual environments
# outside the checkout and runs the `keras-icckd` command from a temporary folder on the bundled data.
#   - [tensorflow,export] (TensorFlow 2.21.0, versions pinned by requirements.txt): a teacher, a student
#     distilled from it, the student exported to every format (plain .keras, SavedModel, ONNX, TFLite; each
#     verified in its runtime) with uint8 input, and evaluated (.keras and the uint8 .tflite);
#     `python -m keras_icckd` is the same command;
#   - [jax] alone (TensorFlow must not be importable): a teacher and a student.
# Prints one line per check and ends with "wheel smoke: N passed, N failed". Exit status 1 on a failure.
# Usage: bash tests/wheel_smoke.sh   (PYTHON: the interpreter for the environments, default python3)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
finish() {
  echo "wheel smoke: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
  exit
}
check() {  # check NAME COMMAND...: runs the command (output to $work/NAME.log), counts and reports it
  local name=$1; shift
  if "$@" >"$work/$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok      $name"
  else
    failed=$((failed + 1)); echo "FAILED  $name (last lines of its output:)"; tail -n 25 "$work/$name.log" | sed 's/^/        /'
    return 1
  fi
}
pip_quiet=(--quiet --disable-pip-version-check)
echo "building the wheel of $root"
mkdir "$work/src"  # a copy of what the wheel is built from, so that the build leaves nothing in the checkout
cp -r "$root/pyproject.toml" "$root/README.md" "$root/LICENSE" "$root/keras_icckd" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; failed=1; finish; }
wheel="$(ls "$work"/dist/keras_icckd-*.whl)"
echo "$(basename "$wheel")"
# the pins of requirements.txt as constraints (no extras there), and the full TensorFlow build at the
# version of its CPU build
{ sed -E -e 's/#.*//' -e 's/\[[^]]*\]//' -e '/^[[:space:]]*(-|$)/d' "$root/requirements.txt"
  echo "tensorflow==$(sed -n 's/^tensorflow-cpu==//p' "$root/requirements.txt")"; } > "$work/constraints.txt"
small=(--max_train_examples=200 --max_test_examples=100 --epochs=1 --batch_size=50 --eval_batch_size=50
       --lr_decay_epochs=1 --diagnostic_examples=50)
cd "$work"  # nothing of the checkout on the path from here

tf="$work/venv-tf/bin"
check install-tensorflow bash -c "'$python' -m venv '$work/venv-tf' && '$tf/pip' install ${pip_quiet[*]} \
  '$wheel[tensorflow,export]' -c '$work/constraints.txt'" || finish
check installed-not-checkout "$tf/python" -c "import keras_icckd, os, sys
assert os.sep + 'site-packages' + os.sep in keras_icckd.__file__, keras_icckd.__file__
assert keras_icckd.version.code_version()['commit'] is None"
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
check tf-teacher "$tf/keras-icckd" --mode=teacher --arch=resnet8 --icc_lambda=0.05 "${small[@]}" --output_dir=tf/teacher
check tf-student "$tf/keras-icckd" --mode=student --teacher=tf/teacher/model.keras --student_arch=resnet8 \
  "${small[@]}" --output_dir=tf/student
check tf-export "$tf/keras-icckd" --mode=export --model=tf/student/model.keras --export_quantizations=float32,int8 \
  --export_formats=keras,saved_model,onnx,litert --export_input=uint8 \
  --max_test_examples=100 --representative_examples=50 --output_dir=tf/export
check tf-evaluate-keras "$tf/python" -m keras_icckd --mode=evaluate --model=tf/student/model.keras \
  --max_test_examples=100 --diagnostic_examples=50 --output_dir=tf/evaluate
check tf-evaluate-tflite "$tf/keras-icckd" --mode=evaluate --model=tf/export/model_int8.tflite \
  --max_test_examples=100 --output_dir=tf/evaluate_tflite
check tf-outputs "$tf/python" -c "import json
for run in ('teacher', 'student'):
    m = json.load(open(f'tf/{run}/metrics.json')); assert m['mode'] == run and 0 <= m['test_top1'] <= 100, m
files = json.load(open('tf/export/export.json'))['files']
assert all(files[k]['max_abs_diff'] <= 1e-4 for k in ('keras', 'saved_model', 'onnx', 'float32')), files
assert json.load(open('tf/evaluate/metrics.json'))['num_test'] == 100"

jx="$work/venv-jax/bin"
check install-jax bash -c "'$python' -m venv '$work/venv-jax' && '$jx/pip' install ${pip_quiet[*]} '$wheel[jax]' \
  -c '$work/constraints.txt'" || finish
check jax-has-no-tensorflow "$jx/python" -c "import importlib.util; assert importlib.util.find_spec('tensorflow') is None"
export KERAS_BACKEND=jax
check jax-teacher "$jx/keras-icckd" --mode=teacher --arch=resnet8 --icc_lambda=0.05 "${small[@]}" --notensorboard \
  --output_dir=jax/teacher
check jax-student "$jx/keras-icckd" --mode=student --teacher=jax/teacher/model.keras --student_arch=resnet8 \
  "${small[@]}" --notensorboard --output_dir=jax/student

finish
