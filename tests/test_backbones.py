"""Backbone zoo: parameter counts vs PyTorch, output dicts, config and `.keras` round trips."""

import json

import keras
import numpy as np
import pytest

from helpers import outputs_under_other_backend, run_doctests, torch_conv2d
from keras_icckd import backbones
from keras_icckd.backbones import base, mobile, registry, resnet, vgg, wrn


# --- PyTorch parameter counts, by hand from the RepDistiller definitions (no Keras) ----------

def _conv(cin, cout, k, groups=1, bias=False):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def _bn(c):
    return 2 * c  # weight + bias; running stats are buffers, not parameters


def _linear(cin, cout):
    return cin * cout + cout


def torch_resnet(depth, filters, num_classes):
    n, inp = (depth - 2) // 6, filters[0]
    total = _conv(3, inp, 3) + _bn(inp)
    for stage, planes in enumerate(filters[1:]):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            total += _conv(inp, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            if stride != 1 or inp != planes:
                total += _conv(inp, planes, 1) + _bn(planes)
            inp = planes
    return total + _linear(filters[3], num_classes)


def torch_resnet_option_a(depth, num_classes):
    """akamaster's CIFAR-10 ResNet: the same blocks, shortcuts without parameters."""
    n, inp, filters = (depth - 2) // 6, 16, (16, 32, 64)
    total = _conv(3, inp, 3) + _bn(inp)
    for planes in filters:
        for _ in range(n):
            total += _conv(inp, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            inp = planes
    return total + _linear(64, num_classes)


def torch_wrn(depth, k, num_classes):
    n, ch = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    total = _conv(3, 16, 3)
    for s in (1, 2, 3):
        for block in range(n):
            inp = ch[s - 1] if block == 0 else ch[s]
            total += _bn(inp) + _conv(inp, ch[s], 3) + _bn(ch[s]) + _conv(ch[s], ch[s], 3)
            total += _conv(inp, ch[s], 1) if inp != ch[s] else 0
    return total + _bn(ch[3]) + _linear(ch[3], num_classes)


def torch_vgg(cfg, num_classes):
    total, inp = 0, 3
    for block in cfg:
        for v in block:
            total += _conv(inp, v, 3, bias=True) + _bn(v)
            inp = v
    return total + _linear(512, num_classes)


def torch_mobilenetv2(t, w, num_classes):
    settings = [(1, 16, 1), (t, 24, 2), (t, 32, 3), (t, 64, 4), (t, 96, 3), (t, 160, 3),
                (t, 320, 1)]
    inp = int(32 * w)
    total = _conv(3, inp, 3) + _bn(inp)
    for ratio, c, n in settings:
        out = int(c * w)
        for _ in range(n):
            hid = inp * ratio
            total += _conv(inp, hid, 1) + _bn(hid) + _conv(hid, hid, 3, groups=hid) + _bn(hid)
            total += _conv(hid, out, 1) + _bn(out)
            inp = out
    return total + _conv(inp, 1280, 1) + _bn(1280) + _linear(1280, num_classes)


def torch_shufflenetv2(out_channels, num_blocks, num_classes):
    total, inp = _conv(3, 24, 1) + _bn(24), 24
    for out, n in zip(out_channels[:3], num_blocks):
        mid = out // 2
        total += _conv(inp, inp, 3, groups=inp) + _bn(inp) + _conv(inp, mid, 1) + _bn(mid)
        total += _conv(inp, mid, 1) + _bn(mid) + _conv(mid, mid, 3, groups=mid) + _bn(mid)
        total += _conv(mid, mid, 1) + _bn(mid)
        inp = out
        for _ in range(n):
            c = out // 2
            total += 2 * (_conv(c, c, 1) + _bn(c)) + _conv(c, c, 3, groups=c) + _bn(c)
    last = out_channels[3]
    return total + _conv(inp, last, 1) + _bn(last) + _linear(last, num_classes)


_VGG_CFGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
TORCH_COUNTS = {
    **{f"resnet{d}": torch_resnet(d, (16, 16, 32, 64), 100) for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}_option_a": torch_resnet_option_a(d, 100) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": torch_resnet(8, (32, 64, 128, 256), 100),
    "resnet32x4": torch_resnet(32, (32, 64, 128, 256), 100),
    **{f"wrn_{d}_{k}": torch_wrn(d, k, 100) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": torch_vgg(cfg, 100) for d, cfg in _VGG_CFGS.items()},
    "mobilenetv2": torch_mobilenetv2(6, 0.5, 100),
    "shufflenetv2": torch_shufflenetv2((116, 232, 464, 1024), (3, 7, 3), 100),
}
# Published counts (CIFAR-100) of the RepDistiller/CRD zoo.
LITERATURE_COUNTS = {
    "resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "wrn_16_2": 0.70e6, "wrn_40_2": 2.25e6,
    "wrn_40_1": 0.57e6, "resnet20": 0.28e6, "resnet56": 0.86e6, "resnet110": 1.74e6,
    "resnet32": 0.47e6, "vgg8": 3.96e6, "vgg13": 9.46e6,
}


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


IMAGENET_PRESETS = ("mobilenetv1_imagenet", "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet")  # counted
# exactly in tests/test_imagenet_backbones.py


def test_names_are_the_presets():
    assert backbones.names() == sorted([*TORCH_COUNTS, *IMAGENET_PRESETS])


# akamaster/pytorch_resnet_cifar10's README: parameters of its CIFAR-10 (10-class) option-A ResNets.
OPTION_A_PUBLISHED = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}


@pytest.mark.parametrize("depth", sorted(OPTION_A_PUBLISHED))
def test_option_a_parameter_count_is_exact(depth):
    with keras.StatelessScope(initialize_variables=False):
        model = backbones.get(f"resnet{depth}_option_a", num_classes=10)
    count = _trainable_count(model)
    shortcuts = [layer for layer in model.layers if isinstance(layer, resnet.OptionAShortcut)]
    keras.utils.clear_session()
    assert count == torch_resnet_option_a(depth, 10)
    published = OPTION_A_PUBLISHED[depth]
    digits = len(published.split(".")[1]) - 1
    assert f"{count / 1e6:.{digits}f}M" == published
    assert len(shortcuts) == 2 and not any(layer.weights for layer in shortcuts)


def test_option_a_shortcut_is_every_second_pixel_zero_padded():
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(resnet.OptionAShortcut(2)(x))
    expected = np.zeros((2, 3, 3, 8), "float32")
    expected[..., 2:6] = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("filters", [(32, 64, 128, 256), (16, 16, 32, 48), (15, 15, 30, 60)])
def test_option_a_refuses_filters_it_cannot_pad(filters):
    with pytest.raises(ValueError, match="option_a"):
        resnet.ResNet(depth=8, filters=filters, shortcut="option_a")
    with pytest.raises(ValueError, match="shortcut"):
        resnet.ResNet(depth=8, shortcut="option_b")


@pytest.mark.parametrize("name", sorted(TORCH_COUNTS))
def test_parameter_count_matches_pytorch(name):
    # Weights are only declared, never drawn (shapes are all a count needs).
    with keras.StatelessScope(initialize_variables=False):
        model = backbones.get(name, num_classes=100)
    count = _trainable_count(model)
    paths = [w.path for w in model.weights]
    layer_names = [layer.name for layer in model.layers]
    keras.utils.clear_session()  # drops the never-initialised variables
    assert count == TORCH_COUNTS[name]
    if name in LITERATURE_COUNTS:  # published in units of 0.01M
        assert abs(count - LITERATURE_COUNTS[name]) < 1e4, (count, LITERATURE_COUNTS[name])
    assert len(set(paths)) == len(paths) and len(set(layer_names)) == len(layer_names)


# --- forward passes on small presets -----------------------------------------------------------

# Expected (H, W, C) of feat0..featK at 32x32 input, the embedding size, and the stages whose
# feat is ReLU(preact) (the others have no final activation: feat == preact).
FORWARD = {
    "resnet8": ([(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)], 64, {0, 1, 2, 3}),
    "wrn_16_1": ([(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)], 64, {1, 2, 3}),
    "vgg8": ([(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)], 512,
             {0, 1, 2, 3, 4}),
    "mobilenetv2": ([(16, 16, 16), (16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)], 1280,
                    {0}),
    "shufflenetv2": ([(32, 32, 24), (16, 16, 116), (8, 8, 232), (4, 4, 464)], 1024,
                     {0, 1, 2, 3}),
}
NUM_CLASSES = 10


def _randomise_statistics(model, seed=0):
    """Gives BN moving statistics non-default values, so loading them is actually tested."""
    rng = np.random.default_rng(seed)
    for w in model.non_trainable_weights:
        low = 0.5 if "variance" in w.path else -0.5
        w.assign(rng.uniform(low, 1.5, size=w.shape).astype("float32"))


@pytest.fixture(scope="module")
def built():
    """name -> (model, images, outputs in inference mode)."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    result = {}
    for name in FORWARD:
        model = backbones.get(name, num_classes=NUM_CLASSES)
        _randomise_statistics(model)
        outputs = {k: keras.ops.convert_to_numpy(v)
                   for k, v in model(images, training=False).items()}
        result[name] = (model, images, outputs)
    return result


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_output_dict(built, name):
    model, _, outputs = built[name]
    shapes, embedding_dim, activated = FORWARD[name]
    k = len(shapes)
    feats = [f"feat{i}" for i in range(k)]
    preacts = [f"preact{i}" for i in range(k)]
    extra = {f"stage{k}" for k in (1, 2, 3)} if name.startswith("wrn") else set()  # raw stage sums
    assert set(outputs) == {"logits", "embedding", *feats, *preacts, *extra}
    assert isinstance(model.output, dict) and set(model.output) == set(outputs)
    assert outputs["logits"].shape == (2, NUM_CLASSES)
    assert outputs["embedding"].shape == (2, embedding_dim)
    assert list(model.feature_names) == feats and list(model.preact_names) == preacts
    assert model.num_stages == k and list(model.stage_channels) == [s[-1] for s in shapes]
    assert model.embedding_dim == embedding_dim and model.num_classes == NUM_CLASSES
    assert model.classifier.kernel.shape == (embedding_dim, NUM_CLASSES)
    for i, shape in enumerate(shapes):
        feat, preact = outputs[f"feat{i}"], outputs[f"preact{i}"]
        assert feat.shape == preact.shape == (2, *shape), (i, feat.shape, preact.shape)
        if i in activated:
            assert (preact < 0).any() and (feat >= 0).all()
            np.testing.assert_allclose(feat, np.maximum(preact, 0), atol=1e-6)
        else:
            np.testing.assert_array_equal(feat, preact)
    # The embedding is the pooled last map and the logits its image under the classifier.
    w, b = (keras.ops.convert_to_numpy(v) for v in (model.classifier.kernel, model.classifier.bias))
    np.testing.assert_allclose(outputs["logits"], outputs["embedding"] @ w + b, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_config_round_trip(built, name):
    model = built[name][0]
    config = model.get_config()
    assert config["num_classes"] == NUM_CLASSES and config["name"] == name
    clone = type(model).from_config(json.loads(json.dumps(config)))
    assert type(clone) is type(model)
    assert clone.get_config() == config
    assert _trainable_count(clone) == _trainable_count(model)
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_keras_file_round_trip(built, name, tmp_path):
    model, images, outputs = built[name]
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    reloaded = loaded(images, training=False)
    for key, value in outputs.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded[key]), value, atol=1e-6,
                                   err_msg=key)


def test_loads_under_the_other_backend(built, tmp_path):
    model, images, outputs = built["resnet8"]
    model.save(str(tmp_path / "model.keras"))
    result = outputs_under_other_backend(str(tmp_path / "model.keras"), images, tmp_path)
    for key, value in outputs.items():
        np.testing.assert_allclose(result[key], value, atol=1e-4, err_msg=key)


# --- argument checking --------------------------------------------------------------------------

def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="resnet9") as info:
        backbones.get("resnet9")
    assert all(name in str(info.value) for name in backbones.names())
    with pytest.raises(ValueError, match="name"):
        backbones.get(None)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True, "10"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        backbones.get("resnet8", num_classes=num_classes)


@pytest.mark.parametrize("input_shape", [(32, 32), (32, 32, 0), "32x32", (32, 32, None),
                                         (32.0, 32, 3)])
def test_bad_input_shape(input_shape):
    with pytest.raises(ValueError, match="input_shape"):
        backbones.get("resnet8", input_shape=input_shape)


@pytest.mark.parametrize("kernel_size,stride,depthwise", [
    (3, 1, False), (3, 2, False), (1, 2, False), (3, 2, True), (3, 1, True)])
def test_conv_padding_matches_pytorch(kernel_size, stride, depthwise):
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, base.conv(inputs, 4 if depthwise else 5, kernel_size, stride,
                                          name="c", depthwise=depthwise))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    kernel = keras.ops.convert_to_numpy(model.get_layer("c").weights[0])  # (k, k, in, out|1)
    weight = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
    reference = torch_conv2d(x.transpose(0, 3, 1, 2), weight, stride, (kernel_size - 1) // 2,
                              groups=4 if depthwise else 1)
    out = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(out, reference.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_channel_shuffle_matches_pytorch_order():
    # PyTorch: view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4) on channels-first tensors.
    x = np.arange(2 * 6, dtype="float32").reshape(1, 2, 1, 6)
    out = keras.ops.convert_to_numpy(base.ChannelShuffle(2)(x))
    reference = np.transpose(x.transpose(0, 3, 1, 2).reshape(1, 2, 3, 2, 1), (0, 2, 1, 3, 4))
    np.testing.assert_array_equal(out, reference.reshape(1, 6, 2, 1).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("module", [base, registry, resnet, wrn, vgg, mobile],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module):
    run_doctests(module)
