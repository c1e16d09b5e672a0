"""One GPU session: everything the project measures on a lent GPU, in one command, inside a budget.

    bash bench/gpu_session.sh [--tiny] [--out_dir=DIR] [--budget_s=480]   (sets up Keras, then runs this)

Sections, in order, each recorded in DIR/gpu_session.json and, as tables, DIR/gpu_session.md (both
written again after each section, so a run cut short still leaves what it measured):

1. environment: Python, JAX, Keras, NumPy, PyTorch versions, the devices, the setup time.
2. input pipeline: samples/s of the TensorFlow-free pipeline (keras_icckd/data/numpy_pipeline.py)
   on the CIFAR-10 training images with one thread per CPU core, batch 256: one view (the KD
   step), two views (the ICC teacher), one view with CRD's index and 16,384 negatives.
3. throughput: bench/train_step.py, modes jax, jax_bf16 and (when PyTorch is importable) torch,
   torch_bf16, for the ICC teacher ("icc", and "ce2", its backbone work, which PyTorch also runs)
   and the KD, DKD and CRD steps of resnet8x4 <- resnet32x4, at batch 64, 256 and 128. It runs in
   stages, most important first, one train_step.py call each: the KD step at batch 64 (the
   performance goal's step), the other steps at 64, then every step at 256, then at 128. A stage
   is skipped when the budget left would not cover it (its number of steps times the slowest
   seconds per step of the stages before); a stage cut off by the budget is killed with its
   measuring processes and loses only its own rows.
4. real-data run: experiments/run.py trains an ICC teacher (resnet8x4, the defaults: lambda 0.05,
   cache 4096) on the CIFAR-10 JPEG archive for 10 epochs at batch 256 (lr 0.1, one warm-up
   epoch, x0.1 at epochs 6 and 8) with the NumPy pipeline; the stated accuracy is 70 % test
   top-1 (`target_top1`), reported as met or not. A run cut off by the budget reports the epochs
   its checkpoint holds.
5. projection: minutes of the 240-epoch CIFAR-100 KD run (resnet8x4 <- resnet32x4, 50,000
   images an epoch; training steps only, evaluation not counted) at each measured KD rate,
   limited by the pipeline's one-view rate, against the goal of 30 minutes (6,667 images/s).

--tiny runs the same sections at toy sizes (resnet8 <- resnet14, batch 8, modes jax and torch,
200 images of the bundled CIFAR-10 subset) on any machine, to keep this script working
(tests/test_gpu_session.py).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import train_step  # noqa: E402  (no framework at import time)

SECTIONS = ("pipeline", "throughput", "run")
GOAL_EPOCHS, GOAL_TRAIN_IMAGES, GOAL_MINUTES = 240, 50000, 30.0
GOAL_IMAGES_PER_S = GOAL_EPOCHS * GOAL_TRAIN_IMAGES / (60 * GOAL_MINUTES)
# (steps, batch) of each throughput stage, most important first
FULL_STAGES = (("kd", 64), ("ce2,icc,dkd,crd", 64), ("ce2,icc,kd,dkd,crd", 256), ("ce2,icc,kd,dkd,crd", 128))
FULL = dict(modes=("jax", "jax_bf16", "torch", "torch_bf16"), pair="resnet8x4:resnet32x4", stages=FULL_STAGES,
            rounds=3, steps_per_round=10, warmup=2, pipeline_batch=256, pipeline_seconds=4.0, negatives=16384,
            data=os.path.join(ROOT, ".data", "cifar10-jpeg.tar.gz"), max_train=0, max_test=0,
            run_args=["--arch=resnet8x4", "--epochs=10", "--batch_size=256", "--eval_batch_size=1000",
                      "--lr=0.1", "--lr_warmup_epochs=1", "--lr_decay_epochs=6,8"],
            run_reserve_s=150, target_top1=70.0)
TINY = dict(modes=("jax", "torch"), pair="resnet8:resnet14", stages=(("kd", 8),), rounds=1, steps_per_round=3, warmup=1,
            pipeline_batch=32, pipeline_seconds=0.5, negatives=64, data=None, max_train=200, max_test=50,
            run_args=["--arch=resnet8", "--epochs=1", "--batch_size=50", "--eval_batch_size=50",
                      "--lr_decay_epochs=", "--icc_cache_size=64"],
            run_reserve_s=60, target_top1=None)


def versions():
    found = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    for name in ("jax", "jaxlib", "keras", "numpy", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    import jax

    found["devices"] = [str(d) for d in jax.devices()]
    found["device_kind"] = jax.devices()[0].device_kind
    return found


def load_data(config):
    """The CIFAR-10 splits of the session (the archive, or the bundled subset when tiny)."""
    from keras_icckd import data

    path = config["data"] or data.BUNDLED_CIFAR10
    if not os.path.exists(path):
        raise SystemExit(f"no CIFAR-10 archive at {path}: copy ../shared/datasets/cifar10-jpeg.tar.gz there "
                         "(BUILD.md, 'GPU session')")
    start = time.time()
    splits = data.load("folder", path)
    if config["max_train"]:
        splits = splits.subset(config["max_train"], config["max_test"], seed=0)
    return path, splits, time.time() - start


def pipeline_rates(splits, config):
    """Samples/s of the NumPy training pipeline, one thread per core, for the three kinds of step."""
    from keras_icckd.data import normalization_for, numpy_pipeline

    mean, std = normalization_for(splits)
    n, batch = len(splits.train_labels), config["pipeline_batch"]
    kinds = {"kd (1 view)": {}, "icc (2 views)": {"views": 2},
             "crd (1 view, index, negatives)": {"with_index": True,
                                                "contrast_negatives": min(config["negatives"], n - 1)}}
    rates = {}
    for name, options in kinds.items():
        ds = numpy_pipeline.make_train_dataset(splits.train_images, splits.train_labels, batch, seed=0, mean=mean,
                                               std=std, epochs=1000, threads=os.cpu_count(),
                                               prefetch=2 * os.cpu_count(), **options)
        ds[0]  # threads started, the first epoch's order drawn
        start, count = time.perf_counter(), 1
        while time.perf_counter() - start < config["pipeline_seconds"] or count < 3:
            ds[count]
            count += 1
        rates[name] = round((count - 1) * batch / (time.perf_counter() - start), 1)
    return {"batch": batch, "threads": os.cpu_count(), "samples_per_s": rates}


MIN_STAGE_S = 10.0  # no throughput stage starts with less left (its processes alone take a few seconds)


def run_until(command, deadline, floor_s=MIN_STAGE_S):
    """Runs `command` in its own process group until `deadline` (time.time(); at least `floor_s`
    seconds); then the whole group is killed (a driver's measuring processes too, so none keeps
    the GPU). Returns the exit code, or None when cut off."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        return process.wait(timeout=max(floor_s, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def throughput(config, deadline, workdir, log, run=run_until):
    """bench/train_step.py once per stage of config["stages"], while the budget lasts."""
    has_torch = importlib.util.find_spec("torch") is not None
    modes = [m for m in config["modes"] if has_torch or not m.startswith("torch")]
    result = {"modes": modes, "pair": config["pair"], "rows": [], "checks": [], "stages": []}
    per_step = None  # the slowest seconds per step of the stages so far
    for number, (steps, batch) in enumerate(config["stages"]):
        stage = {"steps": steps, "batch": batch}
        result["stages"].append(stage)
        count, left = len(steps.split(",")), deadline - time.time()
        # per_step includes each stage's start-up and compilation: an over-estimate for more steps
        if left < MIN_STAGE_S or (per_step is not None and per_step * count > left):
            stage["status"] = "skipped"
            log(f"throughput: {steps} at batch {batch} skipped, the budget would not cover it ({left:.0f} s left"
                + (f", ~{per_step * count:.0f} s needed)" if per_step else ")"))
            continue
        out = os.path.join(workdir, f"throughput_{number}.json")
        command = [sys.executable, os.path.join(ROOT, "bench", "train_step.py"), f"--modes={','.join(modes)}",
                   f"--pairs={config['pair']}", f"--batch_sizes={batch}", f"--steps={steps}",
                   f"--rounds={config['rounds']}", f"--steps_per_round={config['steps_per_round']}",
                   f"--warmup={config['warmup']}", f"--json={out}"]
        start = time.time()
        code = run(command, deadline)
        stage["seconds"] = round(time.time() - start, 1)
        if code != 0:
            stage["status"] = "cut off by the budget" if code is None else f"failed (exit code {code})"
            log(f"throughput: {steps} at batch {batch} {stage['status']}")
            continue
        stage["status"] = "done"
        per_step = max(per_step or 0.0, stage["seconds"] / count)
        with open(out) as f:
            report = json.load(f)
        result["rows"] += report["rows"]
        result.setdefault("meta", report["modes"])
    # the targets over every stage's rows (an objective's step against the KD step of another stage)
    result["checks"] = train_step.analyse(result["rows"], modes)[1]
    return result


