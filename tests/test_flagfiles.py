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

FLAGFILES = sorted(glob.glob(os.path.join(REPO_ROOT, "experiments", "flags", "*.flags")))


def test_there_are_flagfiles():
    assert len(FLAGFILES) >= 10


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses(path):
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
