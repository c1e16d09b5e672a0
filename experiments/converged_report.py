"""Tables and the figure of the converged-scale CIFAR-10 study (experiments/converged_cifar10.sh).

    python experiments/converged_report.py --runs=runs/converged_cifar10

Reads the study's run folders (their metrics.json), copies what a later reader needs into
--results_dir (every finished run's metrics.json; the teachers' model.keras and evaluation), and
from that copy writes:
- the tables between the `<!-- tables:begin -->` / `<!-- tables:end -->` markers of --markdown
  (teachers: top-1, intra/inter-class ratio, soft-label statistics at T = 4; students: mean +-
  sample std over seeds of the last and the best epoch, every seed; the from-scratch control);
- --figure: lambda on the x axis: teacher top-1, intra/inter ratio, soft-label entropy, and the
  KD student's top-1 with error bars (one sample std over seeds), the CE-teacher arms as references
  (a teacher panel's y axis spans at least 2 % of its values; teachers of another fine-tuning seed
  are hollow markers beside their lambda);
- --summary: the same numbers as JSON.
Run it with --runs pointing at the committed copy (the default) to rebuild the tables from it.
"""

import glob
import os
import re
import shutil
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_stats import (  # noqa: E402,F401 (t_two_sided_p and mean_std: this module's tests use them)
    fmt, holm, mean_of, mean_std, paired, paired_table, rank_test, read, rule_table, spread_rule, student_table,
    students, t_two_sided_p, table, teacher_record, two_sided_rank_test, save_figure,
    write_json, write_tables)

FLAGS = flags.FLAGS
RESULTS = os.path.join("experiments", "results", "converged_cifar10")
flags.DEFINE_string("runs", RESULTS, "The study's run folder (OUT of experiments/converged_cifar10.sh).")
flags.DEFINE_string("results_dir", RESULTS, "Where the finished runs' files are copied (committed).")
flags.DEFINE_string("markdown", os.path.join("experiments", "results", "converged_cifar10.md"),
                    "Results file whose tables section is rewritten.")
flags.DEFINE_string("figure", os.path.join("experiments", "results", "converged_cifar10.png"), "The figure.")
flags.DEFINE_string("summary", os.path.join(RESULTS, "summary.json"), "The numbers as JSON.")

