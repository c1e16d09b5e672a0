"""CIFAR ResNet (resnet8 ... resnet110, resnet8x4, resnet32x4, and the option-A variants)."""

import keras
import numpy as np  # noqa: F401  (the docstring examples use it)
from keras import layers, ops

from keras_icckd.backbones.base import Backbone, classifier_head, conv_bn, relu, residual_block

SHORTCUTS = ("projection", "option_a")


@keras.saving.register_keras_serializable(package="keras_icckd")
class OptionAShortcut(layers.Layer):
    """The parameter-free shortcut "option A" of He et al. 2016 (section 4.2, CIFAR-10).

    Where a block halves the resolution and widens the channels, the shortcut takes every second
    pixel (rows and columns 0, 2, 4, ...) and zero-pads the channels by `pad` on each side.

    Args:
        pad: zero channels added before and after the input's channels.

    Example:

    >>> y = OptionAShortcut(2)(np.ones((1, 4, 4, 4), "float32"))
    >>> tuple(y.shape), float(keras.ops.sum(y))
    ((1, 2, 2, 8), 16.0)
    """

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        return ops.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (self.pad, self.pad)))

    def compute_output_shape(self, input_shape):
        def half(size):
            return None if size is None else (size + 1) // 2

        return (input_shape[0], half(input_shape[1]), half(input_shape[2]),
                input_shape[3] + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(package="keras_icckd")
class ResNet(Backbone):
    """CIFAR ResNet with basic blocks (He et al., "Deep Residual Learning for Image
    Recognition", CVPR 2016), as defined for distillation by RepDistiller/mdistiller.

    A 3x3 stem conv-BN-ReLU, then three stages of (depth - 2) / 6 basic blocks
    (conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut, then ReLU) with strides 1, 2, 2, global
    average pooling and a Dense classifier. Convolutions have no bias and He-normal (fan_out)
    weights; the classifier uses PyTorch's default `nn.Linear` initialisation.

    Where a block changes the resolution or the channels, its shortcut is, with
    `shortcut="projection"` (RepDistiller/mdistiller, chenyaofo/pytorch-cifar-models), a 1x1
    conv-BN; with `shortcut="option_a"` (the paper's CIFAR-10 networks, and
    akamaster/pytorch_resnet_cifar10), the parameter-free `OptionAShortcut`: every second pixel,
    channels zero-padded by planes / 4 on each side. Option A needs each stage after the first
    to double the channels and the first to keep the stem's.

    Features: "feat0" is the stem after ReLU ("preact0" its BatchNorm output); "feat1".."feat3"
    are the stage outputs and "preact1".."preact3" the residual sums of each stage's last block
    before the final ReLU (mdistiller's `preact_feats`).

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        filters: channels of the stem and of the three stages, e.g. (16, 16, 32, 64);
            (32, 64, 128, 256) gives the "x4" variants.
        num_classes: number of classes.
        input_shape: (height, width, channels) of the images.
        name: model name.
        shortcut: "projection" (default) or "option_a".

    Example:
    >>> model = ResNet(depth=8, filters=(16, 16, 32, 64), num_classes=10)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3)))["logits"].shape)
    (2, 10)
    >>> option_a = ResNet(depth=20, num_classes=10, shortcut="option_a")  # akamaster's resnet20
    >>> sum(int(np.prod(w.shape)) for w in option_a.trainable_weights)
    269722
    """

    def __init__(self, depth=20, filters=(16, 16, 32, 64), num_classes=100,
                 input_shape=(32, 32, 3), name="resnet", shortcut="projection", **kwargs):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...); got {depth!r}")
        filters = tuple(int(f) for f in filters)
        if len(filters) != 4 or min(filters) < 1:
            raise ValueError(f"filters must be 4 positive channel counts; got {filters!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}; got {shortcut!r}")
        if shortcut == "option_a" and (filters[1] != filters[0] or filters[2] != 2 * filters[1]
                                       or filters[3] != 2 * filters[2] or filters[1] % 2):
            raise ValueError("shortcut='option_a' needs filters (c, c, 2c, 4c) with c even (the "
                             f"shortcut only subsamples and zero-pads); got {filters!r}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)
        blocks = (depth - 2) // 6

        pre = conv_bn(self._normalized_inputs(inputs, kwargs), filters[0], 3, name="stem",
                      activation=False)
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        for stage, planes in enumerate(filters[1:], start=1):
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                pad = (lambda h: OptionAShortcut(planes // 4, name=f"{prefix}_shortcut")(h)) \
                    if shortcut == "option_a" else None  # called at once, inside residual_block
                pre, x = residual_block(x, planes, stride, prefix, shortcut=pad)
            feats.append(x)
            preacts.append(pre)
        embedding, logits = classifier_head(x, num_classes, "torch")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(depth=depth, filters=filters, num_classes=num_classes,
                        input_shape=input_shape, shortcut=shortcut), **kwargs)
