"""Statistics and tables shared by the study reports (experiments/converged_report.py,
experiments/tinyimagenet_report.py): mean and sample std over seeds, paired t by seed (closed-form p),
the exact Mann-Whitney rank test, Holm's adjustment, and the pre-stated rule "a difference counts only
when it exceeds the seeds' spread"; the Markdown table they are printed in."""

import glob
import itertools
import json
import os
import re
import sys

import numpy as np

# the package of this checkout, for its atomic writers
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STUDENT = re.compile(r"^(.+)_seed(\d+)$")

def read(path):
    with open(path) as f:
        return json.load(f)



def mean_std(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")



def fmt(value, spec=".2f"):
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)



def t_two_sided_p(t, df):
    """Two-sided p-value of Student's t with an integer number of degrees of freedom (closed form)."""
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if np.isinf(t):
        return 0.0
    theta = np.arctan(abs(t) / np.sqrt(df))
    c = np.cos(theta) ** 2
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 c + 2*4/(3*5) c^2 + ...)), (df - 3) / 2 terms after 1
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c * (2 * k) / (2 * k + 1)
            total += term
        a = 2 / np.pi * (theta + np.sin(theta) * np.cos(theta) * total)
    else:  # even: sin (1 + 1/2 c + 1*3/(2*4) c^2 + ...), (df - 2) / 2 terms after 1
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c * (2 * k - 1) / (2 * k)
            total += term
        a = np.sin(theta) * total
    return float(max(0.0, 1.0 - a))



def paired(groups, reference="kd_ce"):
    """{setting: differences to `reference` over the seeds both have (last epoch), with a paired t-test}."""
    if reference not in groups:
        return {}
    ref = dict(zip(groups[reference]["seeds"], groups[reference]["last"]))
    out = {}
    for setting, g in groups.items():
        common = [(s, v - ref[s]) for s, v in zip(g["seeds"], g["last"]) if s in ref]
        if setting == reference or len(common) < 2:
            continue
        diffs = np.array([d for _, d in common])
        mean, std = float(diffs.mean()), float(diffs.std(ddof=1))
        t = mean / (std / np.sqrt(len(diffs))) if std > 0 else float(np.sign(mean) * np.inf)
        out[setting] = {"reference": reference, "seeds": [s for s, _ in common], "differences": diffs.tolist(),
                        "mean": mean, "std": std, "t": float(t), "df": len(diffs) - 1,
                        "p_two_sided": t_two_sided_p(t, len(diffs) - 1) if mean or std else 1.0}
    return out



def table(header, rows):
    """A Markdown table: `header` and each of `rows` are lists of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])



def mean_of(groups, settings):
    """A group whose value per seed is the mean of `settings`' values, over the seeds they all have."""
    values = [dict(zip(groups[s]["seeds"], groups[s]["last"])) for s in settings if s in groups]
    seeds = sorted(set.intersection(*(set(v) for v in values))) if values and len(values) == len(settings) else []
    return {"seeds": seeds, "last": [float(np.mean([v[s] for v in values])) for s in seeds]}



def rank_test(low, high):
    """Mann-Whitney U of `high` over `low` (pairs with high > low, ties counting 1/2) and its exact
    one-sided p-value: the share of all ways to split the pooled values into groups of these sizes
    whose U is at least as large (no normal approximation: a handful of teachers)."""
    pooled, k = list(low) + list(high), len(high)

    def u(chosen):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        return sum((pooled[i] > r) + 0.5 * (pooled[i] == r) for i in chosen for r in rest)

    observed = u(set(range(len(low), len(pooled))))
    splits = [u(set(c)) for c in itertools.combinations(range(len(pooled)), k)]
    return {"u": observed, "u_max": len(low) * k, "p_one_sided": sum(x >= observed for x in splits) / len(splits)}



def holm(pvalues):
    """Holm's step-down adjustment of {name: p} for testing them all (each p times the number of tests not
    yet passed, in increasing order, kept monotone and at most 1)."""
    out, running = {}, 0.0
    ordered = sorted(pvalues.items(), key=lambda item: item[1])
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - i) * p))
        out[name] = running
    return out



