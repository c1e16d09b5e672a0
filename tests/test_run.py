"""experiments/run.py end to end (subprocess, synthetic data) and its flag validation."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_icckd  # (also registers the serialisable classes)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RUN = os.path.join(ROOT, "experiments", "run.py")
SMALL = ["--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=16",
         "--synthetic_test_per_class=4", "--arch=resnet8", "--batch_size=8", "--epochs=2",
         "--lr_decay_epochs=1", "--icc_cache_size=16", "--icc_delta=-1", "--diagnostic_examples=12"]


def run(args, **kwargs):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher") / "run")
    return out, run([*SMALL, f"--output_dir={out}"])


def test_teacher_run_writes_model_metrics_and_curves(teacher_run):
    out, result = teacher_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model:   {out}/model.keras" in result.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "curves.png", "log.csv", "metrics.json", "model.keras",
                                       "tensorboard"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["flags"]["icc_lambda"] == 0.05 and metrics["flags"]["epochs"] == 2
    assert len(metrics["history"]) == 2 and metrics["num_train"] == 48 and metrics["views"] == 2
    for row in metrics["history"]:
        for key in ("loss", "ce", "intra", "margin_pass", "train_top1", "test_top1", "intra_inter_ratio"):
            assert key in row and np.isfinite(row[key]), key
    assert metrics["test_top1"] == metrics["history"][-1]["test_top1"]
    assert metrics["best_test_top1"] == max(r["test_top1"] for r in metrics["history"])
    assert metrics["wall_seconds"] > 0
    assert metrics["code"]["version"] == keras_icckd.__version__ and "commit" in metrics["code"]
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.backbone.output["logits"].shape[-1] == 3
    with open(os.path.join(out, "log.csv")) as f:  # Keras' CSVLogger: a header, one row per epoch
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and {"loss", "ce", "intra", "val_loss"} <= set(rows[0])
    np.testing.assert_allclose([float(r["loss"]) for r in rows], [r["loss"] for r in metrics["history"]], rtol=1e-5)


def test_views_are_set_independently_of_lambda(tmp_path):
    """--views=2 with --icc_lambda=0: the two-view CE control (two views through the network, CE alone)."""
    out = os.path.join(tmp_path, "two_view_ce")
    result = run([*SMALL, "--epochs=1", "--icc_lambda=0", "--views=2", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["views"] == 2 and metrics["flags"]["views"] == "2"
    row = metrics["history"][-1]
    assert "intra" not in row and "margin_pass" not in row
    np.testing.assert_allclose(row["loss"], row["ce"], rtol=1e-5)


def test_student_run_distils_from_the_teacher_file(teacher_run, tmp_path):
    # The float32 teacher's student trains under mixed_bfloat16 (saved with float32 weights).
    teacher = os.path.join(teacher_run[0], "model.keras")
    out = os.path.join(tmp_path, "student")
    result = run([*SMALL, "--mode=student", f"--teacher={teacher}", "--student_arch=resnet8",
                  "--objectives=kd:0.9,rkd:1", "--ce_weight=0.1", "--dtype_policy=mixed_bfloat16",
                  f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["flags"]["dtype_policy"] == "mixed_bfloat16"
    assert metrics["mode"] == "student" and metrics["objectives"] == {"kd": 0.9, "rkd": 1.0}
    assert metrics["teacher_arch"] == "resnet8" and 0 <= metrics["teacher_test_top1"] <= 100
    for key in ("kd_loss", "rkd_loss", "ce", "agreement", "test_top1"):
        assert np.isfinite(metrics["history"][-1][key]), key
    student = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert type(student).__name__ == "ResNet"  # the student alone, no distillation machinery


def test_teacher_fine_tuned_from_init_model_starts_from_its_weights(teacher_run, tmp_path):
    init = os.path.join(teacher_run[0], "model.keras")  # a teacher's file: its backbone is the start
    out = os.path.join(tmp_path, "fine_tuned")
    result = run([*SMALL, f"--init_model={init}", "--arch=resnet14", "--icc_lambda=0", "--epochs=1",
                  "--lr=1e-12", "--weight_decay=0", "--lr_decay_epochs=", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["arch"] == "resnet8" and metrics["init_model"] == init  # the file's net, not --arch
    before = keras.saving.load_model(init).backbone
    after = keras.saving.load_model(os.path.join(out, "model.keras")).backbone
    kernels = [(w.path, w) for w in before.weights if w.path.endswith("kernel")]
    assert len(kernels) >= 8
    tuned = {w.path: w for w in after.weights}
    for path, w in kernels:  # lr 1e-12: one epoch leaves every kernel where the file had it
        np.testing.assert_allclose(keras.ops.convert_to_numpy(tuned[path]), keras.ops.convert_to_numpy(w),
                                   atol=1e-9, err_msg=path)


@pytest.mark.parametrize("args, message", [
    (["--mode=student", "--teacher={init}"], "--init_model="),
    (["--synthetic_classes=5"], "was trained for 3 classes"),
])
def test_bad_init_model(teacher_run, tmp_path, args, message):
    init = os.path.join(teacher_run[0], "model.keras")
    out = os.path.join(tmp_path, "run")
    result = run([*SMALL, f"--init_model={init}", f"--output_dir={out}", *[a.format(init=init) for a in args]])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "model.keras"))


@pytest.mark.parametrize("args, message", [
    (["--teacher=/nonexistent/t.keras"], "--teacher='/nonexistent/t.keras' is not allowed"),
    (["--objectives=kd:0.9,crd2:1"], "unknown name 'crd2'"),
    (["--objectives=kd=0.9"], "unknown name 'kd=0.9'"),
    (["--student_arch=resnet7"], "--student_arch='resnet7' is not allowed"),
    (["--synthetic_classes=5"], "trained for 3 classes"),
])
def test_bad_student_inputs(teacher_run, tmp_path, args, message):
    out = os.path.join(tmp_path, "run")
    teacher = os.path.join(teacher_run[0], "model.keras")
    result = run([*SMALL, "--mode=student", f"--teacher={teacher}", f"--output_dir={out}", *args])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "model.keras"))


@pytest.mark.parametrize("args, message", [
    (["--arch=resnet9"], "--arch='resnet9' is not allowed: expected one of"),
    (["--dataset=imagenet"], "--dataset"),
    (["--epochs=0"], "--epochs=0 is not allowed"),
    (["--icc_tau=0"], "--icc_tau=0.0 is not allowed"),
    (["--icc_lambda=-1"], "--icc_lambda=-1.0 is not allowed"),
    (["--icc_margin_mode=soft"], "--icc_margin_mode"),
    (["--lr_decay_epochs=5,3"], "--lr_decay_epochs"),
    (["--dataset=cifar100"], "--data_dir=None is not allowed"),
    (["--dataset=folder", "--data_dir=/nonexistent/cifar"], "--data_dir='/nonexistent/cifar'"),
    (["--mode=export"], "--model=None is not allowed"),
    (["--no_such_flag=1"], "no_such_flag"),
])
def test_bad_flags_fail_before_any_work(tmp_path, args, message):
    out = os.path.join(tmp_path, "run")
    result = run([*SMALL, f"--output_dir={out}", *args])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def test_diverging_run_stops_with_the_epoch_step_and_term_and_writes_nothing(tmp_path):
    out = str(tmp_path / "nan")
    result = run([*SMALL, "--lr=1e30", "--epochs=1", "--lr_decay_epochs=", f"--output_dir={out}"])
    assert result.returncode == 1
    line = [l for l in result.stderr.splitlines() if l.startswith("training stopped")]
    assert line and "non-finite loss at epoch 1, step " in line[0], result.stderr[-2000:]
    # The term that overflows first (ce or the intra-class loss) differs between backends.
    assert re.search(r"step \d+: (ce|intra)=(nan|inf|-inf)", line[0]), line[0]
    assert "Last good checkpoint: none (no epoch completed)" in line[0]
    assert not {"model.keras", "metrics.json", "checkpoint.npz"} & set(os.listdir(out))


def copy_of(run_dir, tmp_path, name):
    """A copy of a finished run's folder (the module's teacher run stays as it is for the other tests)."""
    out = str(tmp_path / name)
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("tensorboard"))
    return out


def test_a_new_start_keeps_the_earlier_run_until_training_begins(teacher_run, tmp_path):
    """--noresume over a finished run: a data error leaves that run whole (checkpoint included); a
    run that diverges after training began leaves nothing that looks finished."""
    out = copy_of(teacher_run[0], tmp_path, "again")
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    result = run([*SMALL, "--noresume", "--dataset=folder", f"--data_dir={corrupt}", f"--output_dir={out}"])
    assert result.returncode == 1 and "data error" in result.stderr, result.stderr[-2000:]
    assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before

    os.makedirs(os.path.join(out, "tensorboard", "train"))  # the earlier run's logs
    open(os.path.join(out, "tensorboard", "train", "events.out.tfevents.1"), "wb").close()
    result = run([*SMALL, "--noresume", "--lr=1e30", "--epochs=1", "--lr_decay_epochs=", "--notensorboard",
                  f"--output_dir={out}"])
    assert result.returncode == 1 and "non-finite loss" in result.stderr, result.stderr[-2000:]
    assert os.listdir(out) == []  # the earlier run's files (logs too) went when training began; the new one wrote none


def test_a_finished_run_without_its_checkpoint_is_not_trained_over(teacher_run, tmp_path):
    out = copy_of(teacher_run[0], tmp_path, "no_checkpoint")
    os.remove(os.path.join(out, "checkpoint.npz"))
    metrics = open(os.path.join(out, "metrics.json")).read()
    result = run([*SMALL, f"--output_dir={out}"])
    assert result.returncode == 1
    assert (f"--output_dir='{out}' holds a finished run ({out}/metrics.json) without the checkpoint.npz to resume "
            "from; use another --output_dir, or --noresume") in result.stderr, result.stderr[-2000:]
    assert open(os.path.join(out, "metrics.json")).read() == metrics


def test_usage_errors_are_one_line_without_the_flag_help(tmp_path):
    """An image size that the network reduces to nothing is a usage error; usage errors end with their
    line and a pointer to --helpshort, not absl's page of every flag's help."""
    out = str(tmp_path / "run")
    result = run([*SMALL, "--arch=vgg8", "--image_size=4", f"--output_dir={out}"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("run.py: error: --arch='vgg8' cannot be built for 4x4 images (--image_size=4): "
                                "Computed output size would be zero or negative"), result.stderr[-2000:]
    assert lines[-1] == "(python experiments/run.py --helpshort lists the flags)"
    assert "Backbone preset" not in result.stderr  # --arch's help text
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def with_metadata(model_path, change):
    """Rewrites the metadata recorded in a teacher run's model file: `change(metadata)` gives the new one."""
    model = keras.saving.load_model(model_path)
    model.backbone.set_metadata(change(dict(model.backbone.metadata)))
    model.save(model_path)


