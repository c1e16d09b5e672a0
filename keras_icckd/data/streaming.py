"""Datasets larger than memory, read lazily: ImageNet-style image folders, plain tar archives, TFDS.

`open_image_stream(path)` indexes `[<root>/]train/<class>/<image>` and `val/<class>/<image>` (or
`test/...`) in a directory or an uncompressed .tar (the members are read at their offsets, never
extracted); `open_tfds_stream(name, data_dir)` reads a prepared TFDS dataset. Both return an
`ImageStream`, whose tf.data pipelines decode images of any size in parallel and prefetch:

- training: RandomResizedCrop to `image_size` (area 8-100 % of the image, aspect ratio 3/4-4/3,
  torchvision's sampling: ten tries, then a centre crop) and a random horizontal flip;
- evaluation: resize of the shorter side to `resize_size` (default image_size * 256 / 224) and a
  centre crop of `image_size` (torchvision's `Resize` + `CenterCrop`);
- bilinear resizing with antialiasing, then `(pixels / 255 - mean) / std`.

Training data is a function of (seed, epoch, index), as in `keras_icckd.data.pipeline`: epoch e of
a folder visits the samples in the order `stateless_shuffle(range(N), seed=(seed, e))`, and the
crop and flip of sample i, view v are drawn from `fold_in(fold_in((seed, e), v + 1), i)`; a TFDS
split, which has no random access, is read in its stored order and shuffled within windows of
`shuffle_window` examples by keys folded from (seed, e, window). A run resumed at an epoch sees the
data that it would have seen without the interruption, whatever the parallelism.

Only the index (file names or tar offsets and labels) is held in memory, a few hundred bytes per
image; the index of a tar archive is cached beside the decoded-array caches (`default_cache_dir`).
A .tar.gz cannot be read at random offsets: it is refused with the command that makes a plain tar.
TensorFlow is imported when a pipeline is built, not when this module is.
"""

import dataclasses
import logging
import math
import os
import tarfile

import numpy as np

from keras_icckd.data.numpy_pipeline import model_inputs, shard_mask
from keras_icckd.data.sources import (
    DataError, SPLITS, _balanced_indices, _CORRUPT, _hidden, _source_key, _write_cache, default_cache_dir,
    default_tfds_dir)

_ALG = "philox"  # TensorFlow's stateless RNG algorithm, explicit so that draws do not depend on the device

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_SPLITS = ("val", "test")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
_INDEX_FORMAT = 1
_FIELDS = ("keys", "labels", "names")


def default_resize_size(image_size):
    """The evaluation resize of the ImageNet recipe, 256 for 224, scaled: round(image_size * 256 / 224).

    Args:
        image_size: side of the square crops.

    Example:
    >>> default_resize_size(224), default_resize_size(32)
    (256, 37)
    """
    return int(round(image_size * 256 / 224))


@dataclasses.dataclass
class _Split:
    """One split's samples: `keys` (file paths, or (offset, size) rows of a tar), int32 labels and
    `names` (bytes: the file or member name, for error messages)."""

    keys: np.ndarray
    labels: np.ndarray
    names: np.ndarray

    def take(self, indices):
        return _Split(self.keys[indices], self.labels[indices], self.names[indices])


# ----------------------------------------------------------------------------- indexing


def _split_dirs(tree, path):
    """{"train": ..., "eval": ...} of a {split: {class: ...}} tree; checks the classes."""
    if "train" not in tree or not tree["train"]:
        raise DataError(f"{path} has no 'train' split: expected [<root>/]train/<class>/<image>")
    eval_split = next((s for s in EVAL_SPLITS if tree.get(s)), None)
    if eval_split is None:
        raise DataError(f"{path} has no evaluation split: expected [<root>/]val/<class>/<image> (or test/...)")
    train, test = set(tree["train"]), set(tree[eval_split])
    if train != test:
        raise DataError(f"{path}: class folders differ between train and {eval_split}; only in train: "
                        f"{sorted(train - test)[:10]}, only in {eval_split}: {sorted(test - train)[:10]}")
    for split in ("train", eval_split):
        for cls, files in tree[split].items():
            if not files:
                raise DataError(f"{path}: class folder {split}/{cls} holds no images")
    return eval_split, sorted(train)


