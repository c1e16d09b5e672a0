"""Data sources: every loader returns a `Splits` of in-memory uint8 images and int32 labels.

Sources: the canonical CIFAR python tarballs, image folders (a directory or a tar archive laid
out `<root>/<split>/<class>/<image>`), Tiny-ImageNet (such a folder), prepared TFDS datasets and
synthetic data. `keras_icckd.data.datasets` registers them by name (`load`).
"""

import dataclasses
import glob
import hashlib
import io
import logging
import os
import pickle
import tarfile
import tempfile
import zlib

import numpy as np

from keras_icckd.data import locations

log = logging.getLogger(__name__)

BUNDLED_CIFAR10 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled", "cifar10-mini.tar.gz")
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Population statistics of every pixel of the 100,000 Tiny-ImageNet training images (greyscale ones
# as RGB), from `python experiments/normalization_constants.py --dataset=tinyimagenet`.
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2764, 0.2689, 0.2816)
TINYIMAGENET_ARCHIVE = "tinyimagenet200-jpeg.tar.gz"

# Per-channel (mean, std) of RGB images scaled to [0, 1], by name.
NORMALIZATIONS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "tinyimagenet": (TINYIMAGENET_MEAN, TINYIMAGENET_STD),
}

# variant -> (canonical file name, md5, train members, test members, meta member, label key, names key)
_CIFAR = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                b"labels", b"label_names"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names"),
}
CIFAR_ARCHIVES = {variant: spec[0] for variant, spec in _CIFAR.items()}
_CACHE_FORMAT = 1
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, OSError)


class DataError(ValueError):
    """A data source is missing, malformed or not what the caller asked for."""


@dataclasses.dataclass
class Splits:
    """Train and test images of one dataset, held in memory.

    Args:
        train_images: uint8 array (N, H, W, 3).
        train_labels: int32 array (N,).
        test_images: uint8 array (M, H, W, 3).
        test_labels: int32 array (M,).
        class_names: name of every label id, in id order.
        name: short name of the dataset.
        train_subclasses: optional int32 array (N,), the sub-cluster of every training image
            within its class (set by `make_synthetic`).
        test_subclasses: the same for the test images.

    Example:
        >>> splits = make_synthetic(num_classes=3, train_per_class=4, test_per_class=2)
        >>> splits.num_classes, splits.train_images.shape
        (3, (12, 32, 32, 3))
    """

    train_images: np.ndarray = dataclasses.field(repr=False)
    train_labels: np.ndarray = dataclasses.field(repr=False)
    test_images: np.ndarray = dataclasses.field(repr=False)
    test_labels: np.ndarray = dataclasses.field(repr=False)
    class_names: list
    name: str
    train_subclasses: np.ndarray | None = dataclasses.field(default=None, repr=False)
    test_subclasses: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def num_classes(self):
        return len(self.class_names)

    def subset(self, max_train=None, max_test=None, seed=0):
        """Returns a class-balanced subset (as balanced as the class sizes allow).

        Every class gets an equal share of the budget; shares that a small class cannot fill go to
        the others, a remainder goes to the lowest class ids. Which images of a class are kept is
        drawn with `seed`; kept images stay in their original order.

        Args:
            max_train: most training images kept; None keeps all.
            max_test: most test images kept; None keeps all.
            seed: integer seed of the draw.
        """
        keep = {split: _balanced_indices(getattr(self, f"{split}_labels"), limit, self.num_classes,
                                         np.random.default_rng([seed, i]), split)
                for i, (split, limit) in enumerate((("train", max_train), ("test", max_test)))}
        changes = {}
        for field in dataclasses.fields(self):
            split = field.name.split("_")[0]
            value = getattr(self, field.name)
            if split in keep and isinstance(value, np.ndarray):
                changes[field.name] = value[keep[split]]
        return dataclasses.replace(self, **changes)

    def resized(self, image_size):
        """A copy with every image resized to `image_size` x `image_size` (once, in memory).

        The filter is PIL's bilinear one, which widens with the scale factor when shrinking
        (antialiased, as torchvision's `Resize` on PIL images); uint8 results. Images already of
        that size are kept as they are.

        Args:
            image_size: the new height and width, a positive integer.

        Example:
            >>> make_synthetic(num_classes=2, train_per_class=1, test_per_class=1).resized(16).test_images.shape
            (2, 16, 16, 3)
        """
        if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
            raise DataError(f"image_size must be a positive integer, got {image_size!r}")
        size = int(image_size)
        return dataclasses.replace(self, **{f"{split}_images": resize_images(getattr(self, f"{split}_images"), size)
                                            for split in SPLITS})


