"""Distiller: frozen teacher, one run of each network per step, objectives, saving the student."""

import os

import keras
import numpy as np
import pytest

from helpers import outputs_under_other_backend, run_doctests, to_numpy
from keras_icckd import backbones, data, objectives
from keras_icckd.models import ContrastiveTeacher, Distiller, load_teacher

SHAPE, CLASSES, BATCH = (16, 16, 3), 4, 16


@pytest.fixture(scope="module")
def task():
    return data.make_synthetic(num_classes=CLASSES, train_per_class=32, test_per_class=4,
                               image_shape=SHAPE, subclasses=4, seed=1)


def dataset(task, epochs=1, seed=0, **options):
    mean, std = data.normalization_for(task)
    return data.make_train_dataset(task.train_images, task.train_labels, BATCH, seed=seed,
                                   mean=mean, std=std, epochs=epochs, **options)


@pytest.fixture(scope="module")
def trained_teacher(task):
    """A resnet14 teacher trained briefly with CE, so that its predictions vary across images."""
    keras.utils.set_random_seed(1)
    teacher = ContrastiveTeacher(backbones.get("resnet14", num_classes=CLASSES, input_shape=SHAPE),
                                 icc_lambda=0.0, icc_cache_size=0)
    teacher.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    teacher.fit(dataset(task, 8), epochs=8, steps_per_epoch=8, verbose=0)
    return teacher


def make(teacher, spec="kd:0.9", ce_weight=0.1, student="resnet8", num_train=None):
    keras.utils.set_random_seed(0)
    distiller = Distiller(teacher, backbones.get(student, num_classes=CLASSES, input_shape=SHAPE), spec,
                          ce_weight=ce_weight, num_train=num_train)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller


def weights(model):
    return [to_numpy(w).copy() for w in model.weights]


def test_teacher_frozen_student_and_heads_trained(task, trained_teacher):
    distiller = make(trained_teacher, "kd:0.9,fitnet:100")
    teacher_before = weights(distiller.teacher)
    student_before = weights(distiller.student)
    regressor_before = weights(distiller.objective_layers[1].regressor)
    history = distiller.fit(dataset(task, 2), epochs=2, steps_per_epoch=4, verbose=0).history
    for key in ("loss", "ce", "kd_loss", "fitnet_loss", "accuracy", "agreement"):
        assert np.isfinite(history[key]).all(), key
    for before, after in zip(teacher_before, weights(distiller.teacher)):
        np.testing.assert_array_equal(before, after)  # BN statistics included
    assert any(np.abs(b - a).max() > 0 for b, a in zip(student_before, weights(distiller.student)))
    assert any(np.abs(b - a).max() > 0
               for b, a in zip(regressor_before, weights(distiller.objective_layers[1].regressor)))
    assert not distiller.teacher.trainable_weights
    trainable = {id(v) for v in distiller.trainable_variables}
    assert not trainable & {id(v) for v in distiller.teacher.weights}


def test_each_network_runs_once_per_step(task, trained_teacher):
    distiller = make(trained_teacher, "kd:1,rkd:1")
    distiller.compile(optimizer="sgd", run_eagerly=True)
    calls = {"student": 0, "teacher": 0}
    for role in calls:
        model = getattr(distiller, role)
        original = model.call

        def counted(*args, _role=role, _original=original, **kwargs):
            calls[_role] += 1
            return _original(*args, **kwargs)

        model.call = counted
    distiller.fit(dataset(task, 1), epochs=1, steps_per_epoch=3, verbose=0)
    assert calls == {"student": 3, "teacher": 3}


def test_kd_raises_agreement_with_the_teacher(task, trained_teacher):
    mean, std = data.normalization_for(task)
    images = (task.train_images.astype("float32") / 255.0 - np.asarray(mean)) / np.asarray(std)
    target = np.argmax(to_numpy(trained_teacher(images)), -1)
    distiller = make(trained_teacher, "kd:1", ce_weight=0.0)

    def agreement():
        # Batch statistics of all the images: after 32 steps of batch 16 the moving averages of
        # such a small student still lag, and inference-mode predictions hang on them.
        logits = distiller.student(images, training=True)["logits"]
        return np.mean(np.argmax(to_numpy(logits), -1) == target)

    before = agreement()
    distiller.fit(dataset(task, 8), epochs=8, steps_per_epoch=4, verbose=0)
    assert agreement() > before + 0.2, (before, agreement())


@pytest.mark.parametrize("name", objectives.names())  # every registered objective
def test_every_objective_trains(task, trained_teacher, name):
    distiller = make(trained_teacher, f"{name}:1", num_train=len(task.train_labels))
    history = distiller.fit(dataset(task, 1, **distiller.data_options()), epochs=1, steps_per_epoch=2,
                            verbose=0).history
    assert np.isfinite(history["loss"]).all() and np.isfinite(history[f"{name}_loss"]).all()


