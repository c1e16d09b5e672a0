"""Several hosts, simulated with two processes on 127.0.0.1: a two-process teacher run of
experiments/run.py trains with the same losses as one process, only process 0 writes the outputs,
and a killed two-process run resumes. JAX: `--num_processes=2 --process_id --coordinator_address`,
each process with 2 virtual CPU devices (the NumPy input pipeline, sharded per process).
TensorFlow: MultiWorkerMirroredStrategy from a two-worker TF_CONFIG. Each session tests its backend."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from helpers import REPO_ROOT, backend, checkpoint_epoch, kill_after_first_checkpoint

RUN = [sys.executable, os.path.join(REPO_ROOT, "experiments", "run.py")]
FLAGS = ["--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=16",
         "--synthetic_test_per_class=4", "--arch=resnet8", "--batch_size=8", "--epochs=2", "--lr_decay_epochs=1",
         "--icc_lambda=0", "--diagnostic_examples=0", "--notensorboard"]  # a CE teacher: the ICC loss's
# global batch on several devices is tests/test_distribution.py's
OUTPUTS = ["checkpoint.npz", "curves.png", "metrics.json", "model.keras"]


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
    return subprocess.Popen([*RUN, *FLAGS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO_ROOT)


def finish(process, timeout=600):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a collective waiting for a process that is gone
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return out, err


def two_processes(output_dir, env):
    """The two processes of one run, started side by side."""
    if backend() == "jax":
        port = free_ports(1)[0]
        common = ["--input_pipeline=numpy", "--num_processes=2", f"--coordinator_address=127.0.0.1:{port}"]
        return [start([*common, "--distribution=data_parallel", f"--process_id={i}", f"--output_dir={output_dir}"],
                      dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")) for i in range(2)]
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    return [start(["--distribution=data_parallel", "--num_processes=2", f"--process_id={i}",
                   f"--output_dir={output_dir}"],
                  dict(env, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                  "task": {"type": "worker", "index": i}})))
            for i in range(2)]


def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")  # the resumed JAX processes reuse the compilation
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    reference = start([f"--output_dir={one}"], env)
    victims = two_processes(two, env)
    epoch = kill_after_first_checkpoint(victims[0], os.path.join(two, "checkpoint.npz"))
    victims[1].kill()
    victims[1].communicate()
    assert epoch == 1, f"the run was not interrupted mid-way (checkpoint after epoch {epoch})"
    assert not os.path.exists(os.path.join(two, "metrics.json"))

    resumed = two_processes(two, env)
    (out0, err0), (out1, err1) = (finish(p) for p in resumed)
    finish(reference)
    assert f"resuming {two} after epoch 1 of 2" in err0 and f"resuming {two} after epoch 1 of 2" in err1
    assert "process 1: training done; process 0 writes the outputs" in out1 and "model:" not in out1
    assert f"model:   {two}/model.keras" in out0
    assert sorted(os.listdir(two)) == OUTPUTS == sorted(os.listdir(one))  # written once, no temp files left
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (one, two))
    assert b["flags"]["num_processes"] == 2 and [r["epoch"] for r in b["history"]] == [1, 2]
    # Float rounding only: the first step agrees to ~1e-7; the rounding differences of the synchronised
    # BatchNorm statistics (TensorFlow's fused kernel in one process) grow over a dozen steps to ~3e-4.
    for key in ("loss", "ce", "test_loss"):
        np.testing.assert_allclose([r[key] for r in b["history"]], [r[key] for r in a["history"]], rtol=2e-3,
                                   err_msg=key)
    assert checkpoint_epoch(os.path.join(two, "checkpoint.npz")) == 2
