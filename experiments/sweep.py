"""Runs a list of flagfiles over several seeds and writes one table (mean +- std over seeds).

    python experiments/sweep.py --seeds=0,1,2 --output_root=runs/sweep_resnet8x4 \
        --flagfiles='experiments/flags/student_resnet8x4_from_resnet32x4_cifar100_*.flags' \
        --set=data_dir=PATH/cifar-100-python.tar.gz

Each (flagfile, seed) runs `experiments/run.py --flagfile=F --seed=N
--output_dir=OUTPUT_ROOT/<flagfile name>_seed<N>` plus the --set overrides, one after the other,
with the run's own progress output. A run whose metrics.json exists is reused, an interrupted one
resumes from its checkpoint: starting the same command again continues a killed sweep. Before the
first run, every flagfile is parsed with run.py's flags (a typo stops the sweep there, not after the
runs before it) and every finished run's flags are compared with the ones asked for (a finished run
of other flags is refused, not reused). A failed run is reported and the sweep goes on. At the end
(and after every run) OUTPUT_ROOT/sweep.md and sweep.json hold, per flagfile: the seeds done, test
top-1 at the last epoch and at the best epoch (mean +- sample std over seeds), and the mean best
epoch. Exit status 1 when a run failed, 2 when nothing was run (a usage error, or a problem that the
check before the first run found).
"""

import glob
import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import summarize  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("flagfiles", None, "Flagfiles of run.py, or glob patterns of them, in run order.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every flagfile runs once per seed.")
flags.DEFINE_string("output_root", None, "Folder of the runs and of sweep.md / sweep.json.")
flags.DEFINE_multi_string("set", [], "run.py flag overrides as name=value (e.g. data_dir=PATH), for every run.")
flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")
flags.mark_flags_as_required(["flagfiles", "output_root"])

RESERVED = ("flagfile", "seed", "output_dir")


def expand(patterns):
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found:
            raise app.UsageError(f"--flagfiles: {pattern!r} matches no file")
        paths += [p for p in found if p not in paths]
    for path in paths:
        if not path.endswith(".flags") or not os.path.isfile(path):
            raise app.UsageError(f"--flagfiles: {path!r} is not a .flags file")
    return paths


def overrides(items):
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or name.lstrip("-") != name:
            raise app.UsageError(f"--set={item!r} is not allowed: expected name=value (no leading dashes)")
        if name in RESERVED:
            raise app.UsageError(f"--set={item!r} is not allowed: the sweep sets --{name} itself")
        out.append(f"--{name}={value}")
    return out


# Flags naming a file or folder: compared as normalised paths ("./runs/t" is "runs/t").
PATH_FLAGS = ("teacher", "init_model", "data_dir", "model", "torch_checkpoint")


def comparable(name, value):
    return os.path.normpath(value) if name in PATH_FLAGS and isinstance(value, str) and value else value