def test_epoch_counter_advances_and_dkd_warms_up(task, trained_teacher):
    distiller = make(trained_teacher, [(objectives.DKD(warmup_epochs=4, name="dkd"), 1.0)])
    distiller.fit(dataset(task, 3), epochs=3, steps_per_epoch=1, verbose=0)
    assert float(to_numpy(distiller.epoch)) == 3.0
    dkd = objectives.DKD(warmup_epochs=4)
    rng = np.random.default_rng(0)
    s, t = {"logits": rng.normal(size=(4, 5))}, {"logits": rng.normal(size=(4, 5))}
    y = np.array([0, 1, 2, 3])
    full = float(to_numpy(dkd.compute(s, t, y, {"epoch": 4.0})))
    assert full > 0
    assert float(to_numpy(dkd.compute(s, t, y, {"epoch": 1.0}))) == pytest.approx(full / 4, rel=1e-5)
    assert float(to_numpy(dkd.compute(s, t, y, {"epoch": 9.0}))) == pytest.approx(full, rel=1e-5)


def test_student_saves_alone_and_loads_under_the_other_backend(task, trained_teacher, tmp_path):
    distiller = make(trained_teacher)
    distiller.fit(dataset(task, 1), epochs=1, steps_per_epoch=2, verbose=0)
    path = str(tmp_path / "student.keras")
    distiller.student.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded).__name__ == "ResNet" and len(loaded.weights) == len(distiller.student.weights)
    images = task.test_images.astype("float32") / 255.0
    expected = to_numpy(distiller.student(images, training=False)["logits"])
    np.testing.assert_allclose(outputs_under_other_backend(path, images, tmp_path)["logits"], expected,
                               atol=1e-4)


def test_teacher_from_file(task, trained_teacher, tmp_path):
    path = str(tmp_path / "teacher.keras")
    trained_teacher.save(path)
    loaded = load_teacher(path)
    assert loaded.name == "resnet14"
    distiller = make(path)
    images = task.test_images[:4].astype("float32") / 255.0
    np.testing.assert_allclose(to_numpy(distiller.teacher(images)["logits"]),
                               to_numpy(trained_teacher(images)), atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("kd:0.9,foo:1", "unknown name 'foo'"), ("kd:x", "weight 'x' is not a number"),
    ("kd:-1", "weight must be a finite number >= 0"), ("kd:1,kd:2", "given twice"),
])
def test_objective_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        objectives.parse(spec)


def test_parse_defaults_weight_one():
    assert objectives.parse("kd:0.9, rkd") == [("kd", 0.9), ("rkd", 1.0)]


def test_mismatched_or_foreign_teachers_are_refused(tmp_path):
    student = backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE)
    with pytest.raises(ValueError, match="teacher has 7 classes but the student has 4"):
        Distiller(backbones.get("resnet8", num_classes=7, input_shape=SHAPE), student)
    with pytest.raises(ValueError, match="input shape"):
        Distiller(backbones.get("resnet8", num_classes=CLASSES, input_shape=(32, 32, 3)), student)
    with pytest.raises(ValueError, match="teacher must be a keras_icckd backbone"):
        Distiller(keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES)]),
                  student)
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(str(tmp_path / "missing.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="is not a .keras model file"):
        load_teacher(str(junk))
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.save(str(tmp_path / "plain.keras"))
    with pytest.raises(ValueError, match="keras_icckd backbone"):
        load_teacher(str(tmp_path / "plain.keras"))


def test_at_refuses_mismatched_stages():
    with pytest.raises(ValueError, match="AT needs feat1"):
        Distiller(backbones.get("resnet8", num_classes=CLASSES), backbones.get("vgg8", num_classes=CLASSES),
                  "at:1000", allow_smaller_teacher=True)


def test_doctest_examples():
    from keras_icckd.models import distiller as module
    from keras_icckd.objectives import crd, dcd, kd

    for m in (module, kd, crd, dcd):
        run_doctests(m)


def test_parse_constructor_options():
    (dkd, weight), (kd, kd_weight) = objectives.parse("dkd(beta=2;warmup_epochs=10):1,kd:0.5")
    assert isinstance(dkd, objectives.DKD) and (dkd.beta, dkd.warmup_epochs, weight) == (2.0, 10, 1.0)
    assert (kd, kd_weight) == ("kd", 0.5)
    for spec, message in (("dkd(beta=2:1", "without"), ("dkd(gamma=2):1", "gamma"),
                          ("dkd(beta):1", "key=value"), ("kd(temperature=oops):1", "key=value")):
        with pytest.raises(ValueError, match=message):
            objectives.parse(spec)


@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "shufflenetv2"),
                                                        ("vgg13", "mobilenetv2")])