def _flatten(tree, split, class_names):
    keys, labels, names = [], [], []
    for label, cls in enumerate(class_names):
        for name in sorted(tree[split][cls]):
            keys.append(tree[split][cls][name])
            labels.append(label)
            names.append(f"{split}/{cls}/{name}".encode())
    return keys, np.asarray(labels, np.int32), np.asarray(names, dtype=bytes)


def _index_directory(path):
    roots = [path] + sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    root = next((r for r in roots if os.path.isdir(os.path.join(r, "train"))), path)
    tree = {}
    for split in ("train",) + EVAL_SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        tree[split] = {}
        with os.scandir(split_dir) as classes:
            for cls in classes:
                if cls.is_dir() and not _hidden(cls.name):
                    with os.scandir(cls.path) as files:
                        tree[split][cls.name] = {f.name: f.path for f in files if f.is_file() and not _hidden(f.name)}
    eval_split, class_names = _split_dirs(tree, path)
    splits = {}
    for name, split in (("train", "train"), ("test", eval_split)):
        keys, labels, _ = _flatten(tree, split, class_names)
        splits[name] = _Split(np.asarray(keys, dtype=object), labels, np.asarray([k.encode() for k in keys], bytes))
    return splits, class_names


def _index_tar(path, cache_dir):
    cache_file = os.path.join(cache_dir or default_cache_dir(),
                              f"tar-index-{os.path.basename(path)}-{_source_key(path)}.npz")
    if os.path.exists(cache_file):
        try:
            with np.load(cache_file, allow_pickle=False) as saved:
                if int(saved["format"]) == _INDEX_FORMAT:
                    splits = {s: _Split(*(saved[f"{s}_{f}"] for f in _FIELDS)) for s in SPLITS}
                    log.info("Read the index of %s from %s", path, cache_file)
                    return splits, [str(n) for n in saved["class_names"]]
        except Exception as e:  # any unreadable index is rebuilt
            log.warning("Ignoring unreadable index %s (%s); rebuilding it", cache_file, e)
    tree = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.isfile() and 3 <= len(parts) <= 4 and parts[-3] in ("train",) + EVAL_SPLITS \
                        and not _hidden(parts[-1]):
                    tree.setdefault(parts[-3], {}).setdefault(parts[-2], {})[parts[-1]] = \
                        (member.offset_data, member.size)
    except tarfile.ReadError as e:
        raise DataError(f"{path} is not an uncompressed tar archive ({e}); a compressed archive cannot be read "
                        f"at random offsets: decompress it once (gunzip -k {path}) or extract it and pass the "
                        "folder") from e
    except _CORRUPT as e:
        raise DataError(f"{path} is not a readable tar archive (corrupt or truncated): {e}") from e
    eval_split, class_names = _split_dirs(tree, path)
    splits = {}
    for name, split in (("train", "train"), ("test", eval_split)):
        keys, labels, names = _flatten(tree, split, class_names)
        splits[name] = _Split(np.asarray(keys, np.int64).reshape(-1, 2), labels,
                              np.char.add(f"{os.path.basename(path)}:".encode(), names))
    _write_cache(cache_file, {"format": np.int64(_INDEX_FORMAT),
                              **{f"{s}_{f}": getattr(splits[s], f) for s in SPLITS for f in _FIELDS}},
                 class_names)
    return splits, class_names


# ----------------------------------------------------------------------------- the stream


