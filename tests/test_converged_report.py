"""experiments/converged_report.py: the paired test against tabulated values, and the report on fake runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "experiments"))
import converged_report  # noqa: E402

# Two-sided 5 % and 1 % critical values of Student's t (standard tables).
CRITICAL = [(1, 12.706, 0.05), (2, 4.303, 0.05), (3, 3.182, 0.05), (4, 2.776, 0.05), (5, 2.571, 0.05),
            (6, 2.447, 0.05), (10, 2.228, 0.05), (2, 9.925, 0.01), (5, 4.032, 0.01), (9, 3.250, 0.01)]


@pytest.mark.parametrize("df,t,p", CRITICAL)
def test_t_p_value_matches_tables(df, t, p):
    assert converged_report.t_two_sided_p(t, df) == pytest.approx(p, rel=2e-3)
    assert converged_report.t_two_sided_p(-t, df) == pytest.approx(p, rel=2e-3)


def test_t_p_value_edges():
    assert converged_report.t_two_sided_p(0.0, 2) == pytest.approx(1.0)
    assert converged_report.t_two_sided_p(np.inf, 2) == 0.0
    # df = 1 is the Cauchy distribution: P(|t| > 1) = 1/2.
    assert converged_report.t_two_sided_p(1.0, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        converged_report.t_two_sided_p(1.0, 0)


def group(seeds, last):
    return {"seeds": seeds, "last": last}


def test_rank_test_exact_by_hand():
    # every high above every low: U = 6 of 6, one split of C(5, 3) = 10 reaches it
    assert converged_report.rank_test([1.0, 2.0], [3.0, 4.0, 5.0]) == {"u": 6, "u_max": 6, "p_one_sided": 0.1}
    # high = {2, 4} over low = {1, 3}: U = 1 + 2 = 3. The C(4, 2) = 6 splits' U: {3, 4} 4, {2, 4} 3,
    # {1, 4} 2, {2, 3} 2, {1, 3} 1, {1, 2} 0: two reach 3
    out = converged_report.rank_test([1.0, 3.0], [2.0, 4.0])
    assert out["u"] == 3 and out["p_one_sided"] == pytest.approx(2 / 6)
    # ties count one half
    assert converged_report.rank_test([1.0], [1.0])["u"] == 0.5
    assert converged_report.rank_test([5.0], [1.0]) == {"u": 0, "u_max": 1, "p_one_sided": 1.0}


def test_mean_of_settings_per_common_seed():
    groups = {"a": group([0, 1, 2], [1.0, 2.0, 3.0]), "b": group([1, 2, 3], [4.0, 6.0, 8.0])}
    assert converged_report.mean_of(groups, ("a", "b")) == {"seeds": [1, 2], "last": [3.0, 4.5]}
    assert converged_report.mean_of(groups, ("a", "missing")) == {"seeds": [], "last": []}


def test_paired_differences_by_common_seed():
    groups = {"kd_ce": group([0, 1, 2], [70.0, 71.0, 72.0]),
              "kd_icc0.1": group([0, 1, 2, 3], [71.0, 71.5, 73.5, 99.0]),  # seed 3 has no partner
              "dkd": group([0], [60.0])}  # one common seed: no test
    out = converged_report.paired(groups)
    assert set(out) == {"kd_icc0.1"}
    c = out["kd_icc0.1"]
    assert c["seeds"] == [0, 1, 2] and c["differences"] == pytest.approx([1.0, 0.5, 1.5])
    # mean 1, sample std 0.5, t = 1 / (0.5 / sqrt 3) = 3.4641, 2 d.f.: p = 1 - t / sqrt(t^2 + 2)
    assert c["mean"] == pytest.approx(1.0) and c["std"] == pytest.approx(0.5)
    assert c["t"] == pytest.approx(2 * np.sqrt(3)) and c["df"] == 2
    assert c["p_two_sided"] == pytest.approx(1 - 2 * np.sqrt(3) / np.sqrt(14))
    assert converged_report.paired({"kd_icc0.1": groups["kd_icc0.1"]}) == {}


def write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)


def teacher_metrics(top1, seed, ratio):
    return {"history": [{"intra_inter_ratio": ratio, "margin_pass": 0.8}], "test_top1": top1,
            "best_test_top1": top1, "wall_seconds": 1.0, "flags": {"seed": seed}}


def student_metrics(top1, teacher):
    return {"history": [{}, {}], "test_top1": top1, "best_test_top1": top1, "best_epoch": 2,
            "wall_seconds": 1.0, "teacher": f"runs/{teacher}/model.keras", "teacher_test_top1": 87.0,
            "objectives": "kd:0.9", "ce_weight": 0.1}


def run_report(tmp_path, runs, results):
    markdown = tmp_path / "study.md"
    markdown.write_text("# study\n<!-- tables:begin -->\nold\n<!-- tables:end -->\ntail\n")
    figure, summary = tmp_path / "figure.png", tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "experiments", "converged_report.py"),
                           f"--runs={runs}", f"--results_dir={results}", f"--markdown={markdown}",
                           f"--figure={figure}", f"--summary={summary}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert figure.stat().st_size > 10_000
    return markdown.read_text(), json.load(open(summary))


def write_students(runs, arms):
    for setting, teacher, values in arms:
        for seed, value in enumerate(values):
            write(str(runs / "students" / f"{setting}_seed{seed}" / "metrics.json"), student_metrics(value, teacher))


def test_report_on_fake_runs(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    for name, top1, seed, ratio in [("ft_teacher_lambda0", 87.0, 0, 0.6), ("ft_teacher_lambda0_seed1", 87.5, 1, 0.61),
                                    ("ft_teacher_lambda0.1", 88.0, 0, 0.65), ("scratch_teacher_lambda0", 80.0, 0, 0.7),
                                    ("scratch_teacher_lambda0.05", 79.0, 0, 0.72)]:
        write(str(runs / name / "metrics.json"), teacher_metrics(top1, seed, ratio))
    write_students(runs, [("kd_ce", "ft_teacher_lambda0", [70.0, 71.0, 72.0]),
                          ("kd_ce_teacher2", "ft_teacher_lambda0_seed1", [70.5, 70.5, 72.5]),
                          ("kd_ce_teacher3", "ft_teacher_lambda0_seed2", [60.0]),  # one seed so far: not in the mean
                          ("kd_icc0.1", "ft_teacher_lambda0.1", [71.0, 71.5, 73.5]),
                          ("kd_scratch_ce", "scratch_teacher_lambda0", [68.0, 69.0, 70.0]),
                          ("kd_scratch_icc", "scratch_teacher_lambda0.05", [67.0, 69.5, 70.0])])
    text, numbers = run_report(tmp_path, runs, results)
    assert (results / "students" / "kd_ce_teacher2_seed2" / "metrics.json").is_file()  # copied for committing
    assert "old" not in text and text.endswith("<!-- tables:end -->\ntail\n")
    assert "| ft_teacher_lambda0_seed1 | 0 | 1 | 1 | 87.50 | 0.6100 |" in text
    assert "| KD from a second CE teacher (fine-tuning seed 1) | ft_teacher_lambda0_seed1 (87.00) | 0,1,2 | " \
           "71.17 +- 1.15 |" in text
    assert "| KD from ICC lambda 0.1 (Ours) | 0,1,2 | s0: +1.00; s1: +0.50; s2: +1.50 | +1.00 | 0.50 | 3.46 | 0.074 |" \
           in text
    assert "| KD from a second CE teacher (fine-tuning seed 1) | 0,1,2 | s0: +0.50; s1: -0.50; s2: +0.50 | +0.17 |" \
           in text
    # against the mean of the two complete CE arms per seed (70.25, 70.75, 72.25): +0.75, +0.75, +1.25, t = 5.5
    assert "mean of KD from the 2 CE teachers, same seed: ft_teacher_lambda0, ft_teacher_lambda0_seed1)" in text
    assert "| KD from ICC lambda 0.1 (Ours) | 0,1,2 | s0: +0.75; s1: +0.75; s2: +1.25 | +0.92 | 0.29 | 5.50 | 0.032 |" \
        in text.split("against every CE teacher")[1]
    assert numbers["ce_teachers_in_mean"] == ["kd_ce", "kd_ce_teacher2"]
    # teacher level (complete teachers only): CE 71.00, 71.17 against ICC 72.00: U = 2 of 2, one split of C(3, 1) = 3
    assert "exact one-sided p = 0.333 (a test added after" in text
    assert numbers["teacher_level"]["u"] == 2
    assert "KD + RKD from the CE teacher" in text and "Not yet" in text.split("### KD + RKD")[1]
    # the from-scratch control, paired within itself: -1.00, +0.50, 0.00 (mean -0.17, std 0.76, t = -0.38)
    control = text.split("From-scratch control")[1]
    assert "| scratch_teacher_lambda0.05 | 0.05 | 0 | 1 | 79.00 | 0.7200 |" in control
    assert "| KD from the from-scratch ICC teacher (lambda 0.05) | 0,1,2 | s0: -1.00; s1: +0.50; s2: +0.00 | -0.17 " \
           "| 0.76 | -0.38 |" in control
    assert set(numbers["paired_scratch_icc_against_scratch_ce"]) == {"kd_scratch_icc"}
    # the from-scratch arms are another protocol: not paired against the fine-tuned CE teacher's KD
    assert set(numbers["paired_against_kd_ce"]) == {"kd_ce_teacher2", "kd_icc0.1"}
    assert set(numbers["paired_against_mean_of_ce_teachers"]) == {"kd_icc0.1"}
    assert numbers["paired_rkd_icc_against_rkd_ce"] == {}

    # the third CE teacher's KD completes; a second ICC teacher's KD and KD + RKD from each kind of teacher arrive
    write_students(runs, [("kd_ce_teacher3", "ft_teacher_lambda0_seed2", [69.0, 71.5, 71.0]),
                          ("kd_icc0.05_teacher2", "ft_teacher_lambda0.05_seed1", [72.0, 72.5, 73.0]),
                          ("rkd_icc", "ft_teacher_lambda0.1", [72.0, 71.0, 73.0]),
                          ("rkd_ce", "ft_teacher_lambda0", [71.0, 71.5, 72.0])])
    write(str(runs / "ft_teacher_lambda0_seed2" / "metrics.json"), teacher_metrics(86.0, 2, 0.62))
    text, numbers = run_report(tmp_path, runs, results)
    assert "| ft_teacher_lambda0_seed2 | 0 | 2 | 1 | 86.00 | 0.6200 |" in text
    # the mean of three CE arms per seed (69.83, 71.0, 71.83): ICC +1.17, +0.50, +1.67
    assert "mean of KD from the 3 CE teachers" in text
    assert "| KD from ICC lambda 0.1 (Ours) | 0,1,2 | s0: +1.17; s1: +0.50; s2: +1.67 | +1.11 |" in text
    # teacher level: CE 71.00, 71.17, 70.50 against ICC 72.00, 72.50: U = 6 of 6, one split of C(5, 2) = 10
    assert numbers["teacher_level"]["kd_mean_per_teacher"]["kd_ce_teacher3"] == pytest.approx(70.5)
    assert "over the CE teachers 6 of 6, exact one-sided p = 0.100 (" in text
    assert "| KD from a second ICC lambda 0.05 teacher (fine-tuning seed 1) | ft_teacher_lambda0.05_seed1 (87.00) |" \
        in text
    # Ours+RKD against KD + RKD from the CE teacher: +1.0, -0.5, +1.0 (mean 0.5, std 0.866, t = 1.0)
    rkd = text.split("### KD + RKD")[1]
    assert "| KD + RKD from the best ICC teacher (Ours+RKD) | 0,1,2 | s0: +1.00; s1: -0.50; s2: +1.00 | +0.50 | 0.87 " \
           "| 1.00 |" in rkd
    assert numbers["paired_rkd_icc_against_rkd_ce"]["rkd_icc"]["t"] == pytest.approx(1.0)
    assert "| KD + RKD from the CE teacher | 0,1,2 | s0: +1.00; s1: +0.50; s2: +0.00 | +0.50 |" in text

    # a fourth CE and a fifth ICC teacher; the from-scratch control's second pair (seed 1)
    write_students(runs, [("kd_ce_teacher4", "ft_teacher_lambda0_seed3", [71.5, 72.0, 72.5]),
                          ("kd_icc0.1_teacher2", "ft_teacher_lambda0.1_seed1", [70.0, 71.0, 71.0]),
                          ("kd_scratch_ce_teacher2", "scratch_teacher_lambda0_seed1", [69.0, 70.0, 71.0]),
                          ("kd_scratch_icc_teacher2", "scratch_teacher_lambda0.05_seed1", [70.0, 70.5, 72.5])])
    write(str(runs / "scratch_teacher_lambda0.05_seed1" / "metrics.json"), teacher_metrics(78.0, 1, 0.73))
    text, numbers = run_report(tmp_path, runs, results)
    assert numbers["ce_teachers_in_mean"] == ["kd_ce", "kd_ce_teacher2", "kd_ce_teacher3", "kd_ce_teacher4"]
    # teacher level: CE 71.00, 71.17, 70.50, 72.00 against ICC 72.00, 72.50, 70.67 (a tie counts 1/2):
    # 72.00 beats 3 and ties 1 (3.5), 72.50 beats 4, 70.67 beats 1 (70.50): U = 8.5 of 12
    assert numbers["teacher_level"]["u"] == pytest.approx(8.5) and numbers["teacher_level"]["u_max"] == 12
    control = text.split("From-scratch control")[1]
    assert "| scratch_teacher_lambda0.05_seed1 | 0.05 | 1 | 1 | 78.00 | 0.7300 |" in control
    # the second pair, paired within itself: +1.00, +0.50, +1.50 (mean 1.00, std 0.50, t = 3.46)
    assert "| KD from a second from-scratch ICC teacher (lambda 0.05, seed 1) | 0,1,2 | s0: +1.00; s1: +0.50; " \
           "s2: +1.50 | +1.00 | 0.50 | 3.46 | 0.074 |" in control
    assert set(numbers["paired_scratch_icc_against_scratch_ce"]) == {"kd_scratch_icc", "kd_scratch_icc_teacher2"}
    assert "KD from a second from-scratch CE teacher (seed 1) | scratch_teacher_lambda0_seed1 (87.00) |" in control

    # part 2: two two-view CE teachers and their KD (kd_twoview_ce_teacher3 has one seed: not complete)
    write(str(runs / "twoview_teacher_lambda0" / "metrics.json"), teacher_metrics(87.2, 0, 0.62))
    write_students(runs, [("kd_twoview_ce", "twoview_teacher_lambda0", [70.0, 71.0, 71.0]),
                          ("kd_twoview_ce_teacher2", "twoview_teacher_lambda0_seed1", [71.0, 72.0, 73.0]),
                          ("kd_twoview_ce_teacher3", "twoview_teacher_lambda0_seed2", [75.0])])
    text, numbers = run_report(tmp_path, runs, results)
    part2 = text.split("### Part 2")[1]
    assert "| twoview_teacher_lambda0 | 0 | 0 | 1 | 87.20 | 0.6200 |" in part2 and "| fine-tuning seed |" in part2
    assert "| KD from the two-view CE teacher (fine-tuning seed 0) | twoview_teacher_lambda0 (87.00) | 0,1,2 | " \
           "70.67 +- 0.58 |" in part2
    assert "two-view" not in text.split("### Paired by seed against KD from the CE teacher")[1].split("### The design")[0]
    assert numbers["twoview_ce_teachers_in_mean"] == ["kd_twoview_ce", "kd_twoview_ce_teacher2"]
    # against the two-view mean per seed (70.5, 71.5, 72.0): ICC lambda 0.1 +0.50, +0.00, +1.50
    assert "| KD from ICC lambda 0.1 (Ours) | 0,1,2 | s0: +0.50; s1: +0.00; s2: +1.50 | +0.67 | 0.76 | 1.51 |" in part2
    # the rule: (a) ICC 72.00, 72.50, 70.67 against two-view 70.67, 72.00: D = 71.72 - 71.33 = +0.39, s = the mean
    # of the five arms' stds (1.32, 0.50, 0.58, 0.58, 1.00) = 0.80: does not count; U = 1.5 + 2 + 0.5 = 4 of 6
    rule = text.split("### The design's rule")[1]
    assert "| (a) ICC against two-view CE (the intra-class term alone) | 3 against 2 | +0.39 | 0.80 | no | U 4 of 6," \
        in rule
    # (b) D = 71.72 - 71.17 = +0.56, s = 0.91; (c) D = 71.33 - 71.17 = +0.17, s = 0.93
    assert "| (b) ICC against one-view CE (the first design's comparison) | 3 against 4 | +0.56 | 0.91 | no |" in rule
    assert "| (c) two-view CE against one-view CE (the two views alone) | 2 against 4 | +0.17 | 0.93 | no |" in rule
    assert "two-sided p = " in rule.split("(c)")[1].split("\n")[0]
    assert numbers["rule"]["icc_vs_twoview_ce"]["rule"]["difference"] == pytest.approx(0.3889, abs=1e-4)
    assert numbers["rule"]["icc_vs_twoview_ce"]["rank_test"]["u"] == pytest.approx(4.0)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> kept monotone: 0.06
    assert converged_report.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert converged_report.holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}


def test_two_sided_rank_test_is_symmetric():
    low, high = [1.0, 2.0], [3.0, 4.0, 5.0]
    assert converged_report.two_sided_rank_test(high, low)["p_two_sided"] == pytest.approx(0.2)
    assert converged_report.two_sided_rank_test(low, high)["p_two_sided"] == pytest.approx(0.2)


def test_report_part3_long_students(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    write(str(runs / "ft_teacher_lambda0" / "metrics.json"), teacher_metrics(87.0, 0, 0.6))
    write_students(runs, [("kd_icc0.05", "ft_teacher_lambda0.05", [71.0, 71.5, 72.0]),
                          ("kd_twoview_ce", "twoview_teacher_lambda0", [71.0, 71.0, 71.5])])
    for setting, teacher, values in [("kd_icc0.05_long", "ft_teacher_lambda0.05", [72.0, 73.0, 74.0]),
                                     ("kd_twoview_ce_long", "twoview_teacher_lambda0", [71.0, 71.5, 72.0])]:
        for seed, value in enumerate(values):
            m = student_metrics(value, teacher)
            m["history"] = [{"test_top1": value - 3.0}, {"test_top1": value - 1.0}, {"test_top1": value - 0.2},
                            {"test_top1": value}]
            write(str(runs / "students" / f"{setting}_seed{seed}" / "metrics.json"), m)
    text, numbers = run_report(tmp_path, runs, results)
    part3 = text.split("### Part 3")[1].split("### KD + RKD")[0]
    assert "| KD for 15 epochs from ICC lambda 0.05 (the teacher chosen for part 3) | ft_teacher_lambda0.05 (87.00) | " \
           "0,1,2 | 73.00 +- 1.00 |" in part3
    # last three epochs: value - 1.0, value - 0.2, value: a range of 1.00 for every seed
    assert "KD for 15 epochs from ICC lambda 0.05 (the teacher chosen for part 3): 1.00, 1.00, 1.00" in part3
    # (d): D = 73.00 - 71.50 = +1.50, s = (1.00 + 0.50) / 2 = 0.75: counts; by seed +1.0, +1.5, +2.0: t = 5.20,
    # p = 1 - t / sqrt(t^2 + 2) = 0.035
    assert "| (d) 15 epochs: the chosen ICC teacher against its two-view CE control | 1 against 1 | +1.50 | 0.75 | " \
           "yes | paired by seed: t = 5.20, two-sided p = 0.035 |" in part3
    # (e): D = 71.50 - 71.17 = +0.33, s = (0.50 + 0.29) / 2 = 0.39: does not count
    assert "| (e) the same two teachers, 3-epoch students (part 2) | 1 against 1 | +0.33 | 0.39 | no |" in part3
    assert numbers["long_students_rule"]["long"]["rule"]["counts"] is True
    # the figure's part-3 panel reads each seed's curve
    assert numbers["students"]["kd_icc0.05_long"]["curves"][2] == pytest.approx([71.0, 73.0, 73.8, 74.0])
    # the 15-epoch D counts and exceeds the 3-epoch D by 1.17 > s = 0.75
    assert "**Does the gap grow, shrink or vanish (the rule stated before part 3's runs)?** the gap grows: D = +1.50 " \
           "with 15 epochs against +0.33 with 3 (s = 0.75 over the 15-epoch arms; D is signed, ICC minus two-view " \
           "CE); by itself the 15-epoch D counts (KD from the ICC teacher ahead)." in part3
    # the long arms stay out of part 1's tables and tests
    assert "15 epochs" not in text.split("### Part 3")[0]
    assert "kd_icc0.05_long" not in numbers["paired_against_mean_of_ce_teachers"]


def rule(d, s):
    return {"difference": d, "spread": s, "counts": abs(d) > s}


@pytest.mark.parametrize("long,short,words", [
    (rule(1.5, 0.75), rule(0.33, 0.39), "the gap grows"),
    (rule(0.9, 0.75), rule(0.33, 0.39), "the two schedules are not told apart"),  # counts, but only 0.57 more
    (rule(0.2, 0.75), rule(1.0, 0.39), "the gap vanishes"),
    (rule(1.0, 0.3), rule(2.0, 0.39), "the gap shrinks"),
    (rule(1.8, 0.3), rule(2.0, 0.39), "the two schedules are not told apart"),
    (rule(-1.0, 0.3), rule(0.2, 0.39), "the two schedules are not told apart"),
])
def test_gap_change_follows_the_stated_rule(long, short, words):
    assert converged_report.gap_change(long, short, True).startswith((words + ":", words + " (the direction"))
    assert converged_report.gap_change(long, short, False).startswith("not yet")
    assert converged_report.gap_change(None, short, True).startswith("not yet")


def test_gap_change_names_a_reversal():
    text = converged_report.gap_change(rule(-1.0, 0.3), rule(0.2, 0.39), True)
    assert "(the direction reversed between the schedules)" in text and "two-view CE teacher ahead" in text
