"""The streaming source: folders and tar archives of variable-size images, TFDS, the torchvision transforms."""

import doctest
import io
import math
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from keras_icckd.data import DataError, pipeline, streaming

CLASSES = ("dog", "ant", "cat")  # sorted: ant cat dog
SIZE, RESIZE = 16, 20
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def encode(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def image_files(seed=0, per_class=(5, 2)):
    """{relative path: bytes}: variable-size JPEGs (one greyscale per class) and a PNG per class."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in zip(("train", "val"), per_class):
        for cls in CLASSES:
            for i in range(count):
                height, width = (int(v) for v in rng.integers(18, 48, 2))
                shape = (height, width) if i == 0 else (height, width, 3)
                fmt = "PNG" if i == 1 else "JPEG"
                files[f"{split}/{cls}/{i:02d}.{fmt.lower()}"] = encode(rng.integers(0, 256, shape, np.uint8), fmt)
    return files


def write_tree(root, files):
    for name, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return root


def write_tar(path, files, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"imagenet/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    files = image_files()
    folder = write_tree(str(base / "imagenet"), files)
    archive = write_tar(str(base / "imagenet.tar"), files)
    return {"folder": folder, "tar": archive, "files": files, "cache": str(base / "cache")}


def open_stream(sources, kind="folder"):
    return streaming.open_image_stream(sources[kind], image_size=SIZE, resize_size=RESIZE, mean=MEAN, std=STD,
                                       cache_dir=sources["cache"])


def batches(ds):
    return list(ds.as_numpy_iterator())


def test_index_and_shapes(sources):
    stream = open_stream(sources)
    assert stream.class_names == ["ant", "cat", "dog"] and stream.num_train == 15 and stream.num_test == 6
    assert stream.train_labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and stream.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    out = batches(stream.train_dataset(4, seed=0, views=2, epochs=2, with_index=True, contrast_negatives=3))
    assert len(out) == 2 * 3  # 15 // 4 batches per epoch, the remainder dropped
    x, y = out[0]
    assert sorted(x) == ["contrast_index", "image", "index", "view2"]
    assert x["image"].shape == x["view2"].shape == (4, SIZE, SIZE, 3) and x["image"].dtype == np.float32
    assert x["contrast_index"].shape == (4, 3) and y.dtype == np.int32
    labels = stream.train_labels
    for x, y in out:
        np.testing.assert_array_equal(labels[x["index"]], y)
        assert (labels[x["contrast_index"]] != y[:, None]).all()  # CRD's negatives come from other classes
        assert not np.array_equal(x["image"], x["view2"])
    plain = batches(stream.train_dataset(4, seed=0))
    assert plain[0][0].shape == (4, SIZE, SIZE, 3)


def test_determinism_per_seed_and_epoch_and_resume(sources):
    stream = open_stream(sources)

    def run(seed, **kwargs):
        return batches(stream.train_dataset(5, seed=seed, views=2, epochs=3, with_index=True, **kwargs))

    a, b, other = run(1), run(1), run(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
    assert any(not np.array_equal(x["index"], o["index"]) for (x, _), (o, _) in zip(a, other))
    assert not np.array_equal(a[0][0]["image"], other[0][0]["image"])
    epochs = [np.concatenate([x["index"] for x, _ in a[3 * e:3 * e + 3]]) for e in range(3)]
    assert len({tuple(e) for e in epochs}) == 3 and all(len(set(e)) == 15 for e in epochs)  # reshuffled per epoch
    resumed = run(1, initial_epoch=1)
    assert len(resumed) == 6
    for (x, y), (xr, yr) in zip(a[3:], resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], xr[key])


def flat(batch):
    """{name: array} of one (x, y) batch, x an array or a dict of arrays."""
    x, y = batch
    return {"y": y, **({f"x/{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x})}


def assert_shards_join(whole, shards):
    """Batch by batch, the shards' batches concatenated (in process order) are the whole batch."""
    assert all(len(s) == len(whole) for s in shards)
    for i, batch in enumerate(whole):
        parts = [flat(s[i]) for s in shards]
        for name, value in flat(batch).items():
            np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), value, err_msg=f"{i} {name}")


