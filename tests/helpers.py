"""Backend-neutral helpers shared by the tests: gradients and jit for TF and JAX."""

import keras
import numpy as np


def backend():
    return keras.backend.backend()


def gradients(fn, *args):
    """d sum(fn(*args)) / d args, as NumPy arrays, on the current backend."""
    args = [keras.ops.convert_to_tensor(np.asarray(a, "float32")) for a in args]
    if backend() == "jax":
        import jax

        grads = jax.grad(lambda *xs: keras.ops.sum(fn(*xs)), argnums=tuple(range(len(args))))(*args)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for a in args:
                tape.watch(a)
            total = keras.ops.sum(fn(*args))
        grads = tape.gradient(total, args)
    return [np.zeros(a.shape, "float32") if g is None else keras.ops.convert_to_numpy(g)
            for a, g in zip(args, grads)]


def jitted(fn):
    """fn compiled with XLA on the current backend."""
    if backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def to_numpy(tree):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, tree)


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)
