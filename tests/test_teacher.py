"""ContrastiveTeacher: fit on both backends, metrics, cache state, saving, and the ICC effect."""

import os
import warnings

import keras
import numpy as np
import pytest

from helpers import run_doctests, to_numpy
from keras_icckd import backbones, data, training
from keras_icckd.models import ContrastiveTeacher

CLASSES, PER_CLASS, BATCH = 4, 16, 16


@pytest.fixture(scope="module")
def splits():
    return data.make_synthetic(num_classes=CLASSES, train_per_class=PER_CLASS, test_per_class=4,
                               image_shape=(16, 16, 3), subclasses=2, seed=0)


def make_teacher(splits, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = backbones.get("resnet8", num_classes=CLASSES, input_shape=(16, 16, 3))
    kwargs.setdefault("icc_cache_size", 40)
    teacher = ContrastiveTeacher(backbone, **kwargs)
    teacher.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return teacher


def two_view_data(splits, epochs, views=2, seed=0):
    mean, std = data.normalization_for(splits)
    return data.make_train_dataset(splits.train_images, splits.train_labels, BATCH, seed=seed,
                                   mean=mean, std=std, views=views, epochs=epochs)


def test_fit_lowers_loss_reports_metrics_and_advances_cache(splits):
    teacher = make_teacher(splits, icc_lambda=0.5, icc_delta=-1.0)
    steps = data.steps_per_epoch(len(splits.train_labels), BATCH)
    history = teacher.fit(two_view_data(splits, 4), epochs=4, steps_per_epoch=steps, verbose=0).history
    for key in ("loss", "ce", "intra", "margin_pass", "negatives", "accuracy"):
        assert key in history and np.isfinite(history[key]).all(), key
    assert history["loss"][-1] < history["loss"][0]
    assert history["margin_pass"][0] == 1.0  # delta = -1: every anchor takes part
    assert history["negatives"][0] > 0
    # 16 steps of 16 projections went through a 40-slot ring: pointer at 256 mod 40 = 16.
    assert int(to_numpy(teacher.cache.pointer)) == (4 * steps * BATCH) % 40
    assert (to_numpy(teacher.cache.labels) >= 0).all()
    assert set(to_numpy(teacher.cache.labels).tolist()) <= set(range(CLASSES))


def test_lambda_zero_is_plain_cross_entropy(splits):
    teacher = make_teacher(splits, icc_lambda=0.0, icc_delta=-1.0)
    history = teacher.fit(two_view_data(splits, 1), epochs=1, steps_per_epoch=2, verbose=0).history
    np.testing.assert_allclose(history["loss"], history["ce"], rtol=1e-5)
    assert "intra" not in history and "margin_pass" not in history  # no intra-class term at all
    assert int(to_numpy(teacher.cache.pointer)) == 0
    # The unused projection head is frozen: one-view CE training warns of no missing gradients.
    assert {v.path for v in teacher.trainable_variables} == {v.path for v in teacher.backbone.trainable_variables}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        teacher.fit(two_view_data(splits, 1, views=1), epochs=1, steps_per_epoch=2, verbose=0)
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]


def test_two_view_lambda_zero_loss_is_cross_entropy_of_view_one(splits):
    """The two-view CE control: both views go through the backbone (batch norm sees 2B images), the
    loss is the CE of the first view's logits alone, with no intra-class term."""
    teacher = make_teacher(splits, icc_lambda=0.0)
    x, y = next(iter(two_view_data(splits, 1)))
    x = {k: to_numpy(v) for k, v in x.items()}
    y = to_numpy(y)
    y_pred = teacher(x, training=True)
    assert set(y_pred) == {"logits", "logits_view2", "projection", "projection_view2"}
    loss = float(to_numpy(teacher.compute_loss(x, y, y_pred, training=True)))
    logits = to_numpy(y_pred["logits"]).astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -log_p[np.arange(len(y)), y].mean(), rtol=1e-5)


def test_one_view_batches_are_refused_when_lambda_is_positive(splits):
    teacher = make_teacher(splits)
    with pytest.raises(ValueError, match=r"needs two views.*views=2"):
        teacher.fit(two_view_data(splits, 1, views=1), epochs=1, steps_per_epoch=2, verbose=0)
    # evaluation is one view and stays allowed (a new teacher: on JAX a fit that raised while tracing
    # leaves the model unusable)
    teacher = make_teacher(splits)
    mean, std = data.normalization_for(splits)
    test = data.make_eval_dataset(splits.test_images, splits.test_labels, 8, mean=mean, std=std)
    assert np.isfinite(teacher.evaluate(test, verbose=0, return_dict=True)["loss"])


@pytest.mark.parametrize("save_cache", [False, True])
def test_save_and_load_round_trip(splits, tmp_path, save_cache):
    teacher = make_teacher(splits, save_cache=save_cache)
    teacher.fit(two_view_data(splits, 1), epochs=1, steps_per_epoch=2, verbose=0)
    path = os.path.join(tmp_path, "teacher.keras")
    training.atomic_save_model(teacher, path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ContrastiveTeacher)
    assert loaded.get_config()["icc_cache_size"] == 40
    images = splits.test_images.astype("float32") / 255.0
    np.testing.assert_allclose(to_numpy(loaded(images)), to_numpy(teacher(images)), atol=1e-5)
    labels = to_numpy(loaded.cache.labels)
    if save_cache:
        np.testing.assert_array_equal(labels, to_numpy(teacher.cache.labels))
    else:
        assert (labels == -1).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"icc_lambda": -0.1}, "icc_lambda"), ({"icc_tau": 0.0}, "icc_tau"),
    ({"icc_margin_mode": "soft"}, "icc_margin_mode"), ({"icc_cache_size": -1}, "icc_cache_size"),
    ({"icc_delta": float("nan")}, "icc_delta"),
])
def test_bad_arguments(splits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_teacher(splits, **kwargs)


def test_not_a_backbone_is_refused():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="backbone"):
        ContrastiveTeacher(plain)


def test_doctest_example():
    from keras_icckd.models import teacher as module

    run_doctests(module)


def test_icc_raises_intra_inter_ratio():
    """The paper's claim: the intra-class loss spreads each class, raising intra/inter distance."""
    task = data.make_synthetic(num_classes=4, train_per_class=32, test_per_class=16,
                               image_shape=(16, 16, 3), subclasses=4, seed=1)
    mean, std = data.normalization_for(task)
    probe = (task.test_images.astype("float32") / 255.0 - np.asarray(mean)) / np.asarray(std)
    ratios = {}
    # In-batch negatives only: on 64 steps of a tiny task the network moves too fast for a
    # cache of stale projections to help.
    for lam in (0.0, 2.0):
        teacher = make_teacher(task, icc_lambda=lam, icc_delta=-1.0, icc_tau=0.2, icc_cache_size=0)
        steps = data.steps_per_epoch(len(task.train_labels), BATCH)
        diagnostics = training.ClassDistanceDiagnostics(teacher.backbone, probe, task.test_labels)
        history = teacher.fit(
            data.make_train_dataset(task.train_images, task.train_labels, BATCH, seed=0,
                                    mean=mean, std=std, views=2, epochs=8),
            epochs=8, steps_per_epoch=steps, callbacks=[diagnostics], verbose=0).history
        ratios[lam] = history["intra_inter_ratio"][-1]
    assert ratios[2.0] > ratios[0.0] + 0.1, ratios
