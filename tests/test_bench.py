"""bench/train_step.py: its timing helpers, its ratio and target arithmetic, and one real run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT, backend

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
import timing  # noqa: E402
import train_step  # noqa: E402


def test_round_robin_interleaves_the_cases():
    calls = []

    def runner(name):
        return lambda n: [calls.append(name) or float(len(calls)) for _ in range(n)]

    times = timing.round_robin([runner("a"), runner("b")], rounds=3, steps=2)
    assert calls == ["a", "a", "b", "b"] * 3
    assert times == [[1, 2, 5, 6, 9, 10], [3, 4, 7, 8, 11, 12]]


def test_summary_uses_the_median_step():
    row = timing.summary([0.5, 0.25, 0.5, 2.0, 0.5], batch=64)
    assert row["step_ms"] == 500.0 and row["images_per_s"] == 128.0 and row["steps"] == 5
    q = np.percentile([0.5, 0.25, 0.5, 2.0, 0.5], [25, 75], method="weibull")  # statistics.quantiles' method
    assert row["rel_iqr"] == pytest.approx((q[1] - q[0]) / 0.5)


WORKER = """
import sys, time
sys.path.insert(0, {bench!r})
import timing
stream = timing.protocol_stream()
print("this line goes to stderr, not into the protocol")
timing.send(stream, {{"rows": [{name!r}]}})

def runner(n):
    with open({log!r}, "a") as f:
        f.write({name!r} + "\\n")
    return [0.25] * n

timing.serve([runner, runner], 2, stream, sys.stdin)
"""


def test_measuring_processes_stay_alive_and_take_turns(tmp_path):
    log = str(tmp_path / "order.log")
    workers = [timing.Worker(name, [sys.executable, "-c", WORKER.format(bench=os.path.join(REPO_ROOT, "bench"),
                                                                        name=name, log=log)])
               for name in ("keras", "torch")]
    try:
        assert [w.receive() for w in workers] == [{"rows": ["keras"]}, {"rows": ["torch"]}]
        times = timing.interleave(workers, rounds=3)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0]
    assert open(log).read().split() == ["keras", "keras", "torch", "torch"] * 3  # two cases each, in turns
    assert times == [[[0.25] * 6] * 2] * 2  # per worker, per case: 3 rounds x 2 steps


def test_a_failing_measuring_process_is_reported():
    worker = timing.Worker("broken", [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="the broken measurements failed \\(exit 3\\)"):
        worker.receive()


def test_groups_keep_a_teacher_and_batch_together():
    cases = train_step.make_cases([("s1", "t"), ("s2", "t")], [8, 16], ["ce1", "kd"])
    # The shared teacher's CE step is measured once per batch size.
    assert [(c["step"], c["student"], c["batch"]) for c in cases] == [
        ("ce1", None, 8), ("kd", "s1", 8), ("ce1", None, 16), ("kd", "s1", 16), ("kd", "s2", 8), ("kd", "s2", 16)]
    assert [[c["batch"] for c in g] for g in timing.groups(cases)] == [[8, 8, 8], [16, 16, 16]]


def row(mode, step, rate, student="s", teacher="t", batch=64):
    return {"mode": mode, "step": step, "student": None if step in train_step.TEACHER_STEPS else student,
            "teacher": teacher, "batch": batch, "images_per_s": rate}


def test_ratios_and_targets():
    rows = [row("tf", "kd", 100.0), row("jax", "kd", 50.0), row("torch", "kd", 90.0),
            row("tf", "rkd", 80.0), row("tf", "crd", 10.0), row("jax", "rkd", 45.0),
            row("tf", "ce2", 40.0), row("tf", "icc", 35.0)]
    lines, checks = train_step.analyse(rows, ["tf", "jax", "torch"])
    found = {(c["target"].split()[0], c["mode"]): (round(c["value"], 4), c["ok"]) for c in checks}
    assert found == {
        ("best", "tf"): (round(100 / 90, 4), True),  # the fastest Keras backend against PyTorch
        ("rkd", "tf"): (1.25, False),  # 100 / 80: costs 1.25x the KD step
        ("rkd", "jax"): (round(50 / 45, 4), True),
        ("icc", "tf"): (round(40 / 35, 4), False),
    }  # CRD is measured but exempt from the 1.15x target
    assert lines[0][:3] == ["step", "network(s)", "batch"]
    assert lines[1][:6] == ["kd", "s <- t", "64", "100.0", "50.0", "90.0"]


def test_ratios_with_a_large_spread_are_marked_unreliable():
    rows = [dict(row("jax", "kd", 100.0), rel_iqr=0.5), dict(row("torch", "kd", 90.0), rel_iqr=0.05),
            dict(row("jax_bf16", "kd", 200.0), rel_iqr=0.1), dict(row("torch_bf16", "kd", 150.0), rel_iqr=0.2)]
    lines, checks = train_step.analyse(rows, ["jax", "jax_bf16", "torch", "torch_bf16"])
    by_precision = {c["precision"]: c for c in checks}
    assert by_precision["float32"]["mode"] == "jax" and not by_precision["float32"]["reliable"]
    assert by_precision["float32"]["spread"] == 0.5 and by_precision["float32"]["value"] == pytest.approx(100 / 90)
    # bfloat16 Keras is compared with bfloat16 PyTorch, not with the faster-looking float32 one
    assert by_precision["bfloat16"]["mode"] == "jax_bf16" and by_precision["bfloat16"]["reliable"]
    assert by_precision["bfloat16"]["value"] == pytest.approx(200 / 150)
    assert "best Keras (jax) / torch = 1.11 (unreliable: spread 50 %)" in lines[1][-1]
    assert "best Keras (jax_bf16) / torch_bf16 = 1.33" in lines[1][-1]


def test_a_real_run_on_this_backend(tmp_path):
    mode = "jax" if backend() == "jax" else "tf"
    out = os.path.join(tmp_path, "bench.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "train_step.py"), f"--modes={mode}",
         "--pairs=resnet8:resnet14", "--batch_sizes=8", "--steps=ce2,icc,kd,crd", "--rounds=2",
         "--steps_per_round=2", "--warmup=1", f"--json={out}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(out))
    assert [(r["mode"], r["step"]) for r in report["rows"]] == [(mode, s) for s in ("ce2", "icc", "kd", "crd")]
    for r in report["rows"]:
        assert r["steps"] == 4 and r["images_per_s"] > 0 and r["first_step_s"] > 0
        assert r["params"] == (181108 if r["student"] is None else 83892)  # resnet14 / resnet8, 100 classes
    assert {c["target"].split()[0] for c in report["checks"]} == {"icc"}
    assert "| icc | resnet14 | 8 |" in result.stdout


def test_bad_arguments_are_refused():
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "train_step.py"),
                             "--modes=tf,mxnet"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "unknown mode ['mxnet']" in result.stderr


def test_batch_norm_comparison():
    """bench/batch_norm.py: a real tiny run on TensorFlow; a clear refusal on JAX."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "batch_norm.py"), "--pair=resnet8:resnet14",
         "--steps=ce1,kd", "--batch_size=4", "--rounds=1", "--steps_per_round=2", "--warmup=1"],
        capture_output=True, text=True, env=env, timeout=600)
    if backend() == "jax":
        assert result.returncode != 0 and "KERAS_BACKEND=tensorflow" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ce1 ") or line.startswith("| kd ")]
    assert len(rows) == 2 and rows[1].startswith("| kd | resnet8 <- resnet14 |"), result.stdout
    assert all(line.endswith("x |") for line in rows)
