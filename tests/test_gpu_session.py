"""bench/gpu_session.sh, the one-command GPU session, at toy sizes on this machine (--tiny), so that
it keeps working between the sessions that have a GPU. The JAX-backend script runs half its
sections in each backend's test session (throughput and projection under the JAX session, the
input pipeline and the real-data run under the TensorFlow one)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, backend

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
import gpu_session  # noqa: E402


def test_tiny_session_writes_its_report(tmp_path):
    sections = "throughput" if backend() == "jax" else "pipeline,run"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "bench", "gpu_session.sh"), "--tiny",
                             f"--out_dir={tmp_path}", f"--sections={sections}", "--budget_s=400"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.load(open(tmp_path / "gpu_session.json"))
    assert report["tiny"] and report["environment"]["keras"] and report["data"]["train"] == 200
    if backend() == "jax":
        rows = report["throughput"]["rows"]
        modes = {r["mode"] for r in rows}
        assert "jax" in modes and modes <= {"jax", "torch"} and {r["step"] for r in rows} == {"kd"}
        assert all(r["batch"] == 8 and r["images_per_s"] > 0 for r in rows)
        (kd,) = [r for r in rows if r["mode"] == "jax"]
        (projected,) = report["projection"]
        assert projected["minutes"] == pytest.approx(240 * 50000 / kd["images_per_s"] / 60, abs=0.05)
        assert "pipeline" not in report and "real_data_run" not in report
    else:
        rates = report["pipeline"]["samples_per_s"]
        assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
        run = report["real_data_run"]
        assert run["num_train"] == 200 and run["num_test"] == 50 and 0 <= run["test_top1"] <= 100
        assert [r["epoch"] for r in run["history"]] == [1]
        assert "throughput" not in report


def test_projection_and_goal():
    rows = [{"step": "kd", "mode": "jax", "batch": 64, "images_per_s": 10000.0},
            {"step": "kd", "mode": "jax_bf16", "batch": 64, "images_per_s": 20000.0},
            {"step": "kd", "mode": "torch", "batch": 64, "images_per_s": 9000.0},
            {"step": "icc", "mode": "jax", "batch": 64, "images_per_s": 5000.0}]
    pipeline = {"samples_per_s": {"kd (1 view)": 12000.0}}
    out = gpu_session.projection(rows, pipeline)
    assert [(p["mode"], p["images_per_s"], p["minutes"], p["goal_met"]) for p in out] == [
        ("jax", 10000.0, 20.0, True),  # 240 * 50,000 images at 10,000 images/s: 20 minutes
        ("jax_bf16", 12000.0, 16.7, True)]  # the pipeline's 12,000 samples/s limit the faster step
    assert gpu_session.GOAL_IMAGES_PER_S == pytest.approx(6666.7, abs=0.1)
    assert not gpu_session.projection([dict(rows[0], images_per_s=5000.0)], None)[0]["goal_met"]  # 40 minutes


def test_bad_sections_are_refused(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "gpu_session.py"), "--tiny",
                             "--sections=throughput,speed", f"--out_dir={tmp_path}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "--sections='throughput,speed': expected names from" in result.stderr
