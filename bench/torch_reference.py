"""The PyTorch reference of bench/train_step.py: the same CIFAR ResNets and training steps in PyTorch.

    python bench/torch_reference.py --cases=CASES.json [--steps=3] [--warmup=2] [--precision=float32]

Not a runtime dependency of keras_icckd: it needs `torch` (bench/requirements.txt) and is
started by bench/train_step.py as one of its measuring processes: it builds and warms up its
cases, reports them as one JSON line on stdout, then answers each "round" line on stdin with the
step times of --steps steps of every case (bench/timing.py), until "stop". It runs on CUDA when
PyTorch sees a GPU, else on the CPU; --precision=bfloat16 runs forward and loss under
`torch.autocast(dtype=torch.bfloat16)` (weights and optimizer stay float32, as Keras'
mixed_bfloat16 policy keeps them).
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


def make_step(case, num_classes, temperature=4.0, device="cpu", precision="float32"):
    """(step function of no arguments, network trained) for one case."""
    generator = torch.Generator().manual_seed(0)
    batch = case["batch"]
    views = 2 if case["step"] == "ce2" else 1
    x = torch.randn(views * batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=generator).repeat(views).to(device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bfloat16")
    if case["step"] in ("ce1", "ce2"):
        net = build(case["teacher"], num_classes).to(device).train()
        teacher = None
    elif case["step"] == "kd":
        net = build(case["student"], num_classes).to(device).train()
        teacher = build(case["teacher"], num_classes).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    else:
        raise ValueError(f"no PyTorch reference for the step {case['step']!r}")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step():
        with autocast:
            logits = net(x).float()
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x).float()
                kl = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(t_logits / temperature, 1),
                              reduction="none").sum(1).mean()
                loss = 0.1 * loss + 0.9 * temperature ** 2 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct = (logits.argmax(1) == y).float().mean()
        return loss.item(), correct.item()

    return step, net


def build_group(cases, warmup, num_classes, device, precision):
    """(runners, rows) of the cases, each built and run `warmup` steps (the first one timed)."""
    runners, rows = [], []
    for case in cases:
        step, net = make_step(case, num_classes, device=device, precision=precision)
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()

        def runner(n, step=step):
            times = []
            for _ in range(n):
                start = time.perf_counter()
                step()  # reads the loss back: the step has finished on the device
                times.append(time.perf_counter() - start)
            return times

        runners.append(runner)
        mode = "torch_bf16" if precision == "bfloat16" else "torch"
        rows.append(dict(case, mode=mode, first_step_s=first, params=trainable_params(net)))
    return runners, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", required=True, help="JSON file: list of cases")
    parser.add_argument("--steps", type=int, default=3, help="steps per case per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    stream = timing.protocol_stream()
    with open(args.cases) as f:
        cases = json.load(f)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runners, rows = build_group(cases, args.warmup, args.num_classes, device, args.precision)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
            "precision": args.precision}
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    timing.send(stream, {"meta": meta, "rows": rows})
    timing.serve(runners, args.steps, stream, sys.stdin)


if __name__ == "__main__":
    main()
