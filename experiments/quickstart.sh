#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv if needed, trains an ICC teacher on the CIFAR-10
# subset bundled with the package, distils a student from it, exports the student to TFLite
# (float32 / float16 / int8, each verified against Keras), and says where everything went.
# Extra arguments are passed to all three steps (e.g. --data_dir=../shared/datasets/cifar10-jpeg.tar.gz
# for the full CIFAR-10, or --epochs=5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
venv="${KERAS_ICCKD_VENV:-$root/.venv}"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "== 1/3: ICC teacher (resnet14) =="
"$venv/bin/python" experiments/run.py --flagfile=experiments/flags/quickstart.flags "$@"
echo "== 2/3: resnet8 student, KD from the ICC teacher =="
"$venv/bin/python" experiments/run.py --flagfile=experiments/flags/quickstart_student.flags "$@"
echo "== 3/3: the student to TFLite, verified on the test images =="
"$venv/bin/python" experiments/run.py --mode=export --model=runs/quickstart/student/model.keras \
  --output_dir=runs/quickstart/tflite "$@"
