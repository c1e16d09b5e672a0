"""PyTorch checkpoints of CIFAR networks -> keras_icckd backbones with the same weights.

`from_torch(path, ...)` reads a checkpoint, recognises its key layout (or takes `arch`), builds the
matching preset and copies every weight and BatchNorm statistic into it, refusing a checkpoint
that does not fit with the first key and shapes that do not match.

Key layouts are *families*, each a `TorchFamily` in `FAMILIES`: a name, the backbone class it
builds, `matches(state)` (does a state_dict have this layout), `arch_from(state)` (the preset its
shapes describe) and a table of renaming rules from the backbone's layer names to the checkpoint's
module names, which `assign(model, state)` follows. Families here: the RepDistiller / mdistiller
CIFAR zoo (ResNet with 1x1-conv shortcuts, which is also chenyaofo/pytorch-cifar-models' layout;
Wide ResNet; VGG with BN; MobileNetV2; ShuffleNetV2), akamaster/pytorch_resnet_cifar10's
option-A ResNets, torchvision's ImageNet ResNets (resnet18/34/50_imagenet) and RepDistiller/mdistiller's
ImageNet MobileNetV1 (mobilenetv1_imagenet). Another layout is one more `TorchFamily` passed to `register_family`.

PyTorch is needed only here, imported when a checkpoint is read (`pip install torch`; the CPU
wheel is enough).
"""

import inspect
import os
import re

import numpy as np

from keras_icckd.backbones.registry import PRESETS

WRAPPER_KEYS = ("state_dict", "model", "net")
IGNORED_SUFFIXES = ("num_batches_tracked",)


class TorchImportError(ValueError):
    """A checkpoint that cannot be read, or whose keys or shapes do not fit the architecture."""


