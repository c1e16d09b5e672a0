"""Is the input pipeline fast enough? Two-view training pipeline vs. a resnet8x4 training step.

    python bench/input_pipeline.py [--data_dir=PATH] [--batch_size=64] [--json=out.json]

Measures the steady-state samples/s of `make_train_dataset(views=2)` (each sample carries two
augmented views) on the bundled CIFAR-10 subset (or --data_dir, an image folder or archive), and
the images/s of a plain cross-entropy training step (`train_on_batch`) of resnet8x4 on the current
Keras backend, then prints both and their ratio; the pipeline should be at least 5x faster.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402

from keras_icckd import backbones, data  # noqa: E402

MIN_RATIO = 5.0


def pipeline_rate(splits, batch_size, batches, warmup):
    mean, std = data.normalization_for(splits)
    n = len(splits.train_images)
    epochs = -(-(batches + warmup) // data.steps_per_epoch(n, batch_size)) + 1
    ds = data.make_train_dataset(splits.train_images, splits.train_labels, batch_size, seed=0, mean=mean, std=std,
                                 views=2, epochs=epochs)
    iterator = ds.as_numpy_iterator()
    for _ in range(warmup):
        first = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start), first


def train_step_rate(batch, num_classes, steps, warmup):
    (x, y) = batch[0]["image"], batch[1]
    backbone = backbones.get("resnet8x4", num_classes=num_classes, input_shape=x.shape[1:])
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, backbone(inputs)["logits"])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=data.BUNDLED_CIFAR10, help="Image folder or archive.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--pipeline_batches", type=int, default=100, help="Timed pipeline batches.")
    parser.add_argument("--train_steps", type=int, default=10, help="Timed training steps (median).")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args()

    splits = data.load("folder", data_dir=args.data_dir)
    pipeline, batch = pipeline_rate(splits, args.batch_size, args.pipeline_batches, warmup=10)
    step = train_step_rate(batch, splits.num_classes, args.train_steps, warmup=3)
    result = {
        "pipeline_samples_per_s (2 views)": round(pipeline, 1),
        "resnet8x4_train_images_per_s": round(step, 1),
        "ratio": round(pipeline / step, 1),
        "batch_size": args.batch_size,
        "backend": keras.backend.backend(),
        "data": os.path.basename(args.data_dir),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print("OK" if result["ratio"] >= MIN_RATIO else f"TOO SLOW: pipeline is under {MIN_RATIO}x the training step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["ratio"] >= MIN_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