def test_heterogeneous_pairs(teacher_name, student_name):
    """The logit-, embedding- and last-map-based objectives run on the literature's heterogeneous pairs."""
    keras.utils.set_random_seed(0)
    distiller = Distiller(backbones.get(teacher_name, num_classes=CLASSES),
                          backbones.get(student_name, num_classes=CLASSES),
                          "kd:0.9,dkd:1,rkd:1,crd:0.8,dcd:1,pckd:1,msdcrd:1", num_train=32)
    rng = np.random.default_rng(0)
    x = {"image": rng.normal(size=(4, 32, 32, 3)).astype("float32"),
         "index": np.arange(4, dtype="int32"),
         "contrast_index": rng.integers(0, 32, size=(4, distiller.objective_layers[3].negatives)).astype("int32")}
    y = np.array([0, 1, 2, 3])
    loss = distiller.compute_loss(x, y, distiller(x, training=True), training=True)
    assert np.isfinite(to_numpy(loss))


def test_keras_argument_order_and_the_old_order_is_refused(trained_teacher, tmp_path):
    """Distiller(teacher, student, distillation_losses, distillation_loss_weights, student_loss_weight), as
    keras.distillation.Distiller; two networks in the old order (student, teacher) do not train silently."""
    keras.utils.set_random_seed(0)
    small = backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE)
    big = trained_teacher.backbone  # resnet14
    with pytest.raises(ValueError, match=r"the teacher \(resnet8, [\d,]+ parameters\) is smaller than the student "
                                         r"\(resnet14, .*Distiller takes \(teacher, student, \.\.\.\).*"
                                         r"allow_smaller_teacher=True"):
        Distiller(small, big)
    assert Distiller(small, big, allow_smaller_teacher=True).teacher is small
    path = str(tmp_path / "teacher.keras")
    big.save(path)
    with pytest.raises(ValueError, match=r"the student is a file path .*a teacher's file goes first"):
        Distiller(small, path)
    with pytest.raises(ValueError, match="the student is a ContrastiveTeacher"):
        Distiller(small, trained_teacher)
    assert Distiller(path, small).teacher.name == "resnet14"
    # Keras' names and its convex weighting: s * CE + (1 - s) * sum_i w_i L_i
    keras_style = Distiller(teacher=big, student=small, distillation_losses="kd", student_loss_weight=0.25)
    assert keras_style.ce_weight == 0.25 and keras_style.weighted_objectives == {"kd": 0.75}
    ours = Distiller(big, small, objectives="kd:0.75", ce_weight=0.25)
    x, y = np.random.default_rng(0).normal(size=(4,) + SHAPE).astype("float32"), np.array([0, 1, 2, 3])
    np.testing.assert_allclose(to_numpy(keras_style.compute_loss(x, y, keras_style(x), training=False)),
                               to_numpy(ours.compute_loss(x, y, ours(x), training=False)), rtol=1e-6)
    replaced = Distiller(big, small, "kd:0.9,rkd:1", [0.5, 2.0])
    assert replaced.weighted_objectives == {"kd": 0.5, "rkd": 2.0} and replaced.ce_weight == 0.1
    for kwargs, message in (({"student_loss_weight": 0.5, "ce_weight": 0.1}, "not both"),
                            ({"student_loss_weight": 1.5}, r"student_loss_weight=1.5: expected a number in \[0, 1\]"),
                            ({"distillation_loss_weights": [1.0, 2.0]}, "2 weights for 1 objectives"),
                            ({"distillation_losses": "kd", "objectives": "kd"}, "give the objectives once")):
        with pytest.raises(ValueError, match=message):
            Distiller(big, small, **kwargs)


def test_predict_gives_the_students_logits(trained_teacher):
    distiller = make(trained_teacher)
    x = np.random.default_rng(1).normal(size=(6,) + SHAPE).astype("float32")
    np.testing.assert_allclose(distiller.predict(x, batch_size=3, verbose=0),
                               to_numpy(distiller.student(x)["logits"]), atol=1e-5)


def test_epoch_from_the_step_count_or_set_by_hand(trained_teacher):
    """Outside fit, DKD's warm-up reads the epoch from the optimizer (steps_per_epoch) or from set_epoch."""
    keras.utils.set_random_seed(0)
    student = backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE)
    counted = Distiller(trained_teacher, student, "dkd(warmup_epochs=4):1", steps_per_epoch=2)
    counted.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(2)
    for _ in range(3):  # train_on_batch: no fit, no EpochCounter
        counted.train_on_batch(rng.normal(size=(4,) + SHAPE).astype("float32"), np.array([0, 1, 2, 3]))
    assert float(to_numpy(counted.current_epoch())) == 2.0  # 3 steps of 2 per epoch: in epoch 2
    by_hand = make(trained_teacher, "dkd(warmup_epochs=4):1")
    by_hand.set_epoch(3)
    assert float(to_numpy(by_hand.current_epoch())) == 3.0
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        Distiller(trained_teacher, student, "kd:1", steps_per_epoch=0)