def import_torch():
    """The `torch` module; ImportError naming the install command when it is missing."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs PyTorch, which is not installed: "
                          "pip install torch (the CPU wheel is enough; requirements-test.txt pins it)") from e
    return torch


def _is_tensor_dict(value, torch):
    return isinstance(value, dict) and value and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def load_state_dict(path):
    """Reads a PyTorch checkpoint into {key: float32 NumPy array}.

    Accepts both torch formats (zip and the legacy pickle), a bare state_dict or one held under
    "state_dict", "model" or "net" (possibly nested), and keys prefixed with "module." (saved from
    DataParallel), which are stripped. Loading uses `weights_only=True`: nothing but tensors and
    plain containers is unpickled.

    Args:
        path: the checkpoint file.

    Raises:
        TorchImportError: the file is missing, not a torch checkpoint, or holds no state_dict.
        ImportError: PyTorch is not installed.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise TorchImportError(f"torch checkpoint {path!r} does not exist")
    torch = import_torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types on foreign files)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchImportError(f"torch checkpoint {path!r} is not a PyTorch checkpoint that torch.load "
                               f"can read with weights_only=True: {first}") from e
    state = checkpoint
    for _ in range(3):
        if _is_tensor_dict(state, torch):
            break
        inner = [k for k in WRAPPER_KEYS if isinstance(state, dict) and isinstance(state.get(k), dict)]
        if not inner:
            break
        state = state[inner[0]]
    if not _is_tensor_dict(state, torch):
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise TorchImportError(f"torch checkpoint {path!r} holds no state_dict (a dict of tensors, bare or "
                               f"under {', '.join(WRAPPER_KEYS)}); found {found}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


# ----------------------------------------------------------------------------- families


def _count(state, pattern):
    """Number of distinct integers i for which some key matches pattern.format(i=...)."""
    regex = re.compile(pattern.format(i=r"(\d+)"))
    return len({m.group(1) for m in map(regex.fullmatch, state) if m})


def _channels(state, key, axis=0):
    if key not in state:
        raise TorchImportError(f"the checkpoint lacks the key {key}")
    return int(state[key].shape[axis])


class TorchFamily:
    """One key layout of PyTorch checkpoints and how it maps onto a keras_icckd backbone class.

    Args:
        name: short name of the layout.
        description: where the layout comes from.
        cls: the backbone class it builds.
        required: keys a state_dict of this layout always has.
        forbidden: keys it never has (to tell similar layouts apart).
        rules: (regex over the backbone's layer names, replacement) pairs giving the checkpoint's
            module prefix of every layer with weights; the first full match wins; a replacement is
            a `re` template or a function of the match.
        infer: function state -> constructor kwargs of `cls` read from the keys and shapes.
        head: module prefix of the classifier (its weight's rows are the classes).
        preset_filter: function (preset kwargs) -> bool for the presets this layout can load
            (e.g. the ResNet shortcut kind); default all presets of `cls`.
    """

    def __init__(self, name, description, cls, required, rules, infer, head, forbidden=(),
                 preset_filter=None):
        self.name, self.description, self.cls = name, description, cls
        self.required, self.forbidden = tuple(required), tuple(forbidden)
        self.rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]
        self.infer, self.head = infer, head
        self.preset_filter = preset_filter or (lambda kwargs: True)

    def archs(self):
        """The preset names this layout can be imported into."""
        return sorted(name for name, (cls, kwargs) in PRESETS.items()
                      if cls is self.cls and self.preset_filter(kwargs))

    def matches(self, state):
        """Whether a state_dict has this layout (by its keys)."""
        return all(k in state for k in self.required) and not any(k in state for k in self.forbidden)

    def arch_from(self, state):
        """The preset whose architecture the state_dict's keys and shapes describe."""
        try:
            inferred = self.infer(state)
        except (KeyError, IndexError) as e:
            raise TorchImportError(f"the checkpoint looks like a {self.description} but lacks the key {e}") from e
        defaults = {k: p.default for k, p in inspect.signature(self.cls.__init__).parameters.items()}
        for name in self.archs():
            kwargs = {**{k: defaults.get(k) for k in inferred}, **PRESETS[name][1]}
            if all(_same(kwargs[k], v) for k, v in inferred.items()):
                return name
        described = ", ".join(f"{k}={v!r}" for k, v in inferred.items())
        raise TorchImportError(f"the checkpoint is a {self.description} with {described}, which is no "
                               f"preset; presets of this layout: {', '.join(self.archs())}")

    def torch_prefix(self, layer_name):
        for pattern, replacement in self.rules:
            match = pattern.fullmatch(layer_name)
            if match:
                return replacement(match) if callable(replacement) else match.expand(replacement)
        raise TorchImportError(f"layout {self.name}: no rule names the checkpoint module of layer {layer_name!r}")

    def assign(self, model, state):
        """Copies the state_dict's values into `model`; TorchImportError if any key or shape differs.

        Nothing is assigned unless everything fits: every weighted layer's keys exist with the
        right shapes and every key of the checkpoint (but `num_batches_tracked`) is used.
        """
        plan, used = [], set()
        for layer in model.layers:
            if not layer.weights:
                continue
            prefix = self.torch_prefix(layer.name)
            for variable, suffix, to_keras, to_torch in _conversions(layer):
                key = f"{prefix}.{suffix}"
                expected = tuple(to_torch(np.empty(variable.shape, "float32")).shape)
                if key not in state:
                    missing = [key] + [k for k in _expected_keys(self, model) if k not in state and k != key]
                    more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}...)" if len(missing) > 1 else ""
                    raise TorchImportError(f"checkpoint lacks the key {key} (shape {expected}) that {model.name} "
                                           f"needs{more}")
                value = np.asarray(state[key], "float32")
                if tuple(value.shape) != expected:
                    raise TorchImportError(f"checkpoint key {key} has shape {tuple(value.shape)} but {model.name} "
                                           f"expects {expected} (layer {layer.name})")
                plan.append((variable, to_keras(value)))
                used.add(key)
        extra = [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES)]
        if extra:
            raise TorchImportError(f"checkpoint key {extra[0]} (shape {tuple(state[extra[0]].shape)}) has no place "
                                   f"in {model.name}" + (f" ({len(extra) - 1} more unexpected keys)"
                                                         if len(extra) > 1 else ""))
        for variable, value in plan:
            variable.assign(value)


