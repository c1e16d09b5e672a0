"""tf.data input pipelines over in-memory uint8 images, for `fit` on any Keras backend.

Training data is reproducible element by element: epoch e visits the samples in the order
`stateless_shuffle(range(N), seed=(seed, e))`, and the crop offsets and flip of sample i, view v in
epoch e are drawn by stateless ops from (seed, e, v) and picked by i. Output therefore does not
depend on parallelism, and a run resumed at `initial_epoch` sees exactly the data it would have
seen without interruption.
"""

import numpy as np
import tensorflow as tf

PAD = 4
_ALG = "philox"  # explicit, so that draws do not depend on the device
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: separates the hash inputs


def steps_per_epoch(n, batch_size, drop_remainder=True):
    """Batches per epoch of `make_train_dataset`.

    Args:
        n: number of training samples.
        batch_size: samples per batch.
        drop_remainder: whether the last partial batch is dropped.
    """
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _check(images, labels, batch_size, mean, std, training):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},) like images, got {labels.shape}")
    upper = len(images) if training else None
    if int(batch_size) != batch_size or batch_size < 1 or (upper is not None and batch_size > upper):
        limit = f"between 1 and the number of training images ({upper})" if training else "at least 1"
        raise ValueError(f"batch_size must be an integer {limit}, got {batch_size!r}")
    channels = images.shape[-1]
    for arg, value in (("mean", mean), ("std", std)):
        if len(value) != channels:
            raise ValueError(f"{arg} must have one value per channel ({channels}), got {value!r}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")
    return images, labels.astype(np.int32)


def _mix32(x):
    """A bijective 32-bit integer finaliser (lowbias32): every output bit depends on every input bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def _uint32(value):
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(value, tf.int64), 0xFFFFFFFF), tf.uint32)


class _OtherClassSampler:
    """Draws, for sample i in epoch e, `count` indices of samples whose label differs from i's.

    Draw k of sample i in epoch e is a hash of (seed, e, i, k), so it depends on nothing else (not
    on the batch size or the position of i in the batch). Samples are drawn uniformly with
    replacement among the other classes, as in the CRD authors' sampler: with the indices sorted
    by class, a uniform u in [0, N - n_c) skips the block of class c.
    """

    def __init__(self, labels, count, seed):
        labels = np.asarray(labels)
        _, classes = np.unique(labels, return_inverse=True)
        sizes = np.bincount(classes)
        if len(sizes) < 2:
            raise ValueError("contrast_negatives needs at least two classes in labels; got only "
                             f"label {labels[0]!r}")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.by_class = tf.constant(np.argsort(classes, kind="stable").astype(np.int32))
        self.start = tf.constant(starts[classes].astype(np.int64))  # per sample: its class block
        self.size = tf.constant(sizes[classes].astype(np.int64))
        self.others = tf.constant((len(labels) - sizes[classes]).astype(np.float64))
        self.count = int(count)
        seed = int(seed)
        self.key = _mix32(_mix32(_uint32(seed) ^ tf.constant(_GOLDEN, tf.uint32)) ^ _uint32(seed >> 32))

    def __call__(self, index, epoch):
        """int32 (B, count) indices of other-class samples for the int32 (B,) `index` in `epoch`."""
        h = _mix32(self.key ^ _uint32(epoch))
        h = _mix32(h ^ tf.cast(index, tf.uint32))[:, None]
        h = _mix32(h ^ tf.cast(tf.range(self.count), tf.uint32)[None] * tf.constant(_GOLDEN, tf.uint32))
        h = _mix32(h + tf.constant(_GOLDEN, tf.uint32))
        others = tf.gather(self.others, index)[:, None]
        u = tf.cast(tf.floor(tf.cast(h, tf.float64) * others / 2.0 ** 32), tf.int64)
        start, size = tf.gather(self.start, index)[:, None], tf.gather(self.size, index)[:, None]
        return tf.gather(self.by_class, tf.where(u >= start, u + size, u))


def _normalize(pixels, mean, std):
    scaled = tf.cast(pixels, tf.float32) / 255.0
    return (scaled - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _crop_flip(images, params):
    """Pads by PAD with zeros, crops back to size at per-sample offsets, flips per sample.

    Args:
        images: uint8 (B, H, W, C).
        params: int32 (B, 3): row offset, column offset (both in [0, 2 * PAD]), flip bit.
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = params[:, :1] + tf.range(height)[None]
    cols = params[:, 1:2] + tf.range(width)[None]
    cols = tf.where(params[:, 2:] > 0, tf.reverse(cols, axis=[1]), cols)
    return tf.gather(tf.gather(padded, rows, batch_dims=1), cols, axis=2, batch_dims=1)


