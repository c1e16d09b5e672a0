"""FusedBatchNorm: the NumPy batch-norm reference by hand, equality with Keras' BatchNormalization,
gradients, jit, mixed precision, fall-backs and saving, on both backends."""

import keras
import numpy as np
import pytest

from helpers import backend, gradients, jitted, to_numpy
from keras_icckd.backbones import FusedBatchNorm

EPS, MOMENTUM = 1e-5, 0.9


def _reference(x, gamma, beta, mean0, var0, training):
    """(output, new moving mean, new moving variance) of batch norm over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    if training:
        mean, var = x.mean(axes), x.var(axes)  # biased variance, as Keras
        moving = (MOMENTUM * mean0 + (1 - MOMENTUM) * mean, MOMENTUM * var0 + (1 - MOMENTUM) * var)
    else:
        mean, var, moving = mean0, var0, (mean0, var0)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta, *moving


def _reference_grads(x, gamma, var_eps, upstream):
    """d sum(upstream * y) / d (x, gamma, beta) of training-mode batch norm, by hand."""
    axes = tuple(range(x.ndim - 1))
    xhat = (x - x.mean(axes)) / np.sqrt(var_eps)
    dx = gamma / np.sqrt(var_eps) * (
        upstream - upstream.mean(axes) - xhat * (upstream * xhat).mean(axes))
    return dx, (upstream * xhat).sum(axes), upstream.sum(axes)


def _layer(shape, seed=0, cls=FusedBatchNorm, **kwargs):
    rng = np.random.default_rng(seed)
    layer = cls(epsilon=EPS, momentum=MOMENTUM, **kwargs)
    layer.build(shape)
    channels = shape[layer.axis]
    values = {"gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.normal(size=channels),
              "moving_mean": rng.normal(size=channels), "moving_variance": rng.uniform(0.5, 2.0, channels)}
    for weight in layer.weights:
        weight.assign(values[weight.path.rsplit("/", 1)[-1]].astype("float32"))
    return layer


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (2, 3, 7, 8), (1, 1, 1, 4), (3, 8)],
                         ids=["4d", "4d-wide", "one-value", "2d-fallback"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_matches_numpy_reference(shape, training):
    x = np.random.default_rng(1).normal(1.0, 2.0, size=shape).astype("float32")
    layer = _layer(shape)
    gamma, beta, mean0, var0 = layer.get_weights()
    out = keras.ops.convert_to_numpy(layer(x, training=training))
    expected, mean1, var1 = _reference(x.astype("float64"), gamma, beta, mean0, var0, training)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.get_weights()[2], mean1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.get_weights()[3], var1, rtol=1e-5, atol=1e-6)


def test_hand_computed_values():
    # One channel, values 1, 2, 3, 6: mean 3, biased variance 3.5; gamma 2, beta 1.
    layer = _layer((1, 2, 2, 1))
    layer.set_weights([np.array([2.0], "float32"), np.array([1.0], "float32"),
                       np.array([0.0], "float32"), np.array([1.0], "float32")])
    x = np.array([1.0, 2.0, 3.0, 6.0], "float32").reshape(1, 2, 2, 1)
    out = keras.ops.convert_to_numpy(layer(x, training=True)).ravel()
    np.testing.assert_allclose(out, 2.0 * (np.array([-2, -1, 0, 3]) / np.sqrt(3.5 + EPS)) + 1.0,
                               rtol=1e-5)
    np.testing.assert_allclose(layer.get_weights()[2:], [[0.3], [0.9 + 0.1 * 3.5]], rtol=1e-6)


def test_equals_keras_batch_normalization_in_training_and_inference():
    x = np.random.default_rng(2).normal(size=(6, 4, 4, 5)).astype("float32")
    ours, theirs = _layer(x.shape), _layer(x.shape, cls=keras.layers.BatchNormalization)
    for training in (True, True, False):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=training)),
                                   keras.ops.convert_to_numpy(theirs(x, training=training)),
                                   rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}


def test_gradients_match_hand_derivation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    layer = _layer(x.shape)
    gamma, beta, mean0, var0 = layer.get_weights()

    def loss(x, gamma, beta):
        y, _ = layer.stateless_call([gamma, beta], [mean0, var0], x, training=True)
        return y * upstream

    dx, dgamma, dbeta = gradients(loss, x, gamma, beta)
    ref_dx, ref_dgamma, ref_dbeta = _reference_grads(
        x.astype("float64"), gamma, x.astype("float64").var((0, 1, 2)) + EPS, upstream)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=1e-5, atol=1e-5)


def test_jit_equals_eager():
    x = np.random.default_rng(4).normal(size=(4, 3, 3, 6)).astype("float32")
    layer = _layer(x.shape)
    weights = layer.get_weights()

    def step(x, gamma, beta, mean, var):
        y, (new_mean, new_var) = layer.stateless_call([gamma, beta], [mean, var], x, training=True)
        return y, new_mean, new_var

    eager = to_numpy(step(x, *weights))
    compiled = to_numpy(jitted(step)(x, *weights))
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tensorflow_runs_one_fused_operation():
    x = np.zeros((2, 4, 4, 3), "float32")
    # The fused kernel is TensorFlow's; on JAX the layer is Keras' own (XLA fuses it).
    assert _layer(x.shape)._fused(x, None) == (backend() == "tensorflow")
    if backend() != "tensorflow":
        return
    import tensorflow as tf

    for cls, fused in ((FusedBatchNorm, True), (keras.layers.BatchNormalization, False)):
        layer = _layer(x.shape, cls=cls)
        graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
            tf.TensorSpec(x.shape, "float32")).graph
        ops = {op.type for op in graph.get_operations()}
        assert ("FusedBatchNormV3" in ops) == fused, ops
    masked = _layer(x.shape)
    mask_graph = tf.function(lambda x: masked(x, training=True, mask=tf.ones(x.shape[:-1]))
                             ).get_concrete_function(tf.TensorSpec(x.shape, "float32")).graph
    assert "FusedBatchNormV3" not in {op.type for op in mask_graph.get_operations()}


@pytest.mark.parametrize("option", [{"center": False}, {"scale": False}, {"axis": 1}])
def test_options_the_kernel_does_not_take_fall_back_to_keras(option):
    x = np.random.default_rng(5).normal(size=(3, 4, 4, 4)).astype("float32")
    ours, theirs = _layer(x.shape, **option), _layer(x.shape, cls=keras.layers.BatchNormalization, **option)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=True)),
                               keras.ops.convert_to_numpy(theirs(x, training=True)), rtol=1e-5, atol=1e-5)


def test_mixed_bfloat16_keeps_float32_statistics():
    x = np.random.default_rng(6).normal(size=(4, 4, 4, 3)).astype("float32")
    reference = _layer(x.shape)
    layer = _layer(x.shape, dtype="mixed_bfloat16")
    out = layer(keras.ops.cast(x, "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    expected = keras.ops.convert_to_numpy(reference(x, training=True))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), expected,
                               rtol=0.05, atol=0.05)
    np.testing.assert_allclose(layer.get_weights()[2:], reference.get_weights()[2:], rtol=0.02, atol=0.01)


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FusedBatchNorm(epsilon=EPS, momentum=MOMENTUM, name="bn")(inputs))
    x = np.random.default_rng(7).normal(size=(2, 4, 4, 3)).astype("float32")
    model(x, training=True)  # moves the statistics away from their initial values
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNorm
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-6, atol=1e-6)
