"""Data sources (CIFAR tarballs, image folders, TFDS, synthetic) and the input pipelines (tf.data and
the TensorFlow-free one, which must give the same batches)."""

import doctest
import io
import os
import pickle
import tarfile
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import keras_icckd.data
from keras_icckd.data import datasets, numpy_pipeline, pipeline, sources
from keras_icckd.data import (DataError, load, load_cifar_python, load_image_folder, load_tfds,
                              make_synthetic, normalization_for)

RNG = np.random.default_rng(0)

# ----------------------------------------------------------------------------- builders


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_tarball(directory, variant, per_batch=6, seed=0):
    """A canonical-layout CIFAR python tarball of random images; returns (path, expected dict)."""
    rng = np.random.default_rng(seed)
    ten = variant == "cifar10"
    classes = 10 if ten else 100
    names = [f"c{k}" for k in range(classes)]
    root = "cifar-10-batches-py" if ten else "cifar-100-python"
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten else ["train", "test"]
    meta = {b"label_names": [n.encode() for n in names]} if ten else {
        b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"x"] * 20}
    path = os.path.join(directory, "cifar-10-python.tar.gz" if ten else "cifar-100-python.tar.gz")
    rows = {}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, f"{root}/{'batches.meta' if ten else 'meta'}", pickle.dumps(meta))
        for batch in batches:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, per_batch).tolist()
            rows[batch] = (data, labels)
            content = {b"data": data, b"labels" if ten else b"fine_labels": labels}
            if not ten:
                content[b"coarse_labels"] = [0] * per_batch
            add_member(tar, f"{root}/{batch}", pickle.dumps(content))
    train = [rows[b] for b in batches[:-1]]
    return path, {"names": names, "train": (np.concatenate([d for d, _ in train]), sum([l for _, l in train], [])),
                  "test": rows[batches[-1]]}


def png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


FOLDER_CLASSES = ("dog", "cat", "ant")  # sorted: ant cat dog


def folder_tree(shape=(6, 5, 3), per_class=(3, 2), seed=0):
    """{relative path: png bytes} of a small image folder, written out of order, and the expected arrays."""
    rng = np.random.default_rng(seed)
    files, expected = {}, {}
    for split, count in zip(("train", "test"), per_class):
        pixels = {cls: rng.integers(0, 256, (count,) + shape, dtype=np.uint8) for cls in FOLDER_CLASSES}
        for cls in FOLDER_CLASSES:
            for i in reversed(range(count)):
                files[f"{split}/{cls}/{i:03d}.png"] = png(pixels[cls][i])
        ordered = sorted(FOLDER_CLASSES)
        expected[split] = (np.concatenate([pixels[c] for c in ordered]), np.repeat(np.arange(len(ordered)), count))
    return files, expected


