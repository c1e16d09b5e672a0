"""Interleaved step timing shared by bench/train_step.py and bench/torch_reference.py (no dependencies).

Cases measured together are timed in rounds (case 1, case 2, ..., case 1, case 2, ...), so a
slow spell of the machine falls on every case of the group instead of on one of them, and
their ratios stay fair.
"""

import statistics


def round_robin(runners, rounds, steps):
    """Runs `runner(steps)` for every runner, `rounds` times over; returns each one's step times.

    Args:
        runners: callables; `runner(n)` trains n steps and returns n per-step times in seconds.
        rounds: number of passes over the runners.
        steps: steps per runner per pass.
    """
    times = [[] for _ in runners]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            times[i] += list(runner(steps))
    return times


def summary(times, batch):
    """{"step_ms", "images_per_s", "rel_iqr", "steps"} of per-step times (seconds) at a batch size."""
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median] * 3
    return {"step_ms": 1000.0 * median, "images_per_s": batch / median,
            "rel_iqr": (quartiles[2] - quartiles[0]) / median, "steps": len(times)}


def groups(cases):
    """The cases grouped by (teacher, batch): every case of a group is timed in one round robin."""
    out = {}
    for case in cases:
        out.setdefault((case["teacher"], case["batch"]), []).append(case)
    return list(out.values())
