"""Every committed flagfile names only known flags and valid values, and says how to run it."""

import glob
import os
import sys

import pytest
from absl import flags

from helpers import REPO_ROOT
from keras_icckd import backbones, objectives

sys.path.insert(0, os.path.join(REPO_ROOT, "experiments"))
import run  # noqa: E402  (defines the flags)

FLAGFILES = sorted(glob.glob(os.path.join(REPO_ROOT, "experiments", "flags", "**", "*.flags"), recursive=True))


def test_there_are_flagfiles():
    assert len(FLAGFILES) >= 10


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_flagfile_parses(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # nested --flagfile= paths are relative to the repository root
    first = open(path).readline()
    assert first.startswith("# ") and ("run.py" in first or ".sh" in first), first
    values = flags.FlagValues()
    for flag in run.FLAGS.get_flags_for_module(run):
        values[flag.name] = flag
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
