"""Wide ResNet for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2)."""

import keras
from keras import layers

from keras_icckd.backbones.base import (
    Backbone, batch_norm, classifier_head, conv, conv_bn, relu)


@keras.saving.register_keras_serializable(package="keras_icckd")
class WideResNet(Backbone):
    """Pre-activation Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016),
    as defined for distillation by RepDistiller/mdistiller.

    A 3x3 stem conv, three stages of (depth - 4) / 6 pre-activation blocks
    (BN-ReLU-conv3x3-BN-ReLU-conv3x3; when the channels change, the shortcut is a 1x1 conv of the
    activated input) with 16k, 32k, 64k channels and strides 1, 2, 2, a final BN-ReLU, global
    average pooling and a Dense classifier. Convolutions have no bias and He-normal (fan_out)
    weights; the classifier has PyTorch's default kernel initialisation and a zero bias.

    Features: "feat0" = "preact0" is the stem conv output (the stem has no activation). For
    k = 1, 2, "preact{k}" is stage k's output through the first BN of stage k + 1 (for k = 3, the
    final BN), as in mdistiller's `preact_feats`, and "feat{k}" is its ReLU, i.e. the activation
    the network itself computes next. "stage{k}" (k = 1, 2, 3, WRN only) is the raw stage output,
    the residual sum the stage passes on before any BN: the map that RepDistiller's and
    mdistiller's `feats` hold for WRN, which their AT and FitNet use (see `objectives.AT`).

    Args:
        depth: 6n + 4 (16, 22, 28, 40, ...).
        widen_factor: channel multiplier k.
        dropout_rate: dropout between the two convs of each block (0 = none, the default).
        num_classes: number of classes.
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = WideResNet(depth=16, widen_factor=1, num_classes=10)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3)))["feat3"].shape)
    (2, 8, 8, 64)
    """

    def __init__(self, depth=16, widen_factor=2, dropout_rate=0.0, num_classes=100,
                 input_shape=(32, 32, 3), name="wrn", **kwargs):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 40, ...); got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"widen_factor must be an integer >= 1; got {widen_factor!r}")
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)
        blocks = (depth - 4) // 6

        x = conv(self._normalized_inputs(inputs, kwargs), 16, 3, name="stem_conv")
        feats, preacts, stage_sums = [x], [x], {}
        for stage, planes in enumerate((16 * widen_factor, 32 * widen_factor,
                                        64 * widen_factor), start=1):
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                pre = batch_norm(x, f"{prefix}_bn")
                act = relu(pre, f"{prefix}_relu")
                if stage > 1 and block == 0:  # BN-ReLU of the previous stage's output
                    preacts.append(pre)
                    feats.append(act)
                if x.shape[-1] == planes and stride == 1:
                    shortcut = x
                else:
                    shortcut = conv(act, planes, 1, stride, name=f"{prefix}_shortcut")
                h = conv_bn(act, planes, 3, stride, name=f"{prefix}_1")
                if dropout_rate > 0:
                    h = layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(h)
                h = conv(h, planes, 3, name=f"{prefix}_2_conv")
                x = layers.Add(name=f"{prefix}_add")([shortcut, h])
            stage_sums[f"stage{stage}"] = x
        pre = batch_norm(x, "final_bn")
        x = relu(pre, "final_relu")
        preacts.append(pre)
        feats.append(x)
        embedding, logits = classifier_head(x, num_classes, "torch_zero_bias")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name, extra_outputs=stage_sums,
            config=dict(depth=depth, widen_factor=widen_factor, dropout_rate=float(dropout_rate),
                        num_classes=num_classes, input_shape=input_shape), **kwargs)
