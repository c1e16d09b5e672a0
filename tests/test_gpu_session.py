"""bench/gpu_session.sh, the one-command GPU session, at toy sizes on this machine (--tiny), so that
it keeps working between the sessions that have a GPU. The JAX-backend script runs half its
sections in each backend's test session (throughput and projection under the JAX session, the
input pipeline and the real-data run under the TensorFlow one)."""

import json
import os
import subprocess
import sys
import time

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
    text = (tmp_path / "gpu_session.md").read_text()
    assert text.startswith(f"# GPU session of {report['date']} (tiny sizes)")
    if backend() == "jax":
        rows = report["throughput"]["rows"]
        modes = {r["mode"] for r in rows}
        assert "jax" in modes and modes <= {"jax", "torch"} and {r["step"] for r in rows} == {"kd"}
        assert all(r["batch"] == 8 and r["images_per_s"] > 0 for r in rows)
        (kd,) = [r for r in rows if r["mode"] == "jax"]
        (projected,) = report["projection"]
        assert projected["minutes"] == pytest.approx(240 * 50000 / kd["images_per_s"] / 60, abs=0.05)
        assert "pipeline" not in report and "real_data_run" not in report
        assert "| kd | resnet8 <- resnet14 | 8 |" in text and "## Projection" in text
    else:
        rates = report["pipeline"]["samples_per_s"]
        assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
        run = report["real_data_run"]
        assert run["num_train"] == 200 and run["num_test"] == 50 and 0 <= run["test_top1"] <= 100
        assert [r["epoch"] for r in run["history"]] == [1]
        assert "throughput" not in report
        assert "## Input pipeline" in text and "## Real-data run" in text and "200 / 50 images, 1 epochs" in text


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


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def fake_train_step(clock, seconds_per_step, codes=None):
    """Stands in for run_until: "takes" seconds_per_step per step of the stage on `clock`, writes
    train_step.py's JSON (one row per step) unless its exit code in `codes` says otherwise."""
    calls = []

    def run(command, deadline):
        args = dict(a[2:].split("=", 1) for a in command[2:])
        steps, batch = args["steps"].split(","), int(args["batch_sizes"])
        calls.append((args["steps"], batch))
        clock.now += seconds_per_step * len(steps)
        code = (codes or {}).get((args["steps"], batch), 0)
        if code == 0:
            with open(args["json"], "w") as f:
                json.dump({"modes": {"jax": {}}, "checks": [], "rows": [
                    {"step": s, "mode": "jax", "batch": batch, "student": "s", "teacher": "t", "images_per_s": 1.0}
                    for s in steps]}, f)
        return code

    return run, calls


