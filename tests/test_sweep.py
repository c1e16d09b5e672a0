"""experiments/sweep.py: flagfiles x seeds, one table, reuse of finished runs, failures reported."""

import json
import os
import subprocess
import sys

import numpy as np

from helpers import REPO_ROOT

SWEEP = os.path.join(REPO_ROOT, "experiments", "sweep.py")
GOOD = """# python experiments/run.py --flagfile=this
--mode=teacher
--arch=resnet8
--dataset=synthetic
--synthetic_classes=3
--synthetic_train_per_class=8
--synthetic_test_per_class=2
--batch_size=8
--epochs=2
--lr_decay_epochs=
--icc_lambda=0
--diagnostic_examples=0
--notensorboard
"""


def sweep(*args):
    # The sweep only orchestrates run.py processes; its runs use TensorFlow (the faster start-up)
    # whichever backend this session tests.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=900)


def test_sweep_runs_each_flagfile_per_seed_and_tabulates(tmp_path):
    (tmp_path / "good.flags").write_text(GOOD)
    (tmp_path / "bad.flags").write_text(GOOD.replace("--arch=resnet8", "--arch=resnet9"))
    root = str(tmp_path / "sweep")
    result = sweep(f"--flagfiles={tmp_path}/good.flags,{tmp_path}/bad.flags", "--seeds=0,1",
                   f"--output_root={root}", "--set=lr=0.02")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "failed runs: bad_seed0, bad_seed1" in result.stderr
    summary = json.load(open(os.path.join(root, "sweep.json")))
    good = summary["settings"]["good"]
    assert good["seeds"] == [0, 1] and summary["failed"] == ["bad_seed0", "bad_seed1"]
    runs = [json.load(open(os.path.join(root, f"good_seed{s}", "metrics.json"))) for s in (0, 1)]
    assert all(m["flags"]["lr"] == 0.02 for m in runs)  # the --set override reached run.py
    last = np.array([m["test_top1"] for m in runs])
    assert good["last_mean"] == np.mean(last) and np.isclose(good["last_std"], np.std(last, ddof=1))
    assert good["best_epoch"] == [m["best_epoch"] for m in runs]
    table = open(os.path.join(root, "sweep.md")).read()
    assert f"| good | resnet8, lambda 0 (CE) | 0,1 | {np.mean(last):.2f} +- " in table
    assert "| bad | (no finished run) |" in table

    again = sweep(f"--flagfiles={tmp_path}/good*.flags", "--seeds=0,1", f"--output_root={root}", "--set=lr=0.02")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before, reusing") == 2

    # the same runs asked for with other flags: refused before anything runs, not reused
    (tmp_path / "more.flags").write_text(GOOD)
    other = sweep(f"--flagfiles={tmp_path}/more.flags,{tmp_path}/good.flags", "--seeds=0,1", f"--output_root={root}")
    assert other.returncode == 2  # nothing was run (1: some runs failed)
    for seed in (0, 1):
        assert (f"{root}/good_seed{seed} holds a finished run of other flags (--lr=0.02 -> 0.05): use another "
                "--output_root, or delete that run") in other.stderr, other.stderr[-3000:]
    assert not os.path.exists(os.path.join(root, "more_seed0"))


def test_sweep_rejects_bad_arguments_before_running(tmp_path):
    for args, message in [
        ([f"--flagfiles={tmp_path}/none*.flags"], "matches no file"),
        ([f"--flagfiles={SWEEP}"], "is not a .flags file"),
        ([f"--flagfiles={REPO_ROOT}/experiments/flags/quickstart.flags", "--seeds=0,x"], "--seeds="),
        ([f"--flagfiles={REPO_ROOT}/experiments/flags/quickstart.flags", "--set=seed=3"], "sets --seed itself"),
        ([f"--flagfiles={REPO_ROOT}/experiments/flags/quickstart.flags", "--set=lr"], "expected name=value"),
    ]:
        result = sweep(*args, f"--output_root={tmp_path}/out")
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr[-1000:])
        assert not os.path.exists(tmp_path / "out" / "sweep.md")


def test_a_flagfile_typo_stops_the_sweep_before_the_runs_before_it(tmp_path):
    (tmp_path / "a_good.flags").write_text(GOOD)
    (tmp_path / "b_typo.flags").write_text(GOOD + "--epohcs=1\n")
    root = tmp_path / "sweep"
    result = sweep(f"--flagfiles={tmp_path}/*.flags", "--seeds=0", f"--output_root={root}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-3:-1] == ["sweep.py: error: nothing was run:",
                            f"  {tmp_path}/b_typo.flags: FATAL Flags parsing error: Unknown command line flag "
                            "'epohcs'. Did you mean: epochs ?"], result.stderr[-2000:]
    assert not os.path.exists(root)  # a_good did not run first


def test_dry_run_prints_the_commands_and_creates_nothing(tmp_path):
    (tmp_path / "good.flags").write_text(GOOD)
    result = sweep(f"--flagfiles={tmp_path}/good.flags", "--seeds=0,1", f"--output_root={tmp_path}/sweep",
                   "--dry_run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[-1] for line in result.stdout.splitlines()] == [
        f"--output_dir={tmp_path}/sweep/good_seed{seed}" for seed in (0, 1)]
    assert not os.path.exists(tmp_path / "sweep")


def test_the_check_reads_paths_as_paths_and_refuses_a_broken_metrics_file(tmp_path):
    (tmp_path / "good.flags").write_text(GOOD)
    root = tmp_path / "sweep"
    # a finished run's flags, its data folder spelled ./data
    printed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "experiments", "run.py"),
                              f"--flagfile={tmp_path}/good.flags", "--seed=0", f"--output_dir={root}/good_seed0",
                              "--data_dir=./data", "--check_flags"], capture_output=True, text=True, cwd=REPO_ROOT,
                             env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert printed.returncode == 0, printed.stderr[-2000:]
    flags = json.loads(printed.stdout.strip().splitlines()[-1])["flags"]
    assert flags["data_dir"] == "./data"
    os.makedirs(root / "good_seed0")
    (root / "good_seed0" / "metrics.json").write_text(json.dumps({"flags": flags}))
    os.makedirs(root / "good_seed1")
    (root / "good_seed1" / "metrics.json").write_text('{"flags": {"mode": "teach')  # cut off mid-write
    result = sweep(f"--flagfiles={tmp_path}/good.flags", "--seeds=0,1", f"--output_root={root}", "--set=data_dir=data",
                   "--dry_run")
    assert result.returncode == 2 and "nothing was run" in result.stderr, result.stderr[-2000:]
    assert f"{root}/good_seed1/metrics.json cannot be compared with the flags asked for" in result.stderr
    assert "good_seed0" not in result.stderr  # data is ./data
