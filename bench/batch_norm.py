"""FusedBatchNorm against Keras' BatchNormalization in the backbones: training steps side by side.

    KERAS_BACKEND=tensorflow python bench/batch_norm.py [--pair=resnet20:resnet56] [--steps=kd,ce1,ce2]
        [--batch_size=64] [--rounds=4] [--steps_per_round=3] [--warmup=2] [--jit_compile] [--json=out.json]

For each step of bench/train_step.py (same models, data, optimiser and timing), builds the
networks twice in one process, once with `keras_icckd.backbones.FusedBatchNorm` (the default of
the backbones) and once with `keras.layers.BatchNormalization`, warms both up, and times all of
them in interleaved rounds (bench/timing.py). Prints images/s and the speed-up of the fused layer.
TensorFlow backend only: on JAX the two layers are the same code. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import timing  # noqa: E402
import train_step  # noqa: E402
from keras_icckd.backbones import base  # noqa: E402

LAYERS = {"fused": base.FusedBatchNorm, "keras": keras.layers.BatchNormalization}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="resnet20:resnet56", help="student:teacher")
    parser.add_argument("--steps", default="kd,ce1,ce2")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps_per_round", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jit_compile", action="store_true", help="TensorFlow with XLA")
    parser.add_argument("--json")
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("bench/batch_norm.py compares TensorFlow kernels: run it with "
                         f"KERAS_BACKEND=tensorflow (got {keras.backend.backend()!r})")
    student, teacher = args.pair.split(":")
    allowed = (*train_step.TEACHER_STEPS, *train_step.OBJECTIVES)
    steps = train_step.parse_list(args.steps, allowed, what="step")
    mode = "tf_xla" if args.jit_compile else "tf"
    runners, rows = [], []
    for step in steps:
        case = {"step": step, "student": None if step in train_step.TEACHER_STEPS else student,
                "teacher": teacher, "batch": args.batch_size}
        for name, layer in LAYERS.items():
            base.FusedBatchNorm = layer  # what base.batch_norm builds
            try:
                runner, row = train_step.keras_runner(case, mode, args.warmup, "float32")
            finally:
                base.FusedBatchNorm = LAYERS["fused"]
            runners.append(runner)
            rows.append(dict(row, batch_norm=name))
    for row, times in zip(rows, timing.round_robin(runners, args.rounds, args.steps_per_round)):
        row.update(timing.summary(times, row["batch"]))
    print(f"{mode}, batch {args.batch_size}, {args.rounds} rounds x {args.steps_per_round} steps")
    lines = [["step", "network(s)", "FusedBatchNorm img/s", "keras BatchNormalization img/s", "speed-up"]]
    for fused, plain in zip(rows[::2], rows[1::2]):
        nets = f"{fused['student']} <- {fused['teacher']}" if fused["student"] else fused["teacher"]
        lines.append([fused["step"], nets, f"{fused['images_per_s']:.1f}", f"{plain['images_per_s']:.1f}",
                      f"{fused['images_per_s'] / plain['images_per_s']:.2f}x"])
    print(train_step.markdown(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                       "warmup": args.warmup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
