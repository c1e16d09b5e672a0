#!/usr/bin/env bash
# Reduced Tiny-ImageNet run for 2 CPU cores (experiments/results/tinyimagenet.md): the real Tiny-ImageNet
# (../shared/datasets/tinyimagenet200-jpeg.tar.gz, or DATA=PATH) at 32 x 32, a class-balanced 10,000 / 2,000
# subset; an ICC resnet20 teacher -> a KD resnet8 student -> TFLite float32 / float16 / int8, verified on
# the 2,000 test images. Finished steps are reused, interrupted ones resume. Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
out="runs/tinyimagenet_mini"
data=()
[[ -n "${DATA:-}" ]] && data=(--data_dir="$DATA")
flags=experiments/flags/tinyimagenet
[[ -f "$out/teacher_icc/metrics.json" ]] ||
  .venv/bin/python experiments/run.py --flagfile=$flags/reduced_teacher_icc.flags "${data[@]}" --output_dir="$out/teacher_icc"
[[ -f "$out/student_kd_icc/metrics.json" ]] ||
  .venv/bin/python experiments/run.py --flagfile=$flags/reduced_student_kd_icc.flags "${data[@]}" \
    --output_dir="$out/student_kd_icc"
[[ -f "$out/export/export.json" ]] ||
  .venv/bin/python experiments/run.py --mode=export --model="$out/student_kd_icc/model.keras" --dataset=tinyimagenet \
    --image_size=32 --max_train_examples=10000 --max_test_examples=2000 --representative_examples=256 "${data[@]}" --output_dir="$out/export"
.venv/bin/python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
teacher = json.load(open(os.path.join(out, "teacher_icc", "metrics.json")))
student = json.load(open(os.path.join(out, "student_kd_icc", "metrics.json")))
export = json.load(open(os.path.join(out, "export", "export.json")))
print("| model | test top-1 (%), last epoch | best epoch top-1 | wall time |")
print("|---|---|---|---|")
for name, m in (("resnet20 ICC teacher", teacher), ("resnet8 KD student", student)):
    print(f"| {name} | {m['test_top1']:.2f} | {m['best_test_top1']:.2f} (epoch {m['best_epoch']}) "
          f"| {m['wall_seconds'] / 60:.1f} min |")
print()
print("| TFLite file | KB | top-1 (%) | drop vs Keras | top-1 agreement | max abs logit diff |")
print("|---|---|---|---|---|---|")
for q, f in export["files"].items():
    print(f"| {f['file']} | {f['size_kb']:.0f} | {f['top1']:.2f} | {f['top1_drop']:+.2f} "
          f"| {100 * f['top1_agreement']:.1f} % | {f['max_abs_diff']:.1e} |")
print(f"\nKeras student top-1 on the {export['num_test']} test images: {export['keras_top1']:.2f} %")
PY