def epoch_summaries(history):
    """The epoch, loss and top-1 figures of a run's history rows."""
    return [{k: r[k] for k in ("epoch", "loss", "train_top1", "test_top1") if k in r} for r in history]


def real_data_run(config, data_path, timeout, workdir, run=run_until):
    """experiments/run.py: an ICC teacher on the CIFAR-10 archive, NumPy pipeline; its results."""
    out = os.path.join(workdir, "run")
    command = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--mode=teacher", "--dataset=folder",
               f"--data_dir={data_path}", "--input_pipeline=numpy", "--diagnostic_examples=0", "--notensorboard",
               f"--output_dir={out}", *config["run_args"]]
    if config["max_train"]:
        command += [f"--max_train_examples={config['max_train']}", f"--max_test_examples={config['max_test']}"]
    start = time.time()
    code = run(command, start + timeout)
    if code != 0:
        result = {"command": command[1:], "seconds": round(time.time() - start, 1),
                  "error": "cut off by the budget" if code is None else f"run.py failed (exit code {code})"}
        checkpoint = os.path.join(out, "checkpoint.npz")
        if os.path.isfile(checkpoint):  # the epochs that finished before
            from keras_icckd.training import read_checkpoint

            record = read_checkpoint(checkpoint)[0]
            result.update(epochs_completed=record["epoch"], history=epoch_summaries(record["history"]))
        return result
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    result = {"command": command[1:], "seconds": round(time.time() - start, 1), "test_top1": metrics["test_top1"],
              "best_test_top1": metrics["best_test_top1"], "train_seconds": metrics["wall_seconds"],
              "num_train": metrics["num_train"], "num_test": metrics["num_test"],
              "history": epoch_summaries(metrics["history"])}
    if config["target_top1"] is not None:
        result.update(target_top1=config["target_top1"], target_met=metrics["test_top1"] >= config["target_top1"])
    return result


