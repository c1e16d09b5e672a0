"""Several devices train like one: the same global batches give the same losses, loss terms and
metrics, and weights within 1e-4, on several devices as on 1 device, for the ICC teacher with its
cache (negatives, cache writes and BatchNorm over the global batch): on JAX model parallel over 4
virtual CPU devices (keras.distribution: batches split in two, convolution kernels in two), on
TensorFlow data parallel over 2 logical CPU devices (MirroredStrategy). JAX's DataParallel and the
Distiller (KD + CRD + DCD: gathered outputs and inputs, CRD's memory) on both backends are
tests/test_multi_host.py's, in two processes against one device."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

from helpers import REPO_ROOT
from keras_icckd.training import distribution

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import keras, numpy as np
    from keras_icckd import backbones, data, training
    from keras_icckd.models import ContrastiveTeacher
    from keras_icckd.training import distribution

    assert len(keras.distribution.list_devices()) == 4
    splits = data.make_synthetic(num_classes=3, train_per_class=16, test_per_class=4, image_shape=(16, 16, 3))

    def train(mode, size=1):
        factor = distribution.configure(mode, model_parallel_size=size)
        keras.utils.set_random_seed(0)
        net = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
        model = ContrastiveTeacher(net, icc_cache_size=16, icc_delta=-1.0)
        model.compile(optimizer=training.TorchSGD(0.05), jit_compile=True)
        ds = data.make_train_dataset(splits.train_images, splits.train_labels, 16, seed=0, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, views=2, epochs=1)
        history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0).history
        sharding = str(getattr(model.trainable_variables[0].value, "sharding", ""))
        return factor, history, [keras.ops.convert_to_numpy(v) for v in model.variables], sharding

    # The (batch 2, model 2) mesh splits every batch in two and the convolution kernels' output
    # channels in two (keras.distribution.DataParallel alone: tests/test_multi_host.py).
    _, h1, weights1, _ = train("none")
    factor, h4, weights4, sharding = train("model_parallel", 2)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights1, weights4))
    print(f"RESULT factor={factor} loss1={h1['loss'][0]:.6f} loss4={h4['loss'][0]:.6f} diff={diff:.2e} {sharding}")
    assert factor == 2 and "'batch': 2, 'model': 2" in sharding and "'model')" in sharding, (factor, sharding)
    assert {"ce", "intra", "margin_pass", "negatives", "accuracy"} <= set(h1), sorted(h1)
    for key in h1:  # the loss, each term and the metrics
        assert abs(h1[key][0] - h4[key][0]) <= 1e-5 * max(1.0, abs(h1[key][0])), (key, h1, h4)
    assert diff <= 1e-4, diff  # the cache included: its slots hold the global batches' projections
    print("ALL OK")
""")


TF_SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_icckd import backbones, data, replicas, training
    from keras_icckd.models import ContrastiveTeacher
    from keras_icckd.training import distribution

    splits = data.make_synthetic(num_classes=3, train_per_class=16, test_per_class=4, image_shape=(16, 16, 3))

    def train(mode):
        factor = distribution.configure(mode)
        keras.utils.set_random_seed(0)
        net = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
        model = ContrastiveTeacher(net, icc_cache_size=16, icc_delta=-1.0)
        model.compile(optimizer=training.TorchSGD(0.05, momentum=0.9, weight_decay=5e-4))
        ds = data.make_train_dataset(splits.train_images, splits.train_labels, 16, seed=0, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, views=2, epochs=1)
        history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0).history
        kinds = {type(v.value).__name__ for v in model.trainable_variables}
        return factor, history, [keras.ops.convert_to_numpy(v) for v in model.variables], kinds

    _, h1, weights1, _ = train("none")
    factor, h2, weights2, kinds = train("data_parallel")
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights1, weights2))
    print(f"RESULT teacher factor={factor} loss1={h1['loss'][0]:.6f} loss2={h2['loss'][0]:.6f} diff={diff:.2e}")
    assert factor == 2 and kinds == {"MirroredVariable"}, (factor, kinds)
    assert {"ce", "intra", "margin_pass", "negatives", "accuracy"} <= set(h1), sorted(h1)
    for key in h1:  # the loss, each term and the metrics
        assert abs(h1[key][0] - h2[key][0]) <= 1e-5 * max(1.0, abs(h1[key][0])), (key, h1, h2)
    assert diff <= 1e-4, diff  # the cache included: its slots hold the global batches' projections

    # Views stacked view-major per replica are gathered view-major over the global batch.
    strategy = distribution._tf_strategy()
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([[10 * context.replica_id_in_sync_group + v] for v in (0, 0, 1, 1)]))
    gathered = strategy.run(lambda t: replicas.gather(t, views=2), args=(per_replica,))
    assert strategy.experimental_local_results(gathered)[0].numpy().ravel().tolist() == [0, 0, 10, 10, 1, 1, 11, 11]
    print("ALL OK")
