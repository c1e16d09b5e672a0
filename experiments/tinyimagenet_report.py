"""Tables, the answer and the figure of the Tiny-ImageNet study (experiments/tinyimagenet_converged.sh).

    python experiments/tinyimagenet_report.py

Reads the committed records under --results_dir (experiments/results/tinyimagenet_converged: every
finished run's metrics.json, which the study's script copies there as each run finishes) and writes:
- the tables between the `<!-- tables:begin -->` / `<!-- tables:end -->` markers of --markdown: the
  from-scratch CE teacher's curve and the plateau rule; every teacher (top-1, intra/inter-class ratio,
  ECE, soft-label statistics at T = 4) and the arms' means; the students (mean +- sample std over seeds);
  the KD mean per teacher; the pre-stated rule for the four comparisons with the secondary rank test
  and Holm's correction over the two ICC arms; the answer to the question the rule decides;
- --figure: the scratch teacher's curve, the teachers' top-1, intra/inter ratio and soft-label entropy by
  arm, and the KD students' top-1 per teacher by arm (one sample std over seeds), the student alone as
  a reference line;
- --summary: the same numbers as JSON.
Nothing is hard-coded: a run that has not finished is absent from every table, and the rule waits for
complete arms (three teachers, each with its students of seeds 0, 1, 2).
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_stats import (  # noqa: E402
    fmt, holm, mean_std, read, rule_table, spread_rule, student_table, students, table, teacher_record,
    two_sided_rank_test, save_figure, write_json, write_tables)

FLAGS = flags.FLAGS
RESULTS = os.path.join("experiments", "results", "tinyimagenet_converged")

SCRATCH = "scratch_teacher"
# arm -> (label, the folder name of its teachers before _seed<N>), in the order of the tables
# (short labels: SHORT, for the figure's axes)
ARMS = {"ce1": ("one-view CE", "ft_ce1_lambda0"),
        "ce2": ("two-view CE", "ft_ce2_lambda0"),
        "icc0.05": ("ICC lambda 0.05 (the deciding arm)", "ft_icc_lambda0.05"),
        "icc0.1": ("ICC lambda 0.1", "ft_icc_lambda0.1")}
SHORT = {"ce1": "CE, 1 view", "ce2": "CE, 2 views", "icc0.05": "ICC 0.05", "icc0.1": "ICC 0.1"}
TEACHER_SEEDS = (0, 1, 2)
STUDENT_SEEDS = (0, 1, 2)
PLATEAU_EPOCHS, PLATEAU_POINTS = 5, 1.0
# (key, label, first arm, second arm, two-sided secondary test); (a) decides, (a) and (d) share Holm's correction
COMPARISONS = (("icc_vs_twoview_ce", "(a) ICC 0.05 against two-view CE (the question; the intra-class term alone)",
                "icc0.05", "ce2"),
               ("icc_vs_one_view_ce", "(b) ICC 0.05 against one-view CE", "icc0.05", "ce1"),
               ("twoview_ce_vs_one_view_ce", "(c) two-view CE against one-view CE (the two views alone)", "ce2", "ce1"),
               ("icc0.1_vs_twoview_ce", "(d) ICC 0.1 against two-view CE (the sweep's second value)", "icc0.1", "ce2"))
HOLM = ("icc_vs_twoview_ce", "icc0.1_vs_twoview_ce")


def teacher_names(arm):
    return [f"{ARMS[arm][1]}_seed{seed}" for seed in TEACHER_SEEDS]


def kd_setting(teacher):
    return f"kd_{teacher}"


def labels():
    out = {"alone": "resnet8 alone (CE)"}
    for arm, (label, _) in ARMS.items():
        for seed, teacher in zip(TEACHER_SEEDS, teacher_names(arm)):
            out[kd_setting(teacher)] = f"KD from {label}, fine-tuning seed {seed}"
    return out


def teachers(results):
    """{folder: row} of the finished teachers (the scratch teacher and every fine-tune), with their arm."""
    rows = {}
    names = [(SCRATCH, None)] + [(t, arm) for arm in ARMS for t in teacher_names(arm)]
    for name, arm in names:
        if os.path.isfile(os.path.join(results, name, "metrics.json")):
            rows[name] = {"arm": arm, **teacher_record(os.path.join(results, name))}
    return rows


def scratch_curve(results):
    """The scratch teacher's test top-1 per epoch and the plateau rule stated before the run: the last
    PLATEAU_EPOCHS epochs within PLATEAU_POINTS of each other. None until the run has finished."""
    path = os.path.join(results, SCRATCH, "metrics.json")
    if not os.path.isfile(path):
        return None
    history = [h for h in read(path)["history"] if h.get("test_top1") is not None]
    test = [h["test_top1"] for h in history]
    tail = test[-PLATEAU_EPOCHS:]
    spread = float(max(tail) - min(tail))
    return {"epochs": len(history), "test_top1": test, "train_top1": [h.get("train_top1") for h in history],
            "last_epochs_range": spread,
            "plateau": len(tail) == PLATEAU_EPOCHS and spread <= PLATEAU_POINTS}


def complete(groups, setting):
    return setting in groups and set(STUDENT_SEEDS) == set(groups[setting]["seeds"])


def arm_kd(groups, arm):
    """The KD arms (one per teacher) of `arm` whose students have every seed."""
    return [kd_setting(t) for t in teacher_names(arm) if complete(groups, kd_setting(t))]


def comparisons(groups):
    """The pre-stated rule for each comparison, its secondary rank test on the teacher-level means, and
    whether both arms are complete (every teacher with every student seed): only then does the rule answer."""
    out = {}
    for key, label, first, second in COMPARISONS:
        a, b = arm_kd(groups, first), arm_kd(groups, second)
        rule = spread_rule(groups, a, b)
        means = {k: groups[k]["last_mean_std"][0] for k in a + b}
        test = two_sided_rank_test([means[k] for k in a], [means[k] for k in b]) if a and b else None
        done = len(a) == len(b) == len(TEACHER_SEEDS)
        out[key] = {"label": label + ("" if done or rule is None else " - incomplete arms, no answer yet"),
                    "first": first, "second": second, "rule": rule, "rank_test": test, "complete": done}
    # Holm over the two ICC arms once both comparisons are complete (before that, "not yet")
    adjusted = holm({k: out[k]["rank_test"]["p_two_sided"] for k in HOLM}) if all(
        out[k]["complete"] for k in HOLM) else {}
    for key, p in adjusted.items():
        out[key]["holm_p"] = p
    return out


def answer(comparison):
    """The question's answer in words, by the pre-stated rule alone."""
    rule = comparison["rule"]
    if rule is None or not comparison["complete"]:
        return ("not yet: the rule answers once both arms have their three teachers, each with KD students of "
                "seeds 0, 1, 2" + (f" (so far D = {rule['difference']:+.2f}, s = {rule['spread']:.2f} over "
                                   f"{len(rule['first'])} against {len(rule['second'])} teachers)" if rule else "")
                + ".")
    d, s = rule["difference"], rule["spread"]
    if not rule["counts"]:
        return (f"no: D = {d:+.2f} points does not exceed the seeds' spread s = {s:.2f}; by the rule stated "
                "before the runs, KD from the ICC teachers and from the two-view CE teachers are not told apart.")
    better = "better" if d > 0 else "worse"
    return (f"{'yes' if d > 0 else 'no, the opposite'}: D = {d:+.2f} points exceeds the seeds' spread s = {s:.2f}; "
            f"by the rule stated before the runs, KD from the ICC teachers is {better} than KD from the two-view "
            "CE teachers.")


