"""TensorFlow-free input pipelines: `keras.utils.PyDataset`s over in-memory uint8 images.

The same batches as the tf.data pipelines of `keras_icckd.data.pipeline`, bit for bit, built
with NumPy alone, so that training on the JAX backend needs no TensorFlow. Both pipelines draw
everything random from one integer hash of (seed, epoch, sample index), defined here:

- `mix32` is the lowbias32 finaliser, a bijection of 32-bit integers in which every output bit
  depends on every input bit; the run's key is `seed_key(seed)` = mix32(mix32(lo ^ 0x9E3779B9) ^ hi)
  of the seed's low and high 32 bits, and epoch e's key is mix32(key ^ e).
- Sample i of epoch e hashes to h = mix32(epoch_key ^ i). The epoch visits the samples in the
  order of the sort keys mix32(h ^ 0x85EBCA6B) (a stable sort: ties keep index order).
- View v (0 or 1) of sample i in epoch e is cropped and flipped by d = mix32(h ^ (0xC2B2AE35 + v)):
  row offset ((d & 0xFFFF) * 9) >> 16, column offset (((d >> 16) & 0x7FFF) * 9) >> 15, both in
  [0, 2 * PAD], and a horizontal flip when bit 31 of d is set.
- CRD's negatives: draw k of sample i is a uniform index among the samples of other classes,
  from mix32(mix32(mix32(h ^ k * 0x9E3779B9) + 0x9E3779B9)) (see `OtherClassSampler`).

Nothing depends on the batch size, the batch a sample lands in, threads or the device, and a
run resumed at `initial_epoch` sees exactly the batches it would have seen without interruption.

Why PyDataset rather than grain: no dependency beyond Keras (grain is one more package, with
its own native array_record dependency), and every batch is one vectorised NumPy computation
(a gather, a pad, a fancy-indexed crop, a normalisation) that threads of this module prepare
ahead of the training step (`threads`, `prefetch`).
"""

import concurrent.futures
import os
import threading

import keras
import numpy as np

PAD = 4
GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: separates the hash inputs
SHUFFLE_STREAM = 0x85EBCA6B  # the sort keys of the shuffle
VIEW_STREAM = 0xC2B2AE35  # + view: the crop and flip draws
_U32 = np.uint32


def steps_per_epoch(n, batch_size, drop_remainder=True):
    """Batches per epoch of `make_train_dataset` (of either pipeline).

    Args:
        n: number of training samples.
        batch_size: samples per batch.
        drop_remainder: whether the last partial batch is dropped.

    Example:
        >>> steps_per_epoch(50000, 64), steps_per_epoch(10, 4, drop_remainder=False)
        (781, 3)
    """
    return n // batch_size if drop_remainder else -(-n // batch_size)


def check_arrays(images, labels, batch_size, mean, std, training):
    """Validates the arguments shared by both pipelines; returns (uint8 images, int32 labels)."""
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


def check_train_options(views, epochs, initial_epoch, contrast_negatives):
    """Validates the training options shared by both pipelines."""
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views!r}")
    if int(epochs) != epochs or not 0 <= initial_epoch < epochs:
        raise ValueError(f"initial_epoch must be in [0, epochs) with integer epochs, got initial_epoch="
                         f"{initial_epoch!r}, epochs={epochs!r}")
    if isinstance(contrast_negatives, bool) or int(contrast_negatives) != contrast_negatives \
            or contrast_negatives < 0:
        raise ValueError(f"contrast_negatives must be an integer >= 0 (0: off), got {contrast_negatives!r}")


def mix32(x):
    """lowbias32 on uint32 arrays: a bijective finaliser, every output bit depends on every input bit.

    Example:
        >>> int(mix32(np.uint32(0))), int(mix32(np.uint32(1)))
        (0, 1753845952)
    """
    x = np.asarray(x, _U32)
    with np.errstate(over="ignore"):  # multiplication modulo 2^32 is the point
        x = x ^ (x >> _U32(16))
        x = x * _U32(0x7FEB352D)
        x = x ^ (x >> _U32(15))
        x = x * _U32(0x846CA68B)
        return x ^ (x >> _U32(16))


def seed_key(seed):
    """The run's uint32 key from an integer seed (its low and high 32 bits)."""
    seed = int(seed)
    return mix32(mix32(_U32(seed & 0xFFFFFFFF) ^ _U32(GOLDEN)) ^ _U32((seed >> 32) & 0xFFFFFFFF))


def sample_hashes(seed, epoch, index):
    """h = mix32(mix32(seed_key ^ epoch) ^ index) of the samples `index` in `epoch` (uint32)."""
    epoch_key = mix32(seed_key(seed) ^ _U32(int(epoch) & 0xFFFFFFFF))
    return mix32(epoch_key ^ np.asarray(index).astype(_U32))