def test_each_process_decodes_its_share_of_every_batch(sources):
    stream = open_stream(sources)
    kwargs = dict(seed=3, views=2, epochs=2, with_index=True, contrast_negatives=3)
    whole = batches(stream.train_dataset(6, **kwargs))
    shards = [batches(stream.train_dataset(6, shard=(i, 3), **kwargs)) for i in range(3)]
    assert len(whole) == 4 and shards[0][0][0]["image"].shape == (2, SIZE, SIZE, 3)
    assert_shards_join(whole, shards)
    resumed = batches(stream.train_dataset(6, shard=(1, 3), initial_epoch=1, **kwargs))
    assert_shards_join(shards[1][2:], [resumed])
    # evaluation: 6 images in batches of 4 and 2, each split in two
    whole = batches(stream.eval_dataset(4))
    shards = [batches(stream.eval_dataset(4, shard=(i, 2))) for i in range(2)]
    assert [len(y) for _, y in shards[1]] == [2, 1]
    assert_shards_join(whole, shards)
    with pytest.raises(DataError, match="do not split evenly"):
        stream.eval_dataset(4, shard=(0, 4))
    with pytest.raises(DataError, match="multiple of count"):
        stream.train_dataset(5, seed=0, shard=(0, 2))


def test_tar_archive_streams_like_the_folder(sources):
    folder, archive = open_stream(sources), open_stream(sources, "tar")
    assert archive.class_names == folder.class_names and archive.name == "imagenet"
    for (x, y), (xt, yt) in zip(batches(folder.train_dataset(5, seed=3, views=2, epochs=1)),
                                batches(archive.train_dataset(5, seed=3, views=2, epochs=1))):
        np.testing.assert_array_equal(x["image"], xt["image"])
        np.testing.assert_array_equal(y, yt)
    np.testing.assert_array_equal(folder.eval_arrays()[0], archive.eval_arrays()[0])
    assert any(name.startswith("tar-index-imagenet.tar-") for name in os.listdir(sources["cache"]))
    again = open_stream(sources, "tar")  # from the cached index
    np.testing.assert_array_equal(again.train_labels, archive.train_labels)


def decoded(data):
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), np.float32)


