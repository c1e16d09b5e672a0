"""Backbone zoo: CIFAR ResNet, Wide ResNet, VGG, MobileNetV2, ShuffleNetV2, and the ImageNet
ResNet18/34/50 and MobileNet (v1) in torchvision's layout, by name; `wrap` for any Keras classifier.

`get(name, num_classes, input_shape)` builds a preset; every backbone returns, in one forward
pass, a dict with "logits", "embedding", "feat0".."featK" and "preact0".."preactK".
`from_torch(path, ...)` builds one from a PyTorch checkpoint (needs `torch`).
`wrap(model, features={...})` turns a functional Keras classifier into such a backbone.
"""

from keras_icckd.backbones.base import (
    Backbone, ChannelShuffle, ChannelSplit, FusedBatchNorm, InputRenormalization, check_feed_normalization)
from keras_icckd.backbones.imagenet import ImageNetResNet, MobileNetV1
from keras_icckd.backbones.mobile import MobileNetV2, ShuffleNetV2
from keras_icckd.backbones.registry import PRESETS, get, names
from keras_icckd.backbones.resnet import OptionAShortcut, ResNet
from keras_icckd.backbones.torch_import import TorchImportError, from_torch, importable_archs
from keras_icckd.backbones.vgg import VGG, VGG_CONFIGS
from keras_icckd.backbones.wrn import WideResNet
from keras_icckd.backbones.wrapped import ClassifierLogits, WrappedBackbone, wrap

__all__ = ["Backbone", "ChannelShuffle", "ChannelSplit", "ClassifierLogits", "FusedBatchNorm", "ImageNetResNet",
           "InputRenormalization", "MobileNetV1", "MobileNetV2", "OptionAShortcut", "PRESETS", "ResNet",
           "ShuffleNetV2", "TorchImportError", "VGG", "VGG_CONFIGS", "WideResNet", "WrappedBackbone",
           "check_feed_normalization", "from_torch", "get", "importable_archs", "names", "wrap"]