def resize_images(images, size):
    """uint8 images (N, H, W, C) -> (N, size, size, C), PIL's antialiased bilinear filter (see `Splits.resized`)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return out


def _balanced_indices(labels, limit, num_classes, rng, split):
    if limit is None:
        return np.arange(len(labels))
    if int(limit) != limit or limit < 0:
        raise DataError(f"max_{split} must be a non-negative integer or None, got {limit!r}")
    members = [np.flatnonzero(labels == k) for k in range(num_classes)]
    quota = np.zeros(num_classes, np.int64)
    remaining = min(int(limit), len(labels))
    while remaining > 0:
        open_ = [k for k in range(num_classes) if quota[k] < len(members[k])]
        share = max(remaining // len(open_), 1)
        for k in open_:
            add = min(share, len(members[k]) - quota[k], remaining)
            quota[k] += add
            remaining -= add
    chosen = [rng.permutation(idx)[:q] for idx, q in zip(members, quota)]
    return np.sort(np.concatenate(chosen + [np.zeros(0, np.int64)]))


# ----------------------------------------------------------------------------- CIFAR tarballs


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_cifar_archive(path, variant):
    if not os.path.exists(path):
        raise DataError(f"CIFAR archive not found: {path}")
    if not os.path.isdir(path):
        return path
    variants = [variant] if variant else list(_CIFAR)
    found = [os.path.join(path, _CIFAR[v][0]) for v in variants if os.path.isfile(os.path.join(path, _CIFAR[v][0]))]
    if len(found) != 1:
        expected = " or ".join(_CIFAR[v][0] for v in variants)
        problem = "holds both archives, pass the file itself" if found else f"has no {expected}"
        raise DataError(f"Directory {path} {problem}")
    return found[0]


def load_cifar_python(path, verify_checksum=True, *, variant=None):
    """Loads CIFAR-10 or CIFAR-100 from the canonical python tarball, without extracting it.

    Args:
        path: `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`, or a directory holding it.
        verify_checksum: refuse a file whose md5 is not that of the genuine archive.
        variant: "cifar10" or "cifar100" to require that variant; None accepts either.

    Returns:
        A `Splits` named "cifar10" or "cifar100" (fine labels for CIFAR-100).
    """
    if variant is not None and variant not in _CIFAR:
        raise DataError(f"variant must be one of {sorted(_CIFAR)} or None, got {variant!r}")
    path = _resolve_cifar_archive(path, variant)
    if verify_checksum:
        md5 = _md5(path)
        genuine = {v: spec[1] for v, spec in _CIFAR.items() if variant in (None, v)}
        if md5 not in genuine.values():
            expected = " or ".join(f"{_CIFAR[v][1]} ({_CIFAR[v][0]})" for v in genuine)
            raise DataError(f"{path} is not the genuine CIFAR python archive: md5 {md5}, expected {expected}. "
                            "Pass verify_checksum=False (run.py: --noverify_checksum) to accept it anyway.")
    wanted = {name for spec in _CIFAR.values() for name in spec[2] + spec[3] + (spec[4],)}
    members = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    members[base] = tar.extractfile(member).read()
    except _CORRUPT as e:
        raise DataError(f"{path} is not a readable CIFAR tarball (corrupt or truncated): {e}") from e
    found = "cifar10" if "data_batch_1" in members else "cifar100" if "train" in members else None
    if found is None:
        raise DataError(f"{path} holds neither CIFAR-10 (data_batch_1..5) nor CIFAR-100 (train/test) batches")
    if variant not in (None, found):
        raise DataError(f"{path} is a {found} archive, but {variant} was requested")
    _, _, train_names, test_names, meta_name, label_key, names_key = _CIFAR[found]
    missing = sorted(set(train_names + test_names + (meta_name,)) - set(members))
    if missing:
        raise DataError(f"{path} lacks the {found} members {missing}")

    def unpickle(name):
        try:
            return pickle.loads(members[name], encoding="bytes")
        except Exception as e:  # pickle raises many types on bad bytes
            raise DataError(f"Member {name} of {path} is not a valid pickle: {e}") from e

    def read(names):
        images, labels = [], []
        for name in names:
            batch = unpickle(name)
            try:
                data = np.asarray(batch[b"data"], np.uint8)
                labels.append(np.asarray(batch[label_key], np.int32))
            except KeyError as e:
                raise DataError(f"Member {name} of {path} lacks the key {e.args[0]!r}") from e
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels[-1]):
                raise DataError(f"Member {name} of {path}: expected data of shape (N, 3072) with N labels, "
                                f"got {data.shape} and {len(labels[-1])} labels")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    meta = unpickle(meta_name)
    if names_key not in meta:
        raise DataError(f"Member {meta_name} of {path} lacks the key {names_key!r}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    (train_x, train_y), (test_x, test_y) = read(train_names), read(test_names)
    return Splits(train_x, train_y, test_x, test_y, class_names, found)


# ----------------------------------------------------------------------------- image folders


def _is_archive(path):
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name):
    return name.startswith(".")


def _source_key(path):
    """A hash of what the decoded arrays depend on: the path plus sizes and mtimes."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{os.path.abspath(path)}".encode())
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = os.path.join(root, name)
                st = os.stat(file)
                digest.update(f"|{os.path.relpath(file, path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = os.stat(path)
        digest.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _index_archive(path):
    """Reads an archive once: {split: {class: {file name: bytes}}}."""
    tree = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.isdir() and 2 <= len(parts) <= 3 and parts[-2] in SPLITS:
                    tree.setdefault(parts[-2], {}).setdefault(parts[-1], {})
                elif member.isfile() and 3 <= len(parts) <= 4 and parts[-3] in SPLITS and not _hidden(parts[-1]):
                    data = tar.extractfile(member).read()
                    tree.setdefault(parts[-3], {}).setdefault(parts[-2], {})[parts[-1]] = data
    except _CORRUPT as e:
        raise DataError(f"{path} is not a readable tar archive (corrupt or truncated): {e}") from e
    return tree


def _index_directory(path):
    """Lists a directory: {split: {class: {file name: file path}}}; the root level is optional."""
    roots = [path] + sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    root = next((r for r in roots if any(os.path.isdir(os.path.join(r, s)) for s in SPLITS)), path)
    tree = {}
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        tree[split] = {}
        for cls in os.listdir(split_dir):
            cls_dir = os.path.join(split_dir, cls)
            if os.path.isdir(cls_dir) and not _hidden(cls):
                tree[split][cls] = {f: os.path.join(cls_dir, f) for f in os.listdir(cls_dir)
                                    if not _hidden(f) and os.path.isfile(os.path.join(cls_dir, f))}
    return tree


def _check_tree(path, tree):
    for split in SPLITS:
        if not tree.get(split):
            raise DataError(f"{path} has no '{split}' split: expected <root>/{split}/<class>/<image>")
    train, test = set(tree["train"]), set(tree["test"])
    if train != test:
        raise DataError(f"{path}: class folders differ between splits; only in train: {sorted(train - test)}, "
                        f"only in test: {sorted(test - train)}")
    for split in SPLITS:
        for cls, files in tree[split].items():
            if not files:
                raise DataError(f"{path}: class folder {split}/{cls} holds no images")
    return sorted(train)


def _decode(path, tree, class_names):
    from PIL import Image

    arrays = {}
    for split in SPLITS:
        items = [(label, f"{split}/{cls}/{name}", tree[split][cls][name])
                 for label, cls in enumerate(class_names) for name in sorted(tree[split][cls])]
        images, shape = None, None
        for i, (_, name, source) in enumerate(items):
            try:
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            except Exception as e:  # PIL raises many types on unreadable files
                raise DataError(f"Cannot read image {name} in {path}: {e}") from e
            if images is None:
                shape = pixels.shape
                images = np.empty((len(items),) + shape, np.uint8)
            elif pixels.shape != shape:
                raise DataError(f"Image {name} in {path} has shape {pixels.shape}, expected {shape} like the others")
            images[i] = pixels
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.array([label for label, _, _ in items], np.int32)
    return arrays


def _read_cache(cache_file):
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        names = [str(n) for n in arrays.pop("class_names")]
        for split in SPLITS:
            if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
                raise ValueError("image and label counts differ")
        return arrays, names
    except Exception as e:  # any unreadable cache is rebuilt
        log.warning("Ignoring unreadable cache %s (%s); rebuilding it", cache_file, e)
        return None


def _write_cache(cache_file, arrays, class_names):
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache_file), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, class_names=np.array(class_names, dtype=str), **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache_file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        log.warning("Could not write the cache %s: %s", cache_file, e)


