"""Training on the JAX backend where TensorFlow cannot be imported (a stub package that raises on
import stands first on PYTHONPATH): teacher and student runs of experiments/run.py, a killed
run that resumes, and clear refusals of what needs TensorFlow (the TensorFlow backend, TFLite export;
the flags that need it: tests/test_bad_input.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT, backend, kill_after_first_checkpoint

RUN = [sys.executable, os.path.join(REPO_ROOT, "experiments", "run.py")]
SMALL = ["--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=16",
         "--synthetic_test_per_class=4", "--arch=resnet8", "--batch_size=8", "--lr_decay_epochs=2",
         "--icc_cache_size=16", "--icc_delta=-1", "--diagnostic_examples=0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """KERAS_BACKEND=jax with a `tensorflow` package that raises ModuleNotFoundError on import."""
    stub = tmp_path_factory.mktemp("no_tensorflow")
    os.makedirs(stub / "tensorflow")
    (stub / "tensorflow" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'tensorflow\' (blocked by the test)", name="tensorflow")\n')
    return dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([str(stub), REPO_ROOT]),
                TF_CPP_MIN_LOG_LEVEL="2")


def start(args, env):
    return subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out, err


def test_the_stub_blocks_tensorflow(env):
    result = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_tflite_export_is_refused_clearly(monkeypatch, tmp_path):
    from keras_icckd import backbones, export

    student = backbones.get("resnet8", num_classes=3, input_shape=(8, 8, 3))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError now
    with pytest.raises(export.ExportError, match=r"formats \['litert'\] need TensorFlow"):
        export.export_tflite(student, str(tmp_path / "out"), test_images=np.zeros((2, 8, 8, 3), "float32"))
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(export.ExportError, match=r"formats \['saved_model', 'onnx'\] need TensorFlow"):
        export.export_model(student, str(tmp_path / "out"), formats=("keras", "saved_model", "onnx"),
                            test_images=np.zeros((2, 8, 8, 3), "float32"))
    assert not os.path.exists(tmp_path / "out")
    if backend() == "jax":  # the plain .keras file needs no TensorFlow: written and verified in bare Keras
        report = export.export_model(student, str(tmp_path / "plain"), formats=("keras",), latency_runs=0,
                                     test_images=np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32"))
        assert report["files"]["keras"]["max_abs_diff"] <= 1e-4
        assert sorted(os.listdir(tmp_path / "plain")) == ["export.json", "model.keras"]


def test_teacher_student_and_resumed_runs_train_without_tensorflow(env, tmp_path):
    if backend() != "jax":
        # The JAX runs below run once per suite, in the JAX session. Here: the TensorFlow backend,
        # which cannot start without TensorFlow, is refused with a clear message.
        result = subprocess.run([*RUN, *SMALL, f"--output_dir={tmp_path}"], capture_output=True, text=True,
                                env=dict(env, KERAS_BACKEND="tensorflow"), cwd=REPO_ROOT, timeout=300)
        assert result.returncode != 0
        assert "Keras could not start its backend (KERAS_BACKEND=tensorflow)" in result.stderr, result.stderr[-2000:]
        assert "train with KERAS_BACKEND=jax" in result.stderr
        return
    # Compiled steps are cached on disk (the session's cache, tests/conftest.py), so only the first
    # run (the killed one) and the student compile.
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    teacher_args = [*SMALL, "--synthetic_train_per_class=40", "--epochs=3"]  # 15 steps per epoch
    victim = start([*teacher_args, f"--output_dir={killed}"], env)
    epoch = kill_after_first_checkpoint(victim, os.path.join(killed, "checkpoint.npz"))
    assert 1 <= epoch < 3, f"the run was not interrupted mid-way (checkpoint after epoch {epoch})"
    assert not os.path.exists(os.path.join(killed, "model.keras"))

    resumed = start([*teacher_args, f"--output_dir={killed}"], env)
    _, err = finish(start([*teacher_args, f"--output_dir={straight}"], env))
    assert "input pipeline keras_icckd.data.numpy_pipeline" in err
    assert "TensorBoard logs need TensorFlow" in err and not os.path.exists(os.path.join(straight, "tensorboard"))
    _, err = finish(resumed)
    assert f"resuming {killed} after epoch {epoch} of 3" in err
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (straight, killed))
    assert a["backend"] == "jax" and [r["epoch"] for r in b["history"]] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in b["history"]], [r["loss"] for r in a["history"]], rtol=1e-5)
    assert b["test_top1"] == pytest.approx(a["test_top1"])

    out = tmp_path / "student"
    finish(start([*SMALL, "--epochs=1", "--mode=student", f"--teacher={os.path.join(killed, 'model.keras')}",
                  "--student_arch=resnet8", "--objectives=kd:0.9", f"--output_dir={out}"], env))
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["objectives"] == {"kd": 0.9} and metrics["backend"] == "jax"
    for key in ("kd_loss", "ce", "test_top1"):
        assert np.isfinite(metrics["history"][-1][key]), key
    assert os.path.exists(out / "model.keras")