def make_train_dataset(images, labels, batch_size, *, seed, mean, std, views=1, augment=True, epochs=1,
                       initial_epoch=0, with_index=False, contrast_negatives=0, drop_remainder=True):
    """The training dataset for epochs `initial_epoch`..`epochs - 1`, back to back.

    Use with `fit(ds, epochs=epochs, initial_epoch=initial_epoch,
    steps_per_epoch=steps_per_epoch(N, batch_size))`. Each epoch shuffles statelessly, augments
    with the CIFAR recipe (zero-pad 4, random crop back to size, random horizontal flip), scales
    to [0, 1] and normalises per channel. Batches never straddle two epochs.

    Args:
        images: uint8 array (N, H, W, C), kept in memory.
        labels: integer array (N,).
        batch_size: samples per batch, 1..N.
        seed: integer seed of the shuffles and augmentations.
        mean: per-channel mean of the [0, 1]-scaled images.
        std: per-channel standard deviation.
        views: 1, or 2 for a second, independently augmented view ("view2").
        augment: crop and flip; False only normalises.
        epochs: epoch count of the whole run.
        initial_epoch: first epoch produced (when resuming).
        with_index: add "index", each sample's int32 position in `images`.
        contrast_negatives: K > 0 adds "contrast_index", int32 (B, K): for each sample, K positions
            of samples of *other* classes, drawn uniformly with replacement and statelessly from
            (seed, epoch, the sample's index) (the negatives of CRD). 0 (default): off.
        drop_remainder: drop each epoch's last partial batch.

    Returns:
        A dataset of `(images, labels)` (float32 (B, H, W, C), int32 (B,)) when views == 1, not
        with_index and no contrast_negatives, else
        `({"image", ["view2"], ["index"], ["contrast_index"]}, labels)`.

    Example:
        >>> x = np.zeros((8, 32, 32, 3), np.uint8)
        >>> ds = make_train_dataset(x, np.zeros(8), 4, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3, views=2)
        >>> sorted(next(iter(ds))[0])
        ['image', 'view2']
    """
    images, labels = _check(images, labels, batch_size, mean, std, training=True)
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views!r}")
    if int(epochs) != epochs or not 0 <= initial_epoch < epochs:
        raise ValueError(f"initial_epoch must be in [0, epochs) with integer epochs, got initial_epoch="
                         f"{initial_epoch!r}, epochs={epochs!r}")
    if isinstance(contrast_negatives, bool) or int(contrast_negatives) != contrast_negatives \
            or contrast_negatives < 0:
        raise ValueError(f"contrast_negatives must be an integer >= 0 (0: off), got {contrast_negatives!r}")
    sampler = _OtherClassSampler(labels, contrast_negatives, seed) if contrast_negatives else None
    n = len(images)
    pixels, targets = tf.constant(images), tf.constant(labels)
    seed = tf.constant(int(seed), tf.int64)
    room = 2 * PAD + 1

    def epoch(e):
        key = tf.stack([seed, e])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int32), seed=key, alg=_ALG)
        params = []
        for v in range(views):  # one draw per view, so view 1 is the same whatever `views` is
            view_key = tf.random.experimental.stateless_fold_in(key, v + 1, alg=_ALG)
            draws = tf.random.stateless_uniform([n, 3], view_key, alg=_ALG) * [room, room, 2]
            params.append(tf.gather(tf.cast(draws, tf.int32), order))
        slices = (order, tf.stack(params, axis=1), tf.fill([n], e))
        return tf.data.Dataset.from_tensor_slices(slices).batch(batch_size, drop_remainder)

    def assemble(index, params, epoch_of_batch):
        batch = tf.gather(pixels, index)
        out = [_normalize(_crop_flip(batch, params[:, v]) if augment else batch, mean, std) for v in range(views)]
        y = tf.gather(targets, index)
        if views == 1 and not with_index and not sampler:
            return out[0], y
        x = {"image": out[0]}
        if views == 2:
            x["view2"] = out[1]
        if with_index:
            x["index"] = index
        if sampler:
            x["contrast_index"] = sampler(index, epoch_of_batch[0])
        return x, y

    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch)
    ds = ds.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(images, labels, batch_size, *, mean, std):
    """The evaluation dataset: in order, normalised, no augmentation, last partial batch kept.

    Args:
        images: uint8 array (N, H, W, C).
        labels: integer array (N,).
        batch_size: samples per batch.
        mean: per-channel mean of the [0, 1]-scaled images.
        std: per-channel standard deviation.
    """
    images, labels = _check(images, labels, batch_size, mean, std, training=False)
    pixels, targets = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.range(len(images)).batch(batch_size)
    ds = ds.map(lambda i: (_normalize(tf.gather(pixels, i), mean, std), tf.gather(targets, i)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