def spread_rule(groups, first, second):
    """The design's rule, "a difference counts only when it exceeds the seeds' spread", as stated before
    part 2's runs: D = mean over the first kind's teachers of their KD means minus the same over the
    second kind's; s = the mean over every KD arm of both kinds of its sample std over seeds; D counts
    when |D| > s. None until both kinds have a teacher."""
    if not first or not second:
        return None
    means = {k: groups[k]["last_mean_std"][0] for k in first + second}
    d = float(np.mean([means[k] for k in first]) - np.mean([means[k] for k in second]))
    s = float(np.mean([groups[k]["last_mean_std"][1] for k in first + second]))
    return {"first": list(first), "second": list(second), "difference": d, "spread": s, "counts": abs(d) > s}



def two_sided_rank_test(a, b):
    """The exact Mann-Whitney test of a against b in either direction: twice the smaller one-sided p (at most 1)."""
    up, down = rank_test(b, a), rank_test(a, b)
    return {"u": up["u"], "u_max": up["u_max"], "p_two_sided": min(1.0, 2 * min(up["p_one_sided"],
                                                                               down["p_one_sided"]))}



def rule_table(rules):
    """The teacher-level comparisons (label, rule, secondary test) by the pre-stated rule, with the tests after it."""
    rows = []
    for label, rule, test in rules:
        if rule is None:
            rows.append([label, "not yet (needs complete KD arms of both kinds)", "", "", "", ""])
            continue
        if test is None:
            p = ""
        elif "t" in test:
            p = f"paired by seed: t = {test['t']:.2f}, two-sided p = {test['p_two_sided']:.3f}"
        else:
            p = (f"U {test['u']:g} of {test['u_max']}, "
                 + (f"one-sided p = {test['p_one_sided']:.3f}" if "p_one_sided" in test
                    else f"two-sided p = {test['p_two_sided']:.3f}"))
        rows.append([label, f"{len(rule['first'])} against {len(rule['second'])}", f"{rule['difference']:+.2f}",
                     f"{rule['spread']:.2f}", "yes" if rule["counts"] else "no", p])
    return table(["comparison (KD means per teacher)", "teachers", "D (points)", "seeds' spread s",
                  "counts (abs(D) > s)", "secondary test"], rows)


def teacher_record(run_dir, default_seed=0):
    """One teacher run's row: its training record (metrics.json: epochs, test top-1, the last epoch's
    intra/inter-class ratio and margin pass) and, when `run_dir`/evaluate holds one, its evaluation (top-1,
    ECE, the ratio on held-out images, soft-label statistics at the evaluation's temperature). The seed is the
    run's recorded --seed, else `default_seed`."""
    m = read(os.path.join(run_dir, "metrics.json"))
    last = m["history"][-1]
    row = {"epochs": len(m["history"]), "seed": int(m.get("flags", {}).get("seed", default_seed)),
           "test_top1": m["test_top1"], "best_test_top1": m["best_test_top1"],
           "intra_inter_ratio": last.get("intra_inter_ratio"), "margin_pass": last.get("margin_pass"),
           "wall_seconds": m["wall_seconds"]}
    evaluation = os.path.join(run_dir, "evaluate", "metrics.json")
    if os.path.isfile(evaluation):
        e = read(evaluation)
        soft = e["soft_labels"]
        row.update(eval_top1=e["test_top1"], ece=e["ece"],
                   eval_ratio=e.get("class_distances", {}).get("intra_inter_ratio"),
                   entropy=soft["mean_entropy"], off_mass=soft["mean_off_class_mass"],
                   entropy_spread=soft["mean_over_classes"]["entropy_std"],
                   off_mass_spread=soft["mean_over_classes"]["off_class_mass_std"],
                   temperature=soft["temperature"])
    return row


