"""tf.data input pipelines over in-memory uint8 images, for `fit` on any Keras backend.

Training data is reproducible element by element: the order of epoch e, the crop offsets and
flip of sample i, view v in epoch e, and CRD's negatives of sample i are integer hashes of
(seed, e, i) (defined in `keras_icckd.data.numpy_pipeline`, whose TensorFlow-free pipeline
gives the same batches bit for bit). Output therefore does not depend on parallelism, and a
run resumed at `initial_epoch` sees exactly the data it would have seen without interruption.
"""

import numpy as np
import tensorflow as tf

from keras_icckd.data import numpy_pipeline as draws
from keras_icckd.data.numpy_pipeline import PAD
from keras_icckd.data.numpy_pipeline import steps_per_epoch  # noqa: F401  (part of this module's API)


def _mix32(x):
    """`numpy_pipeline.mix32` in TensorFlow ops on uint32 tensors."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def _u32(value):
    return tf.constant(int(value) & 0xFFFFFFFF, tf.uint32)


def _sample_hashes(key, epoch, index):
    """`numpy_pipeline.sample_hashes` for a uint32 run key, an int64 epoch and int32 indices."""
    epoch_key = _mix32(tf.bitwise.bitwise_xor(key, tf.cast(epoch, tf.uint32)))
    return _mix32(tf.bitwise.bitwise_xor(epoch_key, tf.cast(index, tf.uint32)))


def _crop_flip_params(hashes, view):
    """`numpy_pipeline.crop_flip_params` from the samples' hashes: int32 (B, 3)."""
    d = _mix32(tf.bitwise.bitwise_xor(hashes, _u32(draws.VIEW_STREAM + view)))
    room = tf.constant(2 * PAD + 1, tf.uint32)
    shift = tf.bitwise.right_shift
    rows = shift(tf.bitwise.bitwise_and(d, _u32(0xFFFF)) * room, _u32(16))
    cols = shift(tf.bitwise.bitwise_and(shift(d, _u32(16)), _u32(0x7FFF)) * room, _u32(15))
    return tf.cast(tf.stack([rows, cols, shift(d, _u32(31))], axis=1), tf.int32)


class _OtherClassSampler:
    """`numpy_pipeline.OtherClassSampler` in TensorFlow ops (the same draws)."""

    def __init__(self, labels, count, seed):
        layout = draws.OtherClassSampler(labels, count, seed)
        self.by_class, self.start = tf.constant(layout.by_class), tf.constant(layout.start)
        self.size, self.others = tf.constant(layout.size), tf.constant(layout.others)
        self.salt = tf.constant(layout.draw_salt)
        self.key = _u32(draws.seed_key(seed))

    def __call__(self, index, epoch):
        """int32 (B, count) indices of other-class samples for the int32 (B,) `index` in `epoch`."""
        h = _sample_hashes(self.key, epoch, index)[:, None]
        h = _mix32(_mix32(tf.bitwise.bitwise_xor(h, self.salt[None])) + _u32(draws.GOLDEN))
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
    steps_per_epoch=steps_per_epoch(N, batch_size))`. `numpy_pipeline.make_train_dataset` gives
    the same batches without TensorFlow. Each epoch shuffles statelessly, augments
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
    images, labels = draws.check_arrays(images, labels, batch_size, mean, std, training=True)
    draws.check_train_options(views, epochs, initial_epoch, contrast_negatives)
    sampler = _OtherClassSampler(labels, contrast_negatives, seed) if contrast_negatives else None
    n = len(images)
    pixels, targets = tf.constant(images), tf.constant(labels)
    key = _u32(draws.seed_key(seed))
    shuffle_stream = _u32(draws.SHUFFLE_STREAM)

    def epoch(e):
        hashes = _sample_hashes(key, e, tf.range(n, dtype=tf.int32))
        sort_keys = tf.cast(_mix32(tf.bitwise.bitwise_xor(hashes, shuffle_stream)), tf.int64)
        order = tf.cast(tf.argsort(sort_keys, stable=True), tf.int32)
        # one draw per view, so view 1 is the same whatever `views` is
        params = [tf.gather(_crop_flip_params(hashes, v), order) for v in range(views)]
        slices = (order, tf.stack(params, axis=1), tf.fill([n], e))
        return tf.data.Dataset.from_tensor_slices(slices).batch(batch_size, drop_remainder)

    def assemble(index, params, epoch_of_batch):
        batch = tf.gather(pixels, index)
        out = [_normalize(_crop_flip(batch, params[:, v]) if augment else batch, mean, std) for v in range(views)]
        return draws.model_inputs(out, tf.gather(targets, index), index if with_index else None,
                                  sampler(index, epoch_of_batch[0]) if sampler else None)

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
    images, labels = draws.check_arrays(images, labels, batch_size, mean, std, training=False)
    pixels, targets = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.range(len(images)).batch(batch_size)
    ds = ds.map(lambda i: (_normalize(tf.gather(pixels, i), mean, std), tf.gather(targets, i)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