def write_folder(directory, files, root="data"):
    for name, data in files.items():
        path = os.path.join(directory, root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return os.path.join(directory, root)


def write_archive(path, files, root="data", dirs=()):
    with tarfile.open(path, "w:gz" if path.endswith(("gz", ".tgz")) else "w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(f"{root}/{d}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            add_member(tar, f"{root}/{name}" if root else name, data)
    return str(path)


def assert_splits(splits, expected):
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(splits, f"{split}_images"), expected[split][0])
        np.testing.assert_array_equal(getattr(splits, f"{split}_labels"), expected[split][1])
        assert getattr(splits, f"{split}_labels").dtype == np.int32


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_ICCKD_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- CIFAR tarballs


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_directory", [False, True])
def test_cifar_python_layout(tmp_path, variant, as_directory):
    path, expected = cifar_tarball(str(tmp_path), variant)
    splits = load_cifar_python(str(tmp_path) if as_directory else path, verify_checksum=False)
    assert splits.name == variant and splits.class_names == expected["names"]
    assert splits.num_classes == (10 if variant == "cifar10" else 100)
    for split in ("train", "test"):
        data, labels = expected[split]
        images = getattr(splits, f"{split}_images")
        assert images.shape == (len(data), 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(getattr(splits, f"{split}_labels"), labels)
        for i, row, col, channel in [(0, 0, 0, 0), (1, 2, 5, 1), (2, 31, 0, 2), (3, 7, 31, 0), (5, 31, 31, 2)]:
            assert images[i, row, col, channel] == data[i, channel * 1024 + row * 32 + col]
    via_load = load(variant, data_dir=path, verify_checksum=False)
    np.testing.assert_array_equal(via_load.train_images, splits.train_images)


def test_cifar_checksum_refused(tmp_path):
    path, _ = cifar_tarball(str(tmp_path), "cifar10")
    with pytest.raises(DataError, match="not the genuine") as error:
        load_cifar_python(path)
    assert path in str(error.value) and "verify_checksum=False" in str(error.value)
    assert "c58f30108f718f92721af3b95e74349a" in str(error.value)


def truncated_copy(path, target):
    with open(path, "rb") as f:
        data = f.read()
    with open(target, "wb") as f:
        f.write(data[: len(data) // 2])
    return str(target)


def bad_cifar_cases():
    def mismatch(tmp):
        return cifar_tarball(tmp, "cifar100")[0], "cifar10", "is a cifar100 archive"

    def truncated(tmp):
        return truncated_copy(cifar_tarball(tmp, "cifar10")[0], os.path.join(tmp, "cut.tar.gz")), "cifar10", "corrupt"

    def missing(tmp):
        return os.path.join(tmp, "nothing.tar.gz"), "cifar10", "not found"

    def empty_dir(tmp):
        return tmp, "cifar100", "has no cifar-100-python.tar.gz"

    def not_tar(tmp):
        path = os.path.join(tmp, "cifar-10-python.tar.gz")
        with open(path, "wb") as f:
            f.write(b"not an archive at all")
        return path, "cifar10", "corrupt"

    return [mismatch, truncated, missing, empty_dir, not_tar]


@pytest.mark.parametrize("case", bad_cifar_cases(), ids=lambda f: f.__name__)
def test_cifar_bad_inputs(tmp_path, case):
    path, name, message = case(str(tmp_path))
    with pytest.raises(DataError, match=message) as error:
        load(name, data_dir=path, verify_checksum=False)
    assert path in str(error.value)


# ----------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("kind", ["directory", "directory_no_root", "tar", "tar.gz", "tgz", "no_root.tar"])
def test_image_folder_loads(tmp_path, kind):
    files, expected = folder_tree()
    if kind.startswith("directory"):
        path = write_folder(tmp_path / "src", files, root="data" if kind == "directory" else "")
    else:
        path = write_archive(str(tmp_path / f"data.{kind}"), files, root="" if kind.startswith("no_root") else "data")
    splits = load_image_folder(path, cache_dir=str(tmp_path / "cache"))
    assert splits.class_names == sorted(FOLDER_CLASSES)
    assert_splits(splits, expected)


def test_image_folder_converts_to_rgb(tmp_path):
    files = {f"{s}/{c}/0.png": png(np.full((4, 4), 100, np.uint8)) for s in ("train", "test") for c in "ab"}
    splits = load_image_folder(write_folder(tmp_path, files))
    assert splits.train_images.shape == (2, 4, 4, 3) and (splits.train_images == 100).all()


def bad_folder_cases():
    good, _ = folder_tree()

    def without(prefix):
        return {k: v for k, v in good.items() if not k.startswith(prefix)}

    def directory(files, **kwargs):
        return lambda tmp: write_folder(tmp, files, **kwargs)

    def archive(files, **kwargs):
        return lambda tmp: write_archive(os.path.join(tmp, "data.tar.gz"), files, **kwargs)

    def corrupt(tmp):
        path = os.path.join(tmp, "data.tgz")
        with open(path, "wb") as f:
            f.write(b"\x1f\x8b" + bytes(range(200)))
        return path

    def text_file(tmp):
        path = os.path.join(tmp, "data.txt")
        open(path, "w").close()
        return path

    def empty_class_dir(tmp):
        os.makedirs(os.path.join(tmp, "data", "train", "eel"))
        return write_folder(tmp, dict(good, **{"test/eel/0.png": good["test/ant/000.png"]}))

    unreadable = dict(good, **{"train/cat/zzz.png": b"this is no image"})
    wrong_shape = dict(good, **{"test/dog/zzz.png": png(np.zeros((7, 5, 3), np.uint8))})
    extra_class = dict(good, **{"train/eel/0.png": good["train/ant/000.png"]})
    return [
        ("missing", lambda tmp: os.path.join(tmp, "absent"), "not found"),
        ("not_archive", text_file, "neither a directory nor"),
        ("corrupt_archive", corrupt, "corrupt or truncated"),
        ("truncated_archive", lambda tmp: truncated_copy(archive(good)(tmp), os.path.join(tmp, "cut.tar.gz")),
         "corrupt or truncated"),
        ("no_test_split", directory(without("test/")), "no 'test' split"),
        ("no_train_split_archive", archive(without("train/")), "no 'train' split"),
        ("empty_class_dir", empty_class_dir, "train/eel holds no images"),
        ("empty_class_archive", archive(extra_class, dirs=("test/eel",)), "test/eel holds no images"),
        ("classes_differ", directory(extra_class), r"only in train: \['eel'\], only in test: \[\]"),
        ("unreadable_image", archive(unreadable), "train/cat/zzz.png"),
        ("shape_mismatch", directory(wrong_shape), r"test/dog/zzz.png .*\(7, 5, 3\)"),
    ]


@pytest.mark.parametrize("name,make,message", bad_folder_cases(), ids=[c[0] for c in bad_folder_cases()])
def test_image_folder_bad_inputs(tmp_path, name, make, message):
    path = make(str(tmp_path))
    with pytest.raises(DataError, match=message) as error:
        load("folder", data_dir=path)
    assert path in str(error.value)
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written


def test_image_folder_cache(tmp_path, monkeypatch):
    files, expected = folder_tree()
    path = write_archive(str(tmp_path / "data.tar"), files)
    cache = tmp_path / "cache"
    first = load_image_folder(path)
    [cache_file] = list(cache.iterdir())
    decode = sources._decode
    monkeypatch.setattr(sources, "_decode", lambda *a: pytest.fail("decoded although cached"))
    assert_splits(load_image_folder(path), expected)
    assert load_image_folder(path).class_names == first.class_names
    cache_file.write_bytes(b"corrupt")
    monkeypatch.setattr(sources, "_decode", decode)
    assert_splits(load_image_folder(path), expected)  # rebuilt
    assert sources._read_cache(str(cache_file)) is not None
    os.utime(path, ns=(0, 0))  # a changed source gets a new key
    load_image_folder(path)
    assert len(list(cache.iterdir())) == 2 and not list(cache.glob("*.tmp"))


def test_bundled_archive():
    splits = load("folder")
    assert splits.train_images.shape == (5000, 32, 32, 3) and splits.test_images.shape == (1000, 32, 32, 3)
    assert splits.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck"]
    assert np.bincount(splits.train_labels).tolist() == [500] * 10
    assert np.bincount(splits.test_labels).tolist() == [100] * 10
    assert normalization_for(splits) == (sources.CIFAR10_MEAN, sources.CIFAR10_STD)


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    directory = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(1)
    arrays = {s: (rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n)) for s, n in
              (("train", 6), ("test", 4))}
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 3)),
                                           "label": tfds.features.ClassLabel(names=["x", "y", "z"])})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="icckd_tiny", version="1.0.0", features=features, data_dir=directory, disable_shuffling=True,
        split_datasets={split: tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
                        for split, (x, y) in arrays.items()})
    return directory, arrays