def teacher_table(rows):
    cells = []
    for name, r in rows.items():
        cells.append([name, ARMS[r["arm"]][0] if r["arm"] else "CE from scratch", r["seed"], r["epochs"],
                      fmt(r["test_top1"]), fmt(r.get("eval_ratio") or r["intra_inter_ratio"], ".4f"),
                      fmt(r["margin_pass"], ".3f")]
                     + [fmt(r.get(key), ".4f") for key in ("ece", "entropy", "off_mass", "entropy_spread",
                                                           "off_mass_spread")])
    return table(["teacher", "arm", "seed", "epochs", "test top-1 (%)", "intra/inter ratio", "anchors past margin",
                  "ECE", "entropy at T=4", "off-class mass at T=4", "within-class std of entropy",
                  "within-class std of off-class mass"], cells)


ARM_MEASURES = (("test top-1 (%)", "test_top1", ".2f"), ("intra/inter ratio", "eval_ratio", ".4f"),
                ("ECE", "ece", ".4f"), ("entropy at T=4", "entropy", ".4f"),
                ("off-class mass at T=4", "off_mass", ".4f"))


def arm_means(rows):
    """{arm: {measure: (mean, sample std) over the arm's finished teachers}}."""
    out = {}
    for arm in ARMS:
        members = [r for r in rows.values() if r["arm"] == arm]
        if members:
            out[arm] = {"teachers": len(members)}
            for _, key, _ in ARM_MEASURES:  # the ratio: the evaluation's, else the training run's last epoch
                values = [r.get(key) or (r["intra_inter_ratio"] if key == "eval_ratio" else None) for r in members]
                values = [v for v in values if v is not None]
                out[arm][key] = mean_std(values) if values else None
    return out


