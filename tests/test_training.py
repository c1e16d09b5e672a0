"""Training helpers: feature-distance diagnostics, schedules, crash-safe outputs, plots."""

import itertools
import json
import os

import keras
import numpy as np
import pytest

from keras_icckd import training


def test_class_distance_stats_match_brute_force():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    intra, inter = [], []
    for i, j in itertools.permutations(range(9), 2):
        (intra if labels[i] == labels[j] else inter).append(np.linalg.norm(unit[i] - unit[j]))
    stats = training.class_distance_stats(features, labels)
    np.testing.assert_allclose(stats["intra_class_distance"], np.mean(intra), rtol=1e-9)
    np.testing.assert_allclose(stats["inter_class_distance"], np.mean(inter), rtol=1e-9)
    np.testing.assert_allclose(stats["intra_inter_ratio"], np.mean(intra) / np.mean(inter), rtol=1e-9)


def test_class_distance_stats_hand_values():
    # Class 0: two orthogonal unit vectors (distance sqrt 2); class 1 is the first one again.
    stats = training.class_distance_stats(np.array([[1, 0], [0, 1], [1, 0]]), np.array([0, 0, 1]))
    assert stats["intra_class_distance"] == pytest.approx(np.sqrt(2))
    assert stats["inter_class_distance"] == pytest.approx(np.sqrt(2) / 2)
    assert np.isnan(training.class_distance_stats(np.eye(2), np.array([0, 1]))["intra_class_distance"])


def test_epoch_step_decay():
    schedule = training.epoch_step_decay(0.1, steps_per_epoch=10, decay_epochs=[2, 3], decay_rate=0.1)
    lrs = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 19, 20, 29, 30, 99)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(keras.ops.convert_to_numpy(restored(25))) == pytest.approx(0.01)
    assert training.epoch_step_decay(0.1, 10, []) == 0.1
    for kwargs in ({"base_lr": 0.0}, {"steps_per_epoch": 0}, {"decay_epochs": [3, 2]}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            training.epoch_step_decay(**{"base_lr": 0.1, "steps_per_epoch": 10, **kwargs})


def test_atomic_json_writes_and_cleans_up(tmp_path):
    path = os.path.join(tmp_path, "metrics.json")
    training.atomic_write_json({"a": 1.5, "b": float("nan"), "c": [float("inf")]}, path)
    assert json.load(open(path)) == {"a": 1.5, "b": None, "c": [None]}
    with pytest.raises(TypeError):
        training.atomic_write_json({"bad": object()}, path)
    assert json.load(open(path))["a"] == 1.5  # the old file survives a failed write
    assert os.listdir(tmp_path) == ["metrics.json"]  # and no temp file is left


def test_atomic_text_writes_and_cleans_up(tmp_path):
    path = os.path.join(tmp_path, "report.md")
    training.atomic_write_text("# one\n", path)
    training.atomic_write_text("# two\n", path)
    assert open(path).read() == "# two\n"
    with pytest.raises(TypeError):
        training.atomic_write_text(None, path)
    assert open(path).read() == "# two\n" and os.listdir(tmp_path) == ["report.md"]


def test_atomic_model_save_refuses_wrong_suffix_and_leaves_nothing(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=".keras"):
        training.atomic_save_model(model, os.path.join(tmp_path, "model.h5"))

    class Broken(keras.Model):
        def save(self, path):
            open(path, "w").write("partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        training.atomic_save_model(Broken(), os.path.join(tmp_path, "model.keras"))
    assert os.listdir(tmp_path) == []
    training.atomic_save_model(model, os.path.join(tmp_path, "model.keras"))
    assert keras.saving.load_model(os.path.join(tmp_path, "model.keras")).count_params() == 8


def test_plot_curves_writes_png(tmp_path):
    history = [{"epoch": e, "loss": 2.0 / e, "ce": 1.5 / e, "train_top1": 30.0 * e, "test_top1": 25.0 * e,
                "intra_inter_ratio": 0.5 + 0.01 * e} for e in (1, 2, 3)]
    path = os.path.join(tmp_path, "curves.png")
    training.plot_curves(history, path, title="t")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
