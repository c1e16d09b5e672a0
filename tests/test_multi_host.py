"""experiments/run.py in one process on one device and with --distribution=data_parallel in two
processes on 127.0.0.1 (several hosts, simulated), with the same losses; only process 0 writes the
outputs:
- distilling a student (KD + CRD + DCD) from a teacher file: the two processes resume the checkpoint
  that the one-process run wrote after its first epoch, both reading it;
- training the ICC teacher (with its cache): a two-process run is killed after its first checkpoint
  and started again in two processes;
- the ICC teacher streaming its images from a folder (--stream, tf.data): split between the
  TensorFlow workers by Keras; each JAX process decodes only its share of every batch;
- JAX only: the ICC teacher with --distribution=model_parallel, one row of the (batch, model) mesh
  per process.

JAX: the one process has one device; each of the two processes (`--num_processes=2 --process_id
--coordinator_address`) has 2 virtual CPU devices and reads its share of every batch (the NumPy
input pipeline, which --input_pipeline=auto picks with several JAX processes, or the stream). TensorFlow: the one
process runs MirroredStrategy on its CPU (one replica), the two processes MultiWorkerMirroredStrategy
from a two-worker TF_CONFIG. Each session tests its backend."""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np

from helpers import REPO_ROOT, backend, checkpoint_epoch, kill_after_first_checkpoint
from keras_icckd import backbones

RUN = [sys.executable, os.path.join(REPO_ROOT, "experiments", "run.py")]
# 24 training images in 3 steps per epoch.
FLAGS = ["--mode=student", "--student_arch=resnet8", "--objectives=kd:0.9,crd:0.8,dcd:1", "--dataset=synthetic",
         "--synthetic_classes=3", "--synthetic_train_per_class=8", "--synthetic_test_per_class=4", "--batch_size=8",
         "--epochs=3", "--lr=0.01", "--lr_decay_epochs=2", "--diagnostic_examples=0", "--notensorboard"]
OUTPUTS = ["checkpoint.npz", "curves.png", "log.csv", "metrics.json", "model.keras"]
# The ICC teacher with its cache (every anchor past the margin): 24 training images in 6 steps per
# epoch (several seconds between two checkpoints of a two-process run, time to kill it). At lr 0.01:
# float rounding (summation order, BatchNorm's moments over two replicas) grows with every step at a
# large learning rate, on 2 replicas in one process as in two processes (measured on TensorFlow after
# 18 steps at lr 0.05: losses 3e-4 apart, weights 3e-2).
TEACHER_FLAGS = ["--mode=teacher", "--arch=resnet8", "--dataset=synthetic", "--synthetic_classes=3",
                 "--synthetic_train_per_class=8", "--synthetic_test_per_class=4", "--batch_size=4", "--epochs=3",
                 "--lr=0.01", "--lr_decay_epochs=2", "--icc_cache_size=16", "--icc_delta=-1",
                 "--diagnostic_examples=0", "--notensorboard"]


def free_ports(count):
    """`count` distinct ports that were free a moment ago (bound together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(args, env):
    return subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)


def finish(process, timeout=600):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a collective waiting for a process that is gone
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return out, err


def one_process(flags, output_dir, env):
    """A one-process run on one device (TensorFlow: under a one-replica MirroredStrategy); it reports
    the teacher's test accuracy (a predict, under the strategy on TensorFlow)."""
    distribution = "none" if backend() == "jax" else "data_parallel"
    return start([*flags, f"--distribution={distribution}", f"--output_dir={output_dir}"], env)


def two_processes(flags, output_dir, env, distribution="data_parallel"):
    """The two processes of one run, started side by side."""
    common = [*flags, f"--distribution={distribution}", "--num_processes=2", f"--output_dir={output_dir}"]
    if backend() == "jax":
        port = free_ports(1)[0]
        env = dict(env, XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
        return [start([*common, f"--coordinator_address=127.0.0.1:{port}", f"--process_id={i}"], env)
                for i in range(2)]
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    return [start([*common, f"--process_id={i}"],
                  dict(env, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                  "task": {"type": "worker", "index": i}})))
            for i in range(2)]


def copy_first_checkpoint(process, path, copy, timeout=500):
    """Copies the checkpoint at `path` to `copy` as soon as `process` has written one (they are
    written whole, by a rename); returns the epochs it records (0: none before the process ended)."""
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        try:
            with open(path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        with open(copy, "wb") as f:
            f.write(content)
        break
    return checkpoint_epoch(copy)


def resume_in_two_processes(flags, reference, one, two, epoch, env):
    """Runs `flags` in two processes into `two`, which holds a checkpoint after `epoch`, and waits
    for them and for the one-process `reference` run into `one`; checks that both processes
    resumed and only process 0 wrote; returns the metrics of (one, two)."""
    resumed = two_processes(flags, two, env)
    (out0, err0), (out1, err1) = (finish(p) for p in resumed)
    finish(reference)
    assert f"resuming {two} after epoch {epoch} of 3" in err0 and f"resuming {two} after epoch {epoch} of 3" in err1
    assert "process 1: training done; process 0 writes the outputs" in out1 and "model:" not in out1
    assert f"model:   {two}/model.keras" in out0
    assert sorted(os.listdir(two)) == OUTPUTS == sorted(os.listdir(one))  # written once, no temp files left
    assert checkpoint_epoch(os.path.join(two, "checkpoint.npz")) == 3
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (one, two))
    assert b["flags"]["num_processes"] == 2 and [r["epoch"] for r in b["history"]] == [1, 2, 3]
    return a, b