def arm_table(means):
    rows = []
    for arm, m in means.items():
        rows.append([ARMS[arm][0], m["teachers"]]
                    + [f"{fmt(m[key][0], spec)} +- {fmt(m[key][1], spec)}" if m[key] else "n/a"
                       for _, key, spec in ARM_MEASURES])
    return table(["arm", "teachers"] + [f"{label}, mean +- std" for label, _, _ in ARM_MEASURES], rows)


def kd_level_table(groups):
    rows = []
    for arm, (label, _) in ARMS.items():
        done = arm_kd(groups, arm)
        if done:
            per = [groups[k]["last_mean_std"][0] for k in done]
            rows.append([label, len(done), "; ".join(f"{k[len('kd_'):]}: {v:.2f}" for k, v in zip(done, per)),
                         f"{np.mean(per):.2f}"])
    return table(["arm", "complete teachers", "KD mean per teacher (last epoch top-1, %)", "arm mean"], rows)


def figure(rows, curve, groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows and not groups:
        return False
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.9))
    ax = axes[0]
    if curve:
        epochs = np.arange(1, curve["epochs"] + 1)
        ax.plot(epochs, curve["test_top1"], marker=".", label="test")
        if all(v is not None for v in curve["train_top1"]):
            ax.plot(epochs, curve["train_top1"], marker=".", label="train")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("CE resnet20 from scratch, top-1 (%)")
    arms = list(ARMS)
    x = np.arange(len(arms))
    measures = (("teacher test top-1 (%)", "test_top1"), ("teacher intra / inter-class distance", "eval_ratio"),
                ("teacher soft-label entropy at T = 4 (nats)", "entropy"))
    for ax, (label, key) in zip(axes[1:4], measures):
        for i, arm in enumerate(arms):
            values = [r.get(key) if key != "eval_ratio" else (r.get("eval_ratio") or r["intra_inter_ratio"])
                      for r in rows.values() if r["arm"] == arm]
            values = [v for v in values if v is not None]
            ax.plot([i] * len(values), values, marker="o", mfc="none", linestyle="", color=f"C{i}")
            if values:
                ax.plot([i - 0.2, i + 0.2], [np.mean(values)] * 2, color=f"C{i}")
        ax.set_ylabel(label)
    ax = axes[4]
    for i, arm in enumerate(arms):
        for j, teacher in enumerate(teacher_names(arm)):
            g = groups.get(kd_setting(teacher))
            if g:  # a teacher whose students lack a seed: hollow
                mean, std = g["last_mean_std"]
                ax.errorbar([i + 0.12 * (j - 1)], [mean], yerr=[std if len(g["seeds"]) > 1 else 0.0], marker="o",
                            capsize=3, linestyle="", color=f"C{i}",
                            mfc=f"C{i}" if complete(groups, kd_setting(teacher)) else "none")
        done = arm_kd(groups, arm)
        if done:
            ax.plot([i - 0.25, i + 0.25], [np.mean([groups[k]["last_mean_std"][0] for k in done])] * 2, color=f"C{i}")
    if "alone" in groups:
        ax.axhline(groups["alone"]["last_mean_std"][0], linestyle=":", color="grey", label="student alone")
        ax.legend(fontsize=8)
    ax.set_ylabel("resnet8 KD student top-1 (%), last epoch")
    for ax in axes[1:]:
        ax.set_xticks(x, [SHORT[a] for a in arms], fontsize=8)
        ax.set_xlim(-0.6, len(arms) - 0.4)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Tiny-ImageNet at 32 x 32: resnet20 teachers fine-tuned from one CE teacher trained from scratch "
                 "(one marker per fine-tuning seed, line: arm mean), resnet8 students (mean +- sample std over "
                 "seeds, one marker per teacher, hollow: seeds missing; line: arm mean)", fontsize=10)
    save_figure(fig, path)
    return True