def test_a_teacher_run_on_other_data_is_refused_or_named(teacher_run, tmp_path):
    """The normalisation and dataset recorded in the teacher's file: other input normalisation is refused;
    another dataset is named in a warning. A file without metadata (written before models carried it) is
    checked against its run's record (metrics.json beside it) instead."""
    teacher = copy_of(teacher_run[0], tmp_path, "teacher")
    model_path, path = os.path.join(teacher, "model.keras"), os.path.join(teacher, "metrics.json")
    record = json.load(open(path))
    student = [*SMALL, "--mode=student", f"--teacher={model_path}", "--student_arch=resnet8", "--epochs=1",
               "--lr_decay_epochs=", "--notensorboard", f"--output_dir={tmp_path / 'student'}"]
    other = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    with_metadata(model_path, lambda m: dict(m, normalization=other))
    result = run(student)
    assert result.returncode == 1
    assert (f"--teacher='{model_path}' was trained on {record['dataset']} images normalised with mean "
            "[0.5, 0.5, 0.5], std [0.25, 0.25, 0.25] (recorded in the file), but --dataset=synthetic") in \
        result.stderr, result.stderr[-2000:]
    with_metadata(model_path, lambda m: dict(m, normalization=record["normalization"], dataset="cifar10-jpeg"))
    result = run(student)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"was trained on cifar10-jpeg (recorded in the file), this run distils on {record['dataset']}"
            in result.stderr)
    # no metadata in the file: the run record beside it decides
    with_metadata(model_path, lambda m: None)
    json.dump(dict(record, normalization=other), open(path, "w"))
    result = run([*student[:-1], f"--output_dir={tmp_path / 'student2'}"])
    assert result.returncode == 1
    assert f"std [0.25, 0.25, 0.25] ({path}), but --dataset=synthetic" in result.stderr, result.stderr[-2000:]
