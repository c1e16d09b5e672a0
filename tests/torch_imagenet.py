"""PyTorch definitions of the ImageNet networks, written for checking imported checkpoints.

Each module follows its architecture's description and names its submodules so that its
state_dict has the key layout of the published checkpoints:

- `TorchvisionResNet(block, blocks)`: torchvision's ResNet: `conv1` (7x7 s2) / `bn1`, a 3x3 s2 max
  pool (padding 1), `layer{1..4}.{b}` blocks (basic: conv1, bn1, conv2, bn2; bottleneck: conv1..3,
  bn1..3 with the stride on conv2) with `downsample.0/1` (1x1 conv + BN) where the shape changes,
  global average pooling, head `fc`;
- `MobileNetV1()`: RepDistiller/mdistiller's ImageNet MobileNetV1: `model.0` = Sequential(3x3 s2
  conv, BN, ReLU), `model.{1..13}` = Sequential(3x3 depthwise conv, BN, ReLU, 1x1 conv, BN, ReLU),
  head `fc`; pooled by adaptive average pooling (the reference's AvgPool2d(7) at 224 x 224), so
  that small test images work.

Used by tests/test_torch_import.py; needs `torch`.
"""

import torch.nn.functional as F
from torch import nn

MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                    (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class _Block(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        expansion = 4 if bottleneck else 1
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        else:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.bottleneck = bottleneck
        self.downsample = None
        if stride != 1 or cin != planes * expansion:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * expansion, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * expansion))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(F.relu(out)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    def __init__(self, block="basic", blocks=(2, 2, 2, 2), num_classes=10):
        super().__init__()
        bottleneck = block == "bottleneck"
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            units = []
            for index in range(count):
                units.append(_Block(cin, planes, 2 if stage > 1 and index == 0 else 1, bottleneck))
                cin = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{stage}", nn.Sequential(*units))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        units = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())]
        cin = 32
        for cout, stride in MOBILENET_BLOCKS:
            units.append(nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()))
            cin = cout
        self.model = nn.Sequential(*units)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.model(x), 1).flatten(1))
