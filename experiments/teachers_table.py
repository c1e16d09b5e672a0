"""Measures the published PyTorch teachers against their imports: experiments/results/teachers.md.

    python experiments/teachers_table.py [--teachers=../shared/teachers] \
        [--data=../shared/datasets/cifar10-jpeg.tar.gz] [--output=experiments/results/teachers.md]

For every known checkpoint in --teachers: the PyTorch network (tests/torch_cifar.py, loaded with
load_state_dict(strict=True)) is run on the test images of --data (the JPEG CIFAR-10 copy, decoded
once by the project's image-folder loader, so both frameworks see the same pixels), then the
checkpoint is imported with `run.py --mode=import` under KERAS_BACKEND=tensorflow and =jax and
the imported model.keras is run on the same pixels in a child process of each backend. The table
gives the published accuracy, the PyTorch and the Keras top-1 and the largest |logit difference|
over all test images and classes. The CIFAR-100 checkpoint has no CIFAR-100 test set here: its
parity is measured on the CIFAR-10 test images (its top-1 is not meaningful and not reported).

Needs torch (requirements-test.txt). The work files go to --work_dir (default runs/teachers).
"""

import datetime
import json
import os
import platform
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

FLAGS = flags.FLAGS
flags.DEFINE_string("teachers", "../shared/teachers", "Folder of the published checkpoints.")
flags.DEFINE_string("data", "../shared/datasets/cifar10-jpeg.tar.gz", "The JPEG CIFAR-10 image-folder archive.")
flags.DEFINE_string("output", "experiments/results/teachers.md", "The Markdown table to write.")
flags.DEFINE_string("work_dir", "runs/teachers", "Imports and logits of the measurement.")
flags.DEFINE_integer("max_test_examples", 0, "A class-balanced subset of the test images (0: all 10,000).")
flags.DEFINE_string("worker_model", None, "Internal: the child process runs this model.keras ...")
flags.DEFINE_string("worker_out", None, "Internal: ... and writes its logits here (.npy).")

BACKENDS = ("tensorflow", "jax")
# file -> what is known of it: PyTorch network, normalisation, published accuracy (teachers/README.md).
KNOWN = {
    "resnet20-12fca82f.th": dict(depth=20, shortcut="option_a", head="linear", classes=10, normalization="imagenet",
                                 published="91.73 (test error 8.27 %)", source="akamaster/pytorch_resnet_cifar10"),
    "resnet32-d509ac18.th": dict(depth=32, shortcut="option_a", head="linear", classes=10, normalization="imagenet",
                                 published="92.63 (test error 7.37 %)", source="akamaster/pytorch_resnet_cifar10"),
    "resnet56-4bfd9763.th": dict(depth=56, shortcut="option_a", head="linear", classes=10, normalization="imagenet",
                                 published="93.39 (test error 6.61 %)", source="akamaster/pytorch_resnet_cifar10"),
    "cifar100_resnet56-f2eff4c8.pt": dict(depth=56, shortcut="projection", head="fc", classes=100,
                                          normalization="0.5070,0.4865,0.4409,0.2673,0.2564,0.2761",
                                          published="72.63 (CIFAR-100)", source="chenyaofo/pytorch-cifar-models"),
}


def load_test_set():
    from keras_icckd import data

    splits = data.load("folder", FLAGS.data)
    if FLAGS.max_test_examples:
        splits = splits.subset(max_test=FLAGS.max_test_examples, seed=0)
    return splits


def pixels(images):
    return images.astype("float32") / 255.0


def worker():
    """Child process: the imported model's logits on the test pixels, normalised as it records."""
    from keras_icckd import evaluation, export

    model = export.load_student(FLAGS.worker_model)
    feed = model.input_normalization["feed"]
    images = (pixels(load_test_set().test_images) - np.float32(feed["mean"])) / np.float32(feed["std"])
    logits, _ = evaluation.predict(model, images, embedding=False)
    np.save(FLAGS.worker_out, logits)