def assert_same_losses(a, b, keys):
    # Within 1e-3: over 3 epochs, rounding (summation order, which TensorFlow's oneDNN kernels on CPUs
    # with AVX512-VNNI choose by the per-device batch size) moved a term by up to 2e-4 on an AMD EPYC,
    # with oneDNN on (the ICC teacher) or off (the student); a process reading the wrong share of the
    # batch, or a loss not divided by the replicas, is off by 5e-3 or more.
    for key in keys:
        np.testing.assert_allclose([r[key] for r in b["history"]], [r[key] for r in a["history"]], rtol=1e-3,
                                   atol=1e-6, err_msg=key)


def test_two_processes_resume_a_one_process_checkpoint_and_distil_like_one_process(tmp_path, jax_subprocess_env):
    teacher = str(tmp_path / "teacher.keras")  # untrained: its outputs are all the student needs here
    keras.utils.set_random_seed(0)
    backbones.get("resnet8", num_classes=3, input_shape=(32, 32, 3)).save(teacher)
    flags = [*FLAGS, f"--teacher={teacher}"]
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2", **jax_subprocess_env)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    os.makedirs(two)
    reference = one_process(flags, one, env)
    epoch = copy_first_checkpoint(reference, os.path.join(one, "checkpoint.npz"), os.path.join(two, "checkpoint.npz"))
    assert epoch in (1, 2), f"no checkpoint of an unfinished run to resume (epoch {epoch})"
    a, b = resume_in_two_processes(flags, reference, one, two, epoch, env)
    assert "teacher_test_top1" in a and "teacher_test_top1" not in b
    # The epochs after the checkpoint, trained in two processes: float rounding only (measured: within
    # 1e-6; two processes that read the same share of each batch, or a loss not divided by the
    # replicas, are off by 5e-3 or more).
    assert_same_losses(a, b, ("loss", "ce", "kd_loss", "crd_loss", "dcd_loss", "agreement", "test_loss"))


def test_killed_two_process_teacher_run_resumes_to_the_one_process_losses(tmp_path, jax_subprocess_env):
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2", **jax_subprocess_env)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    reference = one_process(TEACHER_FLAGS, one, env)
    epoch = kill_after_first_checkpoint(two_processes(TEACHER_FLAGS, two, env), os.path.join(two, "checkpoint.npz"))
    assert epoch in (1, 2), f"no checkpoint of an unfinished run to resume (epoch {epoch})"
    assert not {"metrics.json", "model.keras"} & set(os.listdir(two))
    a, b = resume_in_two_processes(TEACHER_FLAGS, reference, one, two, epoch, env)
    # Every epoch: the killed run's (restored from its checkpoint) and the resumed run's. The cache,
    # the negatives and the intra-class term see the global batch in both processes.
    assert_same_losses(a, b, ("loss", "ce", "intra", "negatives", "margin_pass", "test_loss"))


def test_two_processes_stream_a_folder_like_one_process(tmp_path, jax_subprocess_env):
    from test_streaming import image_files, write_tree

    folder = write_tree(str(tmp_path / "images"), image_files(per_class=(8, 4)))  # 24 train / 12 test
    flags = [*TEACHER_FLAGS, "--dataset=folder", f"--data_dir={folder}", "--stream", "--image_size=32", "--epochs=2",
             "--lr_decay_epochs=1"]
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2", **jax_subprocess_env)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    reference = one_process(flags, one, env)
    (out0, _), (out1, _) = (finish(p) for p in two_processes(flags, two, env))
    finish(reference)
    assert "process 1: training done; process 0 writes the outputs" in out1 and f"model:   {two}/model.keras" in out0
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (one, two))
    assert a["flags"]["stream"] and b["flags"]["num_processes"] == 2 and len(b["history"]) == 2
    assert_same_losses(a, b, ("loss", "ce", "intra", "negatives", "test_loss", "test_top1"))


def test_model_parallel_in_two_processes_like_one_process(tmp_path, jax_subprocess_env):
    # JAX only (model_parallel is JAX's): each process holds one row of the (batch 2, model 2) mesh,
    # its 2 devices splitting every conv kernel's output channels, and reads its half of every batch
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", **jax_subprocess_env)
    flags = [*TEACHER_FLAGS, "--epochs=2", "--lr_decay_epochs=1", "--model_parallel_size=2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    reference = one_process(flags, one, env)
    (out0, err0), (out1, _) = (finish(p) for p in two_processes(flags, two, env, distribution="model_parallel"))
    finish(reference)
    assert "process 1: training done; process 0 writes the outputs" in out1 and f"model:   {two}/model.keras" in out0
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (one, two))
    assert b["flags"]["distribution"] == "model_parallel" and b["flags"]["num_processes"] == 2
    assert_same_losses(a, b, ("loss", "ce", "intra", "negatives", "margin_pass", "test_loss", "test_top1"))