TEACHER = re.compile(r"^(ft|scratch|twoview)_teacher_lambda([0-9.]+?)(?:_seed(\d+))?$")
# student setting -> (label, teacher folder); the order of the tables
SETTINGS = {
    "alone": ("resnet8 alone (CE)", None),
    "kd_ce": ("KD from the CE teacher", "ft_teacher_lambda0"),
    "kd_ce_teacher2": ("KD from a second CE teacher (fine-tuning seed 1)", "ft_teacher_lambda0_seed1"),
    "kd_ce_teacher3": ("KD from a third CE teacher (fine-tuning seed 2)", "ft_teacher_lambda0_seed2"),
    "kd_ce_teacher4": ("KD from a fourth CE teacher (fine-tuning seed 3)", "ft_teacher_lambda0_seed3"),
    "kd_twoview_ce": ("KD from the two-view CE teacher (fine-tuning seed 0)", "twoview_teacher_lambda0"),
    "kd_twoview_ce_teacher2": ("KD from a second two-view CE teacher (fine-tuning seed 1)",
                               "twoview_teacher_lambda0_seed1"),
    "kd_twoview_ce_teacher3": ("KD from a third two-view CE teacher (fine-tuning seed 2)",
                               "twoview_teacher_lambda0_seed2"),
    "kd_twoview_ce_teacher4": ("KD from a fourth two-view CE teacher (fine-tuning seed 3)",
                               "twoview_teacher_lambda0_seed3"),
    "kd_icc0.01": ("KD from ICC lambda 0.01 (Ours)", "ft_teacher_lambda0.01"),
    "kd_icc0.05": ("KD from ICC lambda 0.05 (Ours)", "ft_teacher_lambda0.05"),
    "kd_icc0.05_teacher2": ("KD from a second ICC lambda 0.05 teacher (fine-tuning seed 1)",
                            "ft_teacher_lambda0.05_seed1"),
    "kd_icc0.1": ("KD from ICC lambda 0.1 (Ours)", "ft_teacher_lambda0.1"),
    "kd_icc0.1_teacher2": ("KD from a second ICC lambda 0.1 teacher (fine-tuning seed 1)",
                           "ft_teacher_lambda0.1_seed1"),
    "kd_icc0.05_long": ("KD for 15 epochs from ICC lambda 0.05 (the teacher chosen for part 3)",
                        "ft_teacher_lambda0.05"),
    "kd_twoview_ce_long": ("KD for 15 epochs from the two-view CE teacher (fine-tuning seed 0)",
                           "twoview_teacher_lambda0"),
    "alone_long": ("resnet8 alone (CE) for 15 epochs", None),
    "rkd_icc": ("KD + RKD from the best ICC teacher (Ours+RKD)", None),
    "rkd_ce": ("KD + RKD from the CE teacher", "ft_teacher_lambda0"),
    "dkd": ("DKD from the CE teacher", "ft_teacher_lambda0"),
    "crd": ("CRD from the CE teacher", "ft_teacher_lambda0"),
    "kd_scratch_ce": ("KD from the from-scratch CE teacher", "scratch_teacher_lambda0"),
    "kd_scratch_icc": ("KD from the from-scratch ICC teacher (lambda 0.05)", "scratch_teacher_lambda0.05"),
    "kd_scratch_ce_teacher2": ("KD from a second from-scratch CE teacher (seed 1)", "scratch_teacher_lambda0_seed1"),
    "kd_scratch_icc_teacher2": ("KD from a second from-scratch ICC teacher (lambda 0.05, seed 1)",
                                "scratch_teacher_lambda0.05_seed1"),
}
LABELS = {setting: label for setting, (label, _) in SETTINGS.items()}
# KD from each CE teacher fine-tuned from the published weights (one arm per teacher)
CE_KD = ("kd_ce", "kd_ce_teacher2", "kd_ce_teacher3", "kd_ce_teacher4")
# KD from each two-view CE teacher (lambda 0, two views through the network: the control of part 2)
TWOVIEW_KD = ("kd_twoview_ce", "kd_twoview_ce_teacher2", "kd_twoview_ce_teacher3", "kd_twoview_ce_teacher4")
# KD from each ICC teacher fine-tuned from the published weights
ICC_KD = ("kd_icc0.01", "kd_icc0.05", "kd_icc0.05_teacher2", "kd_icc0.1", "kd_icc0.1_teacher2")
# part 3: students of 15 epochs (the ICC teacher chosen before the runs, its two-view CE control, alone)
LONG = ("kd_icc0.05_long", "kd_twoview_ce_long", "alone_long")
# the from-scratch control's pairs of teachers (one seed each): (KD from the CE teacher, KD from the ICC teacher)
SCRATCH_PAIRS = (("kd_scratch_ce", "kd_scratch_icc"), ("kd_scratch_ce_teacher2", "kd_scratch_icc_teacher2"))


def collect(runs, results):
    """Copies finished runs from `runs` into `results` (nothing when they are the same folder)."""
    if os.path.abspath(runs) == os.path.abspath(results):
        return
    copies = []
    for teacher in glob.glob(os.path.join(runs, "*teacher_lambda*")) + glob.glob(os.path.join(runs, "imported_*")):
        name = os.path.basename(teacher)
        for rel in ("metrics.json", "model.keras", "evaluate/metrics.json", "evaluate/evaluation.png",
                    "curves.png"):
            copies.append((os.path.join(teacher, rel), os.path.join(results, name, rel)))
    for student in glob.glob(os.path.join(runs, "students", "*_seed*")):
        name = os.path.basename(student)
        copies.append((os.path.join(student, "metrics.json"), os.path.join(results, "students", name, "metrics.json")))
    for source, target in copies:
        if os.path.isfile(source) and (not os.path.isfile(target)
                                       or os.path.getmtime(source) > os.path.getmtime(target)):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target + ".tmp")
            os.replace(target + ".tmp", target)


