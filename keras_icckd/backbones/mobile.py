"""Mobile backbones for heterogeneous CIFAR pairs: MobileNetV2 (`mobile_half`) and ShuffleNetV2."""

import keras
from keras import layers

from keras_icckd.backbones.base import (
    Backbone, ChannelShuffle, ChannelSplit, classifier_head, conv_bn, relu)

# (expansion or None for the fixed 1, output channels, blocks, first stride) per block group.
_MOBILENETV2_GROUPS = ((None, 16, 1, 1), (True, 24, 2, 1), (True, 32, 3, 2), (True, 64, 4, 2),
                       (True, 96, 3, 1), (True, 160, 3, 2), (True, 320, 1, 1))
_MOBILENETV2_FEATURE_GROUPS = (1, 2, 4, 6)  # feat1..feat4 follow these groups


@keras.saving.register_keras_serializable(package="keras_icckd")
class MobileNetV2(Backbone):
    """CIFAR MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks", CVPR 2018) as defined by RepDistiller/mdistiller (`mobile_half` =
    expansion 6, width 0.5).

    A stride-2 3x3 conv-BN-ReLU stem, seven groups of inverted residual blocks (1x1 expand-BN-
    ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN, identity shortcut when stride 1 and equal
    channels; the first group always has its expand conv, with ratio 1), a 1x1 conv-BN-ReLU to
    1280 channels, global average pooling and a Dense classifier. Conv kernels are He-normal
    (fan_out), the classifier kernel normal(0, 0.01) with zero bias.

    Features (the stages of mdistiller's `feats`): "feat0" is the stem after ReLU ("preact0"
    its BN output); "feat1".."feat4" are the outputs of block groups 1, 2, 4, 6. Those are linear
    bottlenecks with no activation, so "preact{k}" equals "feat{k}" for k >= 1 (mdistiller has no
    `preact_feats` for this network; its "BN before ReLU" list points at the same projections).

    Args:
        expansion: expansion ratio T of the inverted residual blocks (groups 2..7).
        width_multiplier: channel multiplier of the stem and blocks (the 1280-channel last conv
            only widens for multipliers > 1).
        num_classes: number of classes.
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = MobileNetV2(expansion=6, width_multiplier=0.5, num_classes=10)
    >>> [model(keras.ops.zeros((2, 32, 32, 3)))[f"feat{k}"].shape[-1] for k in range(5)]
    [16, 12, 16, 48, 160]
    """

    def __init__(self, expansion=6, width_multiplier=0.5, num_classes=100,
                 input_shape=(32, 32, 3), name="mobilenetv2", **kwargs):
        if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
            raise ValueError(f"expansion must be an integer >= 1; got {expansion!r}")
        width_multiplier = float(width_multiplier)
        if width_multiplier <= 0 or int(16 * width_multiplier) < 1:
            raise ValueError(f"width_multiplier must be >= 1/16; got {width_multiplier!r}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)

        pre = conv_bn(self._normalized_inputs(inputs, kwargs), int(32 * width_multiplier), 3, 2,
                      name="stem", activation=False)
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        for group, (expand, channels, blocks, first_stride) in enumerate(_MOBILENETV2_GROUPS):
            channels = int(channels * width_multiplier)
            for block in range(blocks):
                stride = first_stride if block == 0 else 1
                prefix = f"group{group}_block{block}"
                hidden = x.shape[-1] * (expansion if expand else 1)
                h = conv_bn(x, hidden, 1, name=f"{prefix}_expand")
                h = conv_bn(h, hidden, 3, stride, name=f"{prefix}_dw", depthwise=True)
                h = conv_bn(h, channels, 1, name=f"{prefix}_project", activation=False)
                if stride == 1 and x.shape[-1] == channels:
                    h = layers.Add(name=f"{prefix}_add")([x, h])
                x = h
            if group in _MOBILENETV2_FEATURE_GROUPS:
                feats.append(x)
                preacts.append(x)
        last_channels = int(1280 * width_multiplier) if width_multiplier > 1.0 else 1280
        x = conv_bn(x, last_channels, 1, name="head")
        embedding, logits = classifier_head(x, num_classes, "normal")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(expansion=expansion, width_multiplier=width_multiplier,
                        num_classes=num_classes, input_shape=input_shape), **kwargs)


