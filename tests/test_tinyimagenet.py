"""Tiny-ImageNet, --image_size, --stream through run.py, and data problems ended in one line."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT
from keras_icckd import data
from keras_icckd.data import locations
from keras_icckd.data import sources

sys.path.insert(0, os.path.join(REPO_ROOT, "experiments"))
import normalization_constants  # noqa: E402

WNIDS = ("n02085620", "n01443537", "n01629819")  # sorted: n01443537 n01629819 n02085620
RUN = os.path.join(REPO_ROOT, "experiments", "run.py")


def jpeg(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def tiny_imagenet_archive(path, per_class=(4, 2), seed=0):
    """A Tiny-ImageNet-style archive (the layout of the shared one): 64x64 JPEGs, the first of each class
    greyscale. Returns (path, {split: {wnid: [encoded JPEG]}})."""
    rng = np.random.default_rng(seed)
    files = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(f"tinyimagenet200-jpeg/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        add("wnids.txt", "\n".join(WNIDS).encode())
        add("words.txt", "\n".join(f"{w}\tthing {i}" for i, w in enumerate(WNIDS)).encode())
        for split, count in zip(("train", "test"), per_class):
            for wnid in WNIDS:
                for i in range(count):
                    shape = (64, 64) if i == 0 else (64, 64, 3)
                    payload = jpeg(rng.integers(0, 256, shape, np.uint8))
                    files.setdefault(split, {}).setdefault(wnid, []).append(payload)
                    add(f"{split}/{wnid}/{i:04d}.jpg", payload)
    return path, files


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return tiny_imagenet_archive(str(tmp_path_factory.mktemp("tiny") / "tinyimagenet200-jpeg.tar.gz"))


def test_tinyimagenet_loads_with_rgb_images_and_its_constants(archive, tmp_path):
    path, files = archive
    splits = data.load("tinyimagenet", path, cache_dir=str(tmp_path))
    assert splits.name == "tinyimagenet" and splits.class_names == sorted(WNIDS)
    assert splits.train_images.shape == (12, 64, 64, 3) and splits.test_images.shape == (6, 64, 64, 3)
    assert splits.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for label, wnid in enumerate(sorted(WNIDS)):
        grey = np.asarray(Image.open(io.BytesIO(files["train"][wnid][0])))
        assert grey.ndim == 2  # stored greyscale, loaded as RGB with three equal channels
        np.testing.assert_array_equal(splits.train_images[4 * label], np.stack([grey] * 3, -1))
        colour = np.asarray(Image.open(io.BytesIO(files["train"][wnid][1])))
        np.testing.assert_array_equal(splits.train_images[4 * label + 1], colour)
    assert data.normalization_for(splits) == (sources.TINYIMAGENET_MEAN, sources.TINYIMAGENET_STD)
    assert data.load("tinyimagenet", path, cache_dir=str(tmp_path)).train_images.sum() == splits.train_images.sum()


def test_default_location_and_missing_archive(monkeypatch, tmp_path):
    monkeypatch.delenv(locations.DATA_ENV, raising=False)
    path = sources.default_tinyimagenet_path()
    assert os.path.isabs(path) and path.endswith(os.path.join("shared", "datasets", "tinyimagenet200-jpeg.tar.gz"))
    assert data.default_data_dir("tinyimagenet") == path
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path))
    monkeypatch.setattr(locations, "checkout_root", lambda: None)
    with pytest.raises(data.DataError, match=r"Tiny-ImageNet not found at .*tinyimagenet200-jpeg\.tar\.gz: pass data_dir"):
        data.load("tinyimagenet")
    os.makedirs(tmp_path / "tinyimagenet200-jpeg")  # only the extracted folder: that is the default then
    assert sources.default_tinyimagenet_path() == str(tmp_path / "tinyimagenet200-jpeg")


def pil_bilinear_half(image):
    """PIL's antialiased bilinear 2x reduction in NumPy: taps (1, 3, 3, 1) / 8, renormalised at the borders."""
    def along(x, axis):
        x = np.moveaxis(x, axis, 0)
        out = []
        for i in range(x.shape[0] // 2):
            taps = [(j, w) for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)) if 0 <= j < x.shape[0]]
            out.append(sum(w * x[j] for j, w in taps) / sum(w for _, w in taps))
        return np.moveaxis(np.stack(out), 0, axis)

    return along(along(image.astype(np.float64), 0), 1)


