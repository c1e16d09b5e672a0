"""keras.distillation both ways: our objectives in Keras' Distiller, Keras' losses in ours."""

import keras
import numpy as np
import pytest

from keras_icckd import backbones, objectives
from keras_icckd.models import Distiller


def numpy_kd(student_logits, teacher_logits, temperature):
    """T^2 * KL(softmax(t / T) || softmax(s / T)), batch mean: Hinton's KD, by hand."""
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p_t = np.exp(log_softmax(teacher_logits))
    return float(temperature ** 2 * np.mean(np.sum(p_t * (log_softmax(teacher_logits) - log_softmax(student_logits)),
                                                   -1)))


def logits(seed, shape=(8, 10)):
    return np.random.default_rng(seed).normal(0, 3, size=shape).astype("float32")


def test_kd_as_a_keras_distillation_loss_equals_ours_and_numpy():
    z_s, z_t = logits(0), logits(1)
    expected = numpy_kd(z_s, z_t, 4.0)
    ours = float(objectives.get("kd")({"logits": z_s}, {"logits": z_t}, np.zeros(8)))
    as_keras = objectives.as_distillation_loss("kd")
    assert isinstance(as_keras, keras.distillation.DistillationLoss)
    # Keras' argument order: teacher outputs first
    assert float(as_keras.compute_loss(z_t, z_s)) == pytest.approx(expected, rel=1e-5)
    assert ours == pytest.approx(expected, rel=1e-5)
    assert float(as_keras.compute_loss({"logits": z_t, "embedding": z_t}, {"logits": z_s, "embedding": z_s})) == \
        pytest.approx(expected, rel=1e-5)  # this project's backbones return dicts: their logits are used
    assert float(objectives.as_distillation_loss("kd(temperature=2)").compute_loss(z_t, z_s)) == \
        pytest.approx(numpy_kd(z_s, z_t, 2.0), rel=1e-5)
    config = as_keras.get_config()
    assert float(objectives.ObjectiveLoss.from_config(config).compute_loss(z_t, z_s)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name,reason", [("dkd", "reads the labels"), ("pckd", "reads the labels"),
                                         ("crd", "needs the inputs"), ("dcd", "trains variables of its own"),
                                         ("fitnet", "trains variables of its own")])
def test_objectives_that_keras_cannot_feed_are_refused_with_the_reason(name, reason):
    with pytest.raises(ValueError, match=f"{reason}.*use keras_icckd.models.Distiller"):
        objectives.as_distillation_loss(name)


def test_rkd_needs_nothing_keras_lacks_and_matches_ours():
    rng = np.random.default_rng(2)
    student = {"logits": logits(3), "embedding": rng.normal(size=(8, 16)).astype("float32")}
    teacher = {"logits": logits(4), "embedding": rng.normal(size=(8, 32)).astype("float32")}
    ours = objectives.get("rkd")
    ours.prepare({k: v.shape for k, v in student.items()}, {k: v.shape for k, v in teacher.items()})
    expected = float(ours(student, teacher, np.zeros(8)))
    assert float(objectives.as_distillation_loss("rkd").compute_loss(teacher, student)) == pytest.approx(expected, rel=1e-5)


def test_a_script_with_keras_own_distiller_and_our_kd_trains():
    keras.utils.set_random_seed(0)
    teacher = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3))
    student = backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3))
    # Keras' Distiller compares the models' outputs with the labels: logits-only views of the backbones
    t = keras.Model(teacher.input, teacher.output["logits"])
    s = keras.Model(student.input, student.output["logits"])
    distiller = keras.distillation.Distiller(teacher=t, student=s, distillation_losses=[objectives.ObjectiveLoss("kd")],
                                             student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 16, 16, 3)).astype("float32"), np.arange(32) % 4
    before = [keras.ops.convert_to_numpy(w).copy() for w in s.trainable_weights]
    teacher_before = [keras.ops.convert_to_numpy(w).copy() for w in t.weights]
    expected = numpy_kd(keras.ops.convert_to_numpy(s(x[:8])), keras.ops.convert_to_numpy(t(x[:8])), 4.0)
    first = distiller.evaluate(x[:8], y[:8], batch_size=8, verbose=0, return_dict=True)
    assert first["distillation_loss"] == pytest.approx(expected, rel=1e-4)
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    after = [keras.ops.convert_to_numpy(w) for w in s.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))  # the student trained
    assert all(np.array_equal(keras.ops.convert_to_numpy(w), b) for w, b in zip(t.weights, teacher_before))


def test_keras_logits_and_feature_distillation_in_our_distiller():
    keras.utils.set_random_seed(1)
    teacher = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3))
    student = backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 16, 16, 3)).astype("float32"), np.arange(16) % 4
    ours = Distiller(teacher, student, "kd:1", ce_weight=0.0)
    # the default loss="kl_divergence" is made Hinton's KD (softmax first), equal to ours
    theirs = Distiller(teacher, student, [keras.distillation.LogitsDistillation(temperature=4.0)], ce_weight=0.0)
    for d in (ours, theirs):
        d.compile(optimizer="sgd")
    a = ours.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    b = theirs.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert b["logits_distillation_loss"] == pytest.approx(a["kd_loss"], rel=1e-4)
    feature = keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name="avg_pool",
                                                     student_layer_name="embedding")
    both = Distiller(teacher, student, [keras.distillation.LogitsDistillation(
        temperature=2.0, loss=keras.losses.KLDivergence()), feature], [1.0, 0.5], ce_weight=0.1)
    assert both.weighted_objectives == {"logits_distillation": 1.0, "feature_distillation": 0.5}
    layer = both.objective_layers[1]
    assert (layer.teacher_output, layer.student_output) == ("embedding", "embedding")  # avg_pool gives it
    both.compile(optimizer="sgd")
    history = both.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["feature_distillation_loss"][0]) and np.isfinite(history["loss"][0])
    with pytest.raises(ValueError, match="no output of the teacher is that layer's.*embedding"):
        Distiller(teacher, student, [keras.distillation.FeatureDistillation(teacher_layer_name="stage1_block0_1_conv")])
    restored = objectives.KerasDistillationLoss.from_config(layer.get_config())
    assert (restored.teacher_output, type(restored.loss).__name__) == ("embedding", "FeatureDistillation")
