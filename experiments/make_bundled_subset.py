"""Builds the CIFAR-10 subset bundled with the package (keras_icckd/data/bundled/).

    python experiments/make_bundled_subset.py \
        --source=../shared/datasets/cifar10-jpeg.tar.gz --train_per_class=500 --test_per_class=100

Takes the first N images of every class folder in the canonical order (file names sort in
the order of the original CIFAR batches), copies their JPEG bytes unchanged, and writes
`cifar10-mini.tar.gz` laid out as cifar10-mini/<split>/<class>/<NNNN>.jpg.
"""

import collections
import io
import os
import tarfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "../shared/datasets/cifar10-jpeg.tar.gz", "The full CIFAR-10 JPEG archive.")
flags.DEFINE_integer("train_per_class", 500, "Training images kept per class.")
flags.DEFINE_integer("test_per_class", 100, "Test images kept per class.")
flags.DEFINE_string(
    "output",
    os.path.join(os.path.dirname(__file__), "..", "keras_icckd", "data", "bundled", "cifar10-mini.tar.gz"),
    "Where the subset archive goes.",
)


def main(argv):
    del argv
    keep = {"train": FLAGS.train_per_class, "test": FLAGS.test_per_class}
    members = collections.defaultdict(list)
    with tarfile.open(FLAGS.source, "r:*") as src:
        for member in src.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3] in keep:
                members[(parts[-3], parts[-2])].append(member)
        tmp = FLAGS.output + ".tmp"
        with tarfile.open(tmp, "w:gz") as dst:
            for (split, cls), items in sorted(members.items()):
                items.sort(key=lambda m: m.name.split("/")[-1])
                if len(items) < keep[split]:
                    raise ValueError(f"{split}/{cls} has {len(items)} images, fewer than {keep[split]}")
                for member in items[: keep[split]]:
                    data = src.extractfile(member).read()
                    info = tarfile.TarInfo(f"cifar10-mini/{split}/{cls}/{member.name.split('/')[-1]}")
                    info.size = len(data)
                    info.mtime = 0
                    dst.addfile(info, io.BytesIO(data))
    os.replace(tmp, FLAGS.output)
    print(f"wrote {FLAGS.output} ({os.path.getsize(FLAGS.output) / 1e6:.1f} MB)")


if __name__ == "__main__":
    app.run(main)