def shuffle_order(seed, epoch, n):
    """int32 (n,): the order in which epoch `epoch` visits samples 0..n-1."""
    keys = mix32(sample_hashes(seed, epoch, np.arange(n)) ^ _U32(SHUFFLE_STREAM))
    return np.argsort(keys, kind="stable").astype(np.int32)


def crop_flip_params(seed, epoch, index, view):
    """int32 (B, 3): row offset, column offset (in [0, 2 * PAD]) and flip bit of each sample."""
    d = mix32(sample_hashes(seed, epoch, index) ^ _U32(VIEW_STREAM + view))
    room = 2 * PAD + 1
    rows = ((d & _U32(0xFFFF)) * _U32(room)) >> _U32(16)
    cols = (((d >> _U32(16)) & _U32(0x7FFF)) * _U32(room)) >> _U32(15)
    return np.stack([rows, cols, d >> _U32(31)], axis=1).astype(np.int32)


class OtherClassSampler:
    """Draws, for sample i in epoch e, `count` indices of samples whose label differs from i's.

    Draw k of sample i in epoch e is a hash of (seed, e, i, k), so it depends on nothing else (not
    on the batch size or the position of i in the batch). Samples are drawn uniformly with
    replacement among the other classes, as in the CRD authors' sampler: with the indices sorted
    by class, a uniform u in [0, N - n_c) skips the block of class c. The class layout
    (`by_class`, `start`, `size`, `others`) is shared with the tf.data pipeline's sampler.

    Args:
        labels: (N,) labels of the training samples.
        count: K, draws per sample.
        seed: the run's seed.
    """

    def __init__(self, labels, count, seed):
        labels = np.asarray(labels)
        _, classes = np.unique(labels, return_inverse=True)
        sizes = np.bincount(classes)
        if len(sizes) < 2:
            raise ValueError("contrast_negatives needs at least two classes in labels; got only "
                             f"label {labels[0]!r}")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.by_class = np.argsort(classes, kind="stable").astype(np.int32)
        self.start = starts[classes].astype(np.int64)  # per sample: its class block
        self.size = sizes[classes].astype(np.int64)
        self.others = (len(labels) - sizes[classes]).astype(np.float64)
        self.count, self.seed = int(count), int(seed)
        with np.errstate(over="ignore"):
            self.draw_salt = np.arange(self.count).astype(_U32) * _U32(GOLDEN)

    def __call__(self, index, epoch):
        """int32 (B, count) indices of other-class samples for the int (B,) `index` in `epoch`."""
        h = sample_hashes(self.seed, epoch, index)[:, None]
        with np.errstate(over="ignore"):
            h = mix32(mix32(h ^ self.draw_salt[None]) + _U32(GOLDEN))
        u = np.floor(h.astype(np.float64) * self.others[index][:, None] / 2.0 ** 32).astype(np.int64)
        start, size = self.start[index][:, None], self.size[index][:, None]
        return self.by_class[np.where(u >= start, u + size, u)]