def _same(a, b):
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _expected_keys(family, model):
    return [f"{family.torch_prefix(layer.name)}.{suffix}" for layer in model.layers if layer.weights
            for _, suffix, _, _ in _conversions(layer)]


def _conversions(layer):
    """(variable, torch key suffix, torch -> keras, keras -> torch) of each variable of a layer."""
    from keras import layers

    same = (lambda a: a, lambda a: a)
    if isinstance(layer, layers.DepthwiseConv2D):  # torch (C, 1, kh, kw) <-> keras (kh, kw, C, 1)
        items = [(layer.kernel, "weight", lambda a: a.transpose(2, 3, 0, 1),
                  lambda a: a.transpose(2, 3, 0, 1))]
        return items + ([(layer.bias, "bias", *same)] if layer.use_bias else [])
    if isinstance(layer, layers.Conv2D):  # torch (O, I, kh, kw) <-> keras (kh, kw, I, O)
        items = [(layer.kernel, "weight", lambda a: a.transpose(2, 3, 1, 0),
                  lambda a: a.transpose(3, 2, 0, 1))]
        return items + ([(layer.bias, "bias", *same)] if layer.use_bias else [])
    if isinstance(layer, layers.BatchNormalization):
        return [(layer.gamma, "weight", *same), (layer.beta, "bias", *same),
                (layer.moving_mean, "running_mean", *same), (layer.moving_variance, "running_var", *same)]
    if isinstance(layer, layers.Dense):  # torch (out, in) <-> keras (in, out)
        return [(layer.kernel, "weight", np.transpose, np.transpose), (layer.bias, "bias", *same)]
    raise TorchImportError(f"no PyTorch counterpart for the weights of layer {layer.name} "
                           f"({type(layer).__name__})")


def _infer_resnet(state, shortcut):
    blocks = _count(state, r"layer1\.{i}\.conv1\.weight")
    filters = (_channels(state, "conv1.weight"),) + tuple(
        _channels(state, f"layer{s}.0.conv1.weight") for s in (1, 2, 3))
    return dict(depth=6 * blocks + 2, filters=filters, shortcut=shortcut)


_RESNET_RULES = [
    (r"stem_conv", "conv1"), (r"stem_bn", "bn1"),
    (r"stage(\d)_block(\d+)_(\d)_conv", r"layer\1.\2.conv\3"),
    (r"stage(\d)_block(\d+)_(\d)_bn", r"layer\1.\2.bn\3"),
    (r"stage(\d)_block(\d+)_down_conv", r"layer\1.\2.downsample.0"),
    (r"stage(\d)_block(\d+)_down_bn", r"layer\1.\2.downsample.1"),
]


