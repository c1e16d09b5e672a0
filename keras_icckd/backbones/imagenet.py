"""ImageNet backbones of the distillation literature's ImageNet pairs, in torchvision's layout.

ResNet18 / ResNet34 (basic blocks) and ResNet50 (bottlenecks) as torchvision defines them, and
the MobileNet (v1) of the ResNet50 -> MobileNet pair as RepDistiller/mdistiller define it. Every
parameterised PyTorch module is one Keras layer with the same shapes (a convolution, a BatchNorm,
the final Linear), in the same order, so a torchvision state dict maps onto these layers one to
one.

Why not keras.applications: `keras.applications.ResNet50` is the original Caffe-style ResNet v1
(stride 2 on the first 1x1 convolution of a downsampling bottleneck, convolutions with biases),
not torchvision's v1.5 (stride on the 3x3 convolution, no conv biases): another function, 25,583,592
trainable parameters instead of 25,557,032, and torchvision checkpoints do not map onto it.
keras.applications has no ResNet18 or ResNet34. Its `MobileNet` has the same 4,231,976 trainable
parameters as the distillation papers' network but computes another function (ReLU6, TensorFlow's
asymmetric stride-2 padding, dropout before a 1x1-conv classifier). None of them exposes the stage
features the feature objectives read (`backbones.wrap` can add them by layer name).
"""

import keras
from keras import layers

from keras_icckd.backbones.base import Backbone, classifier_head, conv, conv_bn, relu, residual_block

_BLOCKS = ("basic", "bottleneck")
_STAGE_PLANES = (64, 128, 256, 512)
# (output channels, stride) of MobileNet's depthwise-separable blocks 1..13; stages end after blocks 3, 5, 11, 13.
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                     (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_MOBILENET_STAGE_ENDS = (3, 5, 11, 13)


def _max_pool(x, name):
    """PyTorch's MaxPool2d(3, stride 2, padding 1) on a non-negative (post-ReLU) input.

    PyTorch pads with -inf; after a ReLU, padding with zeros gives the same maxima (every window
    holds at least one real value >= 0), and a symmetric pad plus a 'valid' pool keeps PyTorch's
    window positions (Keras' 'same' would pad only at the bottom and right).
    """
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


@keras.saving.register_keras_serializable(package="keras_icckd")
class ImageNetResNet(Backbone):
    """torchvision's ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
    torchvision's "v1.5": the stride of a downsampling bottleneck sits on its 3x3 convolution).

    A 7x7 stride-2 conv-BN-ReLU stem and a 3x3 stride-2 max pool, four stages of blocks with 64,
    128, 256, 512 planes (strides 1, 2, 2, 2), global average pooling and a Dense classifier.
    Basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN; bottleneck: conv1x1-BN-ReLU-conv3x3(stride)-
    BN-ReLU-conv1x1(4 x planes)-BN; the shortcut is the identity or, when the shape changes, a
    1x1 conv(stride)-BN; the sum goes through a ReLU. Convolutions have no bias and He-normal
    (fan_out) weights, BatchNorm starts at gamma 1 / beta 0, the classifier uses PyTorch's
    `nn.Linear` initialisation (torchvision's defaults, `zero_init_residual=False`).
    torchvision's adaptive average pool is a global average pool, so any input of at least
    32 x 32 works (224 x 224 for ImageNet).

    Features (mdistiller's ImageNet ResNet): "feat0" is the stem after its ReLU, before the max
    pool ("preact0" its BatchNorm output); "feat1".."feat4" are the stage outputs and
    "preact1".."preact4" the residual sums of each stage's last block before the final ReLU.

    Args:
        block: "basic" (ResNet18/34) or "bottleneck" (ResNet50 and deeper).
        blocks: number of blocks in each of the four stages, e.g. (2, 2, 2, 2) for ResNet18.
        num_classes: number of classes (1000 for ImageNet).
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = ImageNetResNet("basic", (1, 1, 1, 1), num_classes=10, input_shape=(32, 32, 3))
    >>> [tuple(model(keras.ops.zeros((1, 32, 32, 3)))[f"feat{k}"].shape[1:]) for k in (0, 4)]
    [(16, 16, 64), (1, 1, 512)]
    """

    def __init__(self, block="basic", blocks=(2, 2, 2, 2), num_classes=1000, input_shape=(224, 224, 3),
                 name="resnet_imagenet", **kwargs):
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {_BLOCKS}; got {block!r}")
        try:
            blocks = tuple(int(b) for b in blocks)
        except (TypeError, ValueError):
            blocks = ()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive block counts, e.g. (2, 2, 2, 2); got {blocks!r}")
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)

        pre = conv_bn(self._normalized_inputs(inputs, kwargs), 64, 7, 2, name="stem", activation=False)
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        x = _max_pool(x, "stem_pool")
        for stage, (planes, count) in enumerate(zip(_STAGE_PLANES, blocks), start=1):
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                pre, x = residual_block(x, planes, stride, f"stage{stage}_block{index}",
                                        bottleneck=block == "bottleneck")
            feats.append(x)
            preacts.append(pre)
        embedding, logits = classifier_head(x, num_classes, "torch")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(block=block, blocks=blocks, num_classes=num_classes, input_shape=input_shape),
            **kwargs)