def normalize(pixels, mean, std):
    """uint8 -> float32 (pixels / 255 - mean) / std, with float32 arithmetic throughout."""
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def crop_flip(images, params):
    """Pads by PAD with zeros, crops back to size at per-sample offsets, flips per sample.

    Args:
        images: uint8 (B, H, W, C).
        params: int32 (B, 3): row offset, column offset (both in [0, 2 * PAD]), flip bit.

    Example:
        >>> x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
        >>> crop_flip(x, np.array([[PAD, PAD, 1]]))[0, 0, :, 0].tolist()  # no shift, flipped
        [3, 2, 1, 0]
    """
    height, width = images.shape[1], images.shape[2]
    padded = np.pad(images, [(0, 0), (PAD, PAD), (PAD, PAD), (0, 0)])
    rows = params[:, :1] + np.arange(height)[None]
    cols = params[:, 1:2] + np.arange(width)[None]
    cols = np.where(params[:, 2:] > 0, cols[:, ::-1], cols)
    batch = np.arange(len(images))[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def model_inputs(views, labels, index=None, contrast_index=None):
    """The (inputs, labels) pair of a training batch, for every pipeline (NumPy, tf.data, streaming):
    the first view alone when nothing else is asked for, else {"image", ["view2"], ["index"],
    ["contrast_index"]}. `views`: one or two image batches; `index`, `contrast_index`: None when
    not asked for."""
    if len(views) == 1 and index is None and contrast_index is None:
        return views[0], labels
    x = {"image": views[0]}
    if len(views) == 2:
        x["view2"] = views[1]
    if index is not None:
        x["index"] = index
    if contrast_index is not None:
        x["contrast_index"] = contrast_index
    return x, labels


class _Prefetching(keras.utils.PyDataset):
    """A PyDataset whose batch i is a pure function of i, prepared ahead by a thread pool.

    Keras' own workers (`PyDataset(workers=N)`) restart their index stream at every epoch
    boundary; here Keras reads batches one by one (workers=1) and this class keeps the next
    `prefetch` batches in flight on `threads` threads, so the order is fixed by the index alone.
    """

    def __init__(self, num_batches, threads, prefetch):
        super().__init__(workers=1, use_multiprocessing=False)
        if int(threads) != threads or threads < 0 or int(prefetch) != prefetch or prefetch < 0:
            raise ValueError(f"threads and prefetch must be integers >= 0, got threads={threads!r}, "
                             f"prefetch={prefetch!r}")
        self._num_batches, self.threads, self.prefetch = int(num_batches), int(threads), int(prefetch)
        self._pending, self._pool, self._lock = {}, None, threading.Lock()

    @property
    def num_batches(self):
        return self._num_batches

    def __len__(self):
        return self._num_batches

    def batch(self, i):
        """Batch i, computed now on the calling thread."""
        raise NotImplementedError

    def __getitem__(self, i):
        if not -self._num_batches <= i < self._num_batches:
            raise IndexError(f"batch {i} of a dataset of {self._num_batches} batches")
        i %= self._num_batches
        if not self.threads or not self.prefetch:
            return self.batch(i)
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "keras_icckd_data")
            for j in range(i, min(i + 1 + self.prefetch, self._num_batches)):
                if j not in self._pending:
                    self._pending[j] = self._pool.submit(self.batch, j)
            future = self._pending.pop(i)
            for j in [j for j in self._pending if j < i or j > i + self.prefetch]:  # jumped: drop
                self._pending.pop(j).cancel()
        return future.result()

    def __iter__(self):
        for i in range(self._num_batches):
            yield self[i]

    def __getstate__(self):  # threads and futures do not travel
        state = dict(self.__dict__)
        state.update(_pending={}, _pool=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _default_threads():
    return min(8, os.cpu_count() or 1)


class TrainDataset(_Prefetching):
    """The training batches of epochs `initial_epoch`..`epochs - 1`, back to back (see
    `make_train_dataset`). Batch g is batch g % steps of epoch initial_epoch + g // steps."""

    def __init__(self, images, labels, batch_size, *, seed, mean, std, views, augment, epochs, initial_epoch,
                 with_index, sampler, drop_remainder, shard, threads, prefetch):
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.seed, self.mean, self.std, self.views, self.augment = int(seed), mean, std, views, augment
        self.initial_epoch, self.with_index, self.sampler = int(initial_epoch), with_index, sampler
        self.steps = steps_per_epoch(len(images), batch_size, drop_remainder)
        self.shard = shard
        self._orders = {}
        super().__init__(self.steps * (int(epochs) - self.initial_epoch), threads, prefetch)

    def order(self, epoch):
        """int32 (N,): the order of `epoch` (memoised for the epochs in use)."""
        with self._lock:
            if epoch not in self._orders:
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = shuffle_order(self.seed, epoch, len(self.images))
            return self._orders[epoch]

    def batch(self, g):
        epoch, step = self.initial_epoch + g // self.steps, g % self.steps
        index = share_of(self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size], self.shard)
        pixels = self.images[index]
        out = [normalize(crop_flip(pixels, crop_flip_params(self.seed, epoch, index, v)) if self.augment
                         else pixels, self.mean, self.std) for v in range(self.views)]
        return model_inputs(out, self.labels[index], index if self.with_index else None,
                            None if self.sampler is None else self.sampler(index, epoch))


class EvalDataset(_Prefetching):
    """The evaluation batches: in order, normalised, the last partial batch kept."""

    def __init__(self, images, labels, batch_size, *, mean, std, shard, threads, prefetch):
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.mean, self.std, self.shard = mean, std, shard
        super().__init__(steps_per_epoch(len(images), batch_size, drop_remainder=False), threads, prefetch)

    def batch(self, i):
        index = share_of(np.arange(i * self.batch_size, min((i + 1) * self.batch_size, len(self.images))), self.shard)
        return normalize(self.images[index], self.mean, self.std), self.labels[index]


def check_shard(shard, batch_size, n=None):
    """`shard` as (process index, process count), or None; raises ValueError unless every full
    batch of `batch_size` splits evenly into count shares and, when `n` is given, so does the
    last (partial) batch of n samples."""
    if shard is None:
        return None
    part, parts = shard
    if not (isinstance(parts, int) and parts >= 1 and isinstance(part, int) and 0 <= part < parts) \
            or batch_size % parts:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count and batch_size "
                         f"({batch_size}) a multiple of count, got {shard!r}")
    if n is not None and n % parts:
        raise ValueError(f"shard {shard!r}: the {n} images do not split evenly")
    return part, parts


