"""The global batch inside `compute_loss` when TensorFlow runs it once per replica.

Under `tf.distribute` (MirroredStrategy, MultiWorkerMirroredStrategy) Keras' TensorFlow trainer
runs `train_step` on every replica with that replica's share of the batch, takes what
`compute_loss` returns as that replica's share of the loss, and sums the replicas' gradients.
The models of this package therefore gather, in `compute_loss`, the outputs, labels and extra
inputs of all replicas into the global batch (in the order of the undivided batch) before the
losses see them, compute every loss exactly as on one device, and return `loss / replicas`.
`ReplicaContext.all_gather` passes gradients back to each replica's own rows, so the summed
gradient is the one-device gradient. Everywhere else (one device, the JAX backend, whose
`keras.distribution` compiles one program over the global batch) these functions change nothing.
"""

import collections.abc

import keras
from keras import ops


def _replica_context():
    """TensorFlow's replica context when several replicas run this step, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replica_count():
    """How many replicas each compute the loss of this step (1 outside tf.distribute).

    Example:
        >>> replica_count()
        1
    """
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def gather(tensor, views=1):
    """The global batch of a per-replica tensor (axis 0), in the order of the undivided batch.

    Args:
        tensor: this replica's (views * b, ...) tensor; None passes through.
        views: V > 1 when the rows are V blocks of the same b images (view-major, as an
            objective's `make_views` stacks them): the result is then view-major over the
            global batch too, (V * N * b, ...), as on one device.

    Example:
        >>> tuple(gather(keras.ops.ones((4, 3))).shape)  # one replica: unchanged
        (4, 3)
    """
    context = _replica_context()
    if context is None or tensor is None:
        return tensor
    import tensorflow as tf

    n = context.num_replicas_in_sync
    if not getattr(tensor, "device", None):  # an input of the step, placed nowhere yet: MultiWorker-
        tensor = tf.identity(tensor)  # MirroredStrategy gathers to the devices of the value it gathers
    gathered = context.all_gather(tensor, axis=0)  # replica-major: (N * V * b, ...)
    # Keep the static shape, which all_gather loses (the batch size is unknown with several workers).
    batch = None if tensor.shape[0] is None else n * tensor.shape[0]
    gathered = tf.ensure_shape(gathered, [batch, *tensor.shape[1:]])
    if views == 1:
        return gathered
    shape = ops.shape(gathered)
    blocks = ops.reshape(gathered, (n, views, shape[0] // (n * views), *shape[1:]))
    return ops.reshape(ops.swapaxes(blocks, 0, 1), shape)


class LazyMap(collections.abc.Mapping):
    """A read-only dict that applies `transform` to each of `tensors` on first access.

    Objectives read only the outputs they use (often "logits" and one feature), so the large
    feature maps they do not read are never gathered across replicas (nor sliced, ...).

    Args:
        tensors: dict of tensors.
        transform: applied to a tensor when its key is first read.
        constants: further entries, returned as they are.

    Example:
        >>> view = LazyMap({"a": keras.ops.ones((4, 2))}, lambda t: t[:1], {"epoch": 3})
        >>> tuple(view["a"].shape), view["epoch"], sorted(view)
        ((1, 2), 3, ['a', 'epoch'])
    """

    def __init__(self, tensors, transform, constants=None):
        self._tensors, self._transform = dict(tensors), transform
        self._done = dict(constants or {})

    def __getitem__(self, key):
        if key not in self._done:
            self._done[key] = self._transform(self._tensors[key])
        return self._done[key]

    def __iter__(self):
        return iter({**self._tensors, **self._done})

    def __len__(self):
        return len({**self._tensors, **self._done})


def global_batch(outputs, views=1, constants=None):
    """A dict of per-replica tensors over the global batch, gathered lazily (see `gather`), with
    `constants` added; outside tf.distribute, a plain dict of the same entries."""
    if _replica_context() is None:
        return {**outputs, **(constants or {})}
    return LazyMap(outputs, lambda t: gather(t, views), constants)


def replica_share(loss):
    """The part of a global-batch loss that one replica returns to Keras: loss / replicas."""
    count = replica_count()
    return loss if count == 1 else loss / float(count)


def _several_workers():
    """Whether this step runs under a MultiWorkerMirroredStrategy spanning several workers."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        getattr(strategy.extended, "_num_workers", 1) > 1


class MultiWorkerFixes:
    """Mixin for `keras.Model` subclasses: lets `fit` run under MultiWorkerMirroredStrategy.

    Keras 3.15's TensorFlow trainer fails twice with several workers: before the first step it
    builds the model from the first batch, which it MEAN-reduces across replicas with
    `strategy.reduce` (that fails on a nested batch: a dict of inputs, or (x, y)); and after each
    step it MEAN-reduces every log value along axis 0 (that fails on the scalar metric results).
    The build only needs shapes, so it gets one replica's share of the batch; the logs (the same
    on every replica) are handed over with shape (1,).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if keras.backend.backend() == "tensorflow" and strategy is not None and iterator is not None \
                and data_batch is None:
            import tensorflow as tf

            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local, next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if _several_workers():
            results = {key: ops.reshape(value, (1,)) for key, value in results.items()}
        return results
