"""CIFAR backbone zoo: ResNet, Wide ResNet, VGG, MobileNetV2 and ShuffleNetV2 by name.

`get(name, num_classes, input_shape)` builds a preset; every backbone returns, in one forward
pass, a dict with "logits", "embedding", "feat0".."featK" and "preact0".."preactK".
"""

from keras_icckd.backbones.base import Backbone, ChannelShuffle, ChannelSplit, FusedBatchNorm
from keras_icckd.backbones.mobile import MobileNetV2, ShuffleNetV2
from keras_icckd.backbones.registry import PRESETS, get, names
from keras_icckd.backbones.resnet import ResNet
from keras_icckd.backbones.vgg import VGG, VGG_CONFIGS
from keras_icckd.backbones.wrn import WideResNet

__all__ = ["Backbone", "ChannelShuffle", "ChannelSplit", "FusedBatchNorm", "MobileNetV2", "PRESETS", "ResNet",
           "ShuffleNetV2", "VGG", "VGG_CONFIGS", "WideResNet", "get", "names"]
