"""Per-image latency and size of the standard students: Keras vs TFLite float32 / float16 / int8.

    python bench/tflite_latency.py [--students=resnet8x4,wrn_16_2,...] [--runs=200] [--json=out.json]

For each student (CIFAR-100 head, 32x32 input, random weights: latency does not depend on
the values), measured side by side in one process on the current machine:
- Keras: the inference-mode logits of one image through a compiled function of the current
  backend (tf.function on TensorFlow, jax.jit on JAX), median of --runs calls;
- TFLite float32 / float16 / int8 (float I/O, calibrated on 32 random images): one image per
  `invoke()` in the LiteRT interpreter with its default CPU delegate, median of --runs calls;
and the file sizes (.keras and .tflite). Prints a table and optionally writes JSON.
Threads: whatever the runtimes pick by default on this machine (noted in the output).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_icckd import backbones, export  # noqa: E402

STUDENTS = ("resnet8x4", "wrn_16_2", "resnet20", "vgg8", "shufflenetv2", "mobilenetv2")


def keras_latency_ms(model, image, runs):
    if keras.backend.backend() == "jax":
        import jax

        state = (model.trainable_variables, model.non_trainable_variables)
        logits = jax.jit(lambda s, x: model.stateless_call(s[0], s[1], x, training=False)[0]["logits"])

        def call():
            return logits(state, image).block_until_ready()
    else:
        import tensorflow as tf

        logits = tf.function(lambda x: model(x, training=False)["logits"])

        def call():
            return logits(image).numpy()
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def measure(name, runs, workdir):
    keras.utils.set_random_seed(0)
    model = backbones.get(name, num_classes=100)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    keras_path = os.path.join(workdir, f"{name}.keras")
    model.save(keras_path)
    row = {"student": name, "params": int(model.count_params()),
           "keras_kb": os.path.getsize(keras_path) / 1024.0,
           "keras_ms": keras_latency_ms(model, images[:1], runs)}
    report = export.export_tflite(model, os.path.join(workdir, name), test_images=images[:8],
                                  representative_images=images, latency_runs=runs)
    for quantization, entry in report["files"].items():
        row[f"{quantization}_kb"] = entry["size_kb"]
        row[f"{quantization}_ms"] = entry["latency_ms"]
        row[f"{quantization}_max_abs_diff"] = entry["max_abs_diff"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = [s for s in args.students.split(",") if s]
    unknown = [s for s in names if s not in backbones.names()]
    if unknown or not names or args.runs < 1:
        parser.error(f"--students must name backbones ({', '.join(backbones.names())}); --runs >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            rows.append(measure(name, args.runs, workdir))
            print(f"measured {name}", file=sys.stderr, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads visible"
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, {machine}; batch 1, "
          f"median of {args.runs} runs; ms per image, size in KB")
    print("| student | params | Keras ms | TFLite fp32 ms | fp16 ms | int8 ms | int8 speed-up vs Keras "
          "| .keras KB | fp32 KB | fp16 KB | int8 KB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['student']} | {r['params'] / 1e6:.2f}M | {r['keras_ms']:.2f} | {r['float32_ms']:.2f} | "
              f"{r['float16_ms']:.2f} | {r['int8_ms']:.2f} | {r['keras_ms'] / r['int8_ms']:.1f}x | "
              f"{r['keras_kb']:.0f} | {r['float32_kb']:.0f} | {r['float16_kb']:.0f} | {r['int8_kb']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": keras.backend.backend(), "machine": machine, "runs": args.runs,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
