"""A FIFO cache of earlier projections and their labels, kept in Keras variables."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_icckd")
class IntraClassCache(keras.layers.Layer):
    """Ring buffer of the last `size` projections and labels seen in training.

    ICCKD needs same-class negatives; a batch of 64 CIFAR-100 images holds on average
    0.64 other images of each image's class, so earlier batches are kept here. Entries are
    constants (written with stop-gradient), empty slots carry label -1 and never match a
    class. All state lives in non-trainable variables, so the cache advances under `jit`
    on the TensorFlow and JAX backends alike.

    Under tf.distribute the variables keep one value for all replicas ("only_first_replica"
    aggregation); the teacher enqueues the global batch, the same on every replica.

    Args:
        size: number of slots Q (>= 1).
        dim: projection dimension.
        persistent: whether the contents are written into `.keras` files. The default,
            False, saves an exported teacher without it; a reloaded cache starts empty.

    Example:

    >>> cache = IntraClassCache(size=4, dim=2)
    >>> cache.enqueue(keras.ops.ones((3, 2)), keras.ops.array([0, 1, 2]))
    >>> [int(v) for v in keras.ops.convert_to_numpy(cache.labels)]
    [0, 1, 2, -1]
    """

    def __init__(self, size, dim, persistent=False, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ValueError(f"size={size}: the cache needs at least one slot")
        self.size, self.dim, self.persistent = int(size), int(dim), bool(persistent)
        one = "only_first_replica"
        self.features = self.add_weight(
            shape=(self.size, self.dim), initializer="zeros", trainable=False,
            dtype="float32", name="features", aggregation=one)
        self.labels = self.add_weight(
            shape=(self.size,), initializer=keras.initializers.Constant(-1),
            trainable=False, dtype="int32", name="labels", aggregation=one)
        self.pointer = self.add_weight(
            shape=(), initializer="zeros", trainable=False, dtype="int32", name="pointer", aggregation=one)
        self.built = True

    def enqueue(self, features, labels):
        """Writes a batch into the next slots (oldest entries are overwritten)."""
        features = ops.stop_gradient(ops.cast(features, "float32"))
        labels = ops.cast(labels, "int32")
        count = features.shape[0]
        if count is None:  # a batch size known only when the step runs (tf.distribute over workers)
            features, labels = features[-self.size:], labels[-self.size:]
            count = ops.shape(features)[0]
        elif count > self.size:  # Only the newest `size` entries can be kept.
            features, labels, count = features[-self.size:], labels[-self.size:], self.size
        slots = ops.mod(self.pointer + ops.arange(count, dtype="int32"), self.size)[:, None]
        self.features.assign(ops.scatter_update(self.features, slots, features))
        self.labels.assign(ops.scatter_update(self.labels, slots, labels))
        self.pointer.assign(ops.mod(self.pointer + count, self.size))

    def reset(self):
        """Empties the cache."""
        self.features.assign(ops.zeros(self.features.shape, "float32"))
        self.labels.assign(ops.full(self.labels.shape, -1, "int32"))
        self.pointer.assign(0)

    def save_own_variables(self, store):
        if self.persistent:
            super().save_own_variables(store)

    def load_own_variables(self, store):
        if self.persistent:
            super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim, persistent=self.persistent)
        return config