def students(results, seeds=None):
    """{setting: last/best top-1 per seed, their mean and sample std, the teacher, ...} of the finished student
    runs, read from `results`/students/<setting>_seed<N>/metrics.json."""
    groups = {}
    for path in sorted(glob.glob(os.path.join(results, "students", "*_seed*", "metrics.json"))):
        setting, seed = STUDENT.match(os.path.basename(os.path.dirname(path))).groups()
        if seeds is None or int(seed) in seeds:  # `seeds`: only the seeds a plan names
            groups.setdefault(setting, []).append((int(seed), read(path)))
    out = {}
    for setting, runs in groups.items():
        runs.sort()
        last = [m["test_top1"] for _, m in runs]
        best = [m["best_test_top1"] for _, m in runs]
        first = runs[0][1]
        out[setting] = {
            "seeds": [s for s, _ in runs], "last": last, "best": best,
            "best_epoch": [m["best_epoch"] for _, m in runs], "epochs": len(first["history"]),
            # how flat the end of each run's curve is: max - min of test top-1 over its last three epochs
            "last3_range": [float(np.ptp([r["test_top1"] for r in m["history"][-3:]]))
                            if len(m["history"]) >= 3 and all("test_top1" in r for r in m["history"][-3:])
                            else None for _, m in runs],
            "last_mean_std": mean_std(last), "best_mean_std": mean_std(best),
            # test top-1 per epoch of each seed (None for a run whose history lacks it)
            "curves": [[r["test_top1"] for r in m["history"]] if all("test_top1" in r for r in m["history"])
                       else None for _, m in runs],
            "teacher": os.path.basename(os.path.dirname(first["teacher"])) if "teacher" in first else None,
            "teacher_test_top1": first.get("teacher_test_top1"),
            "objectives": first.get("objectives"), "ce_weight": first.get("ce_weight"),
            "wall_seconds": [m["wall_seconds"] for _, m in runs],
        }
    return out


def paired_table(comparisons, settings, labels, adjusted=None):
    """A table of paired comparisons (`labels`: {setting: its row label}); `adjusted`: {setting: Holm-adjusted
    p}, added as a last column."""
    rows = []
    for setting in (s for s in settings if s in comparisons):
        c = comparisons[setting]
        rows.append([labels.get(setting, setting), ",".join(map(str, c["seeds"])),
                     "; ".join(f"s{s}: {d:+.2f}" for s, d in zip(c["seeds"], c["differences"])),
                     f"{c['mean']:+.2f}", f"{c['std']:.2f}", f"{c['t']:.2f}", f"{c['p_two_sided']:.3f}"]
                    + ([fmt(adjusted.get(setting), ".3f")] if adjusted is not None else []))
    extra = [f"Holm-adjusted p ({len(adjusted)} ICC teachers)"] if adjusted is not None else []
    return table(["setting", "seeds", "per seed: difference (points)", "mean difference", "sample std",
                  "t (n - 1 d.f.)", "two-sided p"] + extra, rows)


def student_table(groups, settings, labels):
    """The student arms' table (`labels`: {setting: its row label}), mean +- sample std over seeds."""
    rows = []
    for setting in (s for s in settings if s in groups):
        g = groups[setting]
        (lm, ls), (bm, bs) = g["last_mean_std"], g["best_mean_std"]
        rows.append([labels.get(setting, setting),
                     f"{g['teacher']} ({fmt(g['teacher_test_top1'])})" if g["teacher"] else "-",
                     ",".join(map(str, g["seeds"])), f"{lm:.2f} +- {fmt(ls)}", f"{bm:.2f} +- {fmt(bs)}",
                     "; ".join(f"s{s}: {fmt(l)} / {fmt(b)} ({e})"
                               for s, l, b, e in zip(g["seeds"], g["last"], g["best"], g["best_epoch"]))])
    return table(["setting", "teacher (top-1 %)", "seeds", "last epoch top-1 (%)", "best epoch top-1 (%)",
                  "per seed: last / best (best epoch)"], rows)


BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def write_tables(markdown, text):
    """Replaces what lies between the BEGIN / END markers of the results file `markdown` with `text`
    (atomically; the rest of the file, written by hand, is kept); prints `text` when the file does not exist.
    A file without both markers is refused (ValueError) rather than overwritten."""
    if not os.path.isfile(markdown):
        print(text)
        return
    doc = open(markdown).read()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{markdown!r} lacks the {BEGIN} / {END} markers")
    from keras_icckd.training import atomic_write_text

    head, rest = doc.split(BEGIN, 1)
    atomic_write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1], markdown)


def write_json(path, payload):
    """Writes the report's numbers atomically (a crash leaves the previous file, never half of one)."""
    from keras_icckd.training import atomic_write_json

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_json(payload, path)


def save_figure(fig, path):
    """Lays out and writes a report's matplotlib figure atomically (a crash leaves the previous file), then
    closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