def report(results):
    rows, groups, curve = teachers(results), students(results, STUDENT_SEEDS), scratch_curve(results)
    tests, means = comparisons(groups), arm_means(rows)
    names = labels()
    settings = ["alone"] + [kd_setting(t) for arm in ARMS for t in teacher_names(arm)]
    if curve:
        verdict = (f"met: the last {PLATEAU_EPOCHS} epochs lie within {curve['last_epochs_range']:.2f} points"
                   if curve["plateau"] else
                   f"NOT met: the last {PLATEAU_EPOCHS} epochs span {curve['last_epochs_range']:.2f} points "
                   f"(more than {PLATEAU_POINTS:g}); the plan requires a longer schedule before the fine-tunes")
        scratch = (f"Test top-1 per epoch ({curve['epochs']} epochs): "
                   + ", ".join(f"{v:.2f}" for v in curve["test_top1"]) + f". Plateau rule {verdict}.")
    else:
        scratch = "Not yet (the run has not finished)."
    holm_line = "; ".join(f"{tests[k]['label'].split(' (')[0]} {tests[k]['holm_p']:.3f}" for k in HOLM
                          if "holm_p" in tests[k])
    parts = ["### Step 1: the CE teacher from scratch", "", scratch, "",
             "### Teachers", "", teacher_table(rows) if rows else "None finished yet.", "",
             "By arm (mean +- sample std over the arm's finished teachers):", "",
             arm_table(means) if means else "None finished yet.", "",
             "### Students (resnet8, 3 epochs; last and best epoch, mean +- sample std over seeds)", "",
             student_table(groups, settings, names), "",
             "KD mean per teacher (the unit the rule compares; teachers whose students have seeds 0, 1, 2):", "",
             kd_level_table(groups), "",
             "### The rule stated before the runs (D = difference of the arms' mean KD per teacher; s = mean "
             "sample std over seeds of the compared KD arms; D counts when abs(D) > s)", "",
             rule_table([(t["label"], t["rule"], t["rank_test"]) for t in tests.values()]), "",
             "Secondary (exact two-sided rank test on the teacher-level means, 3 against 3: its smallest possible p "
             "is 0.10), Holm-adjusted over the two ICC arms: " + (holm_line or "not yet") + ".", "",
             "**The question, by the rule: does KD from the ICC teachers (lambda 0.05) beat KD from the two-view CE "
             "teachers?** " + answer(tests["icc_vs_twoview_ce"])]
    return "\n".join(parts), {"scratch_curve": curve, "teachers": rows, "arm_means": means, "students": groups,
                              "comparisons": tests}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isdir(FLAGS.results_dir):
        raise app.UsageError(f"--results_dir={FLAGS.results_dir!r} is not a folder")
    text, numbers = report(FLAGS.results_dir)
    try:
        write_tables(FLAGS.markdown, text)
    except ValueError as e:
        raise app.UsageError(f"--markdown: {e}")
    drew = figure(numbers["teachers"], numbers["scratch_curve"], numbers["students"], FLAGS.figure)
    write_json(FLAGS.summary, numbers)
    print(f"tables: {FLAGS.markdown}\nsummary: {FLAGS.summary}" + (f"\nfigure: {FLAGS.figure}" if drew else ""))


def define_flags():
    """The command line (defined when run as a script, so that the module imports beside other reports)."""
    flags.DEFINE_string("results_dir", RESULTS, "The study's committed run records (the script's copies).")
    flags.DEFINE_string("markdown", os.path.join("experiments", "results", "tinyimagenet_converged.md"),
                        "Results file whose tables section is rewritten.")
    flags.DEFINE_string("figure", os.path.join("experiments", "results", "tinyimagenet_converged.png"), "The figure.")
    flags.DEFINE_string("summary", os.path.join(RESULTS, "summary.json"), "The numbers as JSON.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