""")


# On CPUs with AVX512-VNNI/BF16 or AMX, TensorFlow turns on its oneDNN kernels, whose summation order
# follows the per-device batch size: one and two devices then drift apart by rounding (measured on an AMD
# EPYC: the intra-class term 5e-4 apart after these 3 steps). Without them the two runs agree within the
# 1e-5 that this test holds the replica logic (batch split, all-reduce, loss scaling, the cache) to.
SAME_ROUNDING = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_multi_device_step_matches_one_device(jax_subprocess_env):
    script = SCRIPT if keras.backend.backend() == "jax" else TF_SCRIPT
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2", **SAME_ROUNDING, **jax_subprocess_env)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


def test_bad_distribution_arguments():
    with pytest.raises(ValueError, match="expected one of none, data_parallel, model_parallel"):
        distribution.configure("pipeline")
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        distribution.initialize_multi_host("host:1234", 2, 2)
    jax = keras.backend.backend() == "jax"
    # several processes: JAX needs the coordinator; TensorFlow's TF_CONFIG (unset here) must agree
    with pytest.raises(ValueError, match="coordinator" if jax else "TF_CONFIG: it names 1 worker"):
        distribution.initialize_multi_host(None, 2, 0)
    distribution.initialize_multi_host(None, 1, 0)  # one process: nothing to join
    if not jax:
        with pytest.raises(ValueError, match="'model_parallel' needs the JAX backend"):
            distribution.configure("model_parallel")
    distribution.check_even_split({"--batch_size": 8, "--eval_batch_size": 12}, 4)
    with pytest.raises(ValueError, match="^--eval_batch_size: 6 is not a multiple of the 4 data-parallel devices$"):
        distribution.check_even_split({"--batch_size": 8, "--eval_batch_size": 6}, 4)


def test_a_model_axis_may_not_span_processes(monkeypatch):
    """JAX only (tests/conftest.py): TensorFlow refuses model_parallel (above)."""
    import jax

    monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["cpu:0", "cpu:1", "cpu:2", "cpu:3"])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"model_parallel_size=4 must divide the 2 devices of each process "
                                         r"\(--num_processes=2: a model axis may not span processes\)"):
        distribution.configure("model_parallel", model_parallel_size=4)
    assert keras.distribution.distribution() is None  # refused before anything was set


def test_one_replica_changes_nothing_and_doctests():
    import doctest

    import numpy as np

    from keras_icckd import replicas

    x = keras.ops.convert_to_tensor(np.arange(6.0).reshape(3, 2))
    assert replicas.replica_count() == 1 and replicas.gather(x) is x and replicas.replica_share(x) is x
    assert replicas.global_batch({"a": x}, constants={"epoch": 2}) == {"a": x, "epoch": 2}
    lazy = replicas.LazyMap({"a": x, "b": x}, lambda t: t[:1])
    assert lazy["a"].shape == (1, 2) and sorted(lazy) == ["a", "b"] and len(lazy) == 2
    for module in (replicas, distribution):
        result = doctest.testmod(module, extraglobs={"keras": keras})
        assert result.attempted > 0 and result.failed == 0