def projection(rows, pipeline):
    """Minutes of the 240-epoch CIFAR-100 KD run at every measured Keras KD rate."""
    limit = pipeline["samples_per_s"]["kd (1 view)"] if pipeline else None
    out = []
    for row in rows:
        if row["step"] != "kd" or not row["mode"].startswith("jax"):
            continue
        rate = row["images_per_s"] if limit is None else min(row["images_per_s"], limit)
        minutes = GOAL_EPOCHS * GOAL_TRAIN_IMAGES / rate / 60
        out.append({"mode": row["mode"], "batch": row["batch"], "step_images_per_s": round(row["images_per_s"], 1),
                    "images_per_s": round(rate, 1), "minutes": round(minutes, 1),
                    "goal_minutes": GOAL_MINUTES, "goal_met": minutes <= GOAL_MINUTES})
    return out


def markdown_report(report):
    """The session's report as Markdown: what gpu_session.json holds, as tables."""
    env = report.get("environment", {})
    out = [f"# GPU session of {report['date']}" + (" (tiny sizes)" if report["tiny"] else ""), "",
           f"Device {env.get('device_kind')} ({', '.join(env.get('devices', []))}), {env.get('cpu_count')} CPU cores; "
           f"Python {env.get('python')}, JAX {env.get('jax')}, Keras {env.get('keras')}, NumPy {env.get('numpy')}, "
           f"PyTorch {env.get('torch') or 'absent'}. Setup {report['setup_s']:g} s; the sections took "
           f"{report.get('elapsed_s', 0):g} s of a {report['budget_s']:g}-second budget. Data: {report.get('data')}."]
    if "pipeline" in report:
        p = report["pipeline"]
        out += ["", f"## Input pipeline (NumPy, {p['threads']} threads, batch {p['batch']})", "",
                "| kind | samples/s |", "|---|---|"]
        out += [f"| {kind} | {rate:,.0f} |" for kind, rate in p["samples_per_s"].items()]
    if "throughput" in report:
        t = report["throughput"]
        out += ["", f"## Training-step throughput ({t['pair']}, modes {', '.join(t['modes'])})", "",
                "Stages: " + "; ".join(f"{s['steps']} at batch {s['batch']}: {s['status']}"
                                       + (f" ({s['seconds']:g} s)" if "seconds" in s else "") for s in t["stages"])
                + "."]
        if t["rows"]:
            out += ["", train_step.markdown(train_step.analyse(t["rows"], t["modes"])[0])]
        if t["checks"]:
            out += [""] + [f"- {'met' if c['ok'] else 'MISSED'}{'' if c['reliable'] else ' (unreliable)'}: "
                           f"{c['target']}, {c['mode']} at batch {c['batch']}: {c['value']:.2f}" for c in t["checks"]]
    if report.get("projection"):
        out += ["", f"## Projection: the {GOAL_EPOCHS}-epoch CIFAR-100 KD run (goal {GOAL_MINUTES:g} minutes)", "",
                "| mode | batch | step images/s | with the pipeline's limit | minutes | goal met |",
                "|---|---|---|---|---|---|"]
        out += [f"| {p['mode']} | {p['batch']} | {p['step_images_per_s']:,.0f} | {p['images_per_s']:,.0f} | "
                f"{p['minutes']:g} | {'yes' if p['goal_met'] else 'no'} |" for p in report["projection"]]
    if "real_data_run" in report:
        r = report["real_data_run"]
        out += ["", "## Real-data run (experiments/run.py, ICC teacher)", ""]
        if "error" in r:
            out.append(f"Not finished: {r['error']} after {r['seconds']:g} s; epochs completed: "
                       f"{r.get('epochs_completed', 0)}.")
        else:
            out.append(f"{r['num_train']} / {r['num_test']} images, {len(r['history'])} epochs in {r['seconds']:g} s: "
                       f"test top-1 {r['test_top1']:.2f} % (best {r['best_test_top1']:.2f} %)"
                       + (f", target {r['target_top1']:g} %: {'met' if r['target_met'] else 'MISSED'}"
                          if "target_top1" in r else "") + ".")
        if r.get("history"):
            out += ["", "| epoch | loss | train top-1 (%) | test top-1 (%) |", "|---|---|---|---|"]
            out += [f"| {h['epoch']} | {h.get('loss', float('nan')):.4f} | {h.get('train_top1', float('nan')):.2f} | "
                    f"{h.get('test_top1', float('nan')):.2f} |" for h in r["history"]]
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes, any machine (the test)")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "experiments", "results", "gpu_session"))
    parser.add_argument("--budget_s", type=float, default=480.0, help="seconds for everything after the setup")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (environment and data always run)")
    parser.add_argument("--setup_s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    if not sections or set(sections) - set(SECTIONS):
        raise SystemExit(f"--sections={args.sections!r}: expected names from {', '.join(SECTIONS)}")
    config = TINY if args.tiny else FULL
    start = time.time()
    deadline = start + args.budget_s
    os.makedirs(args.out_dir, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tiny": args.tiny, "budget_s": args.budget_s,
              "setup_s": args.setup_s, "goal": {"epochs": GOAL_EPOCHS, "train_images": GOAL_TRAIN_IMAGES,
                                                "minutes": GOAL_MINUTES, "images_per_s": round(GOAL_IMAGES_PER_S, 1)}}

    def log(message):
        print(f"[gpu_session {time.time() - start:6.1f} s] {message}", flush=True)

    def save():
        from keras_icckd.training import atomic_write_json, atomic_write_text

        report["elapsed_s"] = round(time.time() - start, 1)
        atomic_write_json(report, os.path.join(args.out_dir, "gpu_session.json"))
        atomic_write_text(markdown_report(report), os.path.join(args.out_dir, "gpu_session.md"))

    with tempfile.TemporaryDirectory() as workdir:
        os.environ.setdefault("KERAS_ICCKD_CACHE", os.path.join(workdir, "cache"))  # decoded once, reused by run.py
        report["environment"] = versions()
        log(f"environment: {report['environment']}")
        data_path, splits, seconds = load_data(config)
        report["data"] = {"path": os.path.relpath(data_path, ROOT), "train": len(splits.train_labels),
                          "test": len(splits.test_labels), "decode_s": round(seconds, 1)}
        log(f"data: {report['data']}")
        if "pipeline" in sections:
            report["pipeline"] = pipeline_rates(splits, config)
            log(f"pipeline: {report['pipeline']}")
            save()
        if "throughput" in sections:
            reserve = config["run_reserve_s"] if "run" in sections else 0
            report["throughput"] = throughput(config, deadline - reserve, workdir, log)
            report["projection"] = projection(report["throughput"]["rows"], report.get("pipeline"))
            save()
            for p in report["projection"]:
                log(f"projection: {p}")
        if "run" in sections:
            report["real_data_run"] = real_data_run(config, data_path, deadline - time.time(), workdir)
            log(f"real-data run: { {k: v for k, v in report['real_data_run'].items() if k != 'history'} }")
            save()
    log(f"done: {os.path.join(args.out_dir, 'gpu_session.json')}")
    failed = "error" in report.get("real_data_run", {}) or ("throughput" in sections
                                                              and not report["throughput"]["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