def torch_logits(path, spec, images):
    """The PyTorch network's logits, loaded strictly from the checkpoint (its own pickle reading)."""
    import torch
    import torch_cifar
    from keras_icckd.data import sources

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    net = torch_cifar.CifarResNet(spec["depth"], num_classes=spec["classes"], shortcut=spec["shortcut"],
                                  head=spec["head"])
    net.load_state_dict(state, strict=True)
    net.eval()
    norm = sources.parse_normalization(spec["normalization"])
    x = (pixels(images) - np.float32(norm["mean"])) / np.float32(norm["std"])
    torch.set_num_threads(2)
    with torch.no_grad():
        out = [net(torch.from_numpy(x[i:i + 500].transpose(0, 3, 1, 2).copy())).numpy()
               for i in range(0, len(x), 500)]
    stored = checkpoint.get("best_prec1") if isinstance(checkpoint, dict) else None
    return np.concatenate(out), stored


def run_command(name, spec):
    """The run.py import command of one checkpoint (with the test set for the CIFAR-10 files)."""
    command = ["python", "experiments/run.py", "--mode=import",
               f"--torch_checkpoint={os.path.join(FLAGS.teachers, name)}",
               f"--torch_normalization={spec['normalization']}"]
    if spec["classes"] == 10:
        command += ["--dataset=folder", f"--data_dir={FLAGS.data}"]
        if FLAGS.max_test_examples:
            command.append(f"--max_test_examples={FLAGS.max_test_examples}")
    return command


def keras_side(name, spec, backend):
    """(metrics.json of the run.py import, logits of the imported model) under one backend."""
    out = os.path.join(FLAGS.work_dir, name.split(".")[0], backend)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.join(ROOT, "experiments", "run.py")] + run_command(name, spec)[2:]
    subprocess.run(command + [f"--output_dir={out}"], check=True, env=env)
    logits_path = os.path.join(out, "logits.npy")
    subprocess.run([sys.executable, os.path.abspath(__file__), f"--data={FLAGS.data}",
                    f"--max_test_examples={FLAGS.max_test_examples}",
                    f"--worker_model={os.path.join(out, 'model.keras')}", f"--worker_out={logits_path}"],
                   check=True, env=env)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f), np.load(logits_path)


def measure():
    import keras
    import torch

    splits = load_test_set()
    labels = splits.test_labels
    rows = []
    for name, spec in KNOWN.items():
        path = os.path.join(FLAGS.teachers, name)
        if not os.path.isfile(path):
            print(f"skipping {name}: not in {FLAGS.teachers}")
            continue
        reference, stored = torch_logits(path, spec, splits.test_images)
        row = dict(file=name, source=spec["source"], published=spec["published"], stored=stored,
                   command=" ".join(run_command(name, spec) + [f"--output_dir={FLAGS.work_dir}/{name.split('.')[0]}"]),
                   classes=spec["classes"])
        if spec["classes"] == 10:
            row["torch_top1"] = 100.0 * float(np.mean(np.argmax(reference, 1) == labels))
        for backend in BACKENDS:
            metrics, logits = keras_side(name, spec, backend)
            row["arch"] = metrics["arch"]
            row[f"{backend}_max_diff"] = float(np.abs(logits - reference).max())
            row[f"{backend}_agreement"] = 100.0 * float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))
            if spec["classes"] == 10:
                top1 = 100.0 * float(np.mean(np.argmax(logits, 1) == labels))
                if abs(top1 - metrics["test_top1"]) > 1e-9:
                    raise SystemExit(f"{name} ({backend}): run.py reported {metrics['test_top1']} but the model "
                                     f"file gives {top1}")
                row[f"{backend}_top1"] = metrics["test_top1"]
        rows.append(row)
        print(json.dumps(row))
    return rows, dict(num_test=len(labels), torch=torch.__version__, keras=keras.__version__)


