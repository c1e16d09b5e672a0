"""Named presets of the CIFAR backbone zoo (the RepDistiller/mdistiller model names)."""

from keras_icckd.backbones.imagenet import ImageNetResNet, MobileNetV1
from keras_icckd.backbones.mobile import MobileNetV2, ShuffleNetV2
from keras_icckd.backbones.resnet import ResNet
from keras_icckd.backbones.vgg import VGG, VGG_CONFIGS
from keras_icckd.backbones.wrn import WideResNet

_CIFAR_FILTERS = (16, 16, 32, 64)
_X4_FILTERS = (32, 64, 128, 256)

PRESETS = {
    **{f"resnet{d}": (ResNet, dict(depth=d, filters=_CIFAR_FILTERS))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    # He et al. 2016's CIFAR-10 networks with option-A shortcuts (akamaster/pytorch_resnet_cifar10).
    **{f"resnet{d}_option_a": (ResNet, dict(depth=d, filters=_CIFAR_FILTERS, shortcut="option_a"))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (ResNet, dict(depth=8, filters=_X4_FILTERS)),
    "resnet32x4": (ResNet, dict(depth=32, filters=_X4_FILTERS)),
    **{f"wrn_{d}_{k}": (WideResNet, dict(depth=d, widen_factor=k))
       for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": (VGG, dict(config=VGG_CONFIGS[d])) for d in (8, 11, 13, 16, 19)},
    "mobilenetv2": (MobileNetV2, dict(expansion=6, width_multiplier=0.5)),
    "shufflenetv2": (ShuffleNetV2, dict(channels=(116, 232, 464, 1024), blocks=(3, 7, 3))),
    # ImageNet networks in torchvision's layout; "_imagenet" because RepDistiller's CIFAR zoo has
    # other networks by the bare names (its CIFAR ResNet50, for instance).
    "resnet18_imagenet": (ImageNetResNet, dict(block="basic", blocks=(2, 2, 2, 2))),
    "resnet34_imagenet": (ImageNetResNet, dict(block="basic", blocks=(3, 4, 6, 3))),
    "resnet50_imagenet": (ImageNetResNet, dict(block="bottleneck", blocks=(3, 4, 6, 3))),
    "mobilenetv1_imagenet": (MobileNetV1, {}),
}


def names():
    """The sorted list of preset names accepted by `get`."""
    return sorted(PRESETS)


def get(name, num_classes=100, input_shape=(32, 32, 3)):
    """Builds the backbone preset `name` (a functional `keras.Model` named after the preset).

    Args:
        name: one of `names()`, e.g. "resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2".
        num_classes: size of the classifier output.
        input_shape: (height, width, channels) of the images.

    Example:
    >>> model = get("resnet8", num_classes=10)
    >>> sorted(model(keras.ops.zeros((2, 32, 32, 3))))[:3]
    ['embedding', 'feat0', 'feat1']
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"name must be one of {names()}; got {name!r}")
    cls, kwargs = PRESETS[name]
    return cls(**kwargs, num_classes=num_classes, input_shape=input_shape, name=name)
