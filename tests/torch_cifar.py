"""PyTorch definitions of the CIFAR networks, written for checking imported checkpoints.

Each module follows its architecture's description and names its submodules so that its
state_dict has the key layout of the published checkpoints:

- `CifarResNet(depth, filters, shortcut, head)`: RepDistiller / mdistiller / chenyaofo ResNets
  (shortcut "projection": `downsample.0/1` = 1x1 conv + BN, head "fc") and akamaster's option-A
  ResNets (shortcut "option_a": x[:, :, ::2, ::2] with planes // 4 zero channels on each side,
  head "linear");
- `WideResNet(depth, widen_factor)`: pre-activation blocks `block{s}.layer.{b}` (bn1, conv1, bn2,
  conv2, convShortcut), final `bn1`, head `fc`;
- `VGG(config)`: `block{j}` = Sequential(conv, BN, ReLU, conv, BN, ...) without the last ReLU,
  max pooling after blocks 0..2, head `classifier`;
- `MobileNetV2(expansion, width)`: `conv1` (3x3 s2 conv-BN-ReLU), `blocks.{g}.{b}.conv` =
  Sequential(1x1, BN, ReLU, dw3x3, BN, ReLU, 1x1, BN), `conv2` (1x1 to 1280), `classifier.0`;
- `ShuffleNetV2(channels, blocks)`: `conv1`/`bn1` (1x1 to 24), `layer{s}.0` a down-sampling unit
  (conv1..conv5, bn1..bn5), `layer{s}.{b}` basic units (conv1..conv3, bn1..bn3), `conv2`/`bn2`,
  head `linear`.

`randomize(model, seed)` draws every parameter and BN statistic at random, so that a wrong
mapping cannot hide behind default values. Used by tests/test_torch_import.py and
experiments/teachers_table.py; needs `torch`.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin, cout, k, stride=1, groups=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=bias)


class _ResNetBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.option_a_pad = None
        if stride != 1 or cin != cout:
            if shortcut == "projection":
                self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
            else:
                self.option_a_pad = cout // 4

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.option_a_pad is not None:
            p = self.option_a_pad
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
        elif hasattr(self, "downsample"):
            x = self.downsample(x)
        return F.relu(out + x)


class CifarResNet(nn.Module):
    def __init__(self, depth, filters=(16, 16, 32, 64), num_classes=10, shortcut="projection", head="fc"):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv(3, filters[0], 3), nn.BatchNorm2d(filters[0])
        cin = filters[0]
        for s, cout in enumerate(filters[1:], start=1):
            blocks = []
            for b in range(n):
                blocks.append(_ResNetBlock(cin, cout, 2 if s > 1 and b == 0 else 1, shortcut))
                cin = cout
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.head = head
        setattr(self, head, nn.Linear(cin, num_classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return getattr(self, self.head)(x.mean((2, 3)))


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv(cin, cout, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv(cout, cout, 3)
        self.equal = cin == cout and stride == 1
        if not self.equal:
            self.convShortcut = _conv(cin, cout, 1, stride)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class _WideStage(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[_WideBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1)
                                     for b in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes=10):
        super().__init__()
        n, ch = (depth - 4) // 6, (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv(3, 16, 3)
        self.block1 = _WideStage(n, ch[0], ch[1], 1)
        self.block2 = _WideStage(n, ch[1], ch[2], 2)
        self.block3 = _WideStage(n, ch[2], ch[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(ch[3]), nn.Linear(ch[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.relu(self.bn1(x)).mean((2, 3)))


class VGG(nn.Module):
    def __init__(self, config, num_classes=10):
        super().__init__()
        cin = 3
        for j, block in enumerate(config):
            modules = []
            for cout in block:
                modules += [_conv(cin, cout, 3, bias=True), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            setattr(self, f"block{j}", nn.Sequential(*modules[:-1]))
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        for j in range(5):
            x = F.relu(getattr(self, f"block{j}")(x))
            if j < 3:
                x = F.max_pool2d(x, 2)
        return self.classifier(x.mean((2, 3)))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, ratio):
        super().__init__()
        hidden = cin * ratio
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
            _conv(hidden, hidden, 3, stride, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU(),
            _conv(hidden, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    GROUPS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
              (None, 160, 3, 2), (None, 320, 1, 1))  # (ratio, None = the expansion), channels, n, stride

    def __init__(self, expansion=6, width=0.5, num_classes=10):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), nn.BatchNorm2d(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for ratio, c, n, stride in self.GROUPS:
            cout, units = int(c * width), []
            for b in range(n):
                units.append(_InvertedResidual(cin, cout, stride if b == 0 else 1, ratio or expansion))
                cin = cout
            self.blocks.append(nn.Sequential(*units))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(_conv(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.classifier(self.conv2(x).mean((2, 3)))


def _shuffle(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleDown(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv(cin, cin, 3, 2, groups=cin), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = _conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = _conv(mid, mid, 3, 2, groups=mid), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = _conv(mid, mid, 1), nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        return _shuffle(torch.cat([left, F.relu(self.bn5(self.conv5(right)))], 1))


class _ShuffleBasic(nn.Module):
    def __init__(self, channels):
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = _conv(c, c, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = _conv(c, c, 3, groups=c), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = _conv(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        c = x.shape[1] // 2
        kept, branch = x[:, :c], x[:, c:]
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        return _shuffle(torch.cat([kept, F.relu(self.bn3(self.conv3(branch)))], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, channels=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), nn.BatchNorm2d(24)
        cin = 24
        for s, (cout, n) in enumerate(zip(channels[:3], blocks), start=1):
            setattr(self, f"layer{s}", nn.Sequential(_ShuffleDown(cin, cout), *[_ShuffleBasic(cout) for _ in range(n)]))
            cin = cout
        self.conv2, self.bn2 = _conv(cin, channels[3], 1), nn.BatchNorm2d(channels[3])
        self.linear = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def randomize(model, seed=0, image_shape=(3, 32, 32)):
    """Random parameters and BatchNorm statistics that keep the activations of order one.

    Weights are drawn at He scale, BN weights in [0.5, 1.5], biases around 0; the running means
    and variances are first measured on random images (train-mode passes, cumulative average),
    then perturbed at random (means shifted by 0.2 std, variances scaled by 0.7..1.4), so that no
    statistic is a default value and logits stay in a range where float32 agrees to 1e-4.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("running_mean", "running_var")):
                continue
            if name.endswith("bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif tensor.dim() == 1:  # BN weight
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:  # conv / linear weight
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn((16,) + tuple(image_shape), generator=generator))
        for m in norms:
            m.momentum = 0.1
            std = m.running_var.sqrt()
            m.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=generator))
            m.running_var.mul_(0.7 + 0.7 * torch.rand(std.shape, generator=generator))
    return model.eval()