def share_of(batch, shard):
    """This process's contiguous share of one global `batch` (a sequence): all of it when `shard`
    is None, else the part-th of count equal slices.

    Example:
        >>> share_of(np.arange(6), (1, 3)), share_of(np.arange(6), None)
        (array([2, 3]), array([0, 1, 2, 3, 4, 5]))
    """
    if shard is None:
        return batch
    part, parts = shard
    share = len(batch) // parts
    return batch[part * share:(part + 1) * share]


def shard_mask(n, batch_size, shard):
    """bool (n,): which of n samples, batched `batch_size` at a time in order (the last batch
    partial), fall in this process's `share_of` their batch. Raises ValueError unless every batch,
    the last one included, splits evenly.

    Example:
        >>> shard_mask(10, 4, (0, 2)).astype(int)
        array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0])
    """
    part, parts = check_shard(shard, batch_size, n)
    position = np.arange(n)
    start = position // batch_size * batch_size
    share = np.minimum(batch_size, n - start) // parts
    return (position - start >= part * share) & (position - start < (part + 1) * share)


def make_train_dataset(images, labels, batch_size, *, seed, mean, std, views=1, augment=True, epochs=1,
                       initial_epoch=0, with_index=False, contrast_negatives=0, drop_remainder=True,
                       shard=None, threads=None, prefetch=4):
    """The training dataset for epochs `initial_epoch`..`epochs - 1`, back to back, without TensorFlow.

    The same batches as `keras_icckd.data.pipeline.make_train_dataset` (tf.data) for the same
    arguments, bit for bit, and the same use: `fit(ds, epochs=epochs, initial_epoch=initial_epoch,
    steps_per_epoch=steps_per_epoch(N, batch_size))`. Each epoch shuffles statelessly, augments
    with the CIFAR recipe (zero-pad 4, random crop back to size, random horizontal flip), scales
    to [0, 1] and normalises per channel; batches never straddle two epochs.

    Args:
        images, labels, batch_size, seed, mean, std, views, augment, epochs, initial_epoch,
            with_index, contrast_negatives, drop_remainder: as in `pipeline.make_train_dataset`
            (`batch_size` is the global batch when `shard` is given).
        shard: None, or (process index, process count): each batch keeps only this process's
            contiguous share of the global batch (multi-process data parallelism).
        threads: threads preparing batches ahead (default min(8, CPU count); 0: on demand).
        prefetch: batches kept in flight ahead of the one being read. Default 4.

    Returns:
        A `keras.utils.PyDataset` of the structure `pipeline.make_train_dataset` describes.

    Example:
        >>> x = np.zeros((8, 32, 32, 3), np.uint8)
        >>> ds = make_train_dataset(x, np.zeros(8), 4, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3, views=2)
        >>> len(ds), sorted(ds[0][0])
        (2, ['image', 'view2'])
    """
    images, labels = check_arrays(images, labels, batch_size, mean, std, training=True)
    check_train_options(views, epochs, initial_epoch, contrast_negatives)
    sampler = OtherClassSampler(labels, contrast_negatives, seed) if contrast_negatives else None
    return TrainDataset(images, labels, batch_size, seed=seed, mean=tuple(mean), std=tuple(std), views=views,
                        augment=augment, epochs=epochs, initial_epoch=initial_epoch, with_index=with_index,
                        sampler=sampler, drop_remainder=drop_remainder, shard=check_shard(shard, batch_size),
                        threads=_default_threads() if threads is None else threads, prefetch=prefetch)


def make_eval_dataset(images, labels, batch_size, *, mean, std, shard=None, threads=None, prefetch=4):
    """The evaluation dataset without TensorFlow: in order, normalised, last partial batch kept.

    The same batches as `keras_icckd.data.pipeline.make_eval_dataset`.

    Args:
        images, labels, batch_size, mean, std: as in `pipeline.make_eval_dataset`.
        shard: None, or (process index, process count), as in `make_train_dataset`; every
            batch, the last one included, must then split evenly.
        threads: threads preparing batches ahead (default min(8, CPU count); 0: on demand).
        prefetch: batches kept in flight. Default 4.

    Example:
        >>> ds = make_eval_dataset(np.zeros((5, 2, 2, 3), np.uint8), np.arange(5), 2, mean=(0.0,) * 3,
        ...                        std=(1.0,) * 3)
        >>> [len(y) for _, y in ds]
        [2, 2, 1]
    """
    images, labels = check_arrays(images, labels, batch_size, mean, std, training=False)
    shard = check_shard(shard, batch_size, len(images))
    return EvalDataset(images, labels, batch_size, mean=tuple(mean), std=tuple(std), shard=shard,
                       threads=_default_threads() if threads is None else threads, prefetch=prefetch)
