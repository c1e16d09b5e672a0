"""CIFAR ResNet (resnet8 ... resnet110, resnet8x4, resnet32x4)."""

import keras
from keras import layers

from keras_icckd.backbones.base import Backbone, classifier_head, conv_bn, relu


@keras.saving.register_keras_serializable(package="keras_icckd")
class ResNet(Backbone):
    """CIFAR ResNet with basic blocks (He et al., "Deep Residual Learning for Image
    Recognition", CVPR 2016), as defined for distillation by RepDistiller/mdistiller.

    A 3x3 stem conv-BN-ReLU, then three stages of (depth - 2) / 6 basic blocks
    (conv3x3-BN-ReLU-conv3x3-BN, plus identity or 1x1 conv-BN shortcut, then ReLU) with
    strides 1, 2, 2, global average pooling and a Dense classifier. Convolutions have no bias and
    He-normal (fan_out) weights; the classifier uses PyTorch's default `nn.Linear` initialisation.

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

    Example:
    >>> model = ResNet(depth=8, filters=(16, 16, 32, 64), num_classes=10)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3)))["logits"].shape)
    (2, 10)
    """

    def __init__(self, depth=20, filters=(16, 16, 32, 64), num_classes=100,
                 input_shape=(32, 32, 3), name="resnet", **kwargs):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...); got {depth!r}")
        filters = tuple(int(f) for f in filters)
        if len(filters) != 4 or min(filters) < 1:
            raise ValueError(f"filters must be 4 positive channel counts; got {filters!r}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)
        blocks = (depth - 2) // 6

        pre = conv_bn(inputs, filters[0], 3, name="stem", activation=False)
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        for stage, planes in enumerate(filters[1:], start=1):
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                prefix = f"stage{stage}_block{block}"
                shortcut = x
                if stride != 1 or x.shape[-1] != planes:
                    shortcut = conv_bn(x, planes, 1, stride, name=f"{prefix}_down",
                                       activation=False)
                h = conv_bn(x, planes, 3, stride, name=f"{prefix}_1")
                h = conv_bn(h, planes, 3, name=f"{prefix}_2", activation=False)
                pre = layers.Add(name=f"{prefix}_add")([h, shortcut])
                x = relu(pre, f"{prefix}_out")
            feats.append(x)
            preacts.append(pre)
        embedding, logits = classifier_head(x, num_classes, "torch")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(depth=depth, filters=filters, num_classes=num_classes,
                        input_shape=input_shape), **kwargs)