def default_cache_dir():
    """$KERAS_ICCKD_CACHE, or ~/.cache/keras_icckd."""
    return os.environ.get("KERAS_ICCKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_icckd")


def load_image_folder(path, cache_dir=None):
    """Loads an image folder laid out `[<root>/]<split>/<class>/<image>` with splits train and test.

    Class ids follow the sorted class folder names; images within a class are sorted by file
    name. Decoded arrays are cached as an .npz keyed by the source's path, sizes and mtimes.

    Args:
        path: a directory, or a .tar / .tar.gz / .tgz archive (read directly, not extracted).
        cache_dir: where decoded arrays are cached; default `default_cache_dir()`.

    Returns:
        A `Splits` named after the root folder (or the archive's file name).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"Image folder not found: {path}")
    if not os.path.isdir(path) and not (os.path.isfile(path) and _is_archive(path)):
        raise DataError(f"{path} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    name = os.path.basename(os.path.normpath(path))
    for suffix in ARCHIVE_SUFFIXES:
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    cache_file = os.path.join(cache_dir or default_cache_dir(), f"folder-{name}-{_source_key(path)}.npz")
    cached = _read_cache(cache_file) if os.path.exists(cache_file) else None
    if cached is None:
        tree = _index_directory(path) if os.path.isdir(path) else _index_archive(path)
        class_names = _check_tree(path, tree)
        arrays = _decode(path, tree, class_names)
        _write_cache(cache_file, arrays, class_names)
    else:
        arrays, class_names = cached
        log.info("Loaded %s from the cache %s", path, cache_file)
    return Splits(class_names=class_names, name=name, **arrays)


# ----------------------------------------------------------------------------- Tiny-ImageNet


def default_tinyimagenet_path():
    """tinyimagenet200-jpeg.tar.gz (or, where only that exists, its extracted folder) in the data roots of
    `keras_icckd.data.locations` ($KERAS_ICCKD_DATA, the checkout's ../shared/datasets); None without a root."""
    return locations.find(TINYIMAGENET_ARCHIVE, TINYIMAGENET_ARCHIVE[: -len(".tar.gz")])


def load_tinyimagenet(path=None, cache_dir=None):
    """Loads Tiny-ImageNet (Le & Yang 2015: 200 ImageNet classes, 64 x 64) from its JPEG folder or archive.

    Layout `[<root>/]train/<wnid>/*.jpg` (500 per class) and `test/<wnid>/*.jpg` (the official
    validation set, 50 per class, labelled); greyscale images become RGB; class ids follow the
    sorted wnid folders, as torchvision's ImageFolder. Decoded arrays are cached like
    `load_image_folder` (1.2 GB in memory for the training set).

    Args:
        path: the archive or folder; default `default_tinyimagenet_path()`.
        cache_dir: where decoded arrays are cached; default `default_cache_dir()`.

    Returns:
        A `Splits` named "tinyimagenet" (normalised with `TINYIMAGENET_MEAN` / `TINYIMAGENET_STD`).
    """
    path = os.fspath(path) if path is not None else default_tinyimagenet_path()
    if path is None:
        raise DataError(f"Tiny-ImageNet: no data_dir given and no data folder to look in: pass data_dir=<"
                        f"{TINYIMAGENET_ARCHIVE} or its extracted folder>, or set ${locations.DATA_ENV}")
    if not os.path.exists(path):
        raise DataError(f"Tiny-ImageNet not found at {path}: pass data_dir=<{TINYIMAGENET_ARCHIVE} or its "
                        "extracted folder>")
    return dataclasses.replace(load_image_folder(path, cache_dir), name="tinyimagenet")


# ----------------------------------------------------------------------------- TFDS


def default_tfds_dir():
    """$TFDS_DATA_DIR, or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _tfds_unprepared(name, data_dir, detail):
    base = name.split(":")[0].split("/")[0]
    manual = ""
    if base in ("cifar10", "cifar100"):
        manual = (f" --manual_dir=<folder holding cifar-{base[5:]}-binary.tar.gz> (the tfds cifar builders read the "
                  "binary archives, not the python tarballs)")
    return DataError(f"TFDS dataset '{name}' is not prepared in {data_dir} ({detail}); this loader never downloads. "
                     f"Prepare it first: tfds build {base} --data_dir={data_dir}{manual}")


def _prepared_tfds_builder(name, data_dir, splits, keys):
    """The tfds builder of a dataset prepared in `data_dir` with these splits and features; DataError otherwise."""
    base, _, version = name.partition(":")
    parts = base.split("/")
    layouts = [parts] if len(parts) > 1 else [parts, parts + ["*"]]  # name[/config]/version
    prepared = [found for layout in layouts
                for found in glob.glob(os.path.join(data_dir, *layout, version or "*", "dataset_info.json"))]
    if not prepared:
        raise _tfds_unprepared(name, data_dir, f"no dataset_info.json under {os.path.join(data_dir, base)}")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own types for unknown names and configs
        raise _tfds_unprepared(name, data_dir, str(e).splitlines()[0]) from e
    if not builder.is_prepared():
        versions = sorted({os.path.basename(os.path.dirname(p)) for p in prepared})
        raise _tfds_unprepared(name, data_dir, f"version {builder.version} wanted, found {versions}")
    info = builder.info
    for split in splits:
        if split not in info.splits:
            raise DataError(f"TFDS dataset '{name}' in {data_dir} has no split {split!r}; it has {sorted(info.splits)}")
    for key in keys:
        if key not in info.features:
            raise DataError(f"TFDS dataset '{name}' has no feature {key!r}; it has {sorted(info.features)}")
    return builder


def load_tfds(name, data_dir, train_split="train", test_split="test", image_key="image", label_key="label"):
    """Loads a TFDS dataset that is already prepared in `data_dir`; never downloads.

    Whether the dataset is prepared is checked on the file system before tfds is called, so a
    missing dataset fails at once; datasets that are not registered in code but whose prepared
    files are in `data_dir` load too.

    Args:
        name: TFDS name, optionally with config and version ("name/config:1.0.0").
        data_dir: the TFDS data directory; None means `default_tfds_dir()`.
        train_split: split read as training data.
        test_split: split read as test data.
        image_key: feature holding the uint8 image.
        label_key: feature holding the integer label.
    """
    data_dir = os.fspath(data_dir or default_tfds_dir())
    builder = _prepared_tfds_builder(name, data_dir, (train_split, test_split), (image_key, label_key))
    import tensorflow as tf
    import tensorflow_datasets as tfds

    info = builder.info

    def read(split):
        ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda ex: (ex[image_key], ex[label_key]))
        try:
            batches = list(tfds.as_numpy(ds.batch(4096)))
        except tf.errors.InvalidArgumentError as e:
            raise DataError(f"TFDS dataset '{name}' split {split!r}: images differ in shape; expected one shape") from e
        if not batches:
            raise DataError(f"TFDS dataset '{name}' split {split!r} in {data_dir} holds no examples")
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        return images, np.concatenate([b[1] for b in batches]).astype(np.int32)

    (train_x, train_y), (test_x, test_y) = read(train_split), read(test_split)
    count = int(max(train_y.max(), test_y.max())) + 1
    class_names = list(getattr(info.features[label_key], "names", None) or [str(i) for i in range(count)])
    return Splits(train_x, train_y, test_x, test_y, class_names, name)


# ----------------------------------------------------------------------------- synthetic


def _smooth_field(rng, shape, grid=4):
    """A random field in [0, 1] of `shape` (H, W, C), bilinearly upsampled from a coarse grid."""
    height, width, channels = shape
    coarse = rng.uniform(size=(grid, grid, channels))
    ys, xs = np.linspace(0, grid - 1, height), np.linspace(0, grid - 1, width)
    y0, x0 = np.minimum(ys.astype(int), grid - 2), np.minimum(xs.astype(int), grid - 2)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def make_synthetic(num_classes=10, train_per_class=20, test_per_class=5, image_shape=(32, 32, 3), subclasses=1, seed=0):
    """Deterministic random images whose class (and sub-cluster) can be learned.

    Every class is a smooth random colour pattern; with `subclasses` > 1 each class holds that many
    distinct sub-clusters (the class pattern plus a smaller smooth pattern of its own). Images add
    pixel noise. Samples are ordered by class; the j-th sample of a class is in sub-cluster
    `j % subclasses` (also stored in `train_subclasses` / `test_subclasses`).

    Args:
        num_classes: number of classes (names "class_0", ...).
        train_per_class: training images per class.
        test_per_class: test images per class.
        image_shape: (H, W, C) of every image.
        subclasses: sub-clusters per class.
        seed: integer seed; the same arguments give the same arrays.
    """
    for arg, value in (("num_classes", num_classes), ("train_per_class", train_per_class),
                       ("test_per_class", test_per_class), ("subclasses", subclasses)):
        if int(value) != value or value < 1:
            raise DataError(f"{arg} must be a positive integer, got {value!r}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise DataError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape!r}")
    rng = np.random.default_rng(seed)
    classes = [_smooth_field(rng, image_shape) for _ in range(num_classes)]
    offsets = [[_smooth_field(rng, image_shape) - 0.5 if subclasses > 1 else 0.0 for _ in range(subclasses)]
               for _ in range(num_classes)]

    def draw(per_class):
        labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
        subs = np.tile(np.arange(per_class, dtype=np.int32) % subclasses, num_classes)
        means = np.stack([0.2 + 0.6 * classes[c] + 0.35 * offsets[c][s] for c, s in zip(labels, subs)])
        noise = rng.normal(scale=0.06, size=means.shape)
        return np.clip(np.rint((means + noise) * 255), 0, 255).astype(np.uint8), labels, subs

    train_x, train_y, train_s = draw(train_per_class)
    test_x, test_y, test_s = draw(test_per_class)
    return Splits(train_x, train_y, test_x, test_y, [f"class_{k}" for k in range(num_classes)], "synthetic",
                  train_s, test_s)


# ----------------------------------------------------------------------------- normalisation


def feed_normalization_name(dataset, num_classes):
    """Name (a key of `NORMALIZATIONS`) of the constants this project normalises a dataset with.

    The one rule behind `normalization_for`: the constants registered for the dataset's name
    (`keras_icckd.data.datasets`: Tiny-ImageNet's for "tinyimagenet"), else the CIFAR-100 constants
    for 100-class datasets and the CIFAR-10 constants otherwise, whatever the source (a subset, a JPEG copy and the canonical data are normalised alike).

    Args:
        dataset: the dataset's name (`Splits.name`), or None when only the class count is known.
        num_classes: its number of classes.

    Example:
        >>> feed_normalization_name("cifar10-jpeg", 10), feed_normalization_name(None, 100)
        ('cifar10', 'cifar100')
    """
    from keras_icckd.data import datasets  # the registry (it imports this module)

    return datasets.fixed_normalization(dataset) or ("cifar100" if num_classes == 100 else "cifar10")


def normalization_for(splits):
    """Per-channel (mean, std) used to normalise a dataset's images scaled to [0, 1].

    Fixed published constants rather than statistics of the data at hand (see
    `feed_normalization_name` for which).

    Args:
        splits: a `Splits`.
    """
    return NORMALIZATIONS[feed_normalization_name(splits.name, splits.num_classes)]


def parse_normalization(spec, argument="normalization"):
    """A normalisation given by name or by numbers, as {"name", "mean", "std"}.

    Args:
        spec: a key of `NORMALIZATIONS` ("imagenet", "cifar10", "cifar100"), six numbers R,G,B
            mean then R,G,B std (a sequence or a comma-separated string), a (mean, std) pair, or
            a dict with "mean" and "std" (and optionally "name").
        argument: the argument's name in error messages.

    Returns:
        {"name": the name or None, "mean": [3 floats], "std": [3 floats > 0]}.

    Example:
        >>> parse_normalization("0.5,0.5,0.5,0.25,0.25,0.25")["std"]
        [0.25, 0.25, 0.25]
        >>> parse_normalization("imagenet")["mean"]
        [0.485, 0.456, 0.406]
    """
    allowed = (f"one of {', '.join(NORMALIZATIONS)} or six numbers R,G,B,R,G,B (mean then std, "
               "std > 0)")
    name = None
    if isinstance(spec, str) and spec.strip().lower() in NORMALIZATIONS:
        name = spec.strip().lower()
        mean, std = NORMALIZATIONS[name]
        values = list(mean) + list(std)
    else:
        try:
            if isinstance(spec, dict):
                name = spec.get("name")
                values = list(spec["mean"]) + list(spec["std"])
            elif isinstance(spec, str):
                values = [float(v) for v in spec.split(",")]
            elif len(spec) == 2:
                values = list(spec[0]) + list(spec[1])
            else:
                values = list(spec)
            values = [float(v) for v in values]
        except (TypeError, ValueError, KeyError):
            values = None
        if values is None or len(values) != 6 or not np.all(np.isfinite(values)) \
                or min(values[3:]) <= 0 or not (name is None or isinstance(name, str)):
            raise ValueError(f"{argument}={spec!r} is not allowed: expected {allowed}")
    return {"name": name, "mean": values[:3], "std": values[3:]}