def _infer_wrn(state):
    blocks = _count(state, r"block1\.layer\.{i}\.conv1\.weight")
    return dict(depth=6 * blocks + 4, widen_factor=_channels(state, "block1.layer.0.conv1.weight") // 16)


def _infer_vgg(state):
    config = []
    for j in range(5):  # block j: Sequential(conv, BN, ReLU, conv, BN, ...): convs at 0, 3, 6, ...
        convs = []
        while f"block{j}.{3 * len(convs)}.weight" in state:
            convs.append(_channels(state, f"block{j}.{3 * len(convs)}.weight"))
        config.append(tuple(convs))
    return dict(config=tuple(config))


def _infer_mobilenetv2(state):
    expand = state["blocks.1.0.conv.0.weight"].shape
    return dict(expansion=int(expand[0]) // int(expand[1]),
                width_multiplier=_channels(state, "conv1.0.weight") / 32)


def _infer_shufflenetv2(state):
    channels = tuple(2 * _channels(state, f"layer{s}.0.conv2.weight") for s in (1, 2, 3))
    return dict(channels=channels + (_channels(state, "conv2.weight"),),
                blocks=tuple(_count(state, rf"layer{s}\.{{i}}\.conv1\.weight") - 1 for s in (1, 2, 3)))


def _infer_torchvision_resnet(state):
    bottleneck = "layer1.0.conv3.weight" in state
    return dict(block="bottleneck" if bottleneck else "basic",
                blocks=tuple(_count(state, rf"layer{s}\.{{i}}\.conv1\.weight") for s in (1, 2, 3, 4)))


# MobileNetV1's model.<i> = Sequential(dw conv, BN, ReLU, pw conv, BN, ReLU); model.0 = (conv, BN, ReLU).
_MOBILENETV1_PARTS = {"dw_conv": 0, "dw_bn": 1, "pw_conv": 3, "pw_bn": 4}


def _vgg_rule(offset):
    return lambda m: f"block{m[1]}.{3 * int(m[2]) + offset}"


# ShuffleNetV2 units: Keras layer part -> index of the torch conv/bn of the unit.
_SHUFFLE_DOWN = {"left_dw": 1, "left_pw": 2, "right_pw1": 3, "right_dw": 4, "right_pw2": 5}
_SHUFFLE_BASIC = {"pw1": 1, "dw": 2, "pw2": 3}


def _shufflenet_block(m):  # the down-sampling unit is layer<s>.0, basic unit b is layer<s>.<b + 1>
    return f"layer{m[1]}.{int(m[2]) + 1}.{m[4]}{_SHUFFLE_BASIC[m[3]]}"


def _families():
    from keras_icckd.backbones.imagenet import ImageNetResNet, MobileNetV1
    from keras_icckd.backbones.mobile import MobileNetV2, ShuffleNetV2
    from keras_icckd.backbones.resnet import ResNet
    from keras_icckd.backbones.vgg import VGG
    from keras_icckd.backbones.wrn import WideResNet

    return [
        TorchFamily(
            "cifar_resnet", "CIFAR ResNet with 1x1-conv shortcuts (RepDistiller/mdistiller, chenyaofo)",
            ResNet, required=("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"),
            forbidden=("layer4.0.conv1.weight",), rules=_RESNET_RULES + [(r"classifier", "fc")],
            infer=lambda s: _infer_resnet(s, "projection"), head="fc",
            preset_filter=lambda kw: kw.get("shortcut", "projection") == "projection"),
        TorchFamily(
            "cifar_resnet_option_a", "CIFAR ResNet with option-A shortcuts (akamaster/pytorch_resnet_cifar10)",
            ResNet, required=("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
                              "linear.weight"),
            forbidden=("layer1.0.conv3.weight", "conv2.weight", "layer4.0.conv1.weight"),
            rules=_RESNET_RULES + [(r"classifier", "linear")],
            infer=lambda s: _infer_resnet(s, "option_a"), head="linear",
            preset_filter=lambda kw: kw.get("shortcut") == "option_a"),
        TorchFamily(
            "cifar_wrn", "CIFAR Wide ResNet (RepDistiller/mdistiller)", WideResNet,
            required=("conv1.weight", "block1.layer.0.conv1.weight", "fc.weight"),
            rules=[(r"stem_conv", "conv1"), (r"stage(\d)_block(\d+)_bn", r"block\1.layer.\2.bn1"),
                   (r"stage(\d)_block(\d+)_1_conv", r"block\1.layer.\2.conv1"),
                   (r"stage(\d)_block(\d+)_1_bn", r"block\1.layer.\2.bn2"),
                   (r"stage(\d)_block(\d+)_2_conv", r"block\1.layer.\2.conv2"),
                   (r"stage(\d)_block(\d+)_shortcut", r"block\1.layer.\2.convShortcut"),
                   (r"final_bn", "bn1"), (r"classifier", "fc")],
            infer=_infer_wrn, head="fc"),
        TorchFamily(
            "cifar_vgg", "CIFAR VGG with BatchNorm (RepDistiller/mdistiller vgg*_bn)", VGG,
            required=("block0.0.weight", "block0.1.running_mean", "classifier.weight"),
            rules=[(r"block(\d)_(\d+)_conv", _vgg_rule(0)), (r"block(\d)_(\d+)_bn", _vgg_rule(1)),
                   (r"classifier", "classifier")],
            infer=_infer_vgg, head="classifier"),
        TorchFamily(
            "cifar_mobilenetv2", "CIFAR MobileNetV2 (RepDistiller/mdistiller mobile_half)", MobileNetV2,
            required=("conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.1.0.conv.0.weight",
                      "classifier.0.weight"),
            rules=[(r"stem_conv", "conv1.0"), (r"stem_bn", "conv1.1"),
                   *[(rf"group(\d)_block(\d+)_{part}_{kind}", rf"blocks.\1.\2.conv.{index + (kind == 'bn')}")
                     for part, index in (("expand", 0), ("dw", 3), ("project", 6)) for kind in ("conv", "bn")],
                   (r"head_conv", "conv2.0"), (r"head_bn", "conv2.1"), (r"classifier", "classifier.0")],
            infer=_infer_mobilenetv2, head="classifier.0"),
        TorchFamily(
            "cifar_shufflenetv2", "CIFAR ShuffleNetV2 (RepDistiller/mdistiller ShuffleV2)", ShuffleNetV2,
            required=("conv1.weight", "layer1.0.conv5.weight", "conv2.weight", "linear.weight"),
            rules=[(r"stem_conv", "conv1"), (r"stem_bn", "bn1"),
                   (r"stage(\d)_down_(left_dw|left_pw|right_pw1|right_dw|right_pw2)_(conv|bn)",
                    lambda m: f"layer{m[1]}.0.{m[3]}{_SHUFFLE_DOWN[m[2]]}"),
                   (r"stage(\d)_block(\d+)_(pw1|dw|pw2)_(conv|bn)", _shufflenet_block),
                   (r"head_conv", "conv2"), (r"head_bn", "bn2"), (r"classifier", "linear")],
            infer=_infer_shufflenetv2, head="linear"),
        TorchFamily(
            "torchvision_resnet", "torchvision ImageNet ResNet (resnet18/34/50)", ImageNetResNet,
            required=("conv1.weight", "bn1.weight", "layer4.0.conv1.weight", "fc.weight"),
            rules=_RESNET_RULES + [(r"classifier", "fc")], infer=_infer_torchvision_resnet, head="fc"),
        TorchFamily(
            "mobilenetv1_imagenet", "ImageNet MobileNetV1 (RepDistiller/mdistiller)", MobileNetV1,
            required=("model.0.0.weight", "model.13.3.weight", "fc.weight"),
            rules=[(r"stem_conv", "model.0.0"), (r"stem_bn", "model.0.1"),
                   (r"block(\d+)_(dw_conv|dw_bn|pw_conv|pw_bn)", lambda m: f"model.{m[1]}.{_MOBILENETV1_PARTS[m[2]]}"),
                   (r"classifier", "fc")],
            infer=lambda state: {}, head="fc"),
    ]


FAMILIES = []


def _registry():
    if not FAMILIES:
        FAMILIES.extend(_families())
    return FAMILIES


def register_family(family):
    """Adds a `TorchFamily` (another key layout) to those `from_torch` recognises."""
    if not isinstance(family, TorchFamily):
        raise TypeError(f"family must be a TorchFamily; got {type(family).__name__}")
    if any(f.name == family.name for f in _registry()):
        raise ValueError(f"a family named {family.name!r} is already registered")
    FAMILIES.append(family)


def importable_archs():
    """{preset name: family name} of every preset a checkpoint can be imported into."""
    return {arch: family.name for family in _registry() for arch in family.archs()}


def _family_of_checkpoint(state, path):
    found = [f for f in _registry() if f.matches(state)]
    if len(found) == 1:
        return found[0]
    keys = ", ".join(list(state)[:6])
    if not found:
        raise TorchImportError(f"torch checkpoint {path!r} has no known key layout (first keys: {keys}); known "
                               f"layouts: {'; '.join(f.description for f in _registry())}. Pass arch= to "
                               "name the architecture")
    raise TorchImportError(f"torch checkpoint {path!r} fits several layouts ({', '.join(f.name for f in found)}); "
                           "pass arch= to choose")


def from_torch(path, arch=None, *, torch_normalization, feed_normalization=None, input_shape=(32, 32, 3)):
    """Builds a keras_icckd backbone holding the weights of a PyTorch checkpoint.

    The backbone returns the PyTorch model's logits (inference mode) for the same pixels when fed
    as this project feeds every model, images normalised with `feed_normalization`: its first
    layer (`InputRenormalization`) maps them to the checkpoint's own normalisation, recorded in
    `model.input_normalization`. Layouts: see the module docstring (`importable_archs()`).

    Args:
        path: the checkpoint (.pt/.pth/.th; zip or legacy torch format; a bare state_dict or one
            under "state_dict"/"model"/"net"; "module." prefixes allowed).
        arch: the preset to build (e.g. "resnet56", "resnet20_option_a"); None infers it from the
            checkpoint's keys and shapes.
        torch_normalization: how the checkpoint's training images were normalised: "imagenet",
            "cifar10", "cifar100" (this project's constants) or six numbers R,G,B mean then std.
        feed_normalization: how this model will be fed, in the same forms; None: the project's
            constants for the class count (`keras_icckd.data.feed_normalization_name`).
        input_shape: (height, width, channels) of the images; the CIFAR networks' fixed pooling
            equals global pooling only at 32 x 32.

    Returns:
        The backbone (a `Backbone` named after the preset), in inference-ready state.

    Raises:
        TorchImportError: unreadable file, unknown layout or arch, or keys and shapes that do not
            fit (the first mismatching key is named).
        ValueError: a bad normalisation.
        ImportError: PyTorch is not installed.

    Example (a checkpoint written here by PyTorch itself):

    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "partial.pt")
    >>> torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3), "fc.weight": torch.zeros(10, 64)}, path)
    >>> try:
    ...     from_torch(path, arch="resnet8", torch_normalization="cifar10")
    ... except TorchImportError as e:
    ...     print(str(e).split(" (")[0])
    checkpoint lacks the key bn1.weight
    """
    from keras_icckd.data.sources import feed_normalization_name, parse_normalization

    network = parse_normalization(torch_normalization, "torch_normalization")
    if arch is not None and arch not in importable_archs():
        raise TorchImportError(f"arch={arch!r} cannot be imported: expected one of {', '.join(importable_archs())}")
    state = load_state_dict(path)
    if arch is None:
        family = _family_of_checkpoint(state, path)
        arch = family.arch_from(state)
    else:
        family = next(f for f in _registry() if arch in f.archs())
    head = f"{family.head}.weight"
    if head not in state:
        raise TorchImportError(f"checkpoint lacks the key {head}, the classifier of {arch} ({family.description})")
    num_classes = int(state[head].shape[0])
    if feed_normalization is None:
        feed_normalization = feed_normalization_name(None, num_classes)
    feed = parse_normalization(feed_normalization, "feed_normalization")
    cls, kwargs = PRESETS[arch]
    model = cls(**kwargs, num_classes=num_classes, input_shape=input_shape, name=arch,
                input_normalization={"network": network, "feed": feed})
    family.assign(model, state)
    return model