class ImageStream:
    """A dataset read lazily from files: an index in memory, tf.data pipelines that decode on the fly.

    Made by `open_image_stream` or `open_tfds_stream`; see the module docstring for the recipe.

    Attributes:
        name: short name of the dataset.
        class_names: name of every label id.
        num_classes, num_train, num_test: sizes.
        train_labels: int32 array of the training labels, or None when unknown without a pass
            over the data (TFDS).
        test_labels: int32 array of the evaluation labels (TFDS: read once, on first use).
        image_size, resize_size: crop side and evaluation resize.
        mean, std: per-channel normalisation of the [0, 1]-scaled pixels.
        image_shape: (image_size, image_size, 3).
    """

    def __init__(self, name, class_names, train, test, *, image_size, resize_size, mean, std, reader,
                 num_train=None, num_test=None, shuffle_window=None, source=""):
        for arg, value in (("image_size", image_size), ("resize_size", resize_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise DataError(f"{arg} must be a positive integer, got {value!r}")
        if resize_size < image_size:
            raise DataError(f"resize_size ({resize_size}) must be at least image_size ({image_size}): the "
                            "evaluation crop is cut from the resized image")
        self.name, self.class_names = name, list(class_names)
        self._train, self._test = train, test
        self.image_size, self.resize_size = int(image_size), int(resize_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self._reader = reader
        self.num_train = len(train.labels) if num_train is None else int(num_train)
        self.num_test = len(test.labels) if num_test is None else int(num_test)
        self.shuffle_window = shuffle_window
        self.source = source
        self._stored_test_labels = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, 3)

    @property
    def train_labels(self):
        return None if self._train is None else self._train.labels

    @property
    def test_labels(self):
        if self._test is not None:
            return self._test.labels
        if self._stored_test_labels is None:  # TFDS: one pass over the labels, images not decoded
            self._stored_test_labels = self._reader.read_labels("test")
        return self._stored_test_labels

    def __repr__(self):
        return (f"ImageStream({self.name!r}, {self.num_classes} classes, {self.num_train} train / {self.num_test} "
                f"test images, {self.image_size}x{self.image_size})")

    def subset(self, max_train=None, max_test=None, seed=0):
        """A class-balanced subset of the index, drawn as `Splits.subset` draws it.

        Args:
            max_train: most training images kept; None keeps all.
            max_test: most evaluation images kept; None keeps all.
            seed: integer seed of the draw.
        """
        if max_train is None and max_test is None:
            return self
        if self._train is None:
            raise DataError(f"{self.name}: a subset needs every label in advance, which a TFDS stream does not have; "
                            "use the whole split")
        parts = {}
        for i, (split, data, limit) in enumerate((("train", self._train, max_train), ("test", self._test, max_test))):
            keep = _balanced_indices(data.labels, limit, self.num_classes, np.random.default_rng([seed, i]), split)
            parts[split] = data.take(keep)
        return ImageStream(self.name, self.class_names, parts["train"], parts["test"], image_size=self.image_size,
                           resize_size=self.resize_size, mean=self.mean, std=self.std, reader=self._reader,
                           source=self.source)

    # ------------------------------------------------------------------------- pipelines

    def train_dataset(self, batch_size, *, seed, views=1, epochs=1, initial_epoch=0, with_index=False,
                      contrast_negatives=0, drop_remainder=True, shard=None):
        """The training dataset for epochs `initial_epoch`..`epochs - 1`, back to back.

        Same arguments, outputs and batching as `keras_icckd.data.make_train_dataset` (batches never
        straddle two epochs; use `steps_per_epoch(num_train, batch_size)`), with the crop-and-flip
        recipe of the module docstring.

        Args:
            batch_size: samples per batch, 1..num_train.
            seed: integer seed of the order and the augmentations.
            views: 1, or 2 for a second, independently augmented view ("view2").
            epochs: epoch count of the whole run.
            initial_epoch: first epoch produced (when resuming).
            with_index: add "index", each sample's int32 position in the training split.
            contrast_negatives: K > 0 adds "contrast_index" (CRD's negatives, as in
                `make_train_dataset`); needs the training labels (not available for TFDS).
            drop_remainder: drop each epoch's last partial batch.
            shard: None, or (process index, process count): `batch_size` is the global batch, of
                which this process reads and decodes only its contiguous share (as the NumPy
                pipeline's `shard`; several JAX processes, whose Keras does not split tf.data).
        """
        import tensorflow as tf

        from keras_icckd.data.pipeline import _OtherClassSampler

        self._check_train(batch_size, views, epochs, initial_epoch, contrast_negatives)
        sampler = _OtherClassSampler(self.train_labels, contrast_negatives, seed) if contrast_negatives else None
        n, seed_t = self.num_train, tf.constant(int(seed), tf.int64)
        kept = n // batch_size * batch_size if drop_remainder else n  # so that batches never straddle epochs
        mine, local = self._shard(kept, batch_size, shard)
        samples = self._reader.samples("train", self._train)

        def epoch_keys(e):
            return tf.stack([seed_t, e])

        if self._train is not None:
            def epoch(e):
                order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int32), seed=epoch_keys(e),
                                                                 alg=_ALG)
                order = order[:kept] if mine is None else tf.boolean_mask(order[:kept], mine)
                return tf.data.Dataset.from_tensor_slices((order, tf.fill(tf.shape(order), e)))

            def load(index, e):
                data, label, name = samples(index)
                return tuple(self._augment(data, name, index, epoch_keys(e), views)), label, index, e
        else:
            window = int(self.shuffle_window)

            def epoch(e):
                def shuffle(w, batch):
                    key = tf.random.experimental.stateless_fold_in(epoch_keys(e), w, alg=_ALG)
                    order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(batch[0])[0]), seed=key,
                                                                     alg=_ALG)
                    return tuple(tf.gather(t, order) for t in batch)

                windows = samples.take(kept).batch(window).enumerate().map(shuffle).unbatch()
                # positions in the shuffled epoch, kept before decoding
                return _keep(windows, mine).map(lambda index, data, label: (index, data, label, e))

            def load(index, data, label, e):
                name = tf.strings.format("{} example {}", (self.name, index))
                return tuple(self._augment(data, name, index, epoch_keys(e), views)), label, index, e

        def assemble(images, labels, index, e):
            return model_inputs(images, labels, index if with_index else None, sampler(index, e[0]) if sampler else None)

        ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=drop_remainder).map(assemble, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, batch_size, split="test", shard=None):
        """The evaluation dataset: in order, resize + centre crop, normalised, last partial batch kept.

        Args:
            batch_size: samples per batch.
            split: "test" (the evaluation split) or "train" (training images, evaluation transform).
            shard: None, or (process index, process count): this process's share of every batch,
                as in `train_dataset`; every batch, the last one included, must split evenly.
        """
        import tensorflow as tf

        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        data = self._train if split == "train" else self._test
        count = self.num_train if split == "train" else self.num_test
        mine, local = self._shard(count, batch_size, shard)
        samples = self._reader.samples(split, data)

        def center(raw, label, name):
            return self._center(raw, name), label

        if data is not None:
            indices = tf.range(count) if mine is None else tf.boolean_mask(tf.range(count), mine)
            ds = tf.data.Dataset.from_tensor_slices(indices).map(lambda i: center(*samples(i)),
                                                                 num_parallel_calls=tf.data.AUTOTUNE,
                                                                 deterministic=True)
        else:
            ds = _keep(samples, mine).map(
                lambda index, raw, label: center(raw, label, tf.strings.format("{} example {}", (self.name, index))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local).prefetch(tf.data.AUTOTUNE)

    @staticmethod
    def _shard(n, batch_size, shard):
        """(None, batch_size) without `shard`; else (a bool tensor (n,) of the positions this process
        keeps, `numpy_pipeline.shard_mask`, and its share of a batch)."""
        import tensorflow as tf

        if shard is None:
            return None, batch_size
        try:
            return tf.constant(shard_mask(n, batch_size, shard)), batch_size // shard[1]
        except ValueError as e:
            raise DataError(str(e)) from None

    def eval_arrays(self, split="test", batch_size=64):
        """(float32 images (N, S, S, 3) normalised, int32 labels) of a whole split, evaluation transform.

        For the small samples that must sit in memory (diagnostics, export checks): take a `subset`
        first.

        Args:
            split: "test" or "train".
            batch_size: decoding batch size.
        """
        images, labels = [], []
        for x, y in self.eval_dataset(batch_size, split).as_numpy_iterator():
            images.append(x)
            labels.append(y)
        return np.concatenate(images), np.concatenate(labels).astype(np.int32)

    # ------------------------------------------------------------------------- transforms

    def _check_train(self, batch_size, views, epochs, initial_epoch, contrast_negatives):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or not 1 <= batch_size <= self.num_train:
            raise DataError(f"batch_size must be an integer between 1 and the number of training images "
                            f"({self.num_train}), got {batch_size!r}")
        if views not in (1, 2):
            raise DataError(f"views must be 1 or 2, got {views!r}")
        if int(epochs) != epochs or not 0 <= initial_epoch < epochs:
            raise DataError(f"initial_epoch must be in [0, epochs) with integer epochs, got initial_epoch="
                            f"{initial_epoch!r}, epochs={epochs!r}")
        if isinstance(contrast_negatives, bool) or int(contrast_negatives) != contrast_negatives \
                or contrast_negatives < 0:
            raise DataError(f"contrast_negatives must be an integer >= 0 (0: off), got {contrast_negatives!r}")
        if contrast_negatives and self._train is None:
            raise DataError(f"{self.name}: contrast_negatives (CRD's negatives) needs every training label in "
                            "advance, which a TFDS stream does not have; use an image folder or tar archive")

    def _normalize(self, pixels):
        import tensorflow as tf

        scaled = tf.cast(pixels, tf.float32) / 255.0
        return (scaled - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    def _resize(self, image, height, width):
        import tensorflow as tf

        return tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)

    def _augment(self, data, name, index, key, views):
        """`views` RandomResizedCrop + flip views of one encoded image, float32 normalised."""
        import tensorflow as tf


        draws = []
        for v in range(views):
            view_key = tf.random.experimental.stateless_fold_in(key, v + 1, alg=_ALG)
            sample_key = tf.random.experimental.stateless_fold_in(view_key, tf.cast(index, tf.int64), alg=_ALG)
            draws.append(tf.random.stateless_uniform([4 * CROP_TRIES + 1], sample_key, alg=_ALG, dtype=tf.float64))

        def finish(crop, u):
            image = self._resize(crop, self.image_size, self.image_size)
            image = tf.cond(u[-1] < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)
            return self._normalize(image)

        data = _checked(data, name)
        if views == 1:
            def jpeg():
                shape = tf.image.extract_jpeg_shape(data)
                box = crop_box(shape[0], shape[1], draws[0])
                return tf.image.decode_and_crop_jpeg(data, box, channels=3)

            def other():
                image = _decode(data)
                box = crop_box(tf.shape(image)[0], tf.shape(image)[1], draws[0])
                return tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])

            crop = tf.cond(tf.io.is_jpeg(data), jpeg, other)
            crop.set_shape([None, None, 3])
            return [finish(crop, draws[0])]
        image = _decode(data)
        out = []
        for u in draws:
            box = crop_box(tf.shape(image)[0], tf.shape(image)[1], u)
            out.append(finish(tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3]), u))
        return out

    def _center(self, data, name):
        """Resize of the shorter side to resize_size, centre crop of image_size, normalised."""
        import tensorflow as tf

        image = _decode(_checked(data, name))
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
        short = tf.constant(float(self.resize_size), tf.float64)
        # torchvision: the shorter side becomes resize_size, the longer int(resize_size * long / short)
        new_h = tf.where(height <= width, self.resize_size, tf.cast(tf.floor(short * h / w), tf.int32))
        new_w = tf.where(height <= width, tf.cast(tf.floor(short * w / h), tf.int32), self.resize_size)
        image = self._resize(image, new_h, new_w)
        top = tf.cast(tf.round(tf.cast(new_h - self.image_size, tf.float64) / 2.0), tf.int32)
        left = tf.cast(tf.round(tf.cast(new_w - self.image_size, tf.float64) / 2.0), tf.int32)
        crop = tf.slice(image, [top, left, 0], [self.image_size, self.image_size, 3])
        crop.set_shape(self.image_shape)
        return self._normalize(crop)


