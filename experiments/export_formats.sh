#!/usr/bin/env bash
# The quickstart's student in every export format (experiments/results/export.md, "Every format"):
# the plain .keras file (built-in Keras layers only), a SavedModel, ONNX and LiteRT float32 / float16 /
# int8, once with normalised input and once with uint8 pixels (the normalisation folded into each file),
# each file run in its own runtime on the bundled test images and compared with the Keras model.
# Runs the quickstart first when its student is missing. Prints a Markdown table.
#
#   bash experiments/export_formats.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
student=runs/quickstart/student/model.keras
out="${OUT:-runs/export_formats}"
[[ -f "$student" ]] || bash experiments/quickstart.sh
for input in normalized uint8; do
  .venv/bin/python experiments/run.py --mode=export --model="$student" --export_input="$input" \
    --export_formats=keras,saved_model,onnx,litert --output_dir="$out/$input"
done
.venv/bin/python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| input | file | runtime | input tensor | top-1 (%) | max abs logit diff | top-1 agreement (%) | KB | ms/image |")
print("|---|---|---|---|---|---|---|---|---|")
runtimes = {"keras": "bare Keras (subprocess, keras_icckd not importable)", "saved_model": "tf.saved_model.load",
            "onnx": "onnxruntime", "litert": "LiteRT interpreter"}
for input_format in ("normalized", "uint8"):
    report = json.load(open(os.path.join(out, input_format, "export.json")))
    for name in ("keras", "saved_model", "onnx", "float32", "float16", "int8"):
        f = report["files"][name]
        tensor = f["input"]["dtype"] + (f" (scale {f['input_quantization'][0]:g}, zero {f['input_quantization'][1]:g})"
                                        if f.get("input_quantization", [0])[0] else "")
        print(f"| {input_format} | {f['file']} | {runtimes[f['format']]} | {tensor} | {f['top1']:.2f} | "
              f"{f['max_abs_diff']:.1e} | {100 * f['top1_agreement']:.1f} | {f['size_kb']:.0f} | {f['latency_ms']:.2f} |")
    print(f"<!-- {input_format}: Keras top-1 {report['keras_top1']:.2f} % on {report['num_test']} test images -->")
PY
