"""Is the input pipeline fast enough? Two-view training pipeline vs. a resnet8x4 training step;
and the streaming pipeline's images/s and resident memory over epochs.

    python bench/input_pipeline.py [--data_dir=PATH] [--batch_size=64] [--json=out.json]
    python bench/input_pipeline.py --stream [--stream_dir=PATH] [--stream_images=4000] [--image_size=224]
        [--epochs=2] [--json=out.json]

In-memory mode: measures the steady-state samples/s of `make_train_dataset(views=2)` (each sample
carries two augmented views) on the bundled CIFAR-10 subset (or --data_dir, an image folder or
archive), and the images/s of a plain cross-entropy training step (`train_on_batch`) of resnet8x4
on the current Keras backend, then prints both and their ratio; the pipeline should be at least 5x
faster.

--stream: times `ImageStream.train_dataset` (decode, RandomResizedCrop, flip, normalise, one view)
and `eval_dataset` (resize + centre crop) over whole epochs of an ImageNet-style folder of
variable-size JPEGs (--stream_dir, or one generated in a temporary folder: --stream_images JPEGs
in 20 classes, sides 200-500 pixels, quality 90), and samples this process's resident memory
(RSS, /proc/self/statm) after every batch. Memory is flat when the RSS of the last epoch ends
within --rss_tolerance_mb of where the first epoch ended (the first batches build the pipeline).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
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


def rss_mb():
    """Resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def make_jpeg_folder(root, count, classes=20, seed=0):
    """An ImageNet-style train/<class>/, val/<class>/ folder of variable-size JPEGs (one round of classes in 10 is val)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        split = "val" if (i // classes) % 10 == 0 else "train"
        folder = os.path.join(root, split, f"class_{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        height, width = (int(v) for v in rng.integers(200, 501, 2))
        texture = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
        image = Image.fromarray(texture).resize((width, height), Image.Resampling.BILINEAR)
        image.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return root


def stream_rates(stream, batch_size, epochs):
    """Per-epoch images/s (from each epoch's second batch on) and the RSS after every batch of `epochs` training
    epochs, then the evaluation images/s (from the second batch on)."""
    steps = data.steps_per_epoch(stream.num_train, batch_size)
    iterator = stream.train_dataset(batch_size, seed=0, epochs=epochs).as_numpy_iterator()
    rows, rss = [], []
    for epoch in range(epochs):
        start = None
        for step in range(steps):
            next(iterator)
            rss.append(round(rss_mb(), 1))
            if step == 0:  # the first batch of the run builds the pipeline: epochs are timed from batch 2
                start = time.perf_counter()
        rows.append(round((steps - 1) * batch_size / (time.perf_counter() - start), 1))
    evaluation = stream.eval_dataset(batch_size).as_numpy_iterator()
    next(evaluation)  # builds the pipeline: not timed
    start, count = time.perf_counter(), 0
    for images, _ in evaluation:
        count += len(images)
    return rows, rss, round(count / (time.perf_counter() - start), 1), steps


def stream_main(args):
    from keras_icckd.data import streaming

    root = args.stream_dir
    generated = root is None or not os.path.isdir(root)
    if generated:
        root = root or tempfile.mkdtemp(prefix="stream_bench_")
        start = time.perf_counter()
        make_jpeg_folder(root, args.stream_images)
        print(f"generated {args.stream_images} JPEGs in {root} ({time.perf_counter() - start:.0f} s)")
    try:
        stream = streaming.open_image_stream(root, image_size=args.image_size)
        train_rates, rss, eval_rate, steps = stream_rates(stream, args.batch_size, args.epochs)
    finally:
        if generated and args.stream_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    first_end, last_end = rss[steps - 1], rss[-1]
    drift = round(last_end - first_end, 1)
    last_epoch = rss[-steps:]
    result = {
        "train_images_per_s_by_epoch": train_rates,
        "eval_images_per_s": eval_rate,
        "rss_mb_end_of_each_epoch": [rss[(e + 1) * steps - 1] for e in range(args.epochs)],
        "rss_mb_last_epoch_min_max": [min(last_epoch), max(last_epoch)],
        "rss_mb_drift_first_to_last_epoch_end": drift,
        "rss_mb_every_batch": rss,
        "images": {"train": stream.num_train, "eval": stream.num_test, "classes": stream.num_classes},
        "image_size": args.image_size, "eval_resize": stream.resize_size, "batch_size": args.batch_size,
        "epochs": args.epochs, "views": 1,
        "data": "generated JPEGs, sides 200-500, quality 90" if generated else os.path.abspath(root),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "tensorflow_threads": "default (all cores)",
        "date": time.strftime("%Y-%m-%d"),
    }
    for key, value in result.items():
        if key != "rss_mb_every_batch":
            print(f"{key:<40}  {value}")
    flat = abs(drift) <= args.rss_tolerance_mb
    print("RSS FLAT" if flat else f"RSS GREW by {drift} MiB (more than {args.rss_tolerance_mb})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if flat else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=data.BUNDLED_CIFAR10, help="Image folder or archive.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--pipeline_batches", type=int, default=100, help="Timed pipeline batches.")
    parser.add_argument("--train_steps", type=int, default=10, help="Timed training steps (median).")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    parser.add_argument("--stream", action="store_true", help="Measure the streaming pipeline instead.")
    parser.add_argument("--stream_dir", default=None,
                        help="--stream: an ImageNet-style folder; generated there (and kept) if it does not exist.")
    parser.add_argument("--stream_images", type=int, default=4000, help="--stream: JPEGs to generate.")
    parser.add_argument("--image_size", type=int, default=224, help="--stream: crop size.")
    parser.add_argument("--epochs", type=int, default=2, help="--stream: timed training epochs.")
    parser.add_argument("--rss_tolerance_mb", type=float, default=50.0,
                        help="--stream: largest RSS change between the ends of the first and last epochs.")
    args = parser.parse_args()
    if args.stream:
        return stream_main(args)

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
