"""IntraClassCache: FIFO order, wrap-around, empty-slot masking, jit, saving."""

import keras
import numpy as np
import pytest

from helpers import jitted, run_doctests, to_numpy
from keras_icckd.models import IntraClassCache


def rows(values):
    return np.repeat(np.asarray(values, "float32")[:, None], 2, axis=1)


def state(cache):
    return (to_numpy(cache.features)[:, 0].tolist(), to_numpy(cache.labels).tolist(),
            int(to_numpy(cache.pointer)))


def test_fifo_order_and_wrap_around():
    cache = IntraClassCache(size=5, dim=2)
    assert state(cache) == ([0.0] * 5, [-1] * 5, 0)
    cache.enqueue(rows([1, 2, 3]), np.array([0, 1, 2]))
    assert state(cache) == ([1, 2, 3, 0, 0], [0, 1, 2, -1, -1], 3)
    cache.enqueue(rows([4, 5, 6]), np.array([3, 4, 5]))  # wraps: 6 overwrites the oldest (1)
    assert state(cache) == ([6, 2, 3, 4, 5], [5, 1, 2, 3, 4], 1)
    cache.enqueue(rows([7, 8, 9]), np.array([6, 7, 8]))
    assert state(cache) == ([6, 7, 8, 9, 5], [5, 6, 7, 8, 4], 4)


def test_batch_larger_than_cache_keeps_newest():
    cache = IntraClassCache(size=2, dim=2)
    cache.enqueue(rows([1, 2, 3]), np.array([0, 1, 2]))
    assert state(cache) == ([2, 3], [1, 2], 0)


def test_reset_and_bad_size():
    cache = IntraClassCache(size=3, dim=2)
    cache.enqueue(rows([1]), np.array([4]))
    cache.reset()
    assert state(cache) == ([0, 0, 0], [-1, -1, -1], 0)
    with pytest.raises(ValueError, match="size=0"):
        IntraClassCache(size=0, dim=2)


def test_enqueue_under_jit_advances_state():
    cache = IntraClassCache(size=4, dim=2)
    if keras.backend.backend() == "jax":
        # Under JAX, variables are updated functionally: run through a stateless scope.
        import jax

        def step(values, labels, feats, labs, ptr):
            mapping = list(zip(cache.non_trainable_variables, (feats, labs, ptr)))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                cache.enqueue(values, labels)
            return [scope.get_current_value(v) for v in cache.non_trainable_variables]

        step = jax.jit(step)
        current = [v.value for v in cache.non_trainable_variables]
        for batch in ([1, 2, 3], [4, 5, 6]):
            current = step(rows(batch), np.array(batch), *current)
        for variable, value in zip(cache.non_trainable_variables, current):
            variable.assign(value)
    else:
        step = jitted(lambda v, l: cache.enqueue(v, l))
        for batch in ([1, 2, 3], [4, 5, 6]):
            step(rows(batch), np.array(batch))
    assert state(cache) == ([5, 6, 3, 4], [5, 6, 3, 4], 2)


def test_doctest_example():
    from keras_icckd.models import cache as module

    run_doctests(module)


def test_enqueue_with_a_batch_size_known_only_when_the_step_runs():
    """TensorFlow's MultiWorkerMirroredStrategy traces the train step with an unknown batch size
    (TensorFlow session only: JAX traces every step with its batch size; tests/conftest.py)."""
    import tensorflow as tf

    cache = IntraClassCache(size=4, dim=2)
    step = tf.function(cache.enqueue, input_signature=[tf.TensorSpec((None, 2), "float32"),
                                                       tf.TensorSpec((None,), "int32")])
    for batch in ([1, 2, 3], [4, 5, 6, 7, 8]):  # the second is larger than the cache: its newest 4 stay
        step(rows(batch), np.array(batch, "int32"))
    assert state(cache) == ([6, 7, 8, 5], [6, 7, 8, 5], 3)
