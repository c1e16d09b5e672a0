"""Deployable students: the plain functional model, raw-pixel input, metadata that travels."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

from helpers import backend
from keras_icckd import backbones, deploy, export
from keras_icckd.backbones.base import InputRenormalization
from keras_icckd.models import ContrastiveTeacher

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CIFAR = {"mean": MEAN, "std": STD}


def randomised(model, seed=0):
    """`model` with moving statistics and biases away from their initial values (so BN matters)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.path or "gamma" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, size=weight.shape).astype("float32"))
        elif "moving_mean" in weight.path or "beta" in weight.path or "bias" in weight.path:
            weight.assign(rng.normal(0, 0.2, size=weight.shape).astype("float32"))
    return model


def logits_of(model, images):
    out = model(images, training=False)
    return keras.ops.convert_to_numpy(out["logits"] if isinstance(out, dict) else out)


def images(n=6, shape=(32, 32, 3), seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


def softmax_wrapped():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    return backbones.wrap(keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="fc")(x)))


# Every family of the zoo, and each of the project's own layers: option-A shortcuts (resnet8_option_a),
# fused batch norm (all), channel split and shuffle (shufflenetv2), input renormalisation (an imported
# network), the pre-softmax logits of a wrapped Keras classifier.
CASES = {
    "resnet8_option_a": lambda: backbones.get("resnet8_option_a", num_classes=10),
    "resnet8x4": lambda: backbones.get("resnet8x4", num_classes=10),
    "wrn_16_1": lambda: backbones.get("wrn_16_1", num_classes=10),
    "vgg8": lambda: backbones.get("vgg8", num_classes=10),
    "mobilenetv2": lambda: backbones.get("mobilenetv2", num_classes=10),
    "shufflenetv2": lambda: backbones.get("shufflenetv2", num_classes=10),
    "resnet18_imagenet": lambda: backbones.get("resnet18_imagenet", num_classes=10, input_shape=(32, 32, 3)),
    "imported": lambda: backbones.ResNet(depth=8, shortcut="option_a", num_classes=10, input_normalization={
        "network": {"name": "imagenet", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "feed": {"name": "cifar10", **CIFAR}}),
    "wrapped_softmax": softmax_wrapped,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plain_model_is_built_in_layers_with_the_same_logits(case):
    model = randomised(CASES[case]())
    plain = deploy.plain_model(model)
    assert [tuple(t.shape) for t in plain.inputs] == [(None, 32, 32, 3)]
    assert tuple(plain.output.shape) == (None, 10)  # the logits alone
    for layer in plain.layers:
        assert type(layer).__module__.startswith("keras.src.") and \
            getattr(keras.layers, type(layer).__name__) is type(layer), layer
    x = images()
    np.testing.assert_allclose(logits_of(plain, x), logits_of(model, x), rtol=0, atol=2e-5)
    assert plain.count_params() >= sum(int(np.prod(w.shape)) for w in model.weights if "classifier" in w.path)


def test_the_fixed_convolutions_reproduce_the_custom_layers_exactly():
    # products with 0 and 1 and sums with 0 are exact: option A, split and shuffle give identical values
    from keras_icckd.backbones.base import ChannelShuffle, ChannelSplit

    x = images(3, (9, 9, 6))
    for layer in (backbones.OptionAShortcut(2), ChannelSplit(2), ChannelShuffle(3)):
        inputs = keras.Input((9, 9, 6))
        original = keras.Model(inputs, layer(inputs))
        copy_inputs = keras.Input((9, 9, 6))
        copy = keras.Model(copy_inputs, deploy.builtin_graph(original, copy_inputs))
        assert all(deploy.is_builtin(op) for op in copy.layers[1:]), copy.layers
        assert {type(op).__name__ for op in copy.layers[1:]} == {"Conv2D"}
        mine, theirs = copy(x), original(x)
        mine, theirs = (mine, theirs) if isinstance(theirs, (list, tuple)) else ([mine], [theirs])
        for a, b in zip(mine, theirs):
            assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)), layer
    imported = deploy.plain_model(CASES["imported"]())
    assert not any(isinstance(layer, InputRenormalization) for layer in imported.layers)
    assert [layer.name for layer in imported.layers[1:3]] == ["input_normalization_pixels", "input_normalization"]


def test_a_layer_without_a_built_in_equivalent_is_named():
    @keras.saving.register_keras_serializable(package="test_deploy")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inputs = keras.Input((8, 8, 3))
    x = Doubling(name="my_doubling")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    wrapped = backbones.wrap(keras.Model(inputs, keras.layers.Dense(3)(x)))
    with pytest.raises(deploy.ExportError, match=r"layer 'my_doubling' \(.*Doubling\) has no built-in Keras"):
        deploy.plain_model(wrapped)
    with pytest.raises(deploy.ExportError, match="expected a keras_icckd student backbone"):
        deploy.plain_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    with pytest.raises(deploy.ExportError, match="input_format='rgb'"):
        deploy.plain_model(CASES["vgg8"](), input_format="rgb")
    with pytest.raises(deploy.ExportError, match="records none"):
        deploy.plain_model(CASES["vgg8"](), input_format="uint8")