def test_tfds_prepared(tfds_dir):
    directory, arrays = tfds_dir
    splits = load("tfds", data_dir=directory, tfds_name="icckd_tiny")
    assert splits.class_names == ["x", "y", "z"] and splits.name == "icckd_tiny"
    assert_splits(splits, arrays)
    with pytest.raises(DataError, match="no split 'validation'"):
        load_tfds("icckd_tiny", directory, test_split="validation")


@pytest.mark.parametrize("name", ["cifar10", "icckd_not_there", "mnist:3.0.1", "cifar100/config"])
def test_tfds_not_prepared_fails_fast(tmp_path, name):
    start = time.time()
    with pytest.raises(DataError, match="is not prepared") as error:
        load_tfds(name, str(tmp_path))
    assert time.time() - start < 10
    message = str(error.value)
    assert f"tfds build {name.split(':')[0].split('/')[0]} --data_dir={tmp_path}" in message
    assert ("--manual_dir" in message) == name.startswith("cifar")


def test_tfds_wrong_version_fails_fast(tfds_dir):
    with pytest.raises(DataError, match="is not prepared"):
        load_tfds("icckd_tiny:2.0.0", tfds_dir[0])


# ----------------------------------------------------------------------------- synthetic, subset, dispatch


def test_synthetic_is_deterministic_and_learnable():
    a = make_synthetic(num_classes=4, train_per_class=12, test_per_class=6, subclasses=3, seed=5)
    b = make_synthetic(num_classes=4, train_per_class=12, test_per_class=6, subclasses=3, seed=5)
    c = make_synthetic(num_classes=4, train_per_class=12, test_per_class=6, subclasses=3, seed=6)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, c.train_images)
    assert a.train_images.shape == (48, 32, 32, 3) and a.test_images.shape == (24, 32, 32, 3)
    assert a.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert np.bincount(a.train_labels).tolist() == [12] * 4

    def nearest(train_groups, test_groups):
        x = a.train_images.reshape(48, -1).astype(float)
        centroids = np.stack([x[train_groups == g].mean(0) for g in np.unique(train_groups)])
        t = a.test_images.reshape(24, -1).astype(float)
        guess = np.argmin(((t[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        return np.mean(guess == test_groups)

    assert nearest(a.train_labels, a.test_labels) == 1.0  # classes are separable
    clusters = lambda s, labels: labels * 3 + s  # noqa: E731
    assert nearest(clusters(a.train_subclasses, a.train_labels), clusters(a.test_subclasses, a.test_labels)) == 1.0


@pytest.mark.parametrize("counts,limit,expected", [
    ([20] * 10, 35, [4] * 5 + [3] * 5),
    ([2, 10, 10], 15, [2, 7, 6]),
    ([3, 3], 100, [3, 3]),
    ([5, 5], 0, [0, 0]),
])
def test_subset_is_balanced(counts, limit, expected):
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    splits = sources.Splits(images, labels, images, labels, [str(k) for k in range(len(counts))], "t")
    small = splits.subset(max_train=limit, seed=3)
    assert np.bincount(small.train_labels, minlength=len(counts)).tolist() == expected
    np.testing.assert_array_equal(small.train_labels, splits.train_labels[small.train_images[:, 0, 0, 0]])
    assert len(small.test_labels) == len(labels)
    np.testing.assert_array_equal(small.train_images, splits.subset(max_train=limit, seed=3).train_images)


def test_subset_keeps_subclasses_and_varies_with_seed():
    splits = make_synthetic(num_classes=2, train_per_class=10, test_per_class=4, subclasses=2)
    a, b = splits.subset(max_train=6, max_test=2, seed=0), splits.subset(max_train=6, max_test=2, seed=1)
    assert len(a.train_subclasses) == 6 and len(a.test_subclasses) == 2
    assert not np.array_equal(a.train_images, b.train_images)


def test_dispatch_errors_and_normalization():
    with pytest.raises(DataError, match="'imagenet'.*cifar10, cifar100, folder, tfds, synthetic"):
        load("imagenet")
    with pytest.raises(DataError, match="data_dir"):
        load("cifar100")
    assert datasets.default_data_dir("folder") == sources.BUNDLED_CIFAR10 and os.path.isabs(sources.BUNDLED_CIFAR10)
    hundred = make_synthetic(num_classes=100, train_per_class=1, test_per_class=1)
    assert normalization_for(hundred) == (sources.CIFAR100_MEAN, sources.CIFAR100_STD)


@pytest.mark.parametrize("module", [sources, datasets, pipeline, numpy_pipeline, keras_icckd.data])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- pipeline

N, SIZE = 12, 8
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
IMAGES = RNG.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
LABELS = np.arange(N) % 3


@pytest.fixture(params=["tf_data", "numpy"])
def pipe(request):
    """Each pipeline test runs on both pipelines."""
    return keras_icckd.data.input_pipeline(request.param)


def batches(ds):
    return list(ds.as_numpy_iterator()) if hasattr(ds, "as_numpy_iterator") else list(ds)


def train(pipe, **kwargs):
    args = dict(images=IMAGES, labels=LABELS, batch_size=4, seed=0, mean=MEAN, std=STD)
    args.update(kwargs)
    return batches(pipe.make_train_dataset(**args))


@pytest.mark.parametrize("views,with_index,keys", [(1, False, None), (2, False, ["image", "view2"]),
                                                   (1, True, ["image", "index"]),
                                                   (2, True, ["image", "index", "view2"])])
def test_train_format(pipe, views, with_index, keys):
    out = train(pipe, views=views, with_index=with_index, batch_size=5)
    assert len(out) == pipeline.steps_per_epoch(N, 5) == 2
    x, y = out[0]
    assert y.shape == (5,) and y.dtype == np.int32
    images = x if keys is None else x["image"]
    if keys is not None:
        assert sorted(x) == keys
        for key in keys:
            expected = ((5,), np.int32) if key == "index" else ((5, SIZE, SIZE, 3), np.float32)
            assert (x[key].shape, x[key].dtype) == expected
    assert images.shape == (5, SIZE, SIZE, 3) and images.dtype == np.float32
    if with_index:
        np.testing.assert_array_equal(y, LABELS[x["index"]])


def test_train_determinism_and_views(pipe):
    a, b = train(pipe, views=2, with_index=True, epochs=2), train(pipe, views=2, with_index=True, epochs=2)
    other = train(pipe, views=2, with_index=True, epochs=2, seed=1)
    for (xa, ya), (xb, yb) in zip(a, b):
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
        np.testing.assert_array_equal(ya, yb)
        assert not np.array_equal(xa["image"], xa["view2"])
    assert any(not np.array_equal(xa["image"], xo["image"]) for (xa, _), (xo, _) in zip(a, other))
    single = train(pipe, views=1, with_index=True, epochs=2)  # view 1 does not depend on `views`
    np.testing.assert_array_equal(single[0][0]["image"], a[0][0]["image"])


def test_epochs_reshuffle_and_resume(pipe):
    full = train(pipe, with_index=True, epochs=2)
    orders = [np.concatenate([x["index"] for x, _ in full[e * 3:(e + 1) * 3]]) for e in range(2)]
    for order in orders:
        assert sorted(order) == list(range(N))
    assert not np.array_equal(orders[0], orders[1])
    resumed = train(pipe, with_index=True, epochs=2, initial_epoch=1)
    assert len(resumed) == 3
    for (xr, yr), (xf, yf) in zip(resumed, full[3:]):
        np.testing.assert_array_equal(xr["image"], xf["image"])
        np.testing.assert_array_equal(xr["index"], xf["index"])
        np.testing.assert_array_equal(yr, yf)


def test_normalization_of_constant_image(pipe):
    images = np.full((4, SIZE, SIZE, 3), 51, np.uint8)  # 0.2 after scaling
    x, _ = train(pipe, images=images, labels=np.zeros(4), augment=False)[0]
    np.testing.assert_allclose(x[0, 0, 0], (0.2 - np.array(MEAN)) / np.array(STD), rtol=1e-5)
    np.testing.assert_allclose(x, np.broadcast_to(x[0, 0, 0], x.shape))


def test_augmentation_is_pad_crop_flip(pipe):
    out = train(pipe, with_index=True, views=2, mean=(0.0,) * 3, std=(1.0,) * 3, epochs=3)
    padded = np.pad(IMAGES, [(0, 0), (4, 4), (4, 4), (0, 0)])
    seen = set()
    for x, _ in out:
        for key in ("image", "view2"):
            for pixels, index in zip(np.rint(x[key] * 255).astype(np.uint8), x["index"]):
                matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                           if np.array_equal(pixels, padded[index, dy:dy + SIZE, dx:dx + SIZE][:, ::-1 if flip else 1])]
                assert matches, f"sample {index} is no crop/flip of its padded original"
                seen.update(matches)
    assert {flip for _, _, flip in seen} == {0, 1} and len({(dy, dx) for dy, dx, _ in seen}) > 10


def test_eval_keeps_partial_batch_in_order(pipe):
    out = batches(pipe.make_eval_dataset(IMAGES[:10], LABELS[:10], 4, mean=MEAN, std=STD))
    assert [len(y) for _, y in out] == [4, 4, 2]
    x = np.concatenate([b[0] for b in out])
    np.testing.assert_allclose(x, (IMAGES[:10] / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), LABELS[:10])


@pytest.mark.parametrize("kwargs,argument", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": N + 1}, "batch_size"), ({"views": 3}, "views"),
    ({"mean": (0.5, 0.5)}, "mean"), ({"std": (1.0, 0.0, 1.0)}, "std"), ({"initial_epoch": 1}, "initial_epoch"),
    ({"labels": LABELS[:5]}, "labels"), ({"images": IMAGES.astype(np.float32)}, "images"),
])
def test_train_argument_errors(pipe, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        train(pipe, **kwargs)


def test_fit_runs_epochs_back_to_back(pipe):
    import keras

    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = pipe.make_train_dataset(IMAGES, LABELS, 4, seed=0, mean=MEAN, std=STD, epochs=3, initial_epoch=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(ds, epochs=3, initial_epoch=1, steps_per_epoch=pipeline.steps_per_epoch(N, 4),
                            shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert not [w for w in caught if "ran out of data" in str(w.message)]


# ------------------------------------------------- the two pipelines give the same batches

def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        xa, xb = (xa, xb) if isinstance(xa, dict) else ({"x": xa}, {"x": xb})
        assert sorted(xa) == sorted(xb)
        for key in xa:
            assert xa[key].dtype == xb[key].dtype and xa[key].shape == xb[key].shape, key
            np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)
        assert ya.dtype == yb.dtype
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("kwargs", [
    dict(views=2, with_index=True, contrast_negatives=5, epochs=3, initial_epoch=1, seed=2 ** 40 + 7),
    dict(views=1, epochs=2, seed=3),
    dict(views=1, augment=False, seed=0, drop_remainder=False),
])
def test_numpy_and_tf_data_pipelines_give_identical_batches(kwargs):
    images = RNG.integers(0, 256, (30, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(30) % 4
    args = dict(images=images, labels=labels, batch_size=8, mean=MEAN, std=STD, **kwargs)
    assert_same_batches(batches(pipeline.make_train_dataset(**args)),
                        batches(numpy_pipeline.make_train_dataset(**args, threads=2)))
    evaluation = dict(images=images, labels=labels, batch_size=8, mean=MEAN, std=STD)
    assert_same_batches(batches(pipeline.make_eval_dataset(**evaluation)),
                        batches(numpy_pipeline.make_eval_dataset(**evaluation)))


def test_the_augmentation_draws_by_hand():
    """The documented hash, computed here with Python integers, against the pipeline's draws."""
    def mix(x):
        for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            x = ((x ^ (x >> shift)) * factor) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seed, epoch, index = 5, 2, 7
    key = mix(mix(seed ^ 0x9E3779B9) ^ 0)
    h = mix(mix(key ^ epoch) ^ index)
    d = mix(h ^ (0xC2B2AE35 + 1))  # view 1
    expected = [((d & 0xFFFF) * 9) >> 16, (((d >> 16) & 0x7FFF) * 9) >> 15, d >> 31]
    assert numpy_pipeline.crop_flip_params(seed, epoch, np.array([index]), 1).tolist() == [expected]
    keys = [mix(mix(mix(key ^ epoch) ^ i) ^ 0x85EBCA6B) for i in range(10)]
    assert numpy_pipeline.shuffle_order(seed, epoch, 10).tolist() == sorted(range(10), key=keys.__getitem__)


def test_numpy_pipeline_threads_shards_and_random_access():
    args = dict(images=IMAGES, labels=LABELS, batch_size=4, seed=1, mean=MEAN, std=STD, views=2,
                with_index=True, epochs=2)
    serial = batches(numpy_pipeline.make_train_dataset(**args, threads=0))
    assert_same_batches(batches(numpy_pipeline.make_train_dataset(**args, threads=3, prefetch=2)), serial)
    ds = numpy_pipeline.make_train_dataset(**args, threads=2)
    assert_same_batches([ds[4], ds[1], ds[-1]], [serial[4], serial[1], serial[-1]])  # order-free
    with pytest.raises(IndexError, match="batch 6 of a dataset of 6"):
        ds[6]
    halves = [batches(numpy_pipeline.make_train_dataset(**args, shard=(p, 2))) for p in (0, 1)]
    for (x0, y0), (x1, y1), (x, y) in zip(*halves, serial):  # process p: the p-th half of each batch
        np.testing.assert_array_equal(np.concatenate([x0["view2"], x1["view2"]]), x["view2"])
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    with pytest.raises(ValueError, match="shard"):
        numpy_pipeline.make_train_dataset(**args, shard=(0, 3))
    evaluation = dict(batch_size=4, mean=MEAN, std=STD)  # 6 images: batches of 4 and 2, halved
    whole = batches(numpy_pipeline.make_eval_dataset(IMAGES[:6], LABELS[:6], **evaluation))
    shares = [batches(numpy_pipeline.make_eval_dataset(IMAGES[:6], LABELS[:6], **evaluation, shard=(p, 2)))
              for p in (0, 1)]
    assert [len(y) for _, y in shares[1]] == [2, 1]
    for (x0, y0), (x1, y1), (x, y) in zip(*shares, whole):
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    with pytest.raises(ValueError, match="the 7 images do not split evenly"):
        numpy_pipeline.make_eval_dataset(IMAGES[:7], LABELS[:7], **evaluation, shard=(1, 2))
    with pytest.raises(ValueError, match="threads"):
        numpy_pipeline.make_train_dataset(**args, threads=-1)


def test_input_pipeline_choice():
    assert keras_icckd.data.input_pipeline("tf_data") is pipeline
    assert keras_icckd.data.input_pipeline("auto") is pipeline  # TensorFlow is installed here
    with pytest.raises(ValueError, match="input pipeline 'grain'"):
        keras_icckd.data.input_pipeline("grain")