def write_table(rows, info):
    def fmt(row, key):
        return f"{row[key]:.2f}" if key in row else "n/a"

    date = datetime.date.today().isoformat()
    lines = [
        "# Published PyTorch teachers, imported",
        "",
        "Every published checkpoint in `../shared/teachers` (provenance and licences: its README), imported",
        "with `python experiments/run.py --mode=import` and compared with the PyTorch network on the same",
        f"decoded pixels: the {info['num_test']:,} JPEG test images of `{FLAGS.data}` (quality about 75),",
        "decoded once by the project's image-folder loader (PIL). Each framework normalises those pixels",
        "its own way: PyTorch with the checkpoint's normalisation, Keras with the project's (CIFAR-10",
        "constants for 10 classes, CIFAR-100 constants for 100), mapped to the checkpoint's by the",
        "imported model's first layer.",
        "",
        "**Command** (the whole table; runs the import command of each row under both backends):",
        "",
        "    python experiments/teachers_table.py" + "".join(
            f" --{k}={getattr(FLAGS, k)}" for k in ("teachers", "data", "max_test_examples")
            if getattr(FLAGS, k) != FLAGS[k].default),
        "",
        f"**Measured** {date} on {platform.machine()} CPU (2 cores, shared with other jobs: no timings are "
        f"reported), torch {info['torch']} (CPU), Keras {info['keras']} on TensorFlow and on JAX, float32, "
        "inference mode. No randomness is involved.",
        "",
        "| file | imported as | published top-1 % | PyTorch top-1 % (JPEG) | Keras top-1 % TF | Keras top-1 % JAX "
        "| max abs logit diff TF | max abs logit diff JAX | top-1 agreement TF / JAX % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        published = row["published"] + (f"; stored best_prec1 {row['stored']:.2f}" if row["stored"] else "")
        lines.append(
            f"| {row['file']} | {row['arch']} | {published} | {fmt(row, 'torch_top1')} | "
            f"{fmt(row, 'tensorflow_top1')} | {fmt(row, 'jax_top1')} | {row['tensorflow_max_diff']:.2e} | "
            f"{row['jax_max_diff']:.2e} | {row['tensorflow_agreement']:.2f} / {row['jax_agreement']:.2f} |")
    lines += ["", "Import commands (each also writes metrics.json with the test top-1 for the CIFAR-10 files):", ""]
    lines += [f"    {row['command']}" for row in rows]
    agreement = min(row[f"{b}_agreement"] for row in rows for b in BACKENDS)
    worst = max(row[f"{b}_max_diff"] for row in rows for b in BACKENDS)
    gaps = [float(row["published"].split()[0]) - row["torch_top1"] for row in rows if "torch_top1" in row] or [0.0]
    lines += [
        "",
        "Reading the table:",
        "",
        f"- On both backends every imported model predicts the PyTorch model's class on at least {agreement:.2f} %",
        f"  of the images, and no logit differs from PyTorch's by more than {worst:.1e}.",
        "- The CIFAR-10 networks were trained on lossless CIFAR-10; on this JPEG copy they score "
        f"{min(gaps):.1f} to {max(gaps):.1f}",
        "  points below their published accuracy, in PyTorch as in Keras: the number the import must match",
        "  is the PyTorch model's on the same pixels.",
        "- cifar100_resnet56: CIFAR-100 is not available here, so its parity is measured on the CIFAR-10",
        "  test images (fed with the CIFAR-100 constants, as the project feeds 100-class data); its top-1",
        "  there would be meaningless and is not reported.",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(FLAGS.work_dir, "teachers.json"), "w") as f:
        json.dump({"rows": rows, **info}, f, indent=2)
    print(f"table: {os.path.abspath(FLAGS.output)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker_model:
        worker()
        return
    for flag in ("teachers", "data"):
        if not os.path.exists(getattr(FLAGS, flag)):
            raise app.UsageError(f"--{flag}={getattr(FLAGS, flag)!r} does not exist")
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    rows, info = measure()
    if not rows:
        raise app.UsageError(f"--teachers={FLAGS.teachers!r} holds none of {', '.join(KNOWN)}")
    write_table(rows, info)


if __name__ == "__main__":
    app.run(main)
