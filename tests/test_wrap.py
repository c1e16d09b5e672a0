"""backbones.wrap: keras.applications and user-built models as teachers and students."""

import doctest

import keras
import numpy as np
import pytest

from keras_icckd import backbones
from keras_icckd.backbones import wrapped as wrap_module
from keras_icckd.models import ContrastiveTeacher, Distiller
from keras_icckd.objectives import AT

SIDE, CLASSES = 32, 4


def user_model(softmax=False):
    """A small functional classifier: two conv stages, global pooling, a Dense classifier."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    outputs = keras.layers.Dense(CLASSES, name="fc")(x)
    if softmax:
        outputs = keras.layers.Softmax(name="probabilities")(outputs)
    return keras.Model(inputs, outputs, name="user_net")


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    mobile = keras.applications.MobileNetV2(weights=None, input_shape=(SIDE, SIDE, 3), classes=CLASSES, alpha=0.35)
    mobile_taps = {"feat1": "block_3_expand_relu", "feat2": "block_6_expand_relu", "preact2": "block_6_expand_BN"}
    user = user_model()
    return {"mobile": mobile, "mobile_backbone": backbones.wrap(mobile, features=mobile_taps),
            "resnet8": backbones.get("resnet8", num_classes=CLASSES),
            "user": user, "user_backbone": backbones.wrap(user, features={"feat1": "relu1", "preact1": "bn1"}),
            "images": np.random.default_rng(0).normal(size=(8, SIDE, SIDE, 3)).astype("float32"),
            "labels": np.arange(8) % CLASSES}


def inference(model, images):
    """Inference-mode outputs as NumPy; JAX runs the network compiled (op by op it compiles every layer)."""
    if keras.backend.backend() == "jax":
        return model.predict(images, verbose=0)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(images, training=False))


def test_softmax_model_gives_its_pre_softmax_logits(models):
    backbone, mobile, images = models["mobile_backbone"], models["mobile"], models["images"]
    assert sorted(backbone.output) == ["embedding", "feat1", "feat2", "logits", "preact2"]
    out, probabilities = inference(backbone, images), inference(mobile, images)
    logits = out["logits"] - out["logits"].max(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), probabilities, atol=1e-5)
    # The embedding is the classifier's input, and the classifier is the model's own Dense layer.
    assert backbone.classifier is mobile.get_layer("predictions") and backbone.embedding_dim == 1280
    w, b = (keras.ops.convert_to_numpy(v) for v in (backbone.classifier.kernel, backbone.classifier.bias))
    np.testing.assert_allclose(out["logits"], out["embedding"] @ w + b, rtol=1e-4, atol=1e-4)
    assert out["feat1"].shape[1:] == (8, 8, 48) and backbone.feature_names == ("feat1", "feat2")
    assert backbone.stage_channels == (48, 96) and backbone.num_classes == CLASSES


def test_layers_and_weights_are_shared_with_the_model(models):
    backbone, mobile = models["mobile_backbone"], models["mobile"]
    ids = {id(v) for v in backbone.trainable_weights}
    assert ids == {id(v) for v in mobile.trainable_weights}


def test_separate_softmax_layer_and_dropout_are_seen_through():
    model = user_model(softmax=True)
    backbone = backbones.wrap(model)
    assert backbone.classifier is model.get_layer("fc")
    assert backbone.output["embedding"] is model.get_layer("pool").output  # through the Dropout


@pytest.mark.parametrize("name", ["mobile_backbone", "user_backbone"])
def test_keras_file_round_trip(models, name, tmp_path):
    backbone, images = models[name], models["images"]
    path = str(tmp_path / "wrapped.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is backbones.WrappedBackbone and sorted(loaded.output) == sorted(backbone.output)
    expected = inference(backbone, images)
    for key, value in inference(loaded, images).items():
        np.testing.assert_allclose(value, expected[key], atol=1e-5, err_msg=key)


def test_distils_with_kd_and_a_feature_objective(models):
    """A wrapped keras.applications student learns from a wrapped user teacher: KD + AT on a tapped stage."""
    student = models["mobile_backbone"]
    # AT compares maps of equal spatial size: the student's feat1 (8 x 8) and the user model's second stage.
    teacher = backbones.wrap(models["user"], features={"feat1": "conv2"}, name="user_teacher")
    distiller = Distiller(teacher, student, [("kd", 0.9), (AT(stages=(1,), name="at"), 1000.0)], ce_weight=0.1,
                          allow_smaller_teacher=True)  # a small user network teaches a mobilenet
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    before = [keras.ops.convert_to_numpy(w).copy() for w in student.trainable_weights[:3]]
    teacher_before = keras.ops.convert_to_numpy(teacher.weights[0]).copy()
    history = distiller.fit(models["images"], models["labels"], batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["kd_loss"][0]) and history["at_loss"][0] > 0 and np.isfinite(history["loss"][0])
    assert any(not np.allclose(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, student.trainable_weights))
    np.testing.assert_array_equal(teacher_before, keras.ops.convert_to_numpy(teacher.weights[0]))


@pytest.mark.parametrize("objective, missing", [
    ("fitnet:1", "feat2"), ("at:1", "feat1"), ("crd:1", "embedding"), ("rkd:1", "embedding")])
def test_a_missing_tap_is_refused_by_name(models, objective, missing):
    teacher = models["resnet8"]
    inputs = keras.Input((SIDE, SIDE, 3))  # logits from a 1x1 conv: no Dense classifier, no embedding
    x = keras.layers.Conv2D(CLASSES, 1, name="score")(inputs)
    student = backbones.wrap(keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x)))
    assert sorted(student.output) == ["logits"]
    with pytest.raises(ValueError) as error:
        Distiller(teacher, student, objective, num_train=8)
    message = str(error.value)
    assert f"needs the output {missing!r} of the student" in message
    assert "it has: logits" in message and f"features={{{missing!r}: '<layer name>'}}" in message
    Distiller(teacher, student, "kd:0.9,dkd:1")  # the logit objectives need nothing more


def test_a_wrapped_model_can_be_an_icc_teacher(models):
    teacher = ContrastiveTeacher(models["user_backbone"], icc_cache_size=8)
    assert tuple(teacher(models["images"][:2]).shape) == (2, CLASSES)


def test_bad_models_and_taps_are_refused(models):
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="has no layer graph"):
        backbones.wrap(Subclassed())
    with pytest.raises(ValueError, match="has no layer named 'nope'; its layers: .*conv1"):
        backbones.wrap(models["user"], features={"feat1": "nope"})
    with pytest.raises(ValueError, match="output name 'logits' must be an identifier other than 'logits'"):
        backbones.wrap(models["user"], features={"logits": "fc"})
    with pytest.raises(ValueError, match=r"features\['embedding'\] must be a pooled"):
        backbones.wrap(models["user"], features={"embedding": "conv2"})
    inputs = keras.Input((SIDE, SIDE, 3))
    sigmoid = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid", name="head")(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(ValueError, match="ends in sigmoid, not in logits or a softmax"):
        backbones.wrap(sigmoid)
    with pytest.raises(ValueError, match="do not come from a Dense layer"):
        backbones.wrap(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))).classifier


def test_docstring_example():
    result = doctest.testmod(wrap_module, extraglobs={"keras": keras})
    assert result.attempted > 0 and result.failed == 0
