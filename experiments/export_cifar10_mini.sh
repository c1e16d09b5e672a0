#!/usr/bin/env bash
# TFLite export of the reduced-protocol resnet8 students (experiments/reduced_protocol.sh and
# experiments/distill_objectives_mini.sh, seed 0), each verified on the full CIFAR-10 test set
# (10,000 real images); int8 calibrated on 256 training images. Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
students="${STUDENTS:-runs/distill_cifar10_mini}"
out="${OUT:-runs/export_cifar10_mini}"
data="${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}"
names=(kd_from_lambda0_delta0.5_seed0 kd_from_lambda0.05_delta0.5_seed0 icc_rkd_seed0 dkd_seed0 rkd_seed0
       dcd_seed0)
for name in "${names[@]}"; do
  .venv/bin/python experiments/run.py --mode=export --model="$students/$name/model.keras" \
    --dataset=folder --data_dir="$data" --representative_examples=256 --output_dir="$out/$name"
done
.venv/bin/python - "$out" "${names[@]}" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
print("| student | Keras top-1 | TFLite fp32 top-1 (max abs logit diff) | fp16 top-1 | int8 top-1 (drop, agreement) "
      "| KB fp32 / fp16 / int8 | ms/image fp32 / fp16 / int8 |")
print("|---|---|---|---|---|---|---|")
for name in names:
    r = json.load(open(os.path.join(out, name, "export.json")))
    f = r["files"]
    print(f"| {name} | {r['keras_top1']:.2f} | {f['float32']['top1']:.2f} ({f['float32']['max_abs_diff']:.1e}) "
          f"| {f['float16']['top1']:.2f} | {f['int8']['top1']:.2f} ({f['int8']['top1_drop']:+.2f}, "
          f"{100 * f['int8']['top1_agreement']:.1f} %) "
          f"| {f['float32']['size_kb']:.0f} / {f['float16']['size_kb']:.0f} / {f['int8']['size_kb']:.0f} "
          f"| {f['float32']['latency_ms']:.2f} / {f['float16']['latency_ms']:.2f} / {f['int8']['latency_ms']:.2f} |")
PY
