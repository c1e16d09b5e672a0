"""Interleaved step timing shared by bench/train_step.py and bench/torch_reference.py (no dependencies).

Cases measured together are timed in rounds (case 1, case 2, ..., case 1, case 2, ...), so a
slow spell of the machine falls on every case of the group instead of on one of them, and
their ratios stay fair.
"""

import json
import os
import statistics
import subprocess
import sys


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


# ---------------------------------------------------------------- rounds across processes
# The measuring processes of bench/train_step.py (one per mode: Keras on a backend, PyTorch) are all
# kept alive and take turns: the driver asks each in turn for one round of its cases, so a slow
# spell of the machine falls on every mode alike, not on whichever happened to run then.

def protocol_stream():
    """Worker side: a text stream on the process's original stdout, for `send`; from now on
    everything else written to stdout (Python's or a library's) goes to stderr instead."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return stream


def send(stream, message):
    """Writes one JSON message as one line."""
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def serve(runners, steps, stream, commands):
    """Worker side: answers each "round" line of `commands` with the step times of one pass over
    `runners` (each `runner(steps)`), as {"times": [[...], ...]}; returns at "stop" or end of input."""
    for line in commands:
        if line.strip() == "stop":
            return
        if line.strip() != "round":
            raise ValueError(f"unknown command {line.strip()!r}")
        send(stream, {"times": [list(runner(steps)) for runner in runners]})


class Worker:
    """Driver side: a measuring process started with `command`, answering on its stdout.

    Its first message (after building and warming up its cases) is returned by `receive`; then
    `round()` runs one round and returns that round's per-case step times.
    """

    def __init__(self, name, command, **popen):
        self.name, self.command = name, command
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)

    def receive(self):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the {self.name} measurements failed (exit {code}); command: {' '.join(self.command)}")
        return json.loads(line)

    def round(self):
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self.receive()["times"]

    def stop(self):
        """Ends the process (politely, then by force) and returns its exit code."""
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def interleave(workers, rounds):
    """`rounds` rounds, each worker in turn; returns, per worker, per case, all step times."""
    times = None
    for _ in range(rounds):
        answers = [worker.round() for worker in workers]
        if times is None:
            times = [[[] for _ in answer] for answer in answers]
        for mine, answer in zip(times, answers):
            for case_times, new in zip(mine, answer):
                case_times += new
    return times