def _keep(ds, mine):
    """The elements of `ds` at the positions where the bool tensor `mine` is True (all when None)."""
    import tensorflow as tf

    if mine is None:
        return ds
    return ds.enumerate().filter(lambda i, element: tf.gather(mine, i)).map(lambda i, element: element)


def _checked(data, name):
    """`data`, after an assertion that it starts like a JPEG, PNG, GIF or BMP file (naming the file if not)."""
    import tensorflow as tf

    head = tf.strings.substr(data, 0, 4)
    known = tf.io.is_jpeg(data) | tf.equal(head, b"\x89PNG") | tf.equal(head, b"GIF8") | \
        tf.equal(tf.strings.substr(data, 0, 2), b"BM")
    check = tf.debugging.Assert(known, ["not a JPEG, PNG, GIF or BMP image:", name])
    with tf.control_dependencies([check]):
        return tf.identity(data)


def _decode(data):
    """Any image file TensorFlow reads -> uint8 (H, W, 3), greyscale and alpha dropped to RGB."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def crop_box(height, width, u, scale=CROP_SCALE, ratio=CROP_RATIO):
    """torchvision's RandomResizedCrop box [top, left, height, width] from uniform draws, in TF.

    Ten tries: area fraction s = scale[0] + u * (scale[1] - scale[0]), log aspect ratio uniform in
    log(ratio); w = round(sqrt(A s r)), h = round(sqrt(A s / r)) (half to even, as Python's round);
    the first try that fits is placed at top = floor(u * (H - h + 1)), left = floor(u * (W - w + 1));
    if none fits, the largest centred crop with a ratio clamped to `ratio`.

    Args:
        height, width: int32 scalars, the image size.
        u: float64 (4 * CROP_TRIES [+ more]) uniforms in [0, 1): for try t, u[4t .. 4t + 3] are
            the scale, ratio, top and left draws.
        scale: range of the crop's area fraction.
        ratio: range of the crop's aspect ratio (width / height).

    Returns:
        int32 (4,): top, left, height, width.
    """
    import tensorflow as tf

    u = tf.reshape(u[:4 * CROP_TRIES], [CROP_TRIES, 4])
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = h_img * w_img
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
    aspect = tf.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    w = tf.round(tf.sqrt(target * aspect))
    h = tf.round(tf.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    top = tf.floor(u[:, 2] * (h_img - h + 1))
    left = tf.floor(u[:, 3] * (w_img - w + 1))
    first = tf.argmax(tf.cast(fits, tf.int32))
    tried = tf.cast(tf.stack([top[first], left[first], h[first], w[first]]), tf.int32)
    in_ratio = w_img / h_img
    fw = tf.where(in_ratio < ratio[0], w_img, tf.where(in_ratio > ratio[1], tf.round(h_img * ratio[1]), w_img))
    fh = tf.where(in_ratio < ratio[0], tf.round(w_img / ratio[0]), h_img)
    fallback = tf.cast(tf.stack([tf.floor((h_img - fh) / 2), tf.floor((w_img - fw) / 2), fh, fw]), tf.int32)
    return tf.where(tf.reduce_any(fits), tried, fallback)


# ----------------------------------------------------------------------------- readers


class _FileReader:
    """Samples of a directory index: tf.io.read_file of each path."""

    def samples(self, split, data):
        import tensorflow as tf

        paths, labels = tf.constant(data.keys.astype(str)), tf.constant(data.labels)
        return lambda index: (tf.io.read_file(tf.gather(paths, index)), tf.gather(labels, index),
                              tf.gather(paths, index))


class _TarReader:
    """Samples of a tar index: the member's bytes read at its offset (os.pread, no extraction)."""

    def __init__(self, path):
        self.path = path
        self._fd = None

    def _read(self, offset, size):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, int(size), int(offset))
        if len(data) != size:
            raise DataError(f"{self.path} is shorter than its index says (truncated since it was indexed?)")
        return np.array(data, dtype=object)

    def samples(self, split, data):
        import tensorflow as tf

        rows, labels, names = tf.constant(data.keys), tf.constant(data.labels), tf.constant(data.names)

        def sample(index):
            row = tf.gather(rows, index)
            raw = tf.numpy_function(self._read, [row[0], row[1]], tf.string, stateful=False)
            raw.set_shape([])
            return raw, tf.gather(labels, index), tf.gather(names, index)

        return sample

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