def check_runs(paths, seeds, extra):
    """Before any run: each flagfile parses with run.py's flags, and each finished run was made with the
    flags asked for; raises app.UsageError naming every problem."""
    problems = []
    for path in paths:
        name = os.path.basename(path)[: -len(".flags")]
        cmd = [sys.executable, os.path.join(HERE, "run.py"), f"--flagfile={path}", *extra, f"--seed={seeds[0]}",
               f"--output_dir={os.path.join(FLAGS.output_root, name)}", "--check_flags"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:  # the error is the last line that is not a pointer to the help
            lines = [line for line in result.stderr.splitlines() if line.strip() and "--helpshort" not in line]
            problems.append(f"{path}: " + (lines[-1] if lines else f"run.py failed (exit code {result.returncode})"))
            continue
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            problems.append(f"{path}: run.py --check_flags printed no flags ({result.stdout[-200:]!r})")
            continue
        for seed in seeds:
            out = os.path.join(FLAGS.output_root, f"{name}_seed{seed}")
            metrics = os.path.join(out, "metrics.json")
            if not os.path.exists(metrics):
                continue
            try:
                with open(metrics) as f:
                    saved = json.load(f)["flags"]
                assert isinstance(saved, dict)
            except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
                problems.append(f"{metrics} cannot be compared with the flags asked for (not a run's metrics.json: "
                                f"{type(e).__name__}: {e}): delete that run, or use another --output_root")
                continue
            wanted = dict(report["flags"], seed=seed)
            recorded = {k: saved.get(k, report["defaults"][k]) for k in wanted}  # older runs: missing at defaults
            changed = sorted(k for k in wanted if k not in report["resumable_changes"]
                             and comparable(k, recorded[k]) != comparable(k, wanted[k]))
            if changed:
                diff = ", ".join(f"--{k}={recorded[k]!r} -> {wanted[k]!r}" for k in changed)
                problems.append(f"{out} holds a finished run of other flags ({diff}): use another --output_root, "
                                "or delete that run")
    if problems:
        raise app.UsageError("nothing was run:\n  " + "\n  ".join(problems))


def sweep_table(groups):
    """Markdown table and JSON-able summary of {setting: [metrics dicts]}."""
    lines = ["| setting | trained | seeds | last top-1 (%) | best top-1 (%) | best epoch | epochs |",
             "|" + "---|" * 7]
    summary = {}
    for name, ms in groups.items():
        if not ms:
            lines.append(f"| {name} | (no finished run) | | | | | |")
            continue
        last = np.array([m["test_top1"] for m in ms])
        best = np.array([m["best_test_top1"] for m in ms])
        epoch = np.array([m["best_epoch"] for m in ms])
        std = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)
        seeds = [m["flags"]["seed"] for m in ms]
        summary[name] = {"trained": summarize.describe(ms[0]), "seeds": seeds,
                         "last_top1": last.tolist(), "best_top1": best.tolist(), "best_epoch": epoch.tolist(),
                         "last_mean": float(last.mean()), "last_std": std(last),
                         "best_mean": float(best.mean()), "best_std": std(best),
                         "epochs": len(ms[0]["history"])}
        lines.append(f"| {name} | {summary[name]['trained']} | {','.join(map(str, seeds))} | "
                     f"{last.mean():.2f} +- {std(last):.2f} | {best.mean():.2f} +- {std(best):.2f} | "
                     f"{epoch.mean():.1f} | {len(ms[0]['history'])} |")
    return "\n".join(lines), summary


def write_outputs(root, groups, failed, command):
    from keras_icckd.training import atomic_write_json, atomic_write_text  # imports Keras: once there is a table

    text, summary = sweep_table(groups)
    body = [f"# Sweep {os.path.basename(os.path.normpath(root))}", "", f"Command: `{command}`", "",
            "Test top-1 over seeds: mean +- sample std; best = the best epoch of each run.", "", text]
    if failed:
        body += ["", "Failed runs: " + ", ".join(failed)]
    atomic_write_text("\n".join(body) + "\n", os.path.join(root, "sweep.md"))
    atomic_write_json({"settings": summary, "failed": failed, "command": command},
                      os.path.join(root, "sweep.json"))
    return text


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    paths = expand(FLAGS.flagfiles)
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)!r} is not allowed: expected distinct integers >= 0")
    extra = overrides(FLAGS.set)
    check_runs(paths, seeds, extra)
    if not FLAGS.dry_run:
        os.makedirs(FLAGS.output_root, exist_ok=True)
    command = " ".join(["python experiments/sweep.py", *sys.argv[1:]])
    groups = {os.path.basename(p)[: -len(".flags")]: [] for p in paths}
    failed = []
    for path in paths:
        name = os.path.basename(path)[: -len(".flags")]
        for seed in seeds:
            out = os.path.join(FLAGS.output_root, f"{name}_seed{seed}")
            cmd = [sys.executable, os.path.join(HERE, "run.py"), f"--flagfile={path}", *extra,
                   f"--seed={seed}", f"--output_dir={out}"]
            if FLAGS.dry_run:
                print(" ".join(cmd))
                continue
            metrics = os.path.join(out, "metrics.json")
            if os.path.exists(metrics):
                print(f"[sweep] {name} seed {seed}: finished before, reusing {metrics}", flush=True)
            else:
                print(f"[sweep] {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
                if subprocess.run(cmd).returncode != 0 or not os.path.exists(metrics):
                    print(f"[sweep] {name} seed {seed}: FAILED", flush=True)
                    failed.append(f"{name}_seed{seed}")
                    continue
            groups[name].append(summarize.load(out))
            write_outputs(FLAGS.output_root, groups, failed, command)
    if FLAGS.dry_run:
        return
    print(write_outputs(FLAGS.output_root, groups, failed, command))
    print(f"\ntable: {os.path.abspath(os.path.join(FLAGS.output_root, 'sweep.md'))}")
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def cli_main(argv):
    """`main`, ending a usage error with its message alone (not absl's page of flag help before it) and
    exit status 2 (1: some runs failed)."""
    try:
        main(argv)
    except app.UsageError as e:
        print(f"sweep.py: error: {e}\n(python experiments/sweep.py --helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(cli_main)
