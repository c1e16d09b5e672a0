"""ImageNet backbones: exact torchvision / reference parameter counts, forward passes, torchvision's max pool."""

import doctest

import keras
import numpy as np
import pytest

from keras_icckd import backbones
from keras_icckd.backbones import imagenet


def _conv(cin, cout, k, groups=1):
    return cout * (cin // groups) * k * k


def _bn(c):
    return 2 * c  # running statistics are buffers, not parameters


def torchvision_resnet(block, layers, num_classes=1000):
    """Parameters of torchvision.models.resnet.ResNet, counted from its definition (no Keras)."""
    expansion = 4 if block == "bottleneck" else 1
    total, inplanes = _conv(3, 64, 7) + _bn(64), 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            if block == "basic":
                total += _conv(inplanes, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            else:
                total += _conv(inplanes, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
                total += _conv(planes, planes * 4, 1) + _bn(planes * 4)
            if stride != 1 or inplanes != planes * expansion:
                total += _conv(inplanes, planes * expansion, 1) + _bn(planes * expansion)
            inplanes = planes * expansion
    return total + inplanes * num_classes + num_classes


def reference_mobilenetv1(num_classes=1000):
    """Parameters of RepDistiller/mdistiller's ImageNet MobileNetV1 (conv_bn + 13 conv_dw + fc)."""
    total, inp = _conv(3, 32, 3) + _bn(32), 32
    for out, _ in imagenet._MOBILENET_BLOCKS:
        total += _conv(inp, inp, 3, groups=inp) + _bn(inp) + _conv(inp, out, 1) + _bn(out)
        inp = out
    return total + 1024 * num_classes + num_classes


# preset: (count from the definition, the published count at 1000 classes)
COUNTS = {
    "resnet18_imagenet": (torchvision_resnet("basic", (2, 2, 2, 2)), 11_689_512),
    "resnet34_imagenet": (torchvision_resnet("basic", (3, 4, 6, 3)), 21_797_672),
    "resnet50_imagenet": (torchvision_resnet("bottleneck", (3, 4, 6, 3)), 25_557_032),
    "mobilenetv1_imagenet": (reference_mobilenetv1(), 4_231_976),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_is_exact(name):
    with keras.StatelessScope(initialize_variables=False):  # shapes only, nothing drawn
        model = backbones.get(name, num_classes=1000, input_shape=(64, 64, 3))
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    layer_names = [layer.name for layer in model.layers]
    keras.utils.clear_session()
    assert count == COUNTS[name][0] == COUNTS[name][1]
    assert len(set(layer_names)) == len(layer_names)


# preset or block config: (input side, feat0..feat4 (H, W, C), embedding size)
FORWARD = {
    "resnet18_imagenet": (64, [(32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)], 512),
    "mobilenetv1_imagenet": (64, [(32, 32, 32), (16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 1024)], 1024),
    "bottleneck_1111": (32, [(16, 16, 64), (8, 8, 256), (4, 4, 512), (2, 2, 1024), (1, 1, 2048)], 2048),
}


def build(name, side):
    if name == "bottleneck_1111":
        return imagenet.ImageNetResNet("bottleneck", (1, 1, 1, 1), num_classes=7, input_shape=(side, side, 3))
    return backbones.get(name, num_classes=7, input_shape=(side, side, 3))


def inference(model, images):
    """Inference-mode outputs as NumPy; JAX runs the network compiled (op by op it compiles every layer)."""
    if keras.backend.backend() == "jax":
        return model.predict(images, verbose=0)
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images, training=False).items()}


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_pass(name):
    side, shapes, embedding_dim = FORWARD[name]
    keras.utils.set_random_seed(0)
    model = build(name, side)
    for w in model.non_trainable_weights:  # moving statistics away from their defaults
        w.assign(np.random.default_rng(1).uniform(0.5, 1.5, size=w.shape).astype("float32"))
    images = np.random.default_rng(2).normal(size=(2, side, side, 3)).astype("float32")
    out = inference(model, images)
    assert set(out) == {"logits", "embedding", *(f"{p}{i}" for p in ("feat", "preact") for i in range(5))}
    assert out["logits"].shape == (2, 7) and out["embedding"].shape == (2, embedding_dim)
    assert list(model.stage_channels) == [s[-1] for s in shapes] and model.embedding_dim == embedding_dim
    for i, shape in enumerate(shapes):
        assert out[f"feat{i}"].shape == (2, *shape)
        np.testing.assert_allclose(out[f"feat{i}"], np.maximum(out[f"preact{i}"], 0), atol=1e-6)
        assert (out[f"preact{i}"] < 0).any()
    np.testing.assert_allclose(out["embedding"], out["feat4"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    w, b = (keras.ops.convert_to_numpy(v) for v in (model.classifier.kernel, model.classifier.bias))
    np.testing.assert_allclose(out["logits"], out["embedding"] @ w + b, rtol=1e-4, atol=1e-4)
    assert model.get_config()["input_shape"] == (side, side, 3)


def test_max_pool_matches_torch_padding():
    """MaxPool2d(3, stride 2, padding 1) of PyTorch (-inf padding, windows from -1), in NumPy."""
    x = np.random.default_rng(3).uniform(0, 1, size=(2, 9, 8, 3)).astype("float32")
    inputs = keras.Input((9, 8, 3))
    model = keras.Model(inputs, imagenet._max_pool(inputs, "pool"))
    got = keras.ops.convert_to_numpy(model(x))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    out_h, out_w = (9 + 2 - 3) // 2 + 1, (8 + 2 - 3) // 2 + 1
    expected = np.stack([np.stack([padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
                                   for j in range(out_w)], 1) for i in range(out_h)], 1)
    np.testing.assert_array_equal(got, expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block must be one of"):
        imagenet.ImageNetResNet("basics", (2, 2, 2, 2))
    with pytest.raises(ValueError, match="blocks must be 4 positive block counts"):
        imagenet.ImageNetResNet("basic", (2, 2, 2))


def test_docstring_examples():
    result = doctest.testmod(imagenet, extraglobs={"keras": keras}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
