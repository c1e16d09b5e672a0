"""Summarises run folders (their metrics.json) as a Markdown table, optionally with a plot.

    python experiments/summarize.py runs/a runs/b --plot=runs/compare.png
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

FLAGS = flags.FLAGS
flags.DEFINE_string("plot", None, "Write a PNG of test top-1 and intra/inter ratio per epoch.")
flags.DEFINE_bool("group_seeds", False, "Also print mean +- std (sample std) over runs named <setting>_seed<N>.")


def load(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise app.UsageError(f"{path}: not a readable results file ({e})")


def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def describe(m):
    """What was trained, in a few words."""
    f = m["flags"]
    augment = f", augment {f['augment']}" if f.get("augment") else ""
    if m["mode"] == "student":
        objectives = ",".join(f"{k}:{v:g}" for k, v in m["objectives"].items())
        return f"{m['arch']} <- {m['teacher_arch']} ({os.path.basename(os.path.dirname(m['teacher']))}), " \
               f"{objectives}, ce {m['ce_weight']:g}{augment}"
    return f"{m['arch']}, lambda {f['icc_lambda']:g}" + (
        f", delta {f['icc_delta']:g}, {f['icc_margin_mode']}" if f["icc_lambda"] else " (CE)") + augment


def table(runs):
    lines = ["| run | trained | epochs | test top-1 last (%) | best (%) | intra/inter ratio | "
             "anchors past margin | backend | wall (s) |", "|" + "---|" * 9]
    for run_dir, m in runs:
        last = m["history"][-1]
        lines.append(
            f"| {os.path.basename(os.path.normpath(run_dir))} | {describe(m)} | {len(m['history'])} | "
            f"{fmt(m['test_top1'])} | {fmt(m['best_test_top1'])} | "
            f"{fmt(last.get('intra_inter_ratio'), '.4f')} | {fmt(last.get('margin_pass'), '.3f')} | "
            f"{m['backend']} | {m['wall_seconds']:.0f} |")
    return "\n".join(lines)


def seed_table(runs):
    """Groups runs whose folder names differ only in a trailing _seed<N>: mean +- std over seeds."""
    groups = {}
    for run_dir, m in runs:
        name = re.sub(r"_seed\d+$", "", os.path.basename(os.path.normpath(run_dir)))
        groups.setdefault(name, []).append(m)
    lines = ["| setting | trained | seeds | test top-1 last (%) | best (%) |", "|" + "---|" * 5]
    for name, ms in groups.items():
        last = np.array([m["test_top1"] for m in ms])
        best = np.array([m["best_test_top1"] for m in ms])
        seeds = ",".join(str(m["flags"]["seed"]) for m in ms)
        lines.append(f"| {name} | {describe(ms[0])} | {seeds} | {last.mean():.2f} +- {last.std(ddof=1) if len(ms) > 1 else 0:.2f} "
                     f"| {best.mean():.2f} +- {best.std(ddof=1) if len(ms) > 1 else 0:.2f} |")
    return "\n".join(lines)


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run_dir, m in runs:
        label = os.path.basename(os.path.normpath(run_dir))
        epochs = [h["epoch"] for h in m["history"]]
        axes[0].plot(epochs, [h.get("test_top1") for h in m["history"]], marker="o", label=label)
        axes[1].plot(epochs, [h.get("intra_inter_ratio") for h in m["history"]], marker="o", label=label)
    for ax, ylabel in zip(axes, ("test top-1 (%)", "intra / inter-class distance")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more run folders")
    runs = [(d, load(d)) for d in argv[1:]]
    print(table(runs))
    if FLAGS.group_seeds:
        print()
        print(seed_table(runs))
    if FLAGS.plot:
        plot(runs, FLAGS.plot)
        print(f"\nplot: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
