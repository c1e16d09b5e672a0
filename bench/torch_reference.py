"""The PyTorch reference of bench/train_step.py: the same CIFAR ResNets and training steps in PyTorch.

    python bench/torch_reference.py --cases=CASES.json --out=ROWS.json [--rounds=3] [--steps=3] [--warmup=2]

Not a runtime dependency of keras_icckd: it needs `torch` (bench/requirements.txt) and is
normally started by bench/train_step.py, in the same invocation as the Keras measurements.
CASES.json is a list of {"step", "student", "teacher", "batch"} (see train_step.py); the steps
known here are "ce1" (a cross-entropy step of the teacher on one view), "ce2" (the same on two
views of each image, 2 * batch images per step) and "kd" (the Distiller step with objectives
"kd:0.9" and CE weight 0.1: the teacher in eval mode under no_grad, the student in train mode,
0.1 * CE + 0.9 * T^2 * KL(softmax(t / T) || softmax(s / T)), T = 4). Every step uses
torch.optim.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4), reads the loss back as a float (as
a progress bar does) and counts top-1 accuracy, like the Keras steps' metrics.

The networks are the RepDistiller / mdistiller CIFAR ResNets (3x3 stem conv-BN-ReLU, three
stages of basic blocks with strides 1, 2, 2, a 1x1 conv-BN shortcut where the shape changes,
global average pooling, a linear classifier), in PyTorch's default NCHW layout; each row
reports the trainable parameter count so the caller can check the shapes match the Keras
backbones.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

ARCHS = {  # name: (depth, (stem, stage1, stage2, stage3) channels)
    "resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)), "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)), "resnet32x4": (32, (32, 64, 128, 256)),
}


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, filters, num_classes):
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, filters[0], 3, 1, 1, bias=False), nn.BatchNorm2d(filters[0]),
                                  nn.ReLU())
        layers, cin = [], filters[0]
        for stage, cout in enumerate(filters[1:]):
            for block in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name, num_classes):
    if name not in ARCHS:
        raise ValueError(f"no PyTorch reference for {name!r}; known: {sorted(ARCHS)}")
    return CifarResNet(*ARCHS[name], num_classes)


def trainable_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_step(case, num_classes, temperature=4.0):
    """(step function of no arguments, network trained) for one case."""
    generator = torch.Generator().manual_seed(0)
    batch = case["batch"]
    views = 2 if case["step"] == "ce2" else 1
    x = torch.randn(views * batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator).repeat(views)
    if case["step"] in ("ce1", "ce2"):
        net = build(case["teacher"], num_classes).train()
        teacher = None
    elif case["step"] == "kd":
        net = build(case["student"], num_classes).train()
        teacher = build(case["teacher"], num_classes).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    else:
        raise ValueError(f"no PyTorch reference for the step {case['step']!r}")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step():
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            kl = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(t_logits / temperature, 1),
                          reduction="none").sum(1).mean()
            loss = 0.1 * loss + 0.9 * temperature ** 2 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct = (logits.argmax(1) == y).float().mean()
        return loss.item(), correct.item()

    return step, net


def measure_group(cases, rounds, steps, warmup, num_classes):
    """Rows of one group of cases, timed in interleaved rounds after `warmup` steps each."""
    runners, rows = [], []
    for case in cases:
        step, net = make_step(case, num_classes)
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()

        def runner(n, step=step):
            times = []
            for _ in range(n):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            return times

        runners.append(runner)
        rows.append(dict(case, mode="torch", first_step_s=first, params=trainable_params(net)))
    for row, times in zip(rows, timing.round_robin(runners, rounds, steps)):
        row.update(timing.summary(times, row["batch"]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", required=True, help="JSON file: list of cases")
    parser.add_argument("--out", required=True, help="JSON file to write the rows to")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per case per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_classes", type=int, default=100)
    args = parser.parse_args()
    with open(args.cases) as f:
        cases = json.load(f)
    torch.manual_seed(0)
    rows = []
    for group in timing.groups(cases):
        for row in measure_group(group, args.rounds, args.steps, args.warmup, args.num_classes):
            rows.append(row)
            print(f"torch {row['step']:>6} {row['student'] or ''}<-{row['teacher']} b{row['batch']}: "
                  f"{row['images_per_s']:.1f} img/s", flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f)


if __name__ == "__main__":
    main()
