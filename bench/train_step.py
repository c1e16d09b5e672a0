"""Steady-state training-step throughput, Keras (TF, TF + XLA, JAX) side by side with PyTorch.

    python bench/train_step.py [--modes=tf,tf_xla,jax,jax_bf16,torch,torch_bf16]
        [--pairs=resnet8x4:resnet32x4,resnet20:resnet56] [--batch_sizes=64,128]
        [--steps=ce1,ce2,icc,kd,dkd,rkd,fitnet,at,crd,dcd,pckd,msdcrd]
        [--rounds=3] [--steps_per_round=3] [--warmup=2] [--dtype_policy=float32] [--json=out.json]

Cases, each at every batch size:
- teacher steps, on each pair's teacher: "ce1" (cross-entropy on one view), "ce2" (cross-entropy
  on two views of each image: 2 x batch images through the backbone in one pass, the backbone
  work of an ICC step), "icc" (the default ICCKD teacher: two views, lambda 0.05, cache 4096,
  margin gate);
- Distiller steps, for each pair: one per objective, the objective alone with its weight and CE
  (KD: "kd:0.9" with CE 0.1, as in the KD flagfiles; the others weight 1 and CE 1; weights do
  not change the cost). CRD gets its data inputs (sample index, 16,384 negatives per sample) with
  num_train = 50,000, the CIFAR-100 training set; PCKD feeds four rotations of each image.
Every case trains with `fit` on a repeated in-memory batch (random N(0, 1) images, random labels
of 100 classes), TorchSGD(0.05, momentum 0.9, weight decay 5e-4), verbose=0 and one timing
callback (which, as any non-async Keras callback does, reads the step's logs back to the host).

Method: the cases sharing a teacher and batch size form a group. For each group, one process per
mode is started and all are kept alive: each builds its cases and warms them up (--warmup steps;
the first, tracing and compilation included, is reported as first_step_s), then the driver asks
the modes in turn for one round (--steps_per_round steps of each of its cases) and repeats that
--rounds times (bench/timing.py). A slow spell of the machine therefore falls on every mode and
case alike, not on whichever ran then. Reported: images/s = batch / median step time, and the
interquartile range of the step times relative to the median (rel_iqr, "spread"); a ratio whose
two sides spread more than SPREAD_LIMIT (25 %) is marked unreliable (UNRELIABLE instead of
MET / MISS). For teacher steps an "image" is one training example, whatever its number of views.

Modes: "tf" (TensorFlow backend, jit_compile=False), "tf_xla" (TensorFlow, jit_compile=True),
"jax" (JAX backend, jit), "jax_bf16" (JAX under mixed_bfloat16, whatever --dtype_policy says),
"torch" and "torch_bf16" (bench/torch_reference.py: the same CIFAR ResNets, "ce1", "ce2" and "kd"
steps in PyTorch, float32 or under bfloat16 autocast, on CUDA when available; needs
bench/requirements.txt). Keras modes are compared with the PyTorch mode of the same precision.
Prints a table with the ratios the targets are stated in and writes JSON (--json). Run it on an
otherwise idle machine: every figure is a wall-clock time. The JAX modes need no TensorFlow.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402
MODES = ("tf", "tf_xla", "jax", "jax_bf16", "torch", "torch_bf16")
KERAS_MODES = ("tf", "tf_xla", "jax", "jax_bf16")
TEACHER_STEPS = ("ce1", "ce2", "icc")
OBJECTIVES = {  # step name: (objectives, ce_weight)
    "kd": ("kd:0.9", 0.1), "dkd": ("dkd:1", 1.0), "rkd": ("rkd:1", 1.0), "fitnet": ("fitnet:1", 1.0),
    "at": ("at:1", 1.0), "crd": ("crd:1", 1.0), "dcd": ("dcd:1", 1.0), "pckd": ("pckd:1", 1.0),
    "msdcrd": ("msdcrd:1", 1.0),
}
TORCH_STEPS = ("ce1", "ce2", "kd")
NUM_CLASSES = 100
NUM_TRAIN = 50000
# Targets of the performance issue, on the machine the benchmark runs on.
KD_VS_TORCH_MIN = 1.0
ICC_VS_CE2_MAX = 1.10
OBJECTIVE_VS_KD_MAX = 1.15
OBJECTIVES_EXEMPT = ("crd", "pckd")
# A ratio is marked unreliable when either side's step times spread (interquartile range / median)
# more than this: a busy machine, not the code, then decides it.
SPREAD_LIMIT = 0.25


def precision(mode, dtype_policy="float32"):
    """The compute precision of a mode: "bfloat16" for the *_bf16 modes, else the Keras policy's
    (float32, float16 or bfloat16) for Keras modes and float32 for torch."""
    if mode.endswith("_bf16"):
        return "bfloat16"
    if mode.startswith("torch") or dtype_policy == "float32":
        return "float32"
    return dtype_policy.removeprefix("mixed_")


def make_cases(pairs, batch_sizes, steps):
    cases = []
    for student, teacher in pairs:
        for batch in batch_sizes:
            for step in steps:
                if step in TEACHER_STEPS:
                    case = {"step": step, "student": None, "teacher": teacher, "batch": batch}
                    if case not in cases:  # two pairs may share a teacher
                        cases.append(case)
                else:
                    cases.append({"step": step, "student": student, "teacher": teacher, "batch": batch})
    return cases


# ---------------------------------------------------------------- Keras worker (one backend)

def keras_model_and_data(case):
    import numpy as np

    from keras_icckd import backbones
    from keras_icckd.models import ContrastiveTeacher, Distiller

    rng = np.random.default_rng(0)
    batch, step = case["batch"], case["step"]
    x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(batch,)).astype("int32")
    if step in TEACHER_STEPS:
        backbone = backbones.get(case["teacher"], num_classes=NUM_CLASSES)
        if step == "icc":
            model = ContrastiveTeacher(backbone)  # the defaults: lambda 0.05, cache 4096, gate
            inputs = {"image": x, "view2": rng.normal(size=x.shape).astype("float32")}
        else:
            model = ContrastiveTeacher(backbone, icc_lambda=0.0, icc_cache_size=0)
            inputs = x if step == "ce1" else np.concatenate([x, rng.normal(size=x.shape).astype("float32")])
            y = y if step == "ce1" else np.concatenate([y, y])
        return model, inputs, y, backbone
    objectives, ce_weight = OBJECTIVES[step]
    student = backbones.get(case["student"], num_classes=NUM_CLASSES)
    teacher = backbones.get(case["teacher"], num_classes=NUM_CLASSES)
    model = Distiller(teacher, student, objectives, ce_weight=ce_weight, num_train=NUM_TRAIN)
    options = model.data_options()
    inputs = {"image": x}
    if options.get("with_index"):
        inputs["index"] = rng.integers(0, NUM_TRAIN, size=(batch,)).astype("int32")
    if options.get("contrast_negatives"):
        inputs["contrast_index"] = rng.integers(
            0, NUM_TRAIN, size=(batch, options["contrast_negatives"])).astype("int32")
    return model, inputs, y, student


def keras_runner(case, mode, warmup, policy):
    """(runner for timing.serve, row) of one case: the model built, compiled and warmed up."""
    import keras

    from keras_icckd import training

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(policy)
    model, inputs, y, trained = keras_model_and_data(case)
    optimizer = training.TorchSGD(0.05, momentum=0.9, weight_decay=5e-4)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=mode != "tf")
    dataset = _repeat_dataset(inputs, y)

    class StepTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.loss = logs["loss"]  # a Python float: the step has finished
            self.ends.append(time.perf_counter())

    timer = StepTimer()

    def fit(n):
        model.fit(dataset, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[timer])
        if not math.isfinite(timer.loss):
            raise SystemExit(f"{mode} {case}: non-finite loss {timer.loss}")
        return [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:])]

    first = fit(warmup)[0]
    params = sum(math.prod(v.shape) for v in trained.trainable_weights)
    # One extra step per call: the first interval of a fit() call also holds its set-up.
    return (lambda n: fit(n + 1)[1:]), dict(case, mode=mode, first_step_s=first, params=params)


def _repeat_dataset(inputs, y):
    """One in-memory batch, repeated: tf.data on TensorFlow, a PyDataset elsewhere (no TensorFlow)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors((inputs, y)).repeat()

    class Repeat(keras.utils.PyDataset):
        num_batches = None  # endless

        def __getitem__(self, index):
            return inputs, y

    return Repeat()