@keras.saving.register_keras_serializable(package="keras_icckd")
class ShuffleNetV2(Backbone):
    """CIFAR ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
    Architecture Design", ECCV 2018) as defined by RepDistiller/mdistiller (`ShuffleV2`,
    net_size 1: channels 116/232/464/1024, blocks 3/7/3).

    A 1x1 conv-BN-ReLU stem with 24 channels (no stride, no max pool), three stages of one
    stride-2 down-sampling unit followed by `blocks[s]` basic units (channel split in halves,
    1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU on the second half, concat, channel shuffle with
    2 groups), a 1x1 conv-BN-ReLU to `channels[3]`, global average pooling and a Dense classifier.
    All weights use PyTorch's default initialisation, as the reference does.

    Features: "feat0" is the stem after ReLU ("preact0" its BN output); "feat{k}" is stage k's
    output and "preact{k}" the concat of its last unit's untouched half and branch before the
    branch's final ReLU, as in mdistiller's `preact_feats`, but passed through the same channel
    shuffle as the output so that feat{k} == relu(preact{k}) channel by channel (mdistiller
    returns it unshuffled, a fixed channel permutation of this one).

    Args:
        channels: output channels of the three stages and of the last 1x1 conv.
        blocks: basic units per stage (after the down-sampling unit).
        num_classes: number of classes.
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = ShuffleNetV2(channels=(48, 96, 192, 1024), blocks=(1, 1, 1), num_classes=10)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3)))["feat3"].shape)
    (2, 4, 4, 192)
    """

    def __init__(self, channels=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes=100,
                 input_shape=(32, 32, 3), name="shufflenetv2", **kwargs):
        channels, blocks = tuple(int(c) for c in channels), tuple(int(b) for b in blocks)
        if len(channels) != 4 or min(channels) < 1 or any(c % 2 for c in channels[:3]):
            raise ValueError(
                f"channels must be 4 positive counts, the first 3 even; got {channels}")
        if len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"blocks must be 3 integers >= 1; got {blocks}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)
        conv_args = dict(init="torch")

        pre = conv_bn(self._normalized_inputs(inputs, kwargs), 24, 1, name="stem", activation=False,
                      **conv_args)
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        for stage, (out, count) in enumerate(zip(channels[:3], blocks), start=1):
            prefix, mid = f"stage{stage}_down", out // 2
            left = conv_bn(x, x.shape[-1], 3, 2, name=f"{prefix}_left_dw", depthwise=True,
                           activation=False, **conv_args)
            left = conv_bn(left, mid, 1, name=f"{prefix}_left_pw", **conv_args)
            right = conv_bn(x, mid, 1, name=f"{prefix}_right_pw1", **conv_args)
            right = conv_bn(right, mid, 3, 2, name=f"{prefix}_right_dw", depthwise=True,
                            activation=False, **conv_args)
            right = conv_bn(right, mid, 1, name=f"{prefix}_right_pw2", **conv_args)
            x = layers.Concatenate(name=f"{prefix}_concat")([left, right])
            x = ChannelShuffle(2, name=f"{prefix}_shuffle")(x)
            for block in range(count):
                prefix, half = f"stage{stage}_block{block}", out // 2
                kept, branch = ChannelSplit(half, name=f"{prefix}_split")(x)
                branch = conv_bn(branch, half, 1, name=f"{prefix}_pw1", **conv_args)
                branch = conv_bn(branch, half, 3, name=f"{prefix}_dw", depthwise=True,
                                 activation=False, **conv_args)
                branch_pre = conv_bn(branch, half, 1, name=f"{prefix}_pw2", activation=False,
                                     **conv_args)
                branch = relu(branch_pre, f"{prefix}_pw2_relu")
                x = layers.Concatenate(name=f"{prefix}_concat")([kept, branch])
                x = ChannelShuffle(2, name=f"{prefix}_shuffle")(x)
            pre = layers.Concatenate(name=f"{prefix}_preact_concat")([kept, branch_pre])
            preacts.append(ChannelShuffle(2, name=f"{prefix}_preact_shuffle")(pre))
            feats.append(x)
        x = conv_bn(x, channels[3], 1, name="head", **conv_args)
        embedding, logits = classifier_head(x, num_classes, "torch")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(channels=channels, blocks=blocks, num_classes=num_classes,
                        input_shape=input_shape), **kwargs)