class _TfdsReader:
    """Samples of a TFDS split, in stored order: (index, encoded image, label), images not decoded."""

    def __init__(self, builder, splits, image_key, label_key):
        self.builder, self.splits = builder, splits
        self.image_key, self.label_key = image_key, label_key

    def _dataset(self, split, decode_images=False):
        import tensorflow_datasets as tfds

        decoders = None if decode_images else {self.image_key: tfds.decode.SkipDecoding()}
        return self.builder.as_dataset(split=self.splits[split], shuffle_files=False, decoders=decoders)

    def samples(self, split, data):
        import tensorflow as tf

        ds = self._dataset(split).map(lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)))
        return ds.enumerate().map(lambda i, ex: (tf.cast(i, tf.int32), ex[0], ex[1]))

    def read_labels(self, split):
        import tensorflow as tf

        ds = self._dataset(split).map(lambda ex: tf.cast(ex[self.label_key], tf.int32)).batch(4096)
        return np.concatenate([b for b in ds.as_numpy_iterator()] or [np.zeros(0, np.int32)])


# ----------------------------------------------------------------------------- openers


def open_image_stream(path, image_size=224, resize_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      cache_dir=None):
    """Indexes an ImageNet-style folder or uncompressed tar archive for streaming (see the module docstring).

    Layout `[<root>/]train/<class>/<image>` and `[<root>/]val/<class>/<image>` (or `test/`);
    images of any size and format TensorFlow decodes (JPEG, PNG, GIF, BMP; greyscale and CMYK
    become RGB). Class ids follow the sorted class folder names, samples within a class the
    sorted file names.

    Args:
        path: a directory, or a .tar archive (a .tar.gz is refused: no random access).
        image_size: side of the square crops fed to the network.
        resize_size: shorter side of the evaluation resize; default `default_resize_size(image_size)`.
        mean: per-channel mean of the [0, 1]-scaled images (default ImageNet's).
        std: per-channel standard deviation (default ImageNet's).
        cache_dir: where a tar archive's index is cached; default `default_cache_dir()`.

    Returns:
        An `ImageStream` named after the folder or archive.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"Image folder not found: {path}")
    lower = path.lower()
    if os.path.isdir(path):
        (splits, class_names), reader = _index_directory(path), _FileReader()
    elif lower.endswith((".tar.gz", ".tgz")):
        raise DataError(f"{path} is compressed, so its images cannot be read at random offsets: decompress it once "
                        f"(gunzip -k {path}) and stream the .tar, or extract it and stream the folder")
    elif lower.endswith(".tar"):
        (splits, class_names), reader = _index_tar(path, cache_dir), _TarReader(path)
    else:
        raise DataError(f"{path} is neither a directory nor a .tar archive")
    name = os.path.basename(os.path.normpath(path))
    name = name[:-4] if name.lower().endswith(".tar") else name
    log.info("Indexed %s: %d train / %d test images, %d classes", path, len(splits["train"].labels),
             len(splits["test"].labels), len(class_names))
    return ImageStream(name, class_names, splits["train"], splits["test"], image_size=image_size,
                       resize_size=resize_size or default_resize_size(image_size), mean=mean, std=std,
                       reader=reader, source=path)


def open_tfds_stream(name, data_dir=None, train_split="train", test_split="validation", image_key="image",
                     label_key="label", image_size=224, resize_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     shuffle_window=10_000):
    """Opens a prepared TFDS dataset for streaming (images of any size); never downloads.

    Examples are read in their stored order (TFDS shuffles them when it prepares a dataset) and
    shuffled within windows of `shuffle_window` examples per epoch (see the module docstring);
    the encoded images are decoded in the pipeline. The training labels are not known in advance,
    so CRD's negatives and subsets are refused.

    Args:
        name: TFDS name, optionally with config and version.
        data_dir: the TFDS data directory; None means `default_tfds_dir()`.
        train_split: split read as training data.
        test_split: split read as evaluation data (ImageNet's is "validation").
        image_key: feature holding the image.
        label_key: feature holding the integer label.
        image_size, resize_size, mean, std: as in `open_image_stream`.
        shuffle_window: examples shuffled together in training (memory: that many encoded images).
    """
    from keras_icckd.data.sources import _prepared_tfds_builder

    if isinstance(shuffle_window, bool) or int(shuffle_window) != shuffle_window or shuffle_window < 1:
        raise DataError(f"shuffle_window must be a positive integer, got {shuffle_window!r}")
    data_dir = os.fspath(data_dir or default_tfds_dir())
    builder = _prepared_tfds_builder(name, data_dir, (train_split, test_split), (image_key, label_key))
    info = builder.info
    class_names = list(getattr(info.features[label_key], "names", None) or [])
    if not class_names:
        raise DataError(f"TFDS dataset '{name}': feature {label_key!r} is not a ClassLabel with a known class count")
    reader = _TfdsReader(builder, {"train": train_split, "test": test_split}, image_key, label_key)
    return ImageStream(name, class_names, None, None, image_size=image_size,
                       resize_size=resize_size or default_resize_size(image_size), mean=mean, std=std,
                       reader=reader, num_train=info.splits[train_split].num_examples,
                       num_test=info.splits[test_split].num_examples, shuffle_window=int(shuffle_window),
                       source=f"{data_dir} ({name})")
