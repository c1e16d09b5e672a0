"""CIFAR backbone zoo: ResNet, Wide ResNet, VGG, MobileNetV2 and ShuffleNetV2 by name.

`get(name, num_classes, input_shape)` builds a preset; every backbone returns, in one forward
pass, a dict with "logits", "embedding", "feat0".."featK" and "preact0".."preactK".
`from_torch(path, ...)` builds one from a PyTorch checkpoint (needs `torch`).
"""

from keras_icckd.backbones.base import (
    Backbone, ChannelShuffle, ChannelSplit, FusedBatchNorm, InputRenormalization, check_feed_normalization)
from keras_icckd.backbones.mobile import MobileNetV2, ShuffleNetV2
from keras_icckd.backbones.registry import PRESETS, get, names
from keras_icckd.backbones.resnet import OptionAShortcut, ResNet
from keras_icckd.backbones.torch_import import TorchImportError, from_torch, importable_archs
from keras_icckd.backbones.vgg import VGG, VGG_CONFIGS
from keras_icckd.backbones.wrn import WideResNet

__all__ = ["Backbone", "ChannelShuffle", "ChannelSplit", "FusedBatchNorm", "InputRenormalization", "MobileNetV2",
           "OptionAShortcut", "PRESETS", "ResNet", "ShuffleNetV2", "TorchImportError", "VGG", "VGG_CONFIGS",
           "WideResNet", "check_feed_normalization", "from_torch", "get", "importable_archs", "names"]