def teachers(results):
    """{folder name: row} of every teacher run with its evaluation when there is one."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(results, "*teacher_lambda*", "metrics.json"))):
        name = os.path.basename(os.path.dirname(path))
        kind, lam, seed = TEACHER.match(name).groups()
        rows[name] = {"kind": kind, "lambda": float(lam), **teacher_record(os.path.dirname(path), int(seed or 0))}
    return rows


def teacher_level(groups, ce, icc):
    """KD mean per teacher (the unit that the intra-class term changes): ICC teachers against CE teachers."""
    means = {s: groups[s]["last_mean_std"][0] for s in ce + icc if s in groups}
    low, high = [means[s] for s in ce if s in means], [means[s] for s in icc if s in means]
    if not low or not high:
        return None
    return {"kd_mean_per_teacher": means, **rank_test(low, high)}


def teacher_table(rows, kind):
    cells = []
    for name, r in sorted(rows.items(), key=lambda item: (item[1]["lambda"], item[1]["seed"])):
        if r["kind"] == kind:
            cells.append([name, f"{r['lambda']:g}", r["seed"], r["epochs"], fmt(r["test_top1"]),
                          fmt(r.get("eval_ratio") or r["intra_inter_ratio"], ".4f"), fmt(r["margin_pass"], ".3f")]
                         + [fmt(r.get(key), ".4f") for key in ("ece", "entropy", "off_mass", "entropy_spread",
                                                               "off_mass_spread")])
    seed = "fine-tuning seed" if kind in ("ft", "twoview") else "seed"
    return table(["teacher", "lambda", seed, "epochs", "test top-1 (%)", "intra/inter ratio", "anchors past margin",
                  "ECE", "entropy at T=4", "off-class mass at T=4", "within-class std of entropy",
                  "within-class std of off-class mass"], cells)


def figure(rows, groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = [dict(r, name=name) for name, r in rows.items()]
    ft = sorted((r for r in named if r["kind"] == "ft" and r["seed"] == 0), key=lambda r: r["lambda"])
    if not ft:
        return False
    lambdas = [r["lambda"] for r in ft]
    x = np.arange(len(lambdas))
    # teachers fine-tuned with another seed: hollow markers beside their lambda; the two-view CE teachers
    # (part 2): hollow squares left of lambda 0
    others, beside = [], {}
    for r in sorted(named, key=lambda r: (r["lambda"], r["seed"])):
        if r["kind"] == "ft" and r["seed"] != 0 and r["lambda"] in lambdas:
            beside[r["lambda"]] = beside.get(r["lambda"], 0) + 1
            others.append((lambdas.index(r["lambda"]) + 0.12 * beside[r["lambda"]], r))
    twoview = [(-0.12 * (i + 1), r) for i, r in enumerate(sorted((r for r in named if r["kind"] == "twoview"),
                                                                 key=lambda r: r["seed"]))]
    fig, axes = plt.subplots(1, 5, figsize=(21, 4.2))
    measures = [("teacher test top-1 (%)", lambda r: r["test_top1"]),
                ("teacher intra / inter-class distance", lambda r: r.get("eval_ratio") or r["intra_inter_ratio"]),
                ("teacher soft-label entropy at T = 4 (nats)", lambda r: r.get("entropy"))]
    for ax, (label, measure) in zip(axes, measures):
        ys = {id(r): np.nan if measure(r) is None else measure(r) for r in ft + [r for _, r in others + twoview]}
        ax.plot(x, [ys[id(r)] for r in ft], marker="o", label="fine-tuning seed 0")
        for i, (pos, r) in enumerate(others):
            ax.plot([pos], [ys[id(r)]], marker="o", mfc="none", linestyle="", color="C1",
                    label="another fine-tuning seed" if i == 0 else None)
        for i, (pos, r) in enumerate(twoview):
            ax.plot([pos], [ys[id(r)]], marker="s", mfc="none", linestyle="", color="C2",
                    label="two-view CE (lambda 0)" if i == 0 else None)
        if others or twoview:
            ax.legend(fontsize=7)
        ax.set_ylabel(label)
        # at least 2 % of the value from bottom to top, so that differences of a few hundredths do not
        # fill the panel
        values = [v for v in ys.values() if not np.isnan(v)]
        if values:
            low, high = min(values), max(values)
            pad = max(0.02 * abs(np.mean(values)) - (high - low), 0.0) / 2 + 0.1 * (high - low)
            ax.set_ylim(low - pad, high + pad)
    ax = axes[3]
    # the KD arm of each teacher (plain KD only)
    kd_of = {teacher: s for s, (_, teacher) in SETTINGS.items()
             if teacher and s.startswith(("kd_ce", "kd_icc", "kd_twoview")) and s not in LONG}

    def kd(r):
        g = groups.get(kd_of.get(r["name"]))
        return (g["last_mean_std"][0], g["last_mean_std"][1] if len(g["seeds"]) > 1 else 0.0) if g else (np.nan, 0.0)

    means, stds = zip(*(kd(r) for r in ft))
    ax.errorbar(x, means, yerr=stds, marker="o", capsize=4, label="KD from the teacher")
    for kind, (points, marker, color, label) in enumerate([
            (others, "o", "C1", "KD from a teacher of another fine-tuning seed"),
            (twoview, "s", "C2", "KD from a two-view CE teacher")]):
        shown = [(pos, kd(r)) for pos, r in points if kd_of.get(r["name"]) in groups]
        for i, (pos, (mean, std)) in enumerate(shown):
            ax.errorbar([pos], [mean], yerr=[std], marker=marker, mfc="none", linestyle="", capsize=4, color=color,
                        label=label if i == 0 else None)
    # the references far below the KD arms are named, not drawn (they would flatten the panel)
    below = [f"{name} {groups[s]['last_mean_std'][0]:.2f}" for s, name in (("alone", "alone"), ("dkd", "DKD"),
                                                                           ("crd", "CRD")) if s in groups]
    if below:
        ax.set_title("below the axis: " + ", ".join(below), fontsize=8)
    ax.set_ylabel("resnet8 student test top-1 (%), last epoch")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.5 * (high - low))  # headroom for the legend
    ax.legend(fontsize=7, loc="upper left")
    for ax in axes[:4]:
        ax.set_xticks(x, [f"{lam:g}" for lam in lambdas])
        ax.set_xlabel("lambda (0 = CE teacher; squares: two-view CE)")
        ax.grid(alpha=0.3)
    ax = axes[4]  # part 3: the 15-epoch students' curves, mean over seeds with their range
    drawn = False
    for i, setting in enumerate(LONG):
        runs_ = [r for r in groups.get(setting, {}).get("curves", []) if r]
        if runs_:
            length = min(len(r) for r in runs_)
            curves = np.array([r[:length] for r in runs_])
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, curves.mean(0), marker=".", color=f"C{i}",
                    label=f"{SETTINGS[setting][0].split(' for 15 epochs')[0]} ({len(runs_)} seeds)")
            ax.fill_between(epochs, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2)
            drawn = True
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "part 3 (15-epoch students): not yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("15-epoch student test top-1 (%)")
    ax.grid(alpha=0.3)
    fig.suptitle("Converged-scale CIFAR-10 (JPEG copy): resnet20 teachers fine-tuned from the published "
                 "weights, resnet8 students; mean +- sample std over seeds (part 3: mean and range over seeds)",
                 fontsize=10)
    save_figure(fig, path)
    return True


def gap_change(long, short, complete):
    """Part 3's question, "does the gap grow, shrink or vanish?", by the rule stated before its runs: D and s
    of the 15-epoch pair (`long`) against D of the same teachers' 3-epoch students (`short`); "by more than
    s" uses the 15-epoch s. `complete`: both 15-epoch arms have every seed."""
    if long is None or short is None or not complete:
        return "not yet (needs both 15-epoch arms with seeds 0, 1, 2)."
    d15, d3, s = long["difference"], short["difference"], long["spread"]
    if long["counts"] and d15 - d3 > s:
        verdict = "the gap grows"
    elif short["counts"] and not long["counts"]:
        verdict = "the gap vanishes"
    elif long["counts"] and short["counts"] and d3 - d15 > s:
        verdict = "the gap shrinks"
    else:
        verdict = "the two schedules are not told apart"
    alone = ("counts" if long["counts"] else "does not count") + (
        " (KD from the ICC teacher ahead)" if long["counts"] and d15 > 0
        else " (KD from the two-view CE teacher ahead)" if long["counts"] else "")
    reversed_ = " (the direction reversed between the schedules)" if d15 * d3 < 0 else ""
    return (f"{verdict}{reversed_}: D = {d15:+.2f} with 15 epochs against {d3:+.2f} with 3 (s = {s:.2f} over the "
            f"15-epoch arms; D is signed, ICC minus two-view CE); by itself the 15-epoch D {alone}.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isdir(FLAGS.runs):
        raise app.UsageError(f"--runs={FLAGS.runs!r} is not a folder")
    collect(FLAGS.runs, FLAGS.results_dir)
    rows, groups = teachers(FLAGS.results_dir), students(FLAGS.results_dir)
    # the fine-tuned study's arms against KD from its CE teacher (the from-scratch arms are another protocol)
    # parts 2 and 3 have their own tables
    fine_tuned = [s for s in SETTINGS if not s.startswith(("kd_scratch", "kd_twoview")) and s not in LONG]
    comparisons = paired({k: v for k, v in groups.items() if k in fine_tuned})
    # the from-scratch control: in each pair, KD from its ICC teacher against KD from its CE teacher, by seed
    scratch = {icc: v for ce_, icc in SCRATCH_PAIRS for k, v in paired(groups, ce_).items() if k == icc}
    # Ours+RKD against the same objectives from the CE teacher
    rkd = {k: v for k, v in paired(groups, "rkd_ce").items() if k == "rkd_icc"}
    # the ICC arms against every CE teacher at once: per seed, the mean of KD from each CE teacher; here and
    # at the teacher level, a teacher counts once its KD has every seed of the first CE teacher's
    def complete(setting):
        return (setting in groups and "kd_ce" in groups
                and set(groups["kd_ce"]["seeds"]) <= set(groups[setting]["seeds"]))

    ce = [s for s in CE_KD if complete(s)]
    icc = [s for s in SETTINGS if s.startswith("kd_icc") and s not in LONG] + ["rkd_icc"]
    ce_all = {k: v for k, v in paired({**groups, "kd_ce_all": mean_of(groups, ce)}, "kd_ce_all").items() if k in icc}
    icc_done = [s for s in ICC_KD if complete(s)]
    level = teacher_level(groups, ce, icc_done)
    # Holm over every ICC teacher tested (its KD arm), not over the lambdas
    ce_all_holm = holm({k: v["p_two_sided"] for k, v in ce_all.items() if k in ICC_KD})
    # part 2: the two-view CE control; the pre-stated rule over the three comparisons
    twoview = [s for s in TWOVIEW_KD if complete(s)]
    twoview_all = ({k: v for k, v in paired({**groups, "kd_twoview_all": mean_of(groups, twoview)},
                                            "kd_twoview_all").items() if k in ICC_KD} if twoview else {})
    twoview_holm = holm({k: v["p_two_sided"] for k, v in twoview_all.items()})
    kd_mean = {k: groups[k]["last_mean_std"][0] for k in ce + twoview + icc_done}
    rules = {
        "icc_vs_twoview_ce": (spread_rule(groups, icc_done, twoview),
                              rank_test([kd_mean[k] for k in twoview], [kd_mean[k] for k in icc_done])
                              if twoview and icc_done else None),
        "icc_vs_one_view_ce": (spread_rule(groups, icc_done, ce),
                               rank_test([kd_mean[k] for k in ce], [kd_mean[k] for k in icc_done])
                               if ce and icc_done else None),
        "twoview_ce_vs_one_view_ce": (spread_rule(groups, twoview, ce),
                                      two_sided_rank_test([kd_mean[k] for k in twoview], [kd_mean[k] for k in ce])
                                      if twoview and ce else None)}
    # part 3: the chosen pair of teachers with 15-epoch students, next to the same pair with 3-epoch students
    def pair_rule(icc_arm, ce_arm):
        done = [k for k in (icc_arm, ce_arm) if k in groups and len(groups[k]["seeds"]) >= 2]
        rule = spread_rule(groups, [icc_arm], [ce_arm]) if len(done) == 2 else None
        return rule, paired(groups, ce_arm).get(icc_arm) if rule else None

    long_rules = {"long": pair_rule("kd_icc0.05_long", "kd_twoview_ce_long"),
                  "short": pair_rule("kd_icc0.05", "kd_twoview_ce")}
    labels = {"icc_vs_twoview_ce": "(a) ICC against two-view CE (the intra-class term alone)",
              "icc_vs_one_view_ce": "(b) ICC against one-view CE (the first design's comparison)",
              "twoview_ce_vs_one_view_ce": "(c) two-view CE against one-view CE (the two views alone)"}
    imported = os.path.join(FLAGS.results_dir, "imported_resnet20", "metrics.json")
    parts = []
    if os.path.isfile(imported):
        parts.append(f"Imported resnet20 before any fine-tuning: {read(imported)['test_top1']:.2f} % on the "
                     "10,000 JPEG test images.")
    parts += ["### Teachers fine-tuned from the published resnet20", "", teacher_table(rows, "ft"), "",
              "### Students (resnet8), teachers fine-tuned from the published weights", "",
              student_table(groups, fine_tuned, LABELS), "",
              "### Paired by seed against KD from the CE teacher (last epoch; difference = arm - KD from CE)",
              "", paired_table(comparisons, fine_tuned, LABELS), "",
              f"### Paired by seed against every CE teacher (difference = arm - mean of KD from the {len(ce)} CE "
              f"teachers, same seed: {', '.join(groups[s]['teacher'] for s in ce)})", "",
              paired_table(ce_all, icc, LABELS, ce_all_holm), "",
              "Teacher level (one value per teacher: its KD students' mean; KD arms only): " + (
                  "; ".join(f"{SETTINGS[k][0]} {v:.2f}" for k, v in level["kd_mean_per_teacher"].items())
                  + f". Mann-Whitney U of the ICC teachers over the CE teachers {level['u']:g} of {level['u_max']}, "
                  f"exact one-sided p = {level['p_one_sided']:.3f} (a test added after the first results; the "
                  "design's rule is the table below)." if level else "not yet (needs both kinds)."),
              "",
              "### The design's rule, by teacher kind (stated before part 2's runs: D counts when abs(D) > s, the "
              "mean seed spread of the compared KD arms)", "",
              rule_table([(labels[k], *rules[k]) for k in labels]), "",
              "### Part 2: the two-view CE control (lambda 0, two views through the network, CE on view 1)", "",
              teacher_table(rows, "twoview"), "",
              student_table(groups, TWOVIEW_KD, LABELS), "",
              f"Paired by seed against the mean of KD from the {len(twoview)} two-view CE teachers (difference = arm "
              "- that mean, same seed):" if twoview_all else "Paired against the two-view CE teachers: not yet (needs "
              "a complete two-view CE arm).", "",
              *([paired_table(twoview_all, ICC_KD, LABELS, twoview_holm), ""] if twoview_all else []),
              "### Part 3: students of 15 epochs (KD from the ICC teacher chosen before the runs, lambda 0.05 with "
              "fine-tuning seed 0, against its two-view CE control, fine-tuning seed 0; the student alone)", "",
              student_table(groups, LONG, LABELS), "",
              "Flatness of the end of each curve (max - min of test top-1 over the last three epochs, per seed): " + (
                  "; ".join(f"{SETTINGS[k][0]}: " + ", ".join(fmt(v) for v in groups[k]["last3_range"])
                            for k in LONG if k in groups) or "not yet.") + "", "",
              rule_table([("(d) 15 epochs: the chosen ICC teacher against its two-view CE control",
                           *long_rules["long"]),
                          ("(e) the same two teachers, 3-epoch students (part 2)", *long_rules["short"])]), "",
              "**Does the gap grow, shrink or vanish (the rule stated before part 3's runs)?** " + gap_change(
                  long_rules["long"][0], long_rules["short"][0],
                  all(k in groups and {0, 1, 2} <= set(groups[k]["seeds"]) for k in LONG[:2])), "",
              "### KD + RKD: from the best ICC teacher against from the CE teacher (paired by seed; difference "
              "= Ours+RKD - KD + RKD from the CE teacher)", "",
              paired_table(rkd, ["rkd_icc"], LABELS) if rkd
              else "Not yet (needs both arms with two seeds in common).", "",
              "### From-scratch control: resnet20 teachers from random initialisation", "",
              teacher_table(rows, "scratch"), "",
              student_table(groups, [s for pair in SCRATCH_PAIRS for s in pair], LABELS), "",
              "Paired by seed against KD from the from-scratch CE teacher of the same pair (difference = arm - "
              "that KD):", "", paired_table(scratch, [icc for _, icc in SCRATCH_PAIRS], LABELS)]
    text = "\n".join(parts)
    try:
        write_tables(FLAGS.markdown, text)
    except ValueError as e:
        raise app.UsageError(f"--markdown: {e}")
    drew = figure(rows, groups, FLAGS.figure)
    write_json(FLAGS.summary, {
        "teachers": rows, "students": groups, "paired_against_kd_ce": comparisons, "ce_teachers_in_mean": ce,
        "paired_against_mean_of_ce_teachers": ce_all, "teacher_level": level, "paired_rkd_icc_against_rkd_ce": rkd,
        "holm_against_mean_of_ce_teachers": ce_all_holm, "twoview_ce_teachers_in_mean": twoview,
        "paired_against_mean_of_twoview_ce_teachers": twoview_all, "holm_against_twoview": twoview_holm,
        "rule": {k: {"rule": r, "rank_test": t} for k, (r, t) in rules.items()},
        "long_students_rule": {k: {"rule": r, "paired": t} for k, (r, t) in long_rules.items()},
        "paired_scratch_icc_against_scratch_ce": scratch})
    print(f"tables: {FLAGS.markdown}\nsummary: {FLAGS.summary}" + (f"\nfigure: {FLAGS.figure}" if drew else ""))


if __name__ == "__main__":
    app.run(main)