def keras_worker(args):
    """A measuring process: builds and warms up its cases, reports them, then serves rounds."""
    stream = timing.protocol_stream()
    import keras

    backend = keras.backend.backend()
    expected = "jax" if args.worker.startswith("jax") else "tensorflow"
    if backend != expected:
        raise SystemExit(f"worker {args.worker} needs KERAS_BACKEND={expected}, got {backend}")
    with open(args.cases) as f:
        cases = json.load(f)
    policy = "mixed_bfloat16" if args.worker.endswith("_bf16") else args.dtype_policy
    runners, rows = zip(*[keras_runner(c, args.worker, args.warmup, policy) for c in cases])
    meta = {"keras": keras.__version__, "backend": backend, "dtype_policy": policy}
    if backend == "jax":
        import jax

        meta["jax"] = jax.__version__
        meta["devices"] = [str(d) for d in jax.devices()]
    else:
        import tensorflow as tf

        meta["tensorflow"] = tf.__version__
        meta["devices"] = [d.name for d in tf.config.list_logical_devices()]
    timing.send(stream, {"meta": meta, "rows": list(rows)})
    timing.serve(runners, args.steps_per_round, stream, sys.stdin)


# ---------------------------------------------------------------- the driver

def start_worker(mode, cases, args, workdir):
    """The measuring process of one mode for one group of cases (started, not yet ready)."""
    cases_path = os.path.join(workdir, f"{mode}_cases.json")
    with open(cases_path, "w") as f:
        json.dump(cases, f)
    common = [f"--cases={cases_path}", f"--warmup={args.warmup}"]
    if mode.startswith("torch"):
        command = [sys.executable, os.path.join(ROOT, "bench", "torch_reference.py"), *common,
                   f"--steps={args.steps_per_round}", f"--num_classes={NUM_CLASSES}",
                   f"--precision={precision(mode)}"]
    else:
        command = [sys.executable, os.path.abspath(__file__), f"--worker={mode}", *common,
                   f"--steps_per_round={args.steps_per_round}", f"--dtype_policy={args.dtype_policy}"]
    env = dict(os.environ, KERAS_BACKEND="jax" if mode.startswith("jax") else "tensorflow",
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return timing.Worker(mode, command, env=env, cwd=ROOT)


def run_group(modes, group, args, workdir):
    """Measures one group of cases (one teacher, one batch size) in every mode: one process per mode,
    all kept alive, taking turns round by round. Returns ({mode: meta}, rows)."""
    jobs = [(mode, [c for c in group if not mode.startswith("torch") or c["step"] in TORCH_STEPS]) for mode in modes]
    jobs = [(mode, cases) for mode, cases in jobs if cases]
    workers = []
    try:
        for mode, cases in jobs:  # they build and compile side by side; timing starts when all are ready
            workers.append(start_worker(mode, cases, args, workdir))
        hellos = [worker.receive() for worker in workers]
        times = timing.interleave(workers, args.rounds)
    finally:
        codes = [worker.stop() for worker in workers]
    if any(codes):
        raise SystemExit(f"a measuring process failed: exit codes {dict(zip(modes, codes))}")
    rows, meta = [], {}
    for (mode, _), hello, mode_times in zip(jobs, hellos, times):
        meta[mode] = hello["meta"]
        for row, case_times in zip(hello["rows"], mode_times):
            row.update(timing.summary(case_times, row["batch"]))
            rows.append(row)
            print(f"{mode:>10} {row['step']:>6} {row['student'] or ''}<-{row['teacher']} b{row['batch']}: "
                  f"{row['images_per_s']:.1f} img/s (spread {100 * row['rel_iqr']:.0f} %, first step "
                  f"{row['first_step_s']:.1f} s)", flush=True)
    return meta, rows


def _key(row):
    return row["step"], row["student"], row["teacher"], row["batch"]


def spread_note(*rows):
    """"" when every row's step-time spread is within SPREAD_LIMIT, else " (unreliable: spread N %)"."""
    spread = max(r.get("rel_iqr", 0.0) for r in rows)
    return "" if spread <= SPREAD_LIMIT else f" (unreliable: spread {100 * spread:.0f} %)"


def analyse(rows, modes, dtype_policy="float32"):
    """Ratios and target checks from the measured rows. Returns (table lines, checks).

    A Keras mode is compared with PyTorch of the same precision (torch for float32, torch_bf16 for
    bfloat16). A ratio whose two rows spread more than SPREAD_LIMIT is marked unreliable (in its
    table note, and `reliable: False` in its check).
    """
    found = {(r["mode"],) + _key(r): r for r in rows}
    keras_modes = [m for m in modes if m in KERAS_MODES]
    torch_of = {precision(m): m for m in modes if m.startswith("torch")}
    checks = []
    lines = []
    keys = []
    for r in rows:
        if _key(r) not in keys:
            keys.append(_key(r))

    def check(target, mode, mine, other, value, ok, **where):
        note = spread_note(mine, other)
        checks.append(dict(target=target, mode=mode, **where, value=value, ok=ok, reliable=not note,
                           spread=max(mine.get("rel_iqr", 0.0), other.get("rel_iqr", 0.0))))
        return note

    header = ["step", "network(s)", "batch", *[f"{m} img/s" for m in modes], "ratio"]
    lines.append(header)
    for key in keys:
        step, student, teacher, batch = key
        cells = [step, f"{student} <- {teacher}" if student else teacher, str(batch)]
        cells += [f"{found[(m,) + key]['images_per_s']:.1f}" if (m,) + key in found else "-" for m in modes]
        notes = []
        for m in keras_modes:
            here = found.get((m,) + key)
            if here is None:
                continue
            ce2 = found.get((m, "ce2", None, teacher, batch))
            if step == "icc" and ce2:
                cost = ce2["images_per_s"] / here["images_per_s"]
                note = check(f"icc step <= {ICC_VS_CE2_MAX}x ce2 step", m, here, ce2, cost, cost <= ICC_VS_CE2_MAX,
                             teacher=teacher, batch=batch)
                notes.append(f"{m}: {cost:.2f}x ce2{note}")
            kd = found.get((m, "kd", student, teacher, batch))
            if step in OBJECTIVES and step != "kd" and kd:
                cost = kd["images_per_s"] / here["images_per_s"]
                note = spread_note(here, kd)
                if step not in OBJECTIVES_EXEMPT:
                    note = check(f"{step} step <= {OBJECTIVE_VS_KD_MAX}x kd step", m, here, kd, cost,
                                 cost <= OBJECTIVE_VS_KD_MAX, student=student, teacher=teacher, batch=batch)
                notes.append(f"{m}: {cost:.2f}x kd{note}")
        if step in ("kd", "ce1", "ce2"):
            for level, torch_mode in torch_of.items():
                theirs = found.get((torch_mode,) + key)
                mine = {m: found[(m,) + key] for m in keras_modes
                        if (m,) + key in found and precision(m, dtype_policy) == level}
                if not theirs or not mine:
                    continue
                best = max(mine, key=lambda m: mine[m]["images_per_s"])
                ratio = mine[best]["images_per_s"] / theirs["images_per_s"]
                if step == "kd":
                    note = check(f"best Keras kd step >= {KD_VS_TORCH_MIN}x torch", best, mine[best], theirs, ratio,
                                 ratio >= KD_VS_TORCH_MIN, student=student, teacher=teacher, batch=batch,
                                 precision=level)
                else:
                    note = spread_note(mine[best], theirs)
                notes.append(f"best Keras ({best}) / {torch_mode} = {ratio:.2f}{note}")
        cells.append("; ".join(notes))
        lines.append(cells)
    return lines, checks


def markdown(lines):
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
    return "\n".join(out)


def parse_list(text, allowed=None, kind=str, what="value"):
    items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    if not items:
        raise SystemExit(f"empty {what} list")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise SystemExit(f"unknown {what} {bad}; allowed: {', '.join(allowed)}")
    return items


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--pairs", default="resnet8x4:resnet32x4,resnet20:resnet56",
                        help="student:teacher,...")
    parser.add_argument("--batch_sizes", default="64,128")
    parser.add_argument("--steps", default=",".join(TEACHER_STEPS + tuple(OBJECTIVES)))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps_per_round", type=int, default=3, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case first (compilation)")
    parser.add_argument("--dtype_policy", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--json", help="write the rows, ratios and target checks here")
    parser.add_argument("--worker", choices=KERAS_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.steps_per_round < 1 or args.rounds * args.steps_per_round < 3 or args.warmup < 1:
        raise SystemExit("need --rounds * --steps_per_round >= 3 timed steps and --warmup >= 1 "
                         "(the first step compiles)")
    if args.worker:
        sys.path.insert(0, ROOT)
        return keras_worker(args)

    modes = parse_list(args.modes, MODES, what="mode")
    steps = parse_list(args.steps, TEACHER_STEPS + tuple(OBJECTIVES), what="step")
    batch_sizes = parse_list(args.batch_sizes, kind=int, what="batch size")
    pairs = []
    for pair in parse_list(args.pairs, what="pair"):
        student, sep, teacher = pair.partition(":")
        if not sep or not student or not teacher:
            raise SystemExit(f"--pairs item {pair!r} is not student:teacher")
        pairs.append((student, teacher))
    if any(m.startswith("torch") for m in modes):
        try:
            subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            raise SystemExit("mode 'torch' needs PyTorch: pip install -r bench/requirements.txt "
                             "(or leave torch out of --modes)")
    cases = make_cases(pairs, batch_sizes, steps)
    results, rows = {mode: {"meta": {}} for mode in modes}, []
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        # Group by group (one teacher, one batch size); within a group the modes take turns.
        for group in timing.groups(cases):
            meta, group_rows = run_group(modes, group, args, workdir)
            for mode, values in meta.items():
                results[mode]["meta"].update(values)
            rows += group_rows
    rows.sort(key=lambda r: modes.index(r["mode"]))  # stable: each mode's rows keep the case order
    params = {}
    for r in rows:
        params.setdefault(_key(r), {})[r["mode"]] = r["params"]
    mismatched = {str(k): v for k, v in params.items() if len(set(v.values())) > 1}
    lines, checks = analyse(rows, modes, args.dtype_policy)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "python": platform.python_version()}
    print(f"\nmachine: {machine}")
    for mode in modes:
        print(f"{mode}: {results[mode]['meta']}")
    print(f"dtype policy (Keras): {args.dtype_policy}; {args.rounds} rounds x {args.steps_per_round} timed steps "
          f"after {args.warmup} warm-up; total {time.time() - start:.0f} s\n")
    print(markdown(lines))
    if mismatched:
        print(f"\nERROR: the networks differ between modes (trainable parameters): {mismatched}")
    print()
    for c in checks:
        verdict = ("MET " if c["ok"] else "MISS") if c["reliable"] else "UNRELIABLE"
        print(f"{verdict} {c['target']}: {c['mode']} {c.get('student') or ''}"
              f"{'<-' if c.get('student') else ''}{c['teacher']} b{c['batch']}: {c['value']:.2f}"
              + ("" if c["reliable"] else f" (spread {100 * c['spread']:.0f} % > {100 * SPREAD_LIMIT:.0f} %)"))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"machine": machine, "modes": {m: results[m]["meta"] for m in modes},
                       "dtype_policy": args.dtype_policy, "rounds": args.rounds,
                       "steps_per_round": args.steps_per_round, "warmup": args.warmup, "rows": rows, "checks": checks,
                       "param_mismatch": mismatched}, f, indent=1)
        os.replace(tmp, args.json)
    if mismatched:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