def test_throughput_stages_in_order_within_the_budget(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(gpu_session.time, "time", clock.time)
    config = dict(gpu_session.TINY, modes=("jax",), stages=(("kd", 64), ("a,b,c", 64), ("a,b,c", 256)))
    run, calls = fake_train_step(clock, 10.0)
    # 75 s: kd (10 s: 10 s a step), a,b,c at 64 (needs 30 s, 65 s left), a,b,c at 256 (needs 30 s, 35 s left)
    out = gpu_session.throughput(config, clock.now + 75.0, str(tmp_path), lambda message: None, run=run)
    assert [s["status"] for s in out["stages"]] == ["done"] * 3 and len(calls) == 3
    # 65 s: the last stage would need 30 s with 25 s left: skipped
    clock.now, calls[:] = 1000.0, []
    out = gpu_session.throughput(config, clock.now + 65.0, str(tmp_path), lambda message: None, run=run)
    assert calls == [("kd", 64), ("a,b,c", 64)]
    assert [(s["steps"], s["batch"], s["status"]) for s in out["stages"]] == [
        ("kd", 64, "done"), ("a,b,c", 64, "done"), ("a,b,c", 256, "skipped")]
    assert [r["step"] for r in out["rows"]] == ["kd", "a", "b", "c"]
    assert out["stages"][1]["seconds"] == 30.0


def test_throughput_keeps_the_stages_before_one_that_fails(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(gpu_session.time, "time", clock.time)
    config = dict(gpu_session.TINY, modes=("jax",), stages=(("kd", 64), ("dkd", 64), ("crd", 64)))
    run, calls = fake_train_step(clock, 1.0, codes={("dkd", 64): None, ("crd", 64): 3})
    out = gpu_session.throughput(config, clock.now + 100.0, str(tmp_path), lambda message: None, run=run)
    assert [s["status"] for s in out["stages"]] == ["done", "cut off by the budget", "failed (exit code 3)"]
    assert [r["step"] for r in out["rows"]] == ["kd"]
    # a stage that overruns the whole budget: the later ones are not started
    run, calls = fake_train_step(clock, 200.0)
    out = gpu_session.throughput(config, clock.now + 100.0, str(tmp_path), lambda message: None, run=run)
    assert calls == [("kd", 64)] and [s["status"] for s in out["stages"]] == ["done", "skipped", "skipped"]


def test_run_until_kills_the_whole_process_group(tmp_path):
    # the driver starts a child (as train_step.py starts its measuring processes) and both sleep
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    assert gpu_session.run_until([sys.executable, "-c", script], 0.0, floor_s=10.0) is None  # time to start both
    child = int(pid_file.read_text())
    for _ in range(50):  # the child is killed with the group (reaped by init soon after)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child} outlived its group's kill")
    assert gpu_session.run_until([sys.executable, "-c", "import sys; sys.exit(3)"], 0.0, floor_s=30.0) == 3


def test_cut_off_real_data_run_reports_its_checkpoint(tmp_path):
    import keras

    from keras_icckd.training import save_checkpoint

    def run(command, deadline):  # run.py finishes two epochs, then the budget ends
        out = next(a.split("=", 1)[1] for a in command if a.startswith("--output_dir="))
        os.makedirs(out)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        history = [{"epoch": 1, "loss": 2.0, "test_top1": 30.0, "ce": 2.0},
                   {"epoch": 2, "loss": 1.5, "test_top1": 45.0, "ce": 1.5}]
        save_checkpoint(model, os.path.join(out, "checkpoint.npz"), {"epoch": 2, "history": history})
        return None

    result = gpu_session.real_data_run(gpu_session.TINY, "data.tar.gz", 5.0, str(tmp_path), run=run)
    assert result["error"] == "cut off by the budget" and result["epochs_completed"] == 2
    assert result["history"] == [{"epoch": 1, "loss": 2.0, "test_top1": 30.0},
                                 {"epoch": 2, "loss": 1.5, "test_top1": 45.0}]
    failed = gpu_session.real_data_run(gpu_session.TINY, "data.tar.gz", 5.0, str(tmp_path / "x"), run=lambda c, d: 2)
    assert failed["error"] == "run.py failed (exit code 2)" and "history" not in failed


def test_markdown_report_compares_rows_across_stages():
    # the KD step from the first stage, DKD from the second: the DKD-vs-KD target spans both
    rows = [{"step": "kd", "mode": "jax", "batch": 64, "student": "s", "teacher": "t", "images_per_s": 10000.0,
             "rel_iqr": 0.05},
            {"step": "kd", "mode": "torch", "batch": 64, "student": "s", "teacher": "t", "images_per_s": 8000.0,
             "rel_iqr": 0.05},
            {"step": "dkd", "mode": "jax", "batch": 64, "student": "s", "teacher": "t", "images_per_s": 9000.0,
             "rel_iqr": 0.40}]
    modes = ["jax", "torch"]
    report = {"date": "2026-11-30", "tiny": False, "budget_s": 480.0, "setup_s": 12.0, "elapsed_s": 470.0,
              "environment": {"device_kind": "NVIDIA H200", "devices": ["cuda:0"], "cpu_count": 16, "jax": "0.11.2"},
              "pipeline": {"batch": 256, "threads": 16, "samples_per_s": {"kd (1 view)": 30000.0}},
              "throughput": {"pair": "s:t", "modes": modes, "rows": rows,
                             "checks": gpu_session.train_step.analyse(rows, modes)[1],
                             "stages": [{"steps": "kd", "batch": 64, "status": "done", "seconds": 60.0},
                                        {"steps": "dkd", "batch": 64, "status": "done", "seconds": 50.0},
                                        {"steps": "kd", "batch": 256, "status": "skipped"}]},
              "projection": gpu_session.projection(rows, {"samples_per_s": {"kd (1 view)": 30000.0}}),
              "real_data_run": {"error": "cut off by the budget", "seconds": 150.0, "epochs_completed": 1,
                                "history": [{"epoch": 1, "loss": 2.5, "train_top1": 30.0, "test_top1": 40.0}]}}
    text = gpu_session.markdown_report(report)
    assert "Device NVIDIA H200 (cuda:0), 16 CPU cores" in text and "PyTorch absent" in text
    assert "| kd (1 view) | 30,000 |" in text
    assert "kd at batch 64: done (60 s); dkd at batch 64: done (50 s); kd at batch 256: skipped." in text
    assert "best Keras (jax) / torch = 1.25" in text  # 10,000 / 8,000
    assert "jax: 1.11x kd (unreliable: spread 40 %)" in text  # 10,000 / 9,000, DKD's spread
    assert "- met: best Keras kd step >= 1.0x torch, jax at batch 64: 1.25" in text
    assert "- met (unreliable): dkd step <= 1.15x kd step, jax at batch 64: 1.11" in text
    # 240 x 50,000 images at 10,000 images/s: 20 minutes
    assert "| jax | 64 | 10,000 | 10,000 | 20 | yes |" in text
    assert "Not finished: cut off by the budget after 150 s; epochs completed: 1." in text
    assert "| 1 | 2.5000 | 30.00 | 40.00 |" in text
