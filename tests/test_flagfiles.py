"""Every committed flagfile names only known flags and valid values, and says how to run it."""

import glob
import os

import pytest
from absl import flags

from helpers import REPO_ROOT
from keras_icckd import backbones, cli, objectives

FLAGFILES = sorted(glob.glob(os.path.join(REPO_ROOT, "experiments", "flags", "**", "*.flags"), recursive=True))


def test_there_are_flagfiles():
    assert len(FLAGFILES) >= 10


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_flagfile_parses(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # nested --flagfile= paths are relative to the repository root
    first = open(path).readline()
    assert first.startswith("# ") and ("run.py" in first or ".sh" in first), first
    values = flags.FlagValues()
    cli.define_flags(values)
    # Unknown flags and bad enum values raise here (a flagfile run by a script gets its output_dir there).
    values(["run.py", "--output_dir=set-by-the-script", f"--flagfile={path}"])
    assert values["arch"].value in backbones.names()
    if values["mode"].value == "student":
        assert values["student_arch"].value in backbones.names()
        assert objectives.parse(values["objectives"].value)


PAIRS = ["resnet8x4_from_resnet32x4", "wrn_16_2_from_wrn_40_2", "resnet20_from_resnet56", "vgg8_from_vgg13",
         "shufflenetv2_from_resnet32x4", "mobilenetv2_from_vgg13"]
SETTINGS = ["alone", "kd_ce", "kd_icc", "rkd_icc", "dkd", "crd", "pckd", "dcd"]


@pytest.mark.parametrize("pair", PAIRS)
def test_full_protocol_flagfiles_exist_for_every_standard_pair(pair):
    teacher = pair.split("_from_")[1]
    flags_dir = os.path.join(REPO_ROOT, "experiments", "flags")
    for kind in ("ce", "icc"):
        assert os.path.isfile(os.path.join(flags_dir, f"teacher_{teacher}_cifar100_{kind}.flags"))
    for setting in SETTINGS:
        path = os.path.join(flags_dir, f"student_{pair}_cifar100_{setting}.flags")
        text = open(path).read()
        assert "--epochs=240" in text and "--optimizer=torch_sgd" in text and "--weight_decay=5e-4" in text
        assert "--lr_decay_epochs=150,180,210" in text and "--batch_size=64" in text
        lr = "0.01" if pair.split("_")[0] in ("shufflenetv2", "mobilenetv2") else "0.05"
        assert f"--lr={lr}\n" in text, path
        if setting != "alone":
            kind = "icc" if setting.endswith("icc") else "ce"
            assert f"--teacher=runs/teacher_{teacher}_cifar100_{kind}/model.keras" in text, path


IMAGENET_PAIRS = {"resnet18_from_resnet34": 0.5, "mobilenetv1_from_resnet50": 2.0}  # mdistiller's DKD beta


def read_flags(path):
    lines = [line.strip() for line in open(path) if line.strip() and not line.startswith("#")]
    return dict(line[2:].split("=", 1) if "=" in line else (line[2:], "true") for line in lines)


@pytest.mark.parametrize("pair", sorted(IMAGENET_PAIRS))
def test_imagenet_protocol_flagfiles(pair):
    """mdistiller's ImageNet settings, streamed at 224, lr = 0.1 x batch / 256 (the rule the comments state)."""
    flags_dir = os.path.join(REPO_ROOT, "experiments", "flags", "imagenet")
    teacher = pair.split("_from_")[1]
    for kind in ("ce", "icc"):
        values = read_flags(os.path.join(flags_dir, f"teacher_{teacher}_imagenet_{kind}.flags"))
        assert values["arch"] == f"{teacher}_imagenet" and values["epochs"] == "90"
        assert values["lr_decay_epochs"] == "30,60" and values["icc_lambda"] == ("0" if kind == "ce" else "0.05")
    for setting in ("kd_ce", "kd_icc", "dkd", "crd"):
        path = os.path.join(flags_dir, f"student_{pair}_imagenet_{setting}.flags")
        values = read_flags(path)
        assert values["student_arch"] == f"{pair.split('_from_')[0]}_imagenet", path
        assert values["stream"] == "true" and values["image_size"] == "224" and values["eval_resize"] == "256"
        assert values["epochs"] == "100" and values["lr_decay_epochs"] == "30,60,90" and values["weight_decay"] == "1e-4"
        assert float(values["lr"]) == pytest.approx(0.1 * int(values["batch_size"]) / 256)
        kind = "icc" if setting == "kd_icc" else "ce"
        assert values["teacher"] == f"runs/teacher_{teacher}_imagenet_{kind}/model.keras"
        if setting.startswith("kd"):
            assert values["objectives"] == "kd(temperature=1):0.5" and values["ce_weight"] == "0.5"
        if setting == "dkd":
            assert f"beta={IMAGENET_PAIRS[pair]};temperature=1.0;warmup_epochs=1" in values["objectives"]
        assert "lr = 0.1 x batch / 256" in open(path).read()


def test_tinyimagenet_protocol_flagfiles():
    flags_dir = os.path.join(REPO_ROOT, "experiments", "flags", "tinyimagenet")
    for name in ("teacher_resnet32x4_tinyimagenet_ce", "teacher_resnet32x4_tinyimagenet_icc",
                 "student_resnet8x4_from_resnet32x4_tinyimagenet_kd_ce",
                 "student_resnet8x4_from_resnet32x4_tinyimagenet_kd_icc"):
        values = read_flags(os.path.join(flags_dir, f"{name}.flags"))
        assert values["dataset"] == "tinyimagenet" and "image_size" not in values  # the native 64 x 64
        assert (values["epochs"], values["batch_size"], values["lr"]) == ("200", "256", "0.2")
        assert values["lr_decay_epochs"] == "60,120,160" and values["weight_decay"] == "5e-4"
