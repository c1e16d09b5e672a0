"""VGG with batch normalisation for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19)."""

import keras
from keras import layers

from keras_icckd.backbones.base import Backbone, classifier_head, conv_bn, relu

VGG_CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


@keras.saving.register_keras_serializable(package="keras_icckd")
class VGG(Backbone):
    """VGG with batch normalisation and no fully connected layers (Simonyan & Zisserman, "Very
    Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015), as defined for
    CIFAR distillation by RepDistiller/mdistiller (`vgg*_bn`).

    Five blocks of conv3x3(with bias)-BN-ReLU layers; 2x2 max pooling after blocks 0, 1, 2 (and
    after block 3 only for inputs of height >= 64, as the reference does for 64x64 inputs), global
    average pooling and a Dense classifier. Conv kernels are He-normal (fan_out) with zero bias;
    the classifier kernel is normal(0, 0.01) with zero bias.

    Features: "feat{j}" is block j's output after its last ReLU and "preact{j}" the BatchNorm
    output before it (mdistiller's `preact_feats`, except that mdistiller repeats feat0 there).

    Args:
        config: channels of each conv, one tuple per block (5 blocks), e.g. `VGG_CONFIGS[13]`.
        num_classes: number of classes.
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = VGG(config=VGG_CONFIGS[8], num_classes=10)
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3)))["embedding"].shape)
    (2, 512)
    """

    def __init__(self, config=VGG_CONFIGS[13], num_classes=100, input_shape=(32, 32, 3),
                 name="vgg", **kwargs):
        try:
            config = tuple(tuple(int(c) for c in block) for block in config)
        except (TypeError, ValueError):
            config = None
        if not config or len(config) != 5 or not all(block and min(block) >= 1
                                                     for block in config):
            raise ValueError("config must be 5 non-empty sequences of positive channel counts")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)

        x, feats, preacts = self._normalized_inputs(inputs, kwargs), [], []
        for j, block in enumerate(config):
            if j in (1, 2, 3) or (j == 4 and (input_shape[0] or 0) >= 64):
                x = layers.MaxPooling2D(2, name=f"pool{j - 1}")(x)
            for i, channels in enumerate(block):
                last = i == len(block) - 1
                x = conv_bn(x, channels, 3, name=f"block{j}_{i}", use_bias=True,
                            activation=not last)
            preacts.append(x)
            x = relu(x, f"block{j}_{len(block) - 1}_relu")
            feats.append(x)
        embedding, logits = classifier_head(x, num_classes, "normal")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(config=config, num_classes=num_classes, input_shape=input_shape),
            **kwargs)