@keras.saving.register_keras_serializable(package="keras_icckd")
class MobileNetV1(Backbone):
    """MobileNet (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
    Vision Applications", 2017) as the ImageNet student of the ResNet50 -> MobileNet pair in
    RepDistiller/mdistiller (`MobileNetV1`, 4,231,976 parameters for 1000 classes).

    A 3x3 stride-2 conv-BN-ReLU stem to 32 channels, thirteen depthwise-separable blocks
    (depthwise 3x3(stride)-BN-ReLU, pointwise 1x1-BN-ReLU; channels 64 .. 1024, overall stride
    32), global average pooling (the reference's AvgPool2d(7) at 224 x 224 input) and a Dense
    classifier. Plain ReLU, symmetric padding 1, no conv biases, and PyTorch's default
    initialisation for the convolutions and the classifier, as in the reference.

    Features (the reference's four stages): "feat0" is the stem after its ReLU ("preact0" its
    BatchNorm output); "feat1".."feat4" are the outputs of blocks 3, 5, 11 and 13 (128, 256,
    512, 1024 channels at strides 4, 8, 16, 32, the spatial sizes of ResNet's stages) and
    "preact{k}" the BatchNorm output before their last ReLU.

    Args:
        num_classes: number of classes (1000 for ImageNet).
        input_shape: (height, width, channels) of the images.
        name: model name.

    Example:
    >>> model = MobileNetV1(num_classes=10, input_shape=(32, 32, 3))
    >>> [model(keras.ops.zeros((1, 32, 32, 3)))[f"feat{k}"].shape[-1] for k in range(5)]
    [32, 128, 256, 512, 1024]
    """

    def __init__(self, num_classes=1000, input_shape=(224, 224, 3), name="mobilenetv1", **kwargs):
        num_classes, input_shape, inputs = self._inputs(num_classes, input_shape)

        pre = conv_bn(self._normalized_inputs(inputs, kwargs), 32, 3, 2, name="stem", activation=False, init="torch")
        x = relu(pre, "stem_relu")
        feats, preacts = [x], [pre]
        for index, (channels, stride) in enumerate(_MOBILENET_BLOCKS, start=1):
            prefix = f"block{index}"
            h = conv_bn(x, x.shape[-1], 3, stride, name=f"{prefix}_dw", depthwise=True, init="torch")
            pre = conv_bn(h, channels, 1, name=f"{prefix}_pw", activation=False, init="torch")
            x = relu(pre, f"{prefix}_pw_relu")
            if index in _MOBILENET_STAGE_ENDS:
                feats.append(x)
                preacts.append(pre)
        embedding, logits = classifier_head(x, num_classes, "torch")

        self._build_backbone(
            inputs, feats, preacts, embedding, logits, name=name,
            config=dict(num_classes=num_classes, input_shape=input_shape), **kwargs)
