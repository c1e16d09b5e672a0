"""experiments/tinyimagenet_report.py on fake committed records: the plateau rule, the teacher and arm tables,
the pre-stated rule with hand-computed D and s, the rank test with Holm's correction, the answer, the figure."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "experiments"))
import tinyimagenet_report  # noqa: E402


def write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)


def teacher(results, name, top1, seed, ratio, entropy, curve=None):
    history = [{"test_top1": v, "train_top1": v + 5.0} for v in curve] if curve else [{"margin_pass": 0.7}] * 3
    write(os.path.join(results, name, "metrics.json"),
          {"history": history, "test_top1": top1, "best_test_top1": top1, "wall_seconds": 1.0, "flags": {"seed": seed}})
    write(os.path.join(results, name, "evaluate", "metrics.json"),
          {"test_top1": top1, "ece": 0.03, "class_distances": {"intra_inter_ratio": ratio},
           "soft_labels": {"mean_entropy": entropy, "mean_off_class_mass": 0.5, "temperature": 4.0,
                           "mean_over_classes": {"entropy_std": 0.2, "off_class_mass_std": 0.1}}})


def student(results, setting, seed, top1, teacher_name=None):
    m = {"history": [{"test_top1": top1 - 2}, {"test_top1": top1 - 1}, {"test_top1": top1}], "test_top1": top1,
         "best_test_top1": top1, "best_epoch": 3, "wall_seconds": 1.0}
    if teacher_name:
        m.update(teacher=f"runs/tinyimagenet_converged/{teacher_name}/model.keras", teacher_test_top1=50.0)
    write(os.path.join(results, "students", f"{setting}_seed{seed}", "metrics.json"), m)


# KD means per teacher and the per-seed offsets around them (sample std 1.0, 0.5, 2.0)
ARMS = {"ce2": ([60.0, 61.0, 62.0], [-1.0, 0.0, 1.0]), "icc0.05": ([62.5, 63.0, 63.5], [-0.5, 0.0, 0.5]),
        "ce1": ([61.0, 61.0, 61.0], [-2.0, 0.0, 2.0])}


def fake_study(results, plateau=True, icc_kd=None, icc01_complete=False):
    curve = [10.0 + i for i in range(25)] + ([40.0, 40.5, 40.2, 40.9, 40.4] if plateau else [38.0, 39.0, 40.0,
                                                                                            41.0, 42.0])
    teacher(results, "scratch_teacher", curve[-1], 0, 0.7, 3.0, curve=curve)
    arms = dict(ARMS, **({"icc0.05": icc_kd} if icc_kd else {}))
    for arm, (means, offsets) in arms.items():
        prefix = tinyimagenet_report.ARMS[arm][1]
        for t, mean in enumerate(means):
            name = f"{prefix}_seed{t}"
            teacher(results, name, 50.0 + t, t, 0.6 + 0.01 * t, 2.0 + 0.1 * t)
            for seed, offset in enumerate(offsets):
                student(results, f"kd_{name}", seed, mean + offset, name)
    # ICC lambda 0.1: the third teacher's students have two seeds so far (the arm is incomplete)
    for t, mean in enumerate([60.5, 61.5, 70.0]):
        name = f"ft_icc_lambda0.1_seed{t}"
        teacher(results, name, 49.0, t, 0.65, 2.5)
        for seed, offset in enumerate([-1.0, 0.0, 1.0][: 3 if t < 2 or icc01_complete else 2]):
            student(results, f"kd_{name}", seed, mean + offset, name)
    for seed, value in enumerate([55.0, 56.0, 57.0]):
        student(results, "alone", seed, value)


def run_report(tmp_path, results):
    markdown = tmp_path / "study.md"
    markdown.write_text("# plan\n<!-- tables:begin -->\nold\n<!-- tables:end -->\n## Progress\n")
    figure, summary = tmp_path / "figure.png", tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "experiments", "tinyimagenet_report.py"),
                           f"--results_dir={results}", f"--markdown={markdown}", f"--figure={figure}",
                           f"--summary={summary}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert figure.stat().st_size > 10_000
    return markdown.read_text(), json.load(open(summary))


def test_report_on_a_fake_study(tmp_path):
    results = tmp_path / "results"
    fake_study(str(results))
    text, numbers = run_report(tmp_path, results)
    assert "old" not in text and text.startswith("# plan\n") and text.endswith("<!-- tables:end -->\n## Progress\n")
    # the scratch curve: the last five epochs 40.0-40.9 lie within 0.90 points
    assert "Plateau rule met: the last 5 epochs lie within 0.90 points." in text
    assert numbers["scratch_curve"]["plateau"] is True and numbers["scratch_curve"]["epochs"] == 30
    assert "| ft_ce2_lambda0_seed1 | two-view CE | 1 | 3 | 51.00 | 0.6100 | 0.700 | 0.0300 | 2.1000 |" in text
    assert "| scratch_teacher | CE from scratch | 0 | 30 |" in text
    # arm means over the three teachers: top-1 50, 51, 52; ratio 0.60, 0.61, 0.62
    assert "| two-view CE | 3 | 51.00 +- 1.00 | 0.6100 +- 0.0100 |" in text
    assert "| KD from ICC lambda 0.05 (the deciding arm), fine-tuning seed 2 | ft_icc_lambda0.05_seed2 (50.00) | " \
           "0,1,2 | 63.50 +- 0.50 |" in text
    assert "| resnet8 alone (CE) | - | 0,1,2 | 56.00 +- 1.00 |" in text
    assert "| ICC lambda 0.1 | 2 | ft_icc_lambda0.1_seed0: 60.50; ft_icc_lambda0.1_seed1: 61.50 | 61.00 |" in text
    rule = text.split("### The rule stated before the runs")[1]
    # (a) D = 63 - 61 = +2.00, s = (3 x 0.5 + 3 x 1.0) / 6 = 0.75: counts; every ICC teacher above every two-view
    # one: U 9 of 9, two-sided p = 2 / C(6, 3) = 0.100
    assert "| (a) ICC 0.05 against two-view CE (the question; the intra-class term alone) | 3 against 3 | +2.00 | " \
           "0.75 | yes | U 9 of 9, two-sided p = 0.100 |" in rule
    # (b) D = 63 - 61 = +2.00, s = (3 x 0.5 + 3 x 2.0) / 6 = 1.25; (c) D = 0, s = (3 x 1.0 + 3 x 2.0) / 6 = 1.50
    assert "| (b) ICC 0.05 against one-view CE | 3 against 3 | +2.00 | 1.25 | yes |" in rule
    assert "| (c) two-view CE against one-view CE (the two views alone) | 3 against 3 | +0.00 | 1.50 | no |" in rule
    # (d) two complete ICC 0.1 teachers (60.5, 61.5) against three: D = 61.00 - 61.00, s = 1.00; U = 3 of 6, each
    # one-sided p = 6 / 10, two-sided 1.000
    assert "| (d) ICC 0.1 against two-view CE (the sweep's second value) - incomplete arms, no answer yet | " \
           "2 against 3 | +0.00 | 1.00 | no | U 3 of 6, two-sided p = 1.000 |" in rule
    # Holm over (a) and (d) waits for (d)'s arm
    assert "Holm-adjusted over the two ICC arms: not yet." in rule
    assert "holm_p" not in numbers["comparisons"]["icc_vs_twoview_ce"]
    assert "two-view CE teachers?** yes: D = +2.00 points exceeds the seeds' spread s = 0.75" in text
    assert numbers["comparisons"]["icc_vs_twoview_ce"]["rule"]["difference"] == pytest.approx(2.0)


def test_report_says_no_and_flags_a_missed_plateau(tmp_path):
    results = tmp_path / "results"
    # ICC KD means 60.5, 61.5, 62.0 with a seed spread of 2.0: D = 61.33 - 61.00 = +0.33, s = (3 + 6) / 6 = 1.50
    fake_study(str(results), plateau=False, icc_kd=([60.5, 61.5, 62.0], [-2.0, 0.0, 2.0]))
    text, numbers = run_report(tmp_path, results)
    assert "Plateau rule NOT met: the last 5 epochs span 4.00 points" in text
    assert numbers["scratch_curve"]["plateau"] is False
    assert "two-view CE teachers?** no: D = +0.33 points does not exceed the seeds' spread s = 1.50" in text
    assert numbers["comparisons"]["icc_vs_twoview_ce"]["rule"]["counts"] is False


def test_report_waits_for_complete_arms(tmp_path):
    results = tmp_path / "results"
    fake_study(str(results))
    os.remove(os.path.join(results, "students", "kd_ft_icc_lambda0.05_seed2_seed2", "metrics.json"))
    text, numbers = run_report(tmp_path, results)
    assert numbers["comparisons"]["icc_vs_twoview_ce"]["complete"] is False
    # two complete ICC teachers (62.5, 63) against three two-view ones: D = 62.75 - 61 = +1.75 so far
    assert "two-view CE teachers?** not yet: the rule answers once both arms have their three teachers" in text
    assert "(so far D = +1.75, s = 0.80 over 2 against 3 teachers)" in text
    assert "Holm-adjusted over the two ICC arms: not yet." in text


def test_a_seed_outside_the_plan_is_left_out(tmp_path):
    results = tmp_path / "results"
    fake_study(str(results))
    student(str(results), "kd_ft_icc_lambda0.05_seed0", 3, 10.0, "ft_icc_lambda0.05_seed0")
    _, numbers = run_report(tmp_path, results)
    assert numbers["students"]["kd_ft_icc_lambda0.05_seed0"]["seeds"] == [0, 1, 2]
    assert numbers["comparisons"]["icc_vs_twoview_ce"]["rule"]["difference"] == pytest.approx(2.0)


def test_report_without_runs_and_bad_markdown(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    text, numbers = tinyimagenet_report.report(str(results))
    assert "Not yet (the run has not finished)." in text and numbers["comparisons"]["icc_vs_twoview_ce"]["rule"] is None
    markdown = tmp_path / "bad.md"
    markdown.write_text("# no markers\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "experiments", "tinyimagenet_report.py"),
                           f"--results_dir={results}", f"--markdown={markdown}", f"--figure={tmp_path / 'f.png'}",
                           f"--summary={tmp_path / 's.json'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "lacks the <!-- tables:begin -->" in proc.stderr
    assert markdown.read_text() == "# no markers\n"


def test_holm_once_both_icc_arms_are_complete(tmp_path):
    results = tmp_path / "results"
    fake_study(str(results), icc01_complete=True)
    text, numbers = run_report(tmp_path, results)
    # (d): ICC 0.1 teachers 60.5, 61.5, 70.0 against 60, 61, 62: U = 6 of 9; for 3 against 3 P(U >= 6) =
    # P(U <= 3) = 7 / 20, two-sided 0.700. Holm: 0.100 x 2 = 0.200, then max(0.200, 0.700 x 1) = 0.700
    assert "U 6 of 9, two-sided p = 0.700 |" in text
    assert "(a) ICC 0.05 against two-view CE 0.200; (d) ICC 0.1 against two-view CE 0.700." in text
    assert numbers["comparisons"]["icc0.1_vs_twoview_ce"]["holm_p"] == pytest.approx(0.7)