def test_evaluation_is_resize_then_centre_crop(sources, tmp_path):
    # An image whose shorter side already is RESIZE: no resampling, the crop is exact.
    rng = np.random.default_rng(5)
    exact = rng.integers(0, 256, (RESIZE, 31, 3), np.uint8)
    files = {f"{s}/c/0.png": encode(exact, "PNG") for s in ("train", "val")}
    files.update({f"{s}/d/0.png": encode(exact[:, ::-1], "PNG") for s in ("train", "val")})
    stream = streaming.open_image_stream(write_tree(str(tmp_path / "exact"), files), image_size=SIZE,
                                         resize_size=RESIZE, mean=MEAN, std=STD)
    images, labels = stream.eval_arrays()
    top, left = round((RESIZE - SIZE) / 2), round((31 - SIZE) / 2)  # 2, 8 (half to even: 7.5 -> 8)
    expected = (exact[top:top + SIZE, left:left + SIZE] / 255.0 - MEAN) / STD
    np.testing.assert_allclose(images[0], expected, atol=1e-5)
    # Variable sizes: shorter side -> RESIZE (antialiased bilinear), centre crop; PIL's resampling as reference.
    stream = open_stream(sources)
    images, labels = stream.eval_arrays(batch_size=4)
    assert images.shape == (6, SIZE, SIZE, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    names = sorted((n for n in sources["files"] if n.startswith("val/")),
                   key=lambda n: (sorted(CLASSES).index(n.split("/")[1]), n))
    for image, name in zip(images, names):
        pixels = decoded(sources["files"][name]).astype(np.uint8)
        h, w = pixels.shape[:2]
        new = (RESIZE, int(RESIZE * w / h)) if h <= w else (int(RESIZE * h / w), RESIZE)
        resized = np.asarray(Image.fromarray(pixels).resize(new[::-1], Image.Resampling.BILINEAR), np.float32)
        top, left = round((new[0] - SIZE) / 2), round((new[1] - SIZE) / 2)
        reference = (resized[top:top + SIZE, left:left + SIZE] / 255.0 - MEAN) / STD
        assert np.abs(image - reference).mean() < 0.03 and np.abs(image - reference).max() < 0.3, name


def torchvision_box(height, width, u, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, its random draws replaced by the uniforms u.

    Returns ([top, left, h, w], whether it fell back to the centre crop).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        target_area = area * (scale[0] + u[4 * t] * (scale[1] - scale[0]))
        aspect_ratio = math.exp(log_ratio[0] + u[4 * t + 1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(u[4 * t + 2] * (height - h + 1))  # torch.randint(0, height - h + 1)
            j = int(u[4 * t + 3] * (width - w + 1))
            return [i, j, h, w], False
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w], True


def test_crop_box_is_torchvision_random_resized_crop():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    cases = [(int(h), int(w), rng.uniform(size=41)) for h, w in rng.integers(1, 600, (300, 2))]
    cases += [(10, 400, rng.uniform(size=41)), (400, 10, rng.uniform(size=41)),  # every try fails: fallbacks
              (50, 60, np.tile([1.0 - 1e-9, 1.0 - 1e-9, 0.5, 0.5], 10))]
    box_of = tf.function(streaming.crop_box)  # traced once
    fallbacks = 0
    for h, w, u in cases:
        box = box_of(tf.constant(h), tf.constant(w), tf.constant(u, tf.float64)).numpy().tolist()
        expected, fell_back = torchvision_box(h, w, u)
        assert box == expected, (h, w, box, expected)
        top, left, ch, cw = box
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        fallbacks += fell_back
    assert fallbacks >= 3


def test_tfds_stream_of_variable_size_images(tmp_path_factory):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    directory = str(tmp_path_factory.mktemp("tfds_stream"))
    rng = np.random.default_rng(2)
    examples = {split: [(rng.integers(0, 256, (int(h), int(w), 3), np.uint8), i % 3)
                        for i, (h, w) in enumerate(rng.integers(18, 40, (n, 2)))]
                for split, n in (("train", 10), ("validation", 4))}
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                           "label": tfds.features.ClassLabel(names=["x", "y", "z"])})
    signature = {"image": tf.TensorSpec((None, None, 3), tf.uint8), "label": tf.TensorSpec((), tf.int64)}
    tfds.dataset_builders.store_as_tfds_dataset(
        name="icckd_variable", version="1.0.0", features=features, data_dir=directory, disable_shuffling=True,
        split_datasets={split: tf.data.Dataset.from_generator(
            lambda rows=rows: ({"image": x, "label": y} for x, y in rows), output_signature=signature)
            for split, rows in examples.items()})
    stream = streaming.open_tfds_stream("icckd_variable", directory, image_size=SIZE, shuffle_window=4)
    assert stream.num_train == 10 and stream.num_test == 4 and stream.class_names == ["x", "y", "z"]
    assert stream.train_labels is None and stream.test_labels.tolist() == [y for _, y in examples["validation"]]
    full = batches(stream.train_dataset(3, seed=0, views=2, epochs=2, with_index=True))
    assert len(full) == 6 and full[0][0]["image"].shape == (3, SIZE, SIZE, 3)
    train_labels = np.array([y for _, y in examples["train"]])
    for e in range(2):
        index = np.concatenate([x["index"] for x, _ in full[3 * e:3 * e + 3]])
        assert sorted(index) == list(range(9))  # windows of 4 (+ a last one of 1) shuffled in place
        assert all(set(index[w:w + 4]) == set(range(w, min(w + 4, 9))) for w in (0, 4, 8))
        np.testing.assert_array_equal(np.concatenate([y for _, y in full[3 * e:3 * e + 3]]), train_labels[index])
    resumed = batches(stream.train_dataset(3, seed=0, views=2, epochs=2, initial_epoch=1, with_index=True))
    for (x, _), (xr, _) in zip(full[3:], resumed):
        np.testing.assert_array_equal(x["view2"], xr["view2"])
    assert stream.eval_arrays()[0].shape == (4, SIZE, SIZE, 3)
    # two processes: each decodes its half of every batch of 4 (the shuffled windows as above)
    whole = batches(stream.train_dataset(4, seed=0, views=2, epochs=2, with_index=True))
    assert_shards_join(whole, [batches(stream.train_dataset(4, seed=0, views=2, epochs=2, with_index=True,
                                                            shard=(i, 2))) for i in range(2)])
    assert_shards_join(batches(stream.eval_dataset(3)),
                       [batches(stream.eval_dataset(3, shard=(i, 1))) for i in range(1)])
    assert_shards_join(batches(stream.eval_dataset(2)), [batches(stream.eval_dataset(2, shard=(i, 2))) for i in range(2)])
    with pytest.raises(DataError, match="contrast_negatives .* needs every training label"):
        stream.train_dataset(3, seed=0, contrast_negatives=2)
    with pytest.raises(DataError, match="subset needs every label"):
        stream.subset(max_train=3)


def test_subset_is_balanced(sources):
    stream = open_stream(sources).subset(max_train=6, max_test=3, seed=0)
    assert np.bincount(stream.train_labels).tolist() == [2, 2, 2] and stream.num_test == 3
    x, y = stream.eval_arrays()
    assert x.shape == (3, SIZE, SIZE, 3) and y.tolist() == [0, 1, 2]


def test_a_file_that_is_not_an_image_is_named(sources, tmp_path):
    files = dict(sources["files"])
    files["train/cat/zz.jpg"] = b"<html>not found</html>"
    stream = streaming.open_image_stream(write_tree(str(tmp_path / "bad"), files), image_size=SIZE)
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG, PNG, GIF or BMP image.*train/cat/zz\.jpg"):
        batches(stream.train_dataset(16, seed=0))


@pytest.mark.parametrize("make, message", [
    (lambda d, f: write_tar(os.path.join(d, "x.tar.gz"), f, "w:gz"), r"compressed.*gunzip -k"),
    (lambda d, f: write_tree(os.path.join(d, "t"), {k: v for k, v in f.items() if k.startswith("train/")}),
     "no evaluation split"),
    (lambda d, f: write_tree(os.path.join(d, "c"), {**f, "val/bee/0.jpg": f["val/ant/00.jpeg"]}),
     r"class folders differ.*only in val: \['bee'\]"),
    (lambda d, f: os.path.join(d, "missing"), "not found"),
])
def test_bad_sources(sources, tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        streaming.open_image_stream(make(str(tmp_path), sources["files"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=16), "batch_size must be an integer between 1 and the number of training images"),
    (dict(views=3), "views must be 1 or 2"),
    (dict(epochs=2, initial_epoch=2), r"initial_epoch must be in \[0, epochs\)"),
])
def test_train_argument_errors(sources, kwargs, message):
    stream = open_stream(sources)
    with pytest.raises(DataError, match=message):
        stream.train_dataset(**{"batch_size": 4, "seed": 0, **kwargs})
    with pytest.raises(DataError, match="resize_size .* must be at least image_size"):
        streaming.open_image_stream(sources["folder"], image_size=32, resize_size=30)


def test_docstring_examples():
    result = doctest.testmod(streaming)
    assert result.attempted > 0 and result.failed == 0


def test_sampler_is_shared_with_the_in_memory_pipeline(sources):
    """CRD's negatives of a streamed sample equal those the in-memory pipeline draws for it."""
    stream = open_stream(sources)
    (x, _), = batches(stream.train_dataset(15, seed=7, with_index=True, contrast_negatives=4))
    (mem, _), = list(pipeline.make_train_dataset(np.zeros((15, 4, 4, 3), np.uint8), stream.train_labels, 15, seed=7,
                                                 mean=MEAN, std=STD, with_index=True,
                                                 contrast_negatives=4).as_numpy_iterator())
    order = np.argsort(x["index"]), np.argsort(mem["index"])
    np.testing.assert_array_equal(x["contrast_index"][order[0]], mem["contrast_index"][order[1]])


def test_streaming_benchmark_runs_and_reports_flat_memory(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import REPO_ROOT

    out = str(tmp_path / "bench.json")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "input_pipeline.py"), "--stream", "--stream_images=60",
         "--image_size=32", "--batch_size=8", "--epochs=2", f"--stream_dir={tmp_path / 'jpegs'}", f"--json={out}"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0 and "RSS FLAT" in result.stdout, result.stdout + result.stderr[-2000:]
    report = json.load(open(out))
    assert report["images"] == {"train": 40, "eval": 20, "classes": 20} and report["eval_resize"] == 37
    assert len(report["train_images_per_s_by_epoch"]) == 2 and min(report["train_images_per_s_by_epoch"]) > 0
    assert len(report["rss_mb_every_batch"]) == 2 * (40 // 8)