def test_resized_is_antialiased_bilinear():
    splits = data.make_synthetic(num_classes=2, train_per_class=3, test_per_class=1, image_shape=(8, 8, 3), seed=1)
    splits.train_images[0] = np.random.default_rng(0).integers(0, 256, (8, 8, 3))
    small = splits.resized(4)
    assert small.train_images.shape == (6, 4, 4, 3) and small.test_images.shape == (2, 4, 4, 3)
    assert small.train_images.dtype == np.uint8 and small.train_labels is splits.train_labels
    for image, reference in zip(small.train_images, splits.train_images):
        np.testing.assert_allclose(image, pil_bilinear_half(reference), atol=1.0)
    assert splits.resized(8).train_images is splits.train_images
    with pytest.raises(data.DataError, match="image_size must be a positive integer"):
        splits.resized(0)


def test_channel_statistics_of_the_normalisation_command():
    images = np.random.default_rng(0).integers(0, 256, (10, 5, 4, 3), np.uint8)
    mean, std = normalization_constants.channel_statistics(images, chunk=3)
    scaled = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(0), rtol=1e-9)


# ----------------------------------------------------------------------------- run.py

SMALL = ["--arch=resnet8", "--epochs=1", "--batch_size=4", "--eval_batch_size=4", "--lr_decay_epochs=1",
         "--icc_cache_size=8", "--diagnostic_examples=6", "--notensorboard"]


def run(args):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=600)


def problem_lines(stderr):
    """stderr without absl's log lines (I/W/E + date), the line that TensorFlow's C++ logging prints
    before its first one (e.g. "oneDNN custom operations are on" on CPUs with AVX512-VNNI) and Python
    warnings."""
    return [line for line in stderr.splitlines()
            if line.strip() and not (line[:1] in "IWE" and line[1:5].isdigit()) and "Warning" not in line
            and not line.startswith("WARNING: All log messages before absl::InitializeLog()")]


def test_tinyimagenet_run_at_another_image_size(archive, tmp_path):
    out = str(tmp_path / "teacher")
    result = run([*SMALL, "--dataset=tinyimagenet", f"--data_dir={archive[0]}", "--image_size=16",
                  "--icc_lambda=0", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["dataset"] == "tinyimagenet" and metrics["num_classes"] == 3 and metrics["num_train"] == 12
    assert metrics["normalization"] == {"mean": list(sources.TINYIMAGENET_MEAN), "std": list(sources.TINYIMAGENET_STD)}
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert tuple(model.backbone.input.shape[1:]) == (16, 16, 3)


def write_folder(root, sizes, eval_split="val"):
    rng = np.random.default_rng(0)
    for split in ("train", eval_split):
        for cls in ("a", "b"):
            for i, (h, w) in enumerate(sizes):
                os.makedirs(os.path.join(root, split, cls), exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(os.path.join(root, split, cls, f"{i}.png"))
    return root


def test_streamed_icc_teacher_run(tmp_path):
    folder = write_folder(str(tmp_path / "imagenet"), [(20, 30), (40, 24), (18, 18), (50, 33)])
    out = str(tmp_path / "run")
    result = run([*SMALL, "--dataset=folder", "--stream", f"--data_dir={folder}", "--image_size=16",
                  f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["views"] == 2 and metrics["num_train"] == 8 and metrics["num_test"] == 8
    assert metrics["normalization"]["mean"] == [0.485, 0.456, 0.406] and np.isfinite(metrics["history"][0]["intra"])


@pytest.mark.parametrize("case", ["sizes_differ", "not_an_image", "no_test_split"])
def test_a_data_problem_ends_the_run_in_one_line(tmp_path, case):
    folder = str(tmp_path / "data")
    if case == "sizes_differ":  # in memory: a class folder whose images differ in size
        write_folder(folder, [(8, 8), (8, 9)], eval_split="test")
        args, expected = [], r"Image (train|test)/a/1\.png in .* has shape \(8, 9, 3\), expected \(8, 8, 3\)"
    elif case == "not_an_image":  # streamed: the file is found when the pipeline reaches it
        write_folder(folder, [(20, 20)] * 4)
        with open(os.path.join(folder, "train", "b", "2.png"), "wb") as f:
            f.write(b"<html>moved</html>")
        args = ["--stream", "--image_size=16", "--diagnostic_examples=0"]
        expected = r"an image could not be read: .*not a JPEG, PNG, GIF or BMP image.*train/b/2\.png"
    else:  # in memory: an ImageNet-style val/ folder instead of test/
        write_folder(folder, [(8, 8)])
        args, expected = [], "has no 'test' split"
    result = run([*SMALL, "--dataset=folder", f"--data_dir={folder}", *args, f"--output_dir={tmp_path / 'run'}"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"data error: --data_dir={folder}: "), lines
    assert re.search(expected, lines[0]), lines[0]