def test_raw_uint8_pixels_give_the_predictions_of_the_normalised_path():
    model = randomised(backbones.get("resnet8", num_classes=10))
    pixels = np.random.default_rng(2).integers(0, 256, size=(16, 32, 32, 3)).astype("uint8")
    normalised = (pixels.astype("float32") / 255.0 - np.float32(MEAN)) / np.float32(STD)
    reference = logits_of(model, normalised)
    for input_format, feed in (("uint8", pixels), ("pixels", pixels.astype("float32"))):
        plain = deploy.plain_model(model, input_format=input_format, normalization=CIFAR)
        assert plain.inputs[0].dtype == ("uint8" if input_format == "uint8" else "float32")
        assert plain.inputs[0].name == "pixels"
        got = logits_of(plain, feed)
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4)
        assert np.array_equal(np.argmax(got, -1), np.argmax(reference, -1))
        assert plain.keras_icckd_metadata["input_format"] == input_format
        assert plain.keras_icckd_metadata["normalization"] == {"mean": MEAN, "std": STD}


# A child Python without keras_icckd: importing it must fail there, loading the plain file must not.
_BARE = textwrap.dedent("""
    import importlib.abc, sys
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "keras_icckd":
                raise ImportError("no keras_icckd here")
    sys.meta_path.insert(0, Refuse())
    try:
        import keras_icckd
    except ImportError:
        pass
    else:
        raise SystemExit("keras_icckd was importable")
    import numpy as np, keras
    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[2])["x"].astype(model.inputs[0].dtype)
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x, training=False)))
    print(keras.backend.backend())
""")


@pytest.mark.parametrize("child_backend,case", [("tensorflow", "imported"), ("jax", "shufflenetv2"),
                                                ("torch", "resnet8_option_a")])
def test_the_plain_file_loads_in_bare_keras_on_each_backend(tmp_path, child_backend, case):
    model = randomised(CASES[case]())
    model.set_metadata(deploy.make_metadata(normalization=CIFAR, class_names=[f"c{i}" for i in range(10)]))
    path = str(tmp_path / "plain.keras")
    deploy.save_plain(deploy.plain_model(model, input_format="uint8"), path)
    pixels = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3)).astype("uint8")
    np.savez(tmp_path / "x.npz", x=pixels)
    env = export.bare_keras_env(child_backend)
    result = subprocess.run([sys.executable, "-c", _BARE, path, str(tmp_path / "x.npz"), str(tmp_path / "y.npy")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == child_backend
    normalised = (pixels.astype("float32") / 255.0 - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), logits_of(model, normalised), rtol=0, atol=1e-4)
    metadata = deploy.read_metadata(path)
    assert metadata["normalization"] == CIFAR and metadata["class_names"][3] == "c3"
    assert metadata["input_format"] == "uint8" and metadata["input_shape"] == [32, 32, 3]
    with zipfile.ZipFile(path) as archive:  # Keras' own metadata.json, the record added to it
        record = json.loads(archive.read("metadata.json"))
    assert "keras_version" in record and record["keras_icckd"] == metadata


def test_metadata_travels_with_saved_backbones_and_teachers(tmp_path):
    model = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    assert model.metadata is None
    metadata = deploy.make_metadata(normalization=CIFAR, class_names=["cat", "dog", "fox"], input_shape=(16, 16, 3),
                                    dataset="pets")
    model.set_metadata(metadata)
    model.save(str(tmp_path / "student.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "student.keras"))
    assert loaded.metadata == metadata
    assert deploy.read_metadata(str(tmp_path / "student.keras")) == metadata
    teacher = ContrastiveTeacher(loaded, icc_cache_size=0)
    teacher.save(str(tmp_path / "teacher.keras"))
    assert deploy.read_metadata(str(tmp_path / "teacher.keras")) == metadata
    assert export.load_student(str(tmp_path / "teacher.keras")).metadata == metadata
    for bad, message in (({"colour": 1}, "unknown keys"), ({"normalization": {"mean": [0.5], "std": [0]}}, "std > 0"),
                         ({"input_format": "rgb"}, "input_format")):
        with pytest.raises(deploy.ExportError, match=message):
            model.set_metadata(bad)
    model.set_metadata(None)
    assert model.metadata is None and "metadata" not in model.get_config()


def test_metadata_of_a_file_without_any_is_none(tmp_path):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(str(tmp_path / "foreign.keras"))
    assert deploy.read_metadata(str(tmp_path / "foreign.keras")) is None
    (tmp_path / "broken.tflite").write_bytes(b"\x00" * 16)
    with pytest.raises(deploy.ExportError, match="cannot read the metadata"):
        deploy.read_metadata(str(tmp_path / "broken.tflite"))
